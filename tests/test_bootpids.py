"""The PIDs a kernel's own threads take before userspace: recorded each boot, remembered per
release and CPU count, and preflight's blocker for a workload PID the target's boot will take."""

from pathlib import Path

from kupgrade.config import Config
from kupgrade.context import Context, Plan, Target
from kupgrade.output.record import UpgradeRecord, Workload
from kupgrade.stages import preflight
from kupgrade.switch import bootpids, contract


def early(tmp_path, release="6.1.0-47-amd64", cpus=2, pids="1 2 3 4 10 97 98 150"):
    f = tmp_path / "early-pids"
    f.write_text(f"release {release}\ncpus {cpus}\npids {pids}\n")
    return f


def test_the_init_top_script_writes_what_read_parses(tmp_path):
    text = contract.render((Path(__file__).resolve().parents[1] / "kupgrade/data/initramfs-top").read_text())
    assert f"> {contract.EARLY_PIDS}" in text and "release %s" in text and "/proc/[0-9]*" in text
    here = bootpids.read(early(tmp_path))
    assert here == bootpids.EarlyPids("6.1.0-47-amd64", 2, (1, 2, 3, 4, 10, 97, 98, 150)) and here.highest == 150
    (tmp_path / "bad").write_text("release x\ncpus two\n")
    assert bootpids.read(tmp_path / "bad") is None and bootpids.read(tmp_path / "none") is None


def test_a_measured_boot_of_the_target_beats_the_estimate(tmp_path):
    state = tmp_path / "state"
    here = bootpids.remember(state, early(tmp_path))
    guess = bootpids.predict(state, "6.12.117+deb12-amd64", 2, here)
    assert not guess.measured and guess.upto == 300 and "+100 % for another release" in guess.basis
    bootpids.remember(state, early(tmp_path, "6.12.117+deb12-amd64", pids="1 2 300"))
    guess = bootpids.predict(state, "6.12.117+deb12-amd64", 2, here)
    assert guess.measured and guess.upto == 300 and "an earlier boot of 6.12.117+deb12-amd64" in guess.basis
    assert not bootpids.predict(state, "6.12.117+deb12-amd64", 8, here).measured     # other CPU count
    assert bootpids.predict(state, "7.0", 2, None) is None


def test_preflight_names_a_workload_pid_the_target_boot_takes(tmp_path, monkeypatch):
    monkeypatch.setattr(bootpids, "read", lambda path=None: bootpids.EarlyPids("6.1.0-47-amd64", 2, (1, 2, 120)))
    monkeypatch.setattr(preflight.os, "cpu_count", lambda: 2)
    ctx = Context(Config(state_dir=str(tmp_path)), UpgradeRecord("U1", "run", "6.1.0-47-amd64"))
    ctx.plan = Plan(target=Target("6.12.117+deb12-amd64", Path("/boot/x"), Path("/boot/y")))
    ctx.workloads = [Workload("unit:ssh.service", 140, (140, 151, 30001), unit="ssh.service"),
                     Workload("pid:30000", 30000, (30000,))]
    blockers = []
    assert preflight._boot_pids(ctx, ctx.plan.target.version, blockers)["upto"] == 240
    assert [b.message for b in blockers] == [
        "unit:ssh.service: PID(s) [140, 151] would be taken in 6.12.117+deb12-amd64's boot before the restore "
        "(estimated from this boot of 6.1.0-47-amd64 (2 CPUs), whose threads held PIDs up to 120 before userspace "
        "ran, +100 % for another release)"]
    assert "restart that service" in blockers[0].hint
