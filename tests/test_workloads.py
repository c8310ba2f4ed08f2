import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import psutil
import pytest
from procfake import fake_proc, task

from kupgrade.output.record import Workload
from kupgrade.system import procfs
from kupgrade.userspace import workloads


def ours(blockers):
    """The blockers, less the no_new_privs the test's children inherit from a runner that has it
    (a CI sandbox with NoNewPrivileges)."""
    if procfs.status(os.getpid()).get("NoNewPrivs") != "1":
        return blockers
    return [b for b in blockers if "no_new_privs" not in b.message]


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
        assert ours(blockers) == []
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


def test_task_states_from_a_fake_proc(tmp_path):
    """Kernel threads by PF_KTHREAD (older kernels have no Kthread: line), not by a missing VmSize:
    every zombie lacks one."""
    proc = fake_proc(tmp_path)
    task(proc, 2, comm="kthreadd", flags=0x208040)
    task(proc, 10, state="Z")
    task(proc, 11, state="T", status="VmSize:\t1000 kB\n")
    task(proc, 12, state="t", status="VmSize:\t1000 kB\n")
    task(proc, 13, state="Z")
    for tid in (13, 14):
        (proc / "13" / "task" / str(tid)).mkdir(parents=True)

    def found(pid, root=False):
        return [b.message for b in workloads.process_blockers(pid, root=root, proc=proc)]
    assert found(2) == ["PID 2 (kthreadd) is a kernel thread"]
    assert found(10) == [] and found(11) == []
    assert found(10, root=True) == [
        "PID 10 (w), the root of its tree, has exited (zombie): criu cannot dump a dead root"]
    assert found(12) == ["PID 12 (w) is being traced (tracing stop)"]
    assert found(13) == ["PID 13 (w): its main thread has exited while 1 other thread(s) run: criu cannot dump a "
                         "process whose main thread is a zombie"]
    assert workloads.stopped([10, 11, 12, 99], proc) == (11,)


# --- real processes on this host: what preflight says about each (no root needed) -------------

def wait_for(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def state(pid):
    return procfs.stat(pid).state


@pytest.fixture
def spawn():
    """Start `python -c CODE` in a session of its own (no terminal); every process started is
    killed afterwards, and the extra PIDs a test registers (grandchildren it made) too."""
    started, extra = [], []

    def start(code, *args, **kw):
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, text=True, **kw)
        started.append(p)
        return p
    start.extra = extra
    yield start
    for pid in extra:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in started:
        p.kill()
        p.wait()


def messages(pid):
    return [b.message for b in ours(workloads.resolve((pid,), ())[1])]


def test_a_zombie_child_is_carried(spawn):
    p = spawn("""
        import os, time
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        print(pid, flush=True)
        time.sleep(60)   # never waits: the child stays a zombie
        """)
    zombie = int(p.stdout.readline())
    wait_for(lambda: state(zombie) == "Z")
    ws, blockers = workloads.resolve((p.pid,), ())
    assert ws[0].pids == (p.pid, zombie) and ours(blockers) == []


def test_a_stopped_child_is_carried_and_left_stopped(spawn):
    p = spawn("""
        import subprocess, sys, time
        c = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.DEVNULL)
        print(c.pid, flush=True)
        time.sleep(60)
        """)
    child = int(p.stdout.readline())
    spawn.extra.append(child)
    os.kill(child, signal.SIGSTOP)
    wait_for(lambda: state(child) == "T")
    ws, blockers = workloads.resolve((p.pid,), ())
    assert ours(blockers) == []
    assert ws[0].pids == (p.pid, child) and ws[0].stopped_before == (child,)


def test_a_main_thread_that_exited_is_not_a_kernel_thread(spawn):
    p = spawn("""
        import ctypes, threading, time
        threading.Thread(target=time.sleep, args=(60,)).start()
        print("started", flush=True)
        ctypes.CDLL(None).pthread_exit(None)
        """)
    p.stdout.readline()
    wait_for(lambda: state(p.pid) == "Z")
    assert messages(p.pid) == [f"PID {p.pid} ({procfs.comm(p.pid)}): its main thread has exited while 1 other "
                               "thread(s) run: criu cannot dump a process whose main thread is a zombie"]


