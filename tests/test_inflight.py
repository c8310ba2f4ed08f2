"""A run in progress: one at a time, its journal, signals and `kupgrade recover`, real
processes where it matters (a stopped child is resumed by the recovery)."""

import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from kupgrade import inflight, journal, pipeline
from kupgrade.config import Config
from kupgrade.context import Context
from kupgrade.errors import BlockedError
from kupgrade.output.record import UpgradeRecord, Workload
from kupgrade.output.ui import Ui
from kupgrade.system import oom


class QuietUi:
    def stage_start(self, name):
        pass

    def stage_end(self, res):
        self.last = res


def test_one_run_at_a_time(tmp_path):
    lock, jr = tmp_path / "lock", tmp_path / "journal.json"
    held = inflight.acquire(lock, jr)
    with pytest.raises(BlockedError, match=f"another kupgrade run is in progress \\(PID {os.getpid()} holds"):
        inflight.acquire(lock, jr)
    held.release()
    inflight.acquire(lock, jr).release()


def test_an_interrupted_run_blocks_until_recovered(tmp_path):
    lock, jr = tmp_path / "lock", tmp_path / "journal.json"
    inflight.write({"pid": 4242, "record": {"id": "R1"}, "frozen_cgroups": ["/w"], "kexec_loaded": True}, jr)
    with pytest.raises(BlockedError) as e:
        inflight.acquire(lock, jr)
    assert "run R1 (PID 4242) was interrupted" in e.value.blockers[0].message
    assert "cgroup /w frozen" in e.value.blockers[0].message and "kexec kernel loaded" in e.value.blockers[0].message
    assert "kupgrade recover" in e.value.blockers[0].hint
    assert [b.message for b in inflight.blockers(lock, jr)] == [e.value.blockers[0].message]
    inflight.acquire(lock, journal=None).release()      # recover takes the lock anyway
    assert os.stat(jr).st_mode & 0o077 == 0


def test_journal_round_trip(tmp_path):
    c = Context(Config(state_dir=str(tmp_path), snapshot_dir=str(tmp_path / "snap")),
                UpgradeRecord("R2", "run", "6.1"), frozen_cgroups=["/w"], snapshot_mounted=True,
                stopped=[Workload("pid:10", 10, (10, 11))], oom={10: 200}, journal=tmp_path / "j.json",
                locks={"tree-10": ["CRIU-0aeaf308-ac4c-4f72-a9", "CRIU-10"]})
    c.note()
    back = journal.context(json.loads((tmp_path / "j.json").read_text()))
    assert back.record.id == "R2" and back.frozen_cgroups == ["/w"] and back.snapshot_mounted
    assert back.stopped == c.stopped and back.oom == {10: 200} and back.snapshot_dir == c.snapshot_dir
    # `kupgrade recover` after the packing freed criu 4's log: the lock's name is only here
    assert back.locks == c.locks


def _stopped_child():
    p = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.05)"])
    os.kill(p.pid, signal.SIGSTOP)
    os.waitid(os.P_PID, p.pid, os.WSTOPPED)
    return p


def _state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_recover_resumes_what_a_killed_run_left_stopped(tmp_path, monkeypatch):
    """A run killed after the dump (as by SIGKILL): recover SIGCONTs the tree, puts the OOM
    score back, records the rollback, and removes the journal."""
    p = _stopped_child()
    try:
        before = open(f"/proc/{p.pid}/oom_score_adj").read().strip()
        c = Context(Config(state_dir=str(tmp_path)), UpgradeRecord("R3", "run", "6.1"),
                    stopped=[Workload(f"pid:{p.pid}", p.pid, (p.pid,))], journal=tmp_path / "j.json")
        c.oom.update(oom.protect([p.pid]))      # where this sandbox allows it
        c.note()
        monkeypatch.setattr(inflight, "JOURNAL", tmp_path / "j.json")
        out = pipeline.recover(json.loads((tmp_path / "j.json").read_text()), QuietUi())
        assert _state(p.pid) != "T"
        assert open(f"/proc/{p.pid}/oom_score_adj").read().strip() == before
        assert out.record.outcome == "aborted" and "resumed pid:" in out.record.stage("rollback").summary
        assert "was interrupted; recovered by `kupgrade recover`" in out.record.stage("rollback").details.cause
        assert not (tmp_path / "j.json").exists()
        assert json.loads((tmp_path / "records" / "R3.json").read_text())["outcome"] == "aborted"
    finally:
        p.kill()
        p.wait()


def test_a_signal_rolls_back_like_a_failure(tmp_path, monkeypatch):
    """SIGTERM while a stage runs: Interrupted, the rollback resumes the stopped tree."""

    p = _stopped_child()
    old = {s: signal.getsignal(s) for s in inflight.SIGNALS}
    try:
        c = Context(Config(state_dir=str(tmp_path)), UpgradeRecord("R4", "run", "6.1"),
                    stopped=[Workload(f"pid:{p.pid}", p.pid, (p.pid,))])

        def killed(ctx):
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("the signal did not interrupt the stage")
        stage = SimpleNamespace(NAME="freeze", plan=lambda ctx: [], run=killed)
        monkeypatch.setattr(pipeline, "UPGRADE", (stage,))
        inflight.catch_signals()
        with pytest.raises(inflight.Interrupted, match="interrupted by SIGTERM"):
            pipeline.upgrade(c, QuietUi(), pipeline.Gate(None, yes=True))
        assert _state(p.pid) != "T"
        assert c.record.outcome == "aborted" and c.record.stage("rollback").details.cause == "interrupted by SIGTERM"
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN     # held while undoing
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        p.kill()
        p.wait()


