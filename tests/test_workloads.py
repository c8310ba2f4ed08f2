import os
import subprocess
import sys

import psutil

from kupgrade import workloads


def test_tree_roots():
    parents = {10: 1, 11: 10, 12: 11, 20: 1, 21: 20}
    assert workloads.tree_roots([10, 11, 12], parents.get) == [10]
    assert workloads.tree_roots([10, 11, 20, 21], parents.get) == [10, 20]


def test_resolve_a_real_tree():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], stdin=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        ws, blockers = workloads.resolve((child.pid,), ())
        assert [w.root_pid for w in ws] == [child.pid]
        assert ws[0].pids == (child.pid,)
        assert blockers == []
        assert workloads.anon_bytes(child.pid) > 0
    finally:
        child.kill()
        child.wait()


def test_missing_pid_is_a_blocker():
    pid = max(psutil.pids()) + 100000
    ws, blockers = workloads.resolve((pid,), ())
    assert ws == [] and "does not exist" in blockers[0].message and blockers[0].hint


def test_own_process_is_a_blocker():
    _, blockers = workloads.resolve((os.getpid(),), ())
    assert any("kupgrade itself" in b.message for b in blockers)


def test_missing_cgroup_is_a_blocker(tmp_path, monkeypatch):
    monkeypatch.setattr(workloads, "CGROUP_ROOT", tmp_path)
    _, blockers = workloads.resolve((), ("/nope",))
    assert "does not exist" in blockers[0].message
