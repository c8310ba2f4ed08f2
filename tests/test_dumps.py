"""The snapshot stage's dumps: every tree at once (up to PARALLEL), a failed one named with
criu's first error while the others are dumped and left stopped (criu faked)."""

import threading

from kupgrade.config import Config
from kupgrade.context import Context
from kupgrade.errors import CommandError
from kupgrade.output.record import UpgradeRecord, Workload
from kupgrade.stages import snapshot


def test_trees_are_dumped_together_and_a_failure_is_theirs_alone(tmp_path, monkeypatch):
    a, b = Workload("pid:5", 5, (5,)), Workload("pid:7", 7, (7,))
    ctx = Context(Config(snapshot_dir=str(tmp_path), state_dir=str(tmp_path / "state")), UpgradeRecord("U1", "run", "6.1", workloads=(a, b)))
    ctx.workloads = [a, b]
    both = threading.Barrier(2, timeout=5)      # each criu waits for the other: they run at once

    def criu(argv, **kw):
        assert kw["new_session"]
        both.wait()
        images = argv[argv.index("--images-dir") + 1]
        if images.endswith("tree-7"):
            open(images + "/dump.log", "w").write("(00.2) Error (criu/files.c:1): cannot dump a thing\n")
            raise CommandError(argv, 1, "")
    monkeypatch.setattr(snapshot, "run_cmd", criu)
    monkeypatch.setattr(snapshot.workloads, "retree", lambda w: w)
    todo = [(w, *snapshot._markers(w, tmp_path / "images" / w.key)) for w in (a, b)]
    failed = snapshot._dump_all(ctx, todo)
    assert list(failed) == ["tree-7"] and "cannot dump a thing" in failed["tree-7"].message
    assert ctx.stopped == [a] and ctx.dumping == []


def test_a_tree_whose_segment_clashes_is_thawed_until_it_ends(monkeypatch):
    """carry.shm_clashes: criu would fail on it. The frozen tree runs until its segment is gone,
    and is frozen again before the dump; one that lasts is named, the tree frozen as it was."""
    w = Workload("unit:pg.service", 5, (5,), cgroup="/system.slice/pg.service")
    calls, reads, now = [], [], [0.0]
    monkeypatch.setattr(snapshot.freeze, "set_frozen", lambda cg, frozen: calls.append((cg, frozen)))
    monkeypatch.setattr(snapshot.workloads, "retree", lambda w: w)

    def clashes(w):
        reads.append(now[0])
        return ["shmid 4 clashes"] if len(reads) < lasting else []

    def wait(w, timeout):
        calls.append(("wait", timeout))
        now[0] += min(timeout, 1.0)
        return clashes(w)
    monkeypatch.setattr(snapshot.carry, "shm_clashes", clashes)
    monkeypatch.setattr(snapshot.carry, "wait_unclashed", wait)
    lasting = 3                                 # the first look and the wait see it; after the freeze: gone
    assert snapshot.unclash(w, clock=lambda: now[0]) == ([], 1.0)
    assert calls == [(w.cgroup, False), ("wait", 5.0), (w.cgroup, True)]
    calls.clear(), reads.clear()
    now[0], lasting = 0.0, 99
    assert snapshot.unclash(w, clock=lambda: now[0]) == (["shmid 4 clashes"], 5.0)
    assert calls[-1] == (w.cgroup, True) and [c for c in calls if c[0] == "wait"][0] == ("wait", 5.0)
    assert now[0] == 5.0
    calls.clear(), reads.clear()
    lasting = 1
    assert snapshot.unclash(w) == ([], 0.0) and calls == []      # no clash: the tree stays frozen, untouched


def test_a_lasting_clash_fails_that_tree_without_running_criu(tmp_path, monkeypatch):
    a = Workload("unit:pg.service", 5, (5,), cgroup="/system.slice/pg.service")
    ctx = Context(Config(snapshot_dir=str(tmp_path), state_dir=str(tmp_path / "state")), UpgradeRecord("U1", "run", "6.1", workloads=(a,)))
    ctx.workloads = [a]
    monkeypatch.setattr(snapshot, "unclash", lambda w: (["SysV segment shmid 4 ... fails"], 5.0))
    monkeypatch.setattr(snapshot, "run_cmd", lambda argv, **kw: (_ for _ in ()).throw(AssertionError("criu ran")))
    failed = snapshot._dump_all(ctx, [(a, *snapshot._markers(a, tmp_path / "images" / a.key))])
    assert failed["tree-5"].message == ("unit:pg.service was not dumped: SysV segment shmid 4 ... fails (for 5 s, "
                                        "the tree running meanwhile)")
    assert "restart the workload" in failed["tree-5"].hint and ctx.stopped == []
    assert ctx.clash_waits == {"tree-5": 5.0}
