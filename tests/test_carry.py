"""What a snapshot does not carry, against fake /proc trees (test_workloads.py has real processes)."""

import pytest
from procfake import HOST, OWN, fake_proc, task

from kupgrade.output.record import Workload
from kupgrade.userspace import carry


def blockers(proc, root, pids, sempids=lambda semid, n: set()):
    return [b.message for b in carry.blockers(Workload(f"pid:{root}", root, tuple(pids)), proc, sempids)]


def test_a_plain_tree_carries_everything(tmp_path):
    proc = fake_proc(tmp_path)
    task(proc, 10)
    task(proc, 11, ppid=10, pgrp=10, session=10)
    task(proc, 12, ppid=11, pgrp=12, session=10)           # its own group, inside the tree
    task(proc, 20, pgrp=20, session=20, comm="other")     # another session: not ours
    assert blockers(proc, 10, [10, 11, 12]) == []


def test_sysv_columns_are_found_by_name(tmp_path):
    table = tmp_path / "shm"
    table.write_text("  shmid   key cpid\n    7  -1  33\n")
    assert carry.sysv_table(table) == [{"shmid": "7", "key": "-1", "cpid": "33"}]
    assert carry.sysv_table(tmp_path / "absent") == []


def test_sysv_objects_in_the_host_namespace(tmp_path):
    proc = fake_proc(tmp_path)
    (proc / "sysvipc" / "shm").write_text("  size shmid key cpid lpid nattch perms\n"     # another column order
                                          "4096 65538 0 999 999 1 600\n"
                                          "8192 5 4660 11 999 0 600\n"
                                          "8192 6 4660 999 12 0 600\n")      # 12 detached last, as it exited
    (proc / "sysvipc" / "msg").write_text("key msqid perms cbytes qnum lspid lrpid\n305419896 3 600 10 2 10 999\n")
    (proc / "sysvipc" / "sem").write_text("key semid perms nsems\n0 9 600 2\n")
    task(proc, 10, maps="7f00-7f01 rw-s 00000000 00:01 65538 /SYSV00000000 (deleted)\n")
    task(proc, 11, ppid=10, session=10, pgrp=10)
    task(proc, 12, ppid=10, session=10, pgrp=10, state="Z")    # a zombie uses nothing
    found = blockers(proc, 10, [10, 11, 12], sempids=lambda semid, n: {11} if (semid, n) == (9, 2) else set())
    assert found == [
        "PID 10 (w) uses SysV shared memory segment shmid 65538 (key 0x00000000, 4096 bytes; attached) in the "
        "host IPC namespace: it is not in the snapshot and would not exist after the switch",
        "PID 10 (w) uses SysV message queue msqid 3 (key 0x12345678, 2 message(s) queued; last sent to by it) "
        "in the host IPC namespace: it is not in the snapshot and would not exist after the switch",
        "PID 11 (w) uses SysV shared memory segment shmid 5 (key 0x00001234, 8192 bytes; created by it) in the "
        "host IPC namespace: it is not in the snapshot and would not exist after the switch",
        "PID 11 (w) uses SysV semaphore set semid 9 (key 0x00000000; last operated on by it) in the host IPC "
        "namespace: it is not in the snapshot and would not exist after the switch"]


def test_sysv_objects_of_the_trees_own_namespace_are_carried(tmp_path):
    proc = fake_proc(tmp_path)
    (proc / "sysvipc" / "shm").write_text("key shmid size cpid lpid\n0 5 10 10 10\n")  # as kupgrade sees it
    task(proc, 10, ipc=OWN, maps="7f00-7f01 rw-s 00000000 00:01 5 /SYSV00000000 (deleted)\n")
    task(proc, 11, ppid=10, session=10, pgrp=10, ipc=OWN)
    assert blockers(proc, 10, [10, 11]) == []
    task(proc, 12, ppid=10, session=10, pgrp=10, ipc=HOST)
    assert blockers(proc, 10, [10, 11, 12]) == [
        f"PID 12 (w) is in another IPC namespace ({HOST}) than the root of pid:10 ({OWN}): criu cannot dump "
        "nested IPC namespaces"]


