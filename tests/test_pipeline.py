"""The stage loop and its gate: continue / skip / abort, and what a rehearsal rolls back."""

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from kupgrade import pipeline
from kupgrade.config import Config
from kupgrade.context import Context
from kupgrade.errors import KupgradeError
from kupgrade.output.record import OK, SKIPPED, UpgradeRecord, Workload
from kupgrade.system import procfs


class FakeUi:
    def __init__(self, answers):
        self.answers = list(answers)
        self.asked, self.ended = [], []

    def stage_start(self, name):
        pass

    def stage_end(self, res):
        self.ended.append((res.name, res.status))

    def ask_stage(self, name, actions, skippable):
        self.asked.append((name, bool(skippable)))
        return self.answers.pop(0)


def stage(name, skippable="", ran=None):
    def run(ctx):
        ran.append(name)
        return f"{name} done", {}
    return SimpleNamespace(NAME=name, SKIPPABLE=skippable, plan=lambda ctx: [f"do {name}"], run=run)


def ctx(tmp_path):
    return Context(Config(state_dir=str(tmp_path)), UpgradeRecord("X", "run", "6.1"))


def test_step_continue_and_skip(tmp_path):
    ran = []
    stages = (stage("a", ran=ran), stage("b", skippable="why", ran=ran), stage("c", ran=ran))
    ui = FakeUi([pipeline.CONTINUE, pipeline.SKIP, pipeline.CONTINUE])
    c = ctx(tmp_path)
    pipeline._stages(stages, c, ui, pipeline.Gate(ui, step=True))
    assert ran == ["a", "c"]
    assert ui.asked == [("a", False), ("b", True), ("c", False)]
    assert [(s.name, s.status) for s in c.record.stages] == [("a", OK), ("b", SKIPPED), ("c", OK)]
    assert c.record.stage("b").summary == "skipped by the admin"


def test_skip_is_ignored_for_a_stage_that_cannot_be_skipped(tmp_path):
    ran = []
    ui = FakeUi([pipeline.SKIP])
    pipeline._stages((stage("a", ran=ran),), ctx(tmp_path), ui, pipeline.Gate(ui, step=True))
    assert ran == ["a"]


def test_abort_raises_before_the_stage_runs(tmp_path):
    ran = []
    ui = FakeUi([pipeline.CONTINUE, pipeline.ABORT])
    with pytest.raises(KupgradeError, match="aborted by the admin before the b stage"):
        pipeline._stages((stage("a", ran=ran), stage("b", ran=ran)), ctx(tmp_path), ui, pipeline.Gate(ui, step=True))
    assert ran == ["a"]


def test_without_step_nobody_is_asked(tmp_path):
    ran = []
    ui = FakeUi([])
    pipeline._stages((stage("a", ran=ran),), ctx(tmp_path), ui, pipeline.Gate(ui))
    assert ran == ["a"] and ui.asked == []
    assert pipeline.Gate(ui, yes=True).go(None, "?") is True


def test_rehearsal_failure_after_the_handover_is_not_rolled_back(tmp_path, monkeypatch):
    """Once the original tasks are ended, resuming them is impossible: no rollback, the snapshot stays."""
    calls = []
    monkeypatch.setattr(pipeline, "rollback", lambda *a: calls.append("rollback"))
    monkeypatch.setattr(pipeline.snapshot, "unmount", lambda c: calls.append("unmount") or [])

    def stages(stages_, c, ui, gate):
        if stages_ is pipeline.UPGRADE:
            return
        c.replaced = True
        raise KupgradeError("restore failed", "")
    monkeypatch.setattr(pipeline, "_stages", stages)
    c = ctx(tmp_path)
    ui = FakeUi([])
    with pytest.raises(KupgradeError):
        pipeline.rehearse(c, ui, pipeline.Gate(ui, yes=True))
    assert calls == ["unmount"]
    assert c.record.outcome == "rehearsal-failed"


def test_rehearsal_failure_before_the_handover_rolls_back(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pipeline, "rollback", lambda *a: calls.append("rollback"))

    def stages(stages_, c, ui, gate):
        raise KupgradeError("dump failed", "")
    monkeypatch.setattr(pipeline, "_stages", stages)
    ui = FakeUi([])
    with pytest.raises(KupgradeError):
        pipeline.rehearse(ctx(tmp_path), ui, pipeline.Gate(ui, yes=True))
    assert calls == ["rollback"]


def test_rollback_leaves_the_tasks_stopped_before_kupgrade_stopped(tmp_path, monkeypatch):
    """criu leaves every task stopped; the rollback continues those kupgrade stopped, not the
    one that job control had stopped before."""
    monkeypatch.setattr(pipeline.tcp, "unlock", lambda *a: [])
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.DEVNULL)
             for _ in range(2)]
    try:
        ours, theirs = (p.pid for p in procs)
        for pid in (ours, theirs):
            os.kill(pid, signal.SIGSTOP)
        for pid in (ours, theirs):
            wait_state(pid, "T")
        c = ctx(tmp_path)
        c.stopped.append(Workload(f"pid:{ours}", ours, (ours, theirs), stopped_before=(theirs,)))
        assert pipeline._resume_stopped(c) == [f"resumed pid:{ours} (1 task(s); left stopped as found: [{theirs}])"]
        wait_state(ours, "S")
        assert procfs.stat(theirs).state == "T"
    finally:
        for p in procs:
            p.kill()
            p.wait()


def wait_state(pid, want):
    for _ in range(500):
        if procfs.stat(pid).state == want:
            return
        time.sleep(0.01)
    raise AssertionError(f"PID {pid} never reached state {want}")
def test_an_os_error_in_a_stage_is_a_recorded_stage_failure_and_rolled_back(tmp_path, monkeypatch, capsys):
    import errno
    import json

    from kupgrade.cli import main
    from kupgrade.output import logfile

    def full(ctx):
        raise OSError(errno.ENOSPC, "No space left on device", "/run/kupgrade-snapshot/images/tree-1/pages-1.img")
    ran = []
    monkeypatch.setattr(pipeline, "UPGRADE", (stage("a", ran=ran), SimpleNamespace(NAME="b", run=full)))
    monkeypatch.setattr(logfile, "LOG_DIR", tmp_path / "log")
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'[paths]\nstate = "{tmp_path}"\n')
    assert main(["run", "--yes", "--config", str(cfg), "--pid", "4242", "--kernel", "x"]) == 5
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "kupgrade: b: No space left on device: /run/kupgrade-snapshot/images/tree-1/pages-1.img"
    assert err[1].startswith("hint: check that file system") and len(err) == 2
    rec = json.loads((tmp_path / "records" / ((tmp_path / "records" / "last").read_text().strip() + ".json"))
                     .read_text())
    assert [(s["name"], s["status"]) for s in rec["stages"]] == [("a", OK), ("b", "failed"), ("rollback", OK)]
    assert rec["stages"][1]["error"] == err[0].removeprefix("kupgrade: ") and rec["outcome"] == "aborted"
    assert ran == ["a"]


def test_os_problem_text():
    from kupgrade.steps import os_problem
    assert os_problem(OSError(5, "Input/output error")) == "Input/output error"
    assert os_problem(OSError(18, "Invalid cross-device link", "/a", None, "/b")) == "Invalid cross-device link: /a -> /b"
    assert os_problem(OSError("weird")) == "weird"
