"""A fake /proc tree for the tests of what preflight reads (carry.py, workloads.py)."""

import os
from pathlib import Path

HOST, OWN = "ipc:[4026531839]", "ipc:[4026532999]"


def task(proc: Path, pid, ppid=1, pgrp=None, session=None, state="S", comm="w", ipc=HOST, maps="", fds=(),
         flags=0x400000, status=""):
    """One task: stat, comm, status (Name plus `status` lines), maps, ns/ipc, and open files
    [(path, inode)] on the root filesystem (254:0) with their fdinfo and the mountinfo."""
    d = proc / str(pid)
    for sub in ("ns", "fd", "fdinfo"):
        (d / sub).mkdir(parents=True)
    (d / "mountinfo").write_text("21 1 0:21 / /proc rw - proc proc rw\n25 1 254:0 / / rw - ext4 /dev/vda rw\n")
    pgrp, session = pid if pgrp is None else pgrp, pid if session is None else session
    (d / "stat").write_text(f"{pid} ({comm}) {state} {ppid} {pgrp} {session} 0 -1 {flags} 0 0\n")
    (d / "comm").write_text(comm + "\n")
    (d / "status").write_text(f"Name:\t{comm}\nTracerPid:\t0\n{status}")
    (d / "maps").write_text(maps)
    os.symlink(ipc, d / "ns" / "ipc")
    for n, (path, ino) in enumerate(fds):       # files on the root filesystem (254:0 = fe:00)
        os.symlink(path, d / "fd" / str(n))
        (d / "fdinfo" / str(n)).write_text(f"pos:\t0\nflags:\t02\nmnt_id:\t25\nino:\t{ino}\n")


def fake_proc(tmp_path, ipc=HOST) -> Path:
    proc = tmp_path / "proc"
    (proc / "self" / "ns").mkdir(parents=True)
    os.symlink(ipc, proc / "self" / "ns" / "ipc")
    (proc / "sysvipc").mkdir()
    for name, header in (("shm", "key shmid perms size cpid lpid nattch"),
                         ("msg", "key msqid perms cbytes qnum lspid lrpid"), ("sem", "key semid perms nsems")):
        (proc / "sysvipc" / name).write_text(header + "\n")
    (proc / "locks").write_text("")
    return proc