def test_a_root_that_does_not_lead_its_session(tmp_path):
    proc = fake_proc(tmp_path)
    task(proc, 5, session=5, comm="bash")
    task(proc, 10, ppid=5, session=5)
    task(proc, 11, ppid=10, pgrp=10, session=5)
    found = blockers(proc, 10, [10, 11])
    assert len(found) == 1      # not one more for bash and every other process of its session
    assert found[0].startswith("PID 10 (w), the root of pid:10, does not lead its session: it is in session 5, "
                               "led by PID 5 (bash)")
    (proc / "5" / "comm").unlink()
    assert "led by PID 5 (gone)" in blockers(proc, 10, [10, 11])[0]


def test_an_exited_session_leader(tmp_path):
    """criu stands in for it above a child of the root only (zdtm static/session01)."""
    proc = fake_proc(tmp_path)
    task(proc, 10)
    task(proc, 12, ppid=10, session=11, pgrp=11)      # 11 did setsid, forked 12 and exited
    task(proc, 13, ppid=12, session=11, pgrp=11)
    assert blockers(proc, 10, [10, 12, 13]) == []
    proc = fake_proc(tmp_path / "deeper")
    task(proc, 10)
    task(proc, 20, ppid=10, session=10, pgrp=10)
    task(proc, 21, ppid=20, session=11, pgrp=11)      # reparented to a subreaper below the root
    assert blockers(proc, 10, [10, 20, 21]) == [
        "PID 21 (w) is in session 11, whose leader PID 11 has exited, below PID 20 rather than a child of the "
        "root: criu would find no leader for that session at restore"]


def test_a_session_leader_outside_the_pid_namespace(tmp_path):
    proc = fake_proc(tmp_path)
    task(proc, 10, session=0)
    assert blockers(proc, 10, [10])[0].startswith(
        "PID 10 (w), the root of pid:10, does not lead its session: it is in a session whose leader is outside")
    proc = fake_proc(tmp_path / "child")
    task(proc, 10)
    task(proc, 11, ppid=10, session=0)
    assert blockers(proc, 10, [10, 11])[0].startswith("PID 11 (w) belongs to a session whose leader is outside")


def test_processes_of_the_session_outside_the_tree(tmp_path):
    proc = fake_proc(tmp_path)
    task(proc, 10)
    task(proc, 11, ppid=10, session=10, pgrp=30)
    task(proc, 30, ppid=1, session=10, pgrp=30, comm="orphan")    # its parent in the tree exited
    task(proc, 31, ppid=1, session=10, pgrp=10, state="Z")        # a zombie carries nothing
    assert blockers(proc, 10, [10, 11]) == [
        "PID 30 (orphan) is not in the tree of pid:10 but shares session 10 with its PID(s) [10, 11]; it leads "
        "process group 30 of PID(s) [11]: it would not be carried"]


def test_kupgrade_stepping_out_of_the_session_is_not_left_behind(tmp_path):
    proc = fake_proc(tmp_path)
    task(proc, 10)                                              # sshd's session process
    task(proc, 11, ppid=10, session=11, pgrp=11, comm="bash")   # the admin's shell
    task(proc, 12, ppid=11, session=11, pgrp=11, comm="kupgrade")   # trimmed from the tree: it steps out
    w = Workload("unit:ssh.service", 10, (10, 11))
    assert [b.message for b in carry.blockers(w, proc, lambda semid, n: set())] == [
        "PID 12 (kupgrade) is not in the tree of unit:ssh.service but shares session 11 with its PID(s) [11]: it "
        "would not be carried"]
    assert carry.blockers(w, proc, lambda semid, n: set(), leaving=frozenset({12})) == []


