"""The stages call the device hooks: preflight, quiesce, save (+ early-restore bundle), resume on
a rollback, restore/verify in the new kernel; before the point of no return a failure rolls back
(exit 7), after it failures are recorded. Fake hooks (hookfakes), real stage and pipeline code."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hookfakes import DEVICES, ETH0, PyHook, write_exec

from kupgrade import pipeline
from kupgrade.config import Config
from kupgrade.context import Context, Plan, Target
from kupgrade.errors import HookError, RestoreError
from kupgrade.hooks import Hook, coverage, early, hookload, hookpoints, parse_spec
from kupgrade.output.record import FAILED, OK, UpgradeRecord
from kupgrade.output.ui import Ui, hook_rows
from kupgrade.stages import freeze, preflight, restore, snapshot
from kupgrade.switch import manifest, trees

KERNEL = os.uname().release


class QuietUi:
    def __init__(self):
        self.ended = []

    def stage_start(self, name):
        pass

    def stage_end(self, res):
        self.ended.append((res.name, res.status))


def context(tmp_path, hooks=None, devices=DEVICES) -> Context:
    cfg = Config(state_dir=str(tmp_path / "state"), snapshot_dir=str(tmp_path / "snap"),
                 hooks_dir=str(tmp_path / "hooks.d"))
    c = Context(cfg, UpgradeRecord("U1", "run", "6.1"), plan=Plan(target=Target("6.12", Path("/x"), Path("/y"))),
                restore_dir=tmp_path / "run-kupgrade")
    if hooks is not None:
        c.hooks, c.devices = [h.hook() if isinstance(h, PyHook) else h for h in hooks], list(devices)
    return c


def fake_snapshot_stage():
    """The snapshot stage's hook part (after the dumps, before packing) without criu and tmpfs."""
    def run(ctx):
        ctx.snapshot_dir.mkdir(parents=True, exist_ok=True)
        notes, done = snapshot._save_hooks(ctx)
        return "saved", {"hooks": done, "early_restore": notes}
    return SimpleNamespace(NAME="snapshot", run=run, plan=lambda ctx: [])


def upgrade(monkeypatch, c, stages):
    monkeypatch.setattr(pipeline, "UPGRADE", stages)
    ui = QuietUi()
    with pytest.raises(Exception) as err:
        pipeline.upgrade(c, ui, pipeline.Gate(ui, yes=True))
    return err.value, ui


def test_failing_save_rolls_back_with_resume_for_every_hook_that_ran(tmp_path, monkeypatch):
    calls = []
    a = PyHook("10-a", points=("quiesce", "save", "resume"), save={"state": {"x": 1}},
               resume=lambda r: calls.append("a") or {})
    b = PyHook("20-b", points=("quiesce", "save", "resume"), save=RuntimeError("device busy"),
               resume=lambda r: calls.append("b") or {})
    c_ = PyHook("30-c", points=("save", "resume"), resume=lambda r: calls.append("c") or {})
    idle = PyHook("40-idle", points=("restore", "resume"), resume=lambda r: calls.append("idle") or {})
    c = context(tmp_path, [a, b, c_, idle])
    finished = []
    monkeypatch.setattr(pipeline, "finish", lambda ctx, outcome, save=True: finished.append(outcome))
    err, ui = upgrade(monkeypatch, c, (freeze, fake_snapshot_stage()))
    assert isinstance(err, HookError) and err.exit_code == 7
    assert str(err) == "hook 20-b failed at save: RuntimeError: device busy"
    # 30-c never ran its save (the point stopped at the first failure): no resume; 20-b did (half done)
    assert calls == ["b", "a"]
    assert ui.ended == [("freeze", OK), ("snapshot", FAILED), ("rollback", OK)]
    snap = c.record.stage("snapshot")
    assert [(r["hook"], r["ok"]) for r in snap.details.hooks] == [("10-a", True), ("20-b", False)]
    rb = c.record.stage("rollback")
    assert [(r["hook"], r["point"], r["ok"]) for r in rb.details.hooks] == [("20-b", "resume", True),
                                                                            ("10-a", "resume", True)]
    assert "hook 20-b resume: ok" in rb.details.done
    assert [(r["hook"], r["point"]) for r in c.record.stage("freeze").details.hooks] == [
        ("10-a", "quiesce"), ("20-b", "quiesce")]
    assert finished == ["aborted"]


def test_failing_quiesce_rolls_back_and_resumes_it(tmp_path, monkeypatch):
    calls = []
    a = PyHook("a", points=("quiesce", "resume"), quiesce=RuntimeError("stuck"),
               resume=lambda r: calls.append("a") or {})
    c = context(tmp_path, [a])
    monkeypatch.setattr(pipeline, "finish", lambda *a, **k: None)
    err, ui = upgrade(monkeypatch, c, (freeze, fake_snapshot_stage()))
    assert isinstance(err, HookError) and "hook a failed at quiesce: RuntimeError: stuck" in str(err)
    assert calls == ["a"] and ui.ended == [("freeze", FAILED), ("rollback", OK)]
    assert c.record.stage("freeze").details.hooks[0]["error"] == "RuntimeError: stuck"