def test_unanswered_question_is_the_safe_answer(monkeypatch):
    r, w = os.pipe()
    monkeypatch.setattr(sys, "stdin", os.fdopen(r))
    ui = Ui(width=100)
    ui.timeout = 0.05
    assert ui.answer("Switch now? [y/n] (n):", ["y", "n"], "n", "n") == "n"
    os.write(w, b"maybe\ny\n")
    assert ui.answer("Switch now? [y/n] (n):", ["y", "n"], "n", "n") == "y"
    os.close(w)
    assert ui.answer("Switch now? [y/n] (n):", ["y", "n"], "n", "n") == "n"      # EOF: the terminal is gone


def test_oom_protect_and_restore(tmp_path):
    proc = tmp_path / "proc"
    (proc / "7").mkdir(parents=True)
    (proc / "7" / "oom_score_adj").write_text("100\n")
    saved = oom.protect([7, 8], proc)
    assert saved == {7: 100} and (proc / "7" / "oom_score_adj").read_text() == "-1000\n"
    assert oom.restore(saved, proc) == ["put back the OOM scores of 1 task(s)"]
    assert (proc / "7" / "oom_score_adj").read_text() == "100\n" and saved == {}


def test_memory_counts_every_copy_of_the_load():
    from kupgrade.stages.preflight import MARGIN, memory_needed
    mib = 1 << 20
    assert memory_needed(500 * mib, 20 * mib) == 3 * 520 * mib + MARGIN       # either load method
    assert memory_needed(0, 20 * mib) == 3 * 20 * mib + MARGIN


def test_a_peak_that_fits_only_by_reclaiming_the_page_cache_is_said(tmp_path):
    from kupgrade.stages.preflight import _mem_available, reclaim_note
    mib = 1 << 20
    # faults' big workload (256 MiB) in the 2 GiB guest: the load evicted the page cache for 112 s
    note = reclaim_note(1310 * mib, 1510 * mib, 400 * mib)
    assert "above free memory (400 MiB)" in note and "reclaims ~910 MiB of page cache" in note
    assert "--reserve" in note
    assert reclaim_note(300 * mib, 1510 * mib, 400 * mib) is None        # fits in free memory
    assert reclaim_note(1600 * mib, 1510 * mib, 400 * mib) is None       # does not fit: a blocker says it
    (tmp_path / "meminfo").write_text("MemTotal: 2000 kB\nMemFree: 300 kB\nMemAvailable: 1500 kB\n")
    assert _mem_available(tmp_path / "meminfo") == 1500 * 1024
    assert _mem_available(tmp_path / "meminfo", "MemFree") == 300 * 1024


def test_classic_load_under_lockdown_is_a_blocker(tmp_path):
    from kupgrade.stages.preflight import _method
    method, blockers = _method("classic", "integrity", 1 << 20, 1 << 20, 1 << 40)
    assert method.name == "classic" and "locked down (integrity)" in blockers[0].message
    method, blockers = _method("auto", "integrity", 1, 1, 1 << 40)
    assert method.name == "file" and blockers == []


def test_a_signal_while_criu_works_is_answered_after_it(monkeypatch):
    import os as _os
    import signal as _signal
    old = {s: _signal.getsignal(s) for s in inflight.SIGNALS}
    try:
        inflight.catch_signals()
        reached = []
        with pytest.raises(inflight.Interrupted):
            with inflight.deferred():
                _os.kill(_os.getpid(), _signal.SIGTERM)
                reached.append("criu finished its tree")
        assert reached == ["criu finished its tree"]
        assert _signal.getsignal(_signal.SIGTERM) is inflight._raise
    finally:
        for s, h in old.items():
            _signal.signal(s, h)


def test_recover_runs_the_interrupted_runs_own_criu_and_kexec(tmp_path, monkeypatch):
    """paths.criu/paths.kexec of the run that was killed (its journal), not those of the config
    `kupgrade recover` finds now: its kexec unloads, its criu is the one waited for."""
    from kupgrade.system import run as run_mod
    c = Context(Config(state_dir=str(tmp_path), criu="/opt/criu/sbin/criu", kexec="/opt/kexec/sbin/kexec"),
                UpgradeRecord("R5", "run", "6.1"), journal=tmp_path / "j.json")
    c.note()
    monkeypatch.setattr(inflight, "JOURNAL", tmp_path / "j.json")
    run_mod.use_programs({"criu": "/usr/local/bin/criu"})      # what the default config said
    try:
        pipeline.recover(json.loads((tmp_path / "j.json").read_text()), QuietUi())
        assert run_mod.program("criu") == "/opt/criu/sbin/criu"
        assert run_mod.program("kexec") == "/opt/kexec/sbin/kexec"
    finally:
        run_mod.use_programs({})


def test_wait_gone_looks_for_the_configured_criu(tmp_path, monkeypatch):
    import psutil

    from kupgrade.system import criu
    from kupgrade.system import run as run_mod
    procs = [SimpleNamespace(pid=1, info={"name": "criu", "cmdline": ["criu", "dump", str(tmp_path)]}),
             SimpleNamespace(pid=2, info={"name": "criu-4", "cmdline": ["/opt/criu-4", "dump", str(tmp_path)]})]
    waited = []
    monkeypatch.setattr(psutil, "process_iter", lambda attrs: iter(procs))
    monkeypatch.setattr(psutil, "wait_procs", lambda ps, timeout: waited.append(list(ps)) or ([], []))
    run_mod.use_programs({"criu": "/opt/criu-4"})
    try:
        criu.wait_gone(tmp_path, 1)
    finally:
        run_mod.use_programs({})
    assert waited[0] == [procs[1]]      # the configured one, not another criu on the same images