def test_posix_lock_held_outside_the_tree(tmp_path):
    proc = fake_proc(tmp_path)
    dev = "fe:00:1477826"
    (proc / "locks").write_text(f"1: POSIX  ADVISORY  WRITE 40 {dev} 0 EOF\n"
                                f"1: -> POSIX  ADVISORY  WRITE 41 {dev} 0 EOF\n"    # a waiter holds nothing
                                f"2: POSIX  ADVISORY  READ 10 {dev} 0 EOF\n"        # the tree's own: carried
                                f"3: FLOCK  ADVISORY  WRITE 42 {dev} 0 EOF\n"       # may be the tree's file description
                                f"4: OFDLCK ADVISORY  READ -1 {dev} 0 EOF\n"
                                "5: POSIX  ADVISORY  WRITE 40 fe:01:1477826 0 EOF\n")  # same inode, other device
    task(proc, 10, fds=[("/srv/other", 1477825), ("/srv/db.sqlite", 1477826)])
    task(proc, 40, session=40, comm="sqlite3")
    assert blockers(proc, 10, [10]) == [
        "PID 40 (sqlite3), outside the tree, holds a POSIX lock on /srv/db.sqlite, which PID 10 (w) has open: "
        "neither that process nor its lock is carried"]
    (proc / "10" / "fdinfo" / "1").unlink()
    assert blockers(proc, 10, [10]) == []


def test_one_sysv_object_used_by_many_tasks_is_one_blocker(tmp_path):
    """PostgreSQL as Debian installs it: the postmaster created its interlock segment, every
    backend has it attached (measured: 6 processes, 2 segments, 12 lines before)."""
    proc = fake_proc(tmp_path)
    (proc / "sysvipc" / "shm").write_text("key shmid size cpid lpid\n29693 0 56 10 12\n")
    maps = "7f00-7f01 rw-s 00000000 00:01 0 /SYSV000073fd (deleted)\n"
    task(proc, 10, maps=maps)
    task(proc, 11, ppid=10, session=10, pgrp=10, maps=maps)
    task(proc, 12, ppid=10, session=10, pgrp=10, maps=maps)
    assert blockers(proc, 10, [10, 11, 12]) == [
        "PID 10 (w) uses SysV shared memory segment shmid 0 (key 0x000073fd, 56 bytes; attached, created by it), "
        "and PID 11 of its tree too (attached); PID 12 of its tree too (attached, last attached or detached by it) "
        "in the host IPC namespace: it is not in the snapshot and would not exist after the switch"]


# --- SysV segments numbered like the shared memory next to them (shm_clashes) ------------------

REGION = "7f17-7f2f rw-s 00000000 00:01 4 /dev/zero (deleted)\n"         # PostgreSQL's main shared memory
PG_MAPS = ("7f10-7f17 rw-s 00000000 00:01 1 /SYSV1d0ba398 (deleted)\n" + REGION
           + "7f30-7f31 rw-s 00000000 00:01 0 /SYSV00008897 (deleted)\n")


@pytest.fixture(autouse=True)
def no_nsenter(monkeypatch):
    """The SysV segments of a fake tree's IPC namespace: none (ns_shm would run nsenter)."""
    monkeypatch.setattr(carry, "ns_shm", lambda pid: [])


def pg_tree(tmp_path, backend_maps=PG_MAPS):
    """PostgreSQL 15 as measured (dynamic_shared_memory_type = sysv): its main shared memory
    numbered 4 between its SysV segments 1 and 0; a backend with what it attached."""
    proc = fake_proc(tmp_path)
    task(proc, 10, ipc=OWN, maps=PG_MAPS)
    task(proc, 11, ppid=10, session=10, pgrp=10, ipc=OWN, maps=backend_maps)
    return proc, Workload("unit:postgresql@15-main.service", 10, (10, 11), cgroup="/system.slice/pg")


