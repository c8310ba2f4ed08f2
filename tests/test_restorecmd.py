"""kupgrade-restore's start: criu's probe of the new kernel begins before the rest is imported."""
import threading
from pathlib import Path

from kupgrade.switch import restorecmd
from kupgrade.system import criu

WARM = criu.warm        # conftest keeps the tests from running criu: the real one, its probe faked here


def test_python_start_from_the_process_start_time(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    # field 22 (starttime, clock ticks since boot); a comm with spaces and parentheses
    stat.write_text("4242 (python3 (x) y) S " + " ".join(["0"] * 18) + " 1000 0 0\n")
    monkeypatch.setattr(restorecmd, "LOADED", 1000 / restorecmd.os.sysconf("SC_CLK_TCK") + 0.25)
    assert restorecmd._python_s(stat) == 0.25
    assert restorecmd._python_s(tmp_path / "none") is None


def test_an_early_warm_up_is_waited_for_not_run_again(monkeypatch):
    calls, release = [], threading.Event()

    def probe(log=None):
        calls.append((threading.current_thread().name, log))
        release.wait(5)
        return True

    monkeypatch.setattr(criu, "_probe", probe)
    monkeypatch.setattr(criu, "_early", None)
    criu.start_warm(Path("/run/kupgrade/criu-check.log"))
    criu.start_warm()                   # once per process
    release.set()
    assert WARM() is True
    assert calls == [("kupgrade-criu-warm", Path("/run/kupgrade/criu-check.log"))]


def test_without_an_early_warm_up_the_stage_probes_itself(monkeypatch):
    calls = []
    monkeypatch.setattr(criu, "_probe", lambda log=None: calls.append(1) or False)
    monkeypatch.setattr(criu, "_early", None)
    assert WARM() is False
    assert calls == [1]


def test_a_units_restore_loads_neither_the_restore_stage_nor_the_hooks(tmp_path):
    """Several units start at once, each its own kupgrade-restore --unit: only one tree's modules."""
    import subprocess
    import sys
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'[paths]\nstate = "{tmp_path}/state"\n')
    code = ("import sys\nfrom kupgrade.switch import restorecmd\nrestorecmd.mark_restore_point = lambda: None\n"
            f"rc = restorecmd.main(['--config', {str(cfg)!r}, '--unit', 'web.service'])\n"
            "print(rc, sorted(m for m in sys.modules if m in ('kupgrade.stages.restore', 'kupgrade.hooks', "
            "'kupgrade.switch.newkernel', 'kupgrade.switch.switchback', 'kupgrade.switch.prewarm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[0] == "6 []", out.stdout + out.stderr      # nothing pending here: its error


def test_the_restore_point_is_marked_where_a_restore_stage_would_start(tmp_path):
    """The estimate's kernel switch ends at the restore stage's start, after the restore's imports
    (seconds under TCG): a plain boot marks its restore point there too, not before them."""
    import subprocess
    import sys
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'[paths]\nstate = "{tmp_path}/state"\n')
    code = ("import sys\nfrom kupgrade.switch import restorecmd\n"
            "restorecmd.mark_restore_point = lambda: print('marked', 'kupgrade.switch.newkernel' in sys.modules)\n"
            f"rc = restorecmd.main(['--config', {str(cfg)!r}])\nprint('rc', rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[:1] == ["marked True"] and "rc 0" in out.stdout, out.stdout + out.stderr