def test_failing_resume_is_recorded_and_the_rollback_goes_on(tmp_path, monkeypatch):
    a = PyHook("a", points=("save", "resume"), save=RuntimeError("no"), resume=RuntimeError("also no"))
    c = context(tmp_path, [a])
    monkeypatch.setattr(pipeline, "finish", lambda *a, **k: None)
    err, _ = upgrade(monkeypatch, c, (fake_snapshot_stage(),))
    assert isinstance(err, HookError)
    rb = c.record.stage("rollback")
    assert rb.status == OK and "hook a resume: FAILED: RuntimeError: also no" in rb.details.done
    assert "hook a failed at resume: RuntimeError: also no" in c.record.warnings()


def test_save_writes_state_and_the_early_bundle_into_the_snapshot(tmp_path):
    src = tmp_path / "hooks.d"
    src.mkdir()
    decl = {"points": ["save", "early-restore"], "match": [{"subsystem": "net"}]}
    sh = Hook(parse_spec(decl, "10-sh"), "executable",
              str(write_exec(src, "10-sh", describe=decl, body='cat >/dev/null; echo \'{"state": {"k": 2}}\'')))
    c = context(tmp_path, [sh, PyHook("net", points=("save",), save={"state": {"mtu": 1400}})])
    c.snapshot_dir.mkdir()
    notes, done = snapshot._save_hooks(c)
    assert notes == ["10-sh: bundled for early-restore"]
    assert [(r["hook"], r["reply"]) for r in done] == [("10-sh", {"state": {"k": 2}}), ("net", {"state": {"mtu": 1400}})]
    hooks = snapshot.hooks_root(c)
    assert (hooks / "saved.json").exists() and (hooks / "net").is_dir()
    req = json.loads((hooks / "early-restore.d" / "10-sh.request.json").read_text())
    assert req["state"] == {"k": 2} and req["state_dir"] == str(tmp_path / "run-kupgrade" / "hooks" / "10-sh")
    assert req["upgrade_id"] == "U1" and req["kernel_to"] == "6.12"


def test_requests_carry_the_downtime_estimate_and_the_workload_pids(tmp_path):
    from dataclasses import replace

    from kupgrade.output.record import StageResult, Workload
    c = context(tmp_path)
    c.workloads = [Workload("cgroup:/w", 30001, (30001, 30002)), Workload("pid:7", 7, (7,))]
    c.plan = Plan(target=c.plan.target, downtime_estimate_s=14.2)
    assert hookpoints.extra(c) == {"upgrade_id": "U1", "kernel_from": "6.1", "kernel_to": "6.12",
                                   "downtime_estimate_s": 14.2, "workload_pids": [7, 30001, 30002]}
    # the new kernel: a fresh context, the old kernel's record
    rec = replace(UpgradeRecord("U1", "run", "6.1", workloads=tuple(c.workloads)), kernel_to="6.12").with_stage(
        StageResult("preflight", OK, 0.0, 1.0, "", {"downtime_estimate_s": 9.5}))
    fresh = Context(c.config, rec)
    assert hookpoints.extra(fresh)["downtime_estimate_s"] == 9.5
    assert hookpoints.extra(fresh)["workload_pids"] == [7, 30001, 30002]


def test_preflight_hook_blockers_and_unsafe_devices_in_use(tmp_path, monkeypatch):
    monkeypatch.setattr(coverage, "open_devnodes", lambda: {"/dev/dri/card0": [(42, "python3")]})
    pre = PyHook("gpu-check", points=("preflight",), match=({"subsystem": "net"},),     # does not cover the GPU
                 preflight={"blockers": [{"message": "context open", "hint": "stop it"}]})
    c = context(tmp_path, [pre])
    blockers = []
    done, err = preflight._hooks(c, blockers)
    assert err is None and done[0]["hook"] == "gpu-check"
    assert blockers[0].message == "hook gpu-check: context open" and blockers[0].hint == "stop it"
    assert "0000:00:02.0 (pci, driver amdgpu) is in use by PID 42 (python3)" in blockers[1].message
    c.config = Config(hooks_allow=("pci",))
    blockers = []
    preflight._hooks(c, blockers)
    assert [b.message for b in blockers] == ["hook gpu-check: context open"]


def test_preflight_failing_hook_is_a_hook_error(tmp_path):
    c = context(tmp_path, [PyHook("bad", points=("preflight",), preflight=RuntimeError("boom"))])
    done, err = preflight._hooks(c, [])
    assert isinstance(err, HookError) and done[0]["ok"] is False