def test_a_segment_numbered_like_the_shared_memory_next_to_it_clashes(tmp_path):
    proc, w = pg_tree(tmp_path)
    assert carry.shm_clashes(w, proc) == []
    below = "7f0f-7f10 rw-s 00000000 00:01 4 /SYSV16c2430a (deleted)\n"     # dynamic segment 4, then the region
    proc, w = pg_tree(tmp_path / "b", "7f0e-7f0f rw-s 00000000 00:01 4 /SYSV16c2430a (deleted)\n" + REGION)
    assert carry.shm_clashes(w, proc) == [
        "PID 11 (w) has SysV segment shmid 4 attached at 7f0e-7f0f next to /dev/zero at 7f17-7f2f, which has the same "
        "number: criu's dump would take them for one"]
    proc, w = pg_tree(tmp_path / "c", REGION + below)                         # the other order
    assert len(carry.shm_clashes(w, proc)) == 1
    apart = "7f0e-7f0f rw-s 00000000 00:01 4 /SYSV16c2430a (deleted)\n7f0f-7f10 rw-p 00000000 00:00 0 \n" + REGION
    proc, w = pg_tree(tmp_path / "d", apart)                                  # told apart: not next to each other
    assert carry.shm_clashes(w, proc) == []
    proc = fake_proc(tmp_path / "e")                                          # the host's IPC namespace: sysv's
    task(proc, 10, maps="7f0e-7f0f rw-s 00000000 00:01 4 /SYSV16c2430a (deleted)\n" + REGION)
    assert carry.shm_clashes(Workload("pid:10", 10, (10,)), proc) == []


def test_a_clash_that_ends_is_waited_out_and_one_that_lasts_is_a_blocker(tmp_path, monkeypatch):
    clash = "7f0e-7f0f rw-s 00000000 00:01 4 /SYSV16c2430a (deleted)\n" + REGION
    proc, w = pg_tree(tmp_path, clash)
    now = [0.0]

    def pause(s):
        now[0] += s
        if now[0] > 0.1:        # the backend detaches its segment
            (proc / "11" / "maps").write_text(REGION)
    assert carry.wait_unclashed(w, 5.0, proc, clock=lambda: now[0], pause=pause) == [] and now[0] < 1
    proc, w = pg_tree(tmp_path / "b", clash)
    monkeypatch.setattr(carry, "CLASH_WAIT_S", 0.0)
    found = carry.blockers(w, proc, lambda semid, n: set())
    assert [b.message for b in found] == [
        "PID 11 (w) has SysV segment shmid 4 attached at 7f0e-7f0f next to /dev/zero at 7f17-7f2f, which has the same "
        "number: criu's dump would take them for one (for 0 s)"]
    assert "restart the workload" in found[0].hint


def test_a_segment_that_only_exists_with_the_number_of_the_shared_memory_clashes(tmp_path):
    """Measured (CI run of 2026-12-06): the segment detached but not yet removed, the tree's
    shared memory numbered like it: criu's dump went through and the memory came back with the
    segment's content. Listed from the tree's IPC namespace (ns_shm), not from its mappings."""
    proc, w = pg_tree(tmp_path, REGION)
    segments = [{"key": "0", "shmid": "4", "size": "4096"}, {"key": "34967", "shmid": "0", "size": "56"}]
    assert carry.shm_clashes(w, proc, lambda pid: segments) == [
        "SysV segment shmid 4 (key 0x00000000, 4096 bytes) of its IPC namespace and PID 10 (w)'s /dev/zero mapped "
        "at 7f17-7f2f have the same number, 4: criu's dump would take the one for the other (the shared memory "
        "restored with the segment's content)"]
    assert carry.shm_clashes(w, proc, lambda pid: segments[1:]) == []            # other numbers
    attached = "7f0e-7f0f rw-s 00000000 00:01 4 /SYSV00000000 (deleted)\n" + REGION
    proc, w = pg_tree(tmp_path / "b", attached)                                   # said once, as the adjacent one
    assert len(carry.shm_clashes(w, proc, lambda pid: segments)) == 1
    now = [0.0]

    def pause(s):
        now[0] += s
        if now[0] > 0.1:        # removed (IPC_RMID)
            segments[:] = segments[1:]
    proc, w = pg_tree(tmp_path / "c", REGION)
    assert carry.wait_unclashed(w, 5.0, proc, lambda pid: segments, clock=lambda: now[0], pause=pause) == []