def test_pending_signals_are_carried(spawn):
    p = spawn("""
        import signal, time
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        print("blocked", flush=True)
        time.sleep(60)
        """)
    p.stdout.readline()
    os.kill(p.pid, signal.SIGUSR1)
    wait_for(lambda: int(procfs.status(p.pid)["ShdPnd"], 16) != 0)
    assert messages(p.pid) == []


SHM = """
    import ctypes, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    shmid = libc.shmget(0, 4096, 0o1600)            # IPC_PRIVATE, IPC_CREAT | 0600
    assert shmid >= 0 and libc.shmat(shmid, None, 0) not in (None, 2**64 - 1)
    libc.shmctl(shmid, 0, None)                     # IPC_RMID: gone once detached (when the test kills us)
    print(shmid, flush=True)
    time.sleep(60)
    """


def test_sysv_shared_memory_in_the_host_namespace(spawn):
    p = spawn(SHM)
    shmid = int(p.stdout.readline())
    name = procfs.comm(p.pid)
    assert messages(p.pid) == [
        f"PID {p.pid} ({name}) uses SysV shared memory segment shmid {shmid} (key 0x00000000, 4096 bytes; attached, "
        "created by it, last attached or detached by it) in the host IPC namespace: it is not in the snapshot and "
        "would not exist after the switch"]


def test_sysv_message_queue_and_semaphore(spawn):
    p = spawn("""
        import ctypes, time
        libc = ctypes.CDLL(None, use_errno=True)
        msqid, semid = libc.msgget(0, 0o1600), libc.semget(0, 1, 0o1600)
        msg = ctypes.create_string_buffer(b"\\1\\0\\0\\0\\0\\0\\0\\0x")   # long mtype = 1, one byte
        assert libc.msgsnd(msqid, msg, 1, 0) == 0
        op = (ctypes.c_short * 3)(0, 1, 0)                               # sem 0, +1
        assert libc.semop(semid, op, 1) == 0
        print(msqid, semid, flush=True)
        time.sleep(60)
        """)
    msqid, semid = map(int, p.stdout.readline().split())
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        found = messages(p.pid)
    finally:
        libc.msgctl(msqid, 0, None)     # IPC_RMID: they outlive their creator
        libc.semctl(semid, 0, 0)
    assert [m.split(" (key")[0].split(" uses ")[1] for m in found] == [f"SysV message queue msqid {msqid}",
                                                                     f"SysV semaphore set semid {semid}"]


def test_a_process_group_led_from_outside_the_tree(spawn):
    """The root forks M, M forks O and exits: O (its own group) is reparented out of the tree; the
    root's child X joins O's group."""
    p = spawn("""
        import os, time
        r, w = os.pipe()
        if os.fork() == 0:
            if os.fork() == 0:
                os.setpgid(0, 0)
                os.write(w, b"%d\\n" % os.getpid())
                time.sleep(60)
            os._exit(0)
        o = int(os.read(r, 32))
        os.wait()
        x = os.fork()
        if x == 0:
            os.setpgid(0, o)
            os.write(w, b"x\\n")
            time.sleep(60)
        os.read(r, 32)
        print(o, x, flush=True)
        time.sleep(60)
        """)
    o, x = map(int, p.stdout.readline().split())
    spawn.extra += [o, x]
    ws, blockers = workloads.resolve((p.pid,), ())
    assert ws[0].pids == (p.pid, x)
    assert [b.message for b in ours(blockers)] == [
        f"PID {o} ({procfs.comm(o)}) is not in the tree of pid:{p.pid} but shares session {p.pid} with its PID(s) "
        f"[{p.pid}, {x}]; it leads process group {o} of PID(s) [{x}]: it would not be carried"]


def test_a_root_in_another_session(spawn):
    p = spawn("import time; print(1, flush=True); time.sleep(60)", start_new_session=False)
    p.stdout.readline()
    assert "does not lead its session" in messages(p.pid)[0]