def test_preflight_loads_hooks_and_devices_once(tmp_path, monkeypatch):
    loaded, asked = [], []
    monkeypatch.setattr(hookload, "load_hooks", lambda d: loaded.append(d) or ([PyHook("n").hook()], []))
    monkeypatch.setattr(hookpoints, "devices", lambda subsystems=(): asked.append(subsystems) or ([ETH0], ""))
    c = context(tmp_path)
    hookpoints.load(c)
    hookpoints.load(c)
    assert loaded == [tmp_path / "hooks.d"] and [h.name for h in c.hooks] == ["n"] and c.devices == [ETH0]
    assert asked == [()]        # preflight: every device (unsafe ones are looked for too)


# --- the new kernel ---

def packed_snapshot(tmp_path, hooks) -> Path:
    """What the old kernel's snapshot stage leaves in the new kernel's /run/kupgrade (no workloads)."""
    old = context(tmp_path, hooks)
    old.config = Config(snapshot_dir=str(tmp_path / "run-kupgrade"))
    old.snapshot_dir.mkdir()
    snapshot._save_hooks(old)
    snap = old.snapshot_dir
    files = {str(p.relative_to(snap)): {"size": p.stat().st_size, manifest.CHECKSUM: manifest.checksum_file(p)}
             for p in snap.rglob("*") if p.is_file()}
    (snap / manifest.NAME).write_bytes(manifest.dumps(manifest.make("U1", "6.1", KERNEL, (), files)))
    return snap


def new_kernel(tmp_path, monkeypatch, hooks, asked=None) -> Context:
    """A fresh context as kupgrade-restore makes it: the hooks are loaded lazily. asked: gets
    which subsystems were enumerated."""
    asked = [] if asked is None else asked
    monkeypatch.setattr(hookload, "load_hooks", lambda d: ([h.hook() for h in hooks], []))
    monkeypatch.setattr(hookpoints, "devices", lambda subsystems=(): asked.append(subsystems) or ([ETH0], ""))
    return context(tmp_path)


def test_restore_stage_runs_early_restore_restore_and_verify(tmp_path, monkeypatch):
    seen = []
    net = PyHook("net", points=("save", "restore", "verify"), save={"state": {"mtu": 1400}},
                 restore=lambda r: seen.append(("restore", r["state"])) or {"applied": 1},
                 verify=lambda r: seen.append(("verify", r["state"])) or {})
    flaky = PyHook("flaky", points=("save", "restore"), restore=RuntimeError("gone"))
    snap = packed_snapshot(tmp_path, [net, flaky])
    asked = []
    c = new_kernel(tmp_path, monkeypatch, [net, flaky], asked)
    _, details = restore.run(c)
    assert asked == [("net",)]      # only the subsystems the hooks match (inside the downtime)
    assert seen == [("restore", {"mtu": 1400}), ("verify", {"mtu": 1400})]
    assert [(r["hook"], r["point"], r["ok"]) for r in details.hooks] == [
        ("flaky", "restore", False), ("net", "restore", True), ("net", "verify", True)]
    assert (snap / trees.DONE).exists() and (snap / trees.VERIFIED).exists()


def test_restore_stage_collects_early_restore_results(tmp_path, monkeypatch):
    src = tmp_path / "hooks.d"
    src.mkdir()
    decl = {"points": ["early-restore"], "match": [{"subsystem": "net"}]}
    sh = Hook(parse_spec(decl, "05-early"), "executable",
              str(write_exec(src, "05-early", describe=decl, body='cat >/dev/null; echo \'{"up": 1}\'')))
    snap = packed_snapshot(tmp_path, [sh])
    subprocess.run(["sh", str(snap / "hooks" / early.BUNDLE / early.RUNNER)], check=True, timeout=30)
    asked = []
    c = new_kernel(tmp_path, monkeypatch, [], asked)
    _, details = restore.run(c)
    assert [(r["hook"], r["point"], r["ok"], r["reply"]) for r in details.hooks] == [
        ("05-early", "early-restore", True, {"up": 1})]
    assert asked == []              # no hook left that matches devices: pyudev is not asked


def test_critical_restore_failure_restores_nothing_and_keeps_the_snapshot(tmp_path, monkeypatch):
    crit = PyHook("crit", points=("save", "restore"), critical=True, restore=RuntimeError("no link"))
    other = PyHook("other", points=("save", "restore"), restore={"done": True})
    snap = packed_snapshot(tmp_path, [crit, other])
    with pytest.raises(HookError, match="critical hook crit failed at restore: RuntimeError: no link") as e:
        restore.run(new_kernel(tmp_path, monkeypatch, [crit, other]))
    assert [(r["hook"], r["ok"]) for r in e.value.details["hooks"]] == [("crit", False), ("other", True)]
    assert (snap / manifest.NAME).exists() and not (snap / trees.VERIFIED).exists()