LOCKER = """
    import fcntl, sys, time
    files = [open(path, "a") for path in sys.argv[1:]]
    fcntl.lockf(files[0], fcntl.LOCK_EX)
    if len(files) > 1:
        fcntl.flock(files[1], fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(60)
    """


def test_file_locks_are_carried_unless_held_outside_the_tree(spawn, tmp_path):
    own, flocked, shared = (str(tmp_path / n) for n in ("own", "flocked", "shared"))
    tree = spawn(LOCKER, own, flocked, shared)      # locks the first two, has the third open
    tree.stdout.readline()
    assert messages(tree.pid) == []                 # its own POSIX lock and flock: --file-locks
    other = spawn(LOCKER, shared)
    other.stdout.readline()
    assert messages(tree.pid) == [
        f"PID {other.pid} ({procfs.comm(other.pid)}), outside the tree, holds a POSIX lock on {shared}, which "
        f"PID {tree.pid} ({procfs.comm(tree.pid)}) has open: neither that process nor its lock is carried"]


def test_a_terminal_that_is_not_carried_is_named(monkeypatch):
    from kupgrade.output.record import Workload
    from kupgrade.userspace import workloads as wl
    monkeypatch.setattr(wl.os, "isatty", lambda fd: fd == 1)
    monkeypatch.setattr(wl.os, "ttyname", lambda fd: "/dev/pts/3")
    monkeypatch.setattr(wl.os, "getsid", lambda pid: os.getpid())
    note = wl.own_terminal([Workload("pid:5", 5, (5, 6))])
    assert note.startswith("this terminal (/dev/pts/3, the session of PID") and "kupgrade report" in note
    assert "is carried with pid:5" in wl.own_terminal([Workload("pid:5", 5, (5, os.getpid()))])
    monkeypatch.setattr(wl.os, "isatty", lambda fd: False)
    assert wl.own_terminal([]) == ""


def test_a_terminal_the_tree_holds_both_ends_of_is_carried(tmp_path):
    from kupgrade.userspace import workloads as wl
    assert wl.pts_index(136 << 8 | 3) == 3 and wl.pts_index(4 << 8 | 1) is None      # pts/3; tty1
    assert wl.pts_index((137 << 8) | 2) == 258
    proc = fake_proc(tmp_path)
    task(proc, 20, comm="sshd")
    task(proc, 21, ppid=20, comm="bash")
    os.symlink("/dev/ptmx", proc / "20" / "fd" / "9")
    (proc / "20" / "fdinfo" / "9").write_text("pos:\t0\nflags:\t02\nmnt_id:\t24\ntty-index:\t3\n")
    assert wl.pty_masters([20, 21], proc) == {3}
    (proc / "21" / "stat").write_text(f"21 (bash) S 20 21 21 {136 << 8 | 3} -1 4194304 0 0\n")
    assert wl.process_blockers(21, proc=proc, inner_ptys={3}) == []
    assert "controlling terminal" in wl.process_blockers(21, proc=proc)[0].message


SESSION = "/user.slice/user-1000.slice/session-3.scope"


def test_an_ssh_sessions_scope_leaves_the_tree_to_crius_seize():
    # pam_systemd moved the session (sshd [priv] 20, its bash 21) out of ssh.service's cgroup
    w = Workload("unit:ssh.service", 10, (10, 20, 21), cgroup="/system.slice/ssh.service")
    where = {10: "/system.slice/ssh.service", 20: SESSION, 21: SESSION}
    assert workloads.other_cgroups(w, cgroup_of=where.__getitem__) == (SESSION,)
    assert not replace(w, other_cgroups=(SESSION,)).frozen and w.frozen
    below = {10: w.cgroup, 20: w.cgroup + "/sub", 21: w.cgroup}     # below its own: frozen with it
    assert workloads.other_cgroups(w, cgroup_of=below.__getitem__) == ()


def test_a_trees_thread_ids_are_read_with_it():
    import threading
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        w = workloads.retree(Workload("pid:x", os.getpid(), (os.getpid(),)))
        assert t.native_id in w.tids and os.getpid() not in w.tids and t.native_id in w.ids
        assert Workload.from_json(w.to_json()).tids == w.tids
    finally:
        stop.set()
        t.join()