def test_critical_verify_failure_is_raised_after_recording(tmp_path, monkeypatch):
    crit = PyHook("crit", points=("save", "verify"), critical=True, verify=RuntimeError("differs"))
    packed_snapshot(tmp_path, [crit])
    with pytest.raises(HookError, match="critical hook crit failed at verify") as e:
        restore.run(new_kernel(tmp_path, monkeypatch, [crit]))
    assert "workloads were restored" in e.value.hint
    assert e.value.details["workloads"] == {} and e.value.details["hooks"][0]["point"] == "verify"


def test_no_hook_state_and_none_installed_loads_nothing(tmp_path, monkeypatch):
    snap = tmp_path / "run-kupgrade"
    snap.mkdir()
    (snap / manifest.NAME).write_bytes(manifest.dumps(manifest.make("U1", "6.1", KERNEL, (), {})))
    monkeypatch.setattr(hookload, "load_hooks", lambda d: pytest.fail("hooks loaded"))
    _, details = restore.run(context(tmp_path))
    assert details.hooks == []


def test_subsystems_to_enumerate():
    net, gpu = PyHook("n").hook(), PyHook("g", match=({"subsystem": "pci", "driver": "amdgpu"},)).hook()
    wide, glob = PyHook("w", match=()).hook(), PyHook("x", match=({"subsystem": "n*"},)).hook()
    assert hookpoints.subsystems([net, gpu, wide]) == ("net", "pci")
    assert hookpoints.subsystems([wide]) == ()
    assert hookpoints.subsystems([net, glob]) is None
    assert hookpoints.subsystems([PyHook("d", match=({"driver": "e1000"},)).hook()]) is None


def test_report_shows_the_hook_results():
    from kupgrade.output.record import StageResult
    r = {"hook": "network", "point": "restore", "ok": True, "seconds": 0.25, "reply": {}, "error": ""}
    bad = {**r, "point": "verify", "ok": False, "error": "differs"}
    rec = UpgradeRecord("T", "run", "6.1", kernel_to="6.12", outcome="restored",
                        stages=(StageResult("restore", OK, 1.0, 1.0, "x", {"hooks": [r, bad]}),))
    assert hook_rows(rec) == [("network", "restore", True, 0.25, ""), ("network", "verify", False, 0.25, "differs")]
    ui = Ui(width=100, record_svg=True)
    ui.console.file = io.StringIO()
    ui.report(rec)
    text = ui.console.export_text()
    assert "device hooks" in text and "│ network │ restore │ ok     │ 0.25    │" in text
    assert "warning: hook network failed at verify: differs" in text


def test_restore_path_imports_stay_lean():
    """The new kernel's restore path runs hooks: no typer, rich, psutil or pyudev on import."""
    code = ("import sys, kupgrade.switch.newkernel, kupgrade.hooks.hookpoints, kupgrade.hooks, kupgrade.hooks.hookload, "
            "kupgrade.hooks.early, kupgrade.hooks.coverage; "
            "print(sorted(m for m in ('typer', 'rich', 'psutil', 'pyudev') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"


def test_damaged_hook_state_stops_the_restore_before_any_hook_runs(tmp_path, monkeypatch):
    """The hooks run beside the images' verification, but only on state that matched the manifest."""
    seen = []
    net = PyHook("net", points=("save", "restore"), save={"state": {"mtu": 1400}},
                 restore=lambda r: seen.append(r["state"]) or {})
    snap = packed_snapshot(tmp_path, [net])
    saved = snap / "hooks" / "saved.json"
    saved.write_text(saved.read_text().replace("1400", "1500"))     # same size, another checksum
    with pytest.raises(RestoreError, match="failed verification: hooks/saved.json: crc32s mismatch"):
        restore.run(new_kernel(tmp_path, monkeypatch, [net]))
    assert seen == [] and not (snap / trees.VERIFIED).exists()


def test_what_the_full_verification_finds_after_the_hooks_ran_keeps_their_results(tmp_path, monkeypatch):
    net = PyHook("net", points=("save", "restore"), restore={"applied": 1})
    snap = packed_snapshot(tmp_path, [net])
    (snap / "images").mkdir()
    (snap / "images" / "stray.img").write_text("not packed")      # unlisted, and no tree's
    with pytest.raises(RestoreError, match="images/stray.img: not in the manifest") as e:
        restore.run(new_kernel(tmp_path, monkeypatch, [net]))
    assert [(r["hook"], r["point"], r["ok"]) for r in e.value.details["hooks"]] == [("net", "restore", True)]
    assert (snap / manifest.NAME).exists() and not (snap / trees.VERIFIED).exists()
