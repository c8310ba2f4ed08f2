"""Reading one task's /proc files: status, stat, its name. Every reader takes the `proc` root so
that tests can point it at a fake tree. Reads only."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
PF_KTHREAD = 0x00200000         # include/linux/sched.h: the task is a kernel thread
SYS_PIDFD_GETFD = 438           # the same number on x86_64 and aarch64
_libc = None


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/PID/stat that kupgrade looks at (proc(5) numbering in comments)."""
    state: str          # (3) R S D Z T t X ...
    ppid: int           # (4)
    pgrp: int           # (5)
    session: int        # (6)
    tty_nr: int         # (7)
    flags: int          # (9) PF_* flags

    @property
    def kthread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)


@dataclass(frozen=True)
class Mount:
    """One line of a mountinfo file (proc(5))."""
    mount_id: str       # (1)
    dev: str            # (3) major:minor of the superblock, as /proc/locks prints it
    point: str          # (5) the mount point, as the reading task sees it
    ro: bool            # (6) per-mount options include ro
    fstype: str         # after " - "
    source: str         # after the type: the device or "none"
    root: str = "/"     # (4) the directory of its file system mounted here (a bind mount's source)
    tags: tuple[str, ...] = ()     # (7) optional fields: shared:N, master:N, propagate_from:N, unbindable
    parent_id: str = ""             # (2) the mount it is mounted on

    def tag(self, name: str) -> str:
        """The peer group of an optional field ("shared", "master"), or ""."""
        return next((t.split(":", 1)[1] for t in self.tags if t.startswith(name + ":")), "")

    @property
    def st_dev(self) -> int:
        major, minor = (int(x) for x in self.dev.split(":"))
        return os.makedev(major, minor)


def under(path: str, top: str) -> bool:
    """path (a cgroup, a mount point, a mount's root) is top or below it."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def mounts(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Mount]:
    """Every mount of a mountinfo file (/proc/self/mountinfo, or a task's /proc/PID/mountinfo), in
    its order (a later mount on the same point hides the earlier). Raises OSError."""
    out = []
    for line in mountinfo.read_text().splitlines():
        head, _, tail = line.partition(" - ")
        f, t = head.split(), tail.split()
        if len(f) >= 6 and len(t) >= 2:
            out.append(Mount(f[0], f[2], _unescape(f[4]), "ro" in f[5].split(","), t[0], t[1], _unescape(f[3]),
                             tuple(f[6:]), f[1]))
    return out


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def own_namespace(pid: int, kind: str, proc: Path = PROC) -> bool:
    """The task is in another namespace of this kind ("mnt", "user", ...) than kupgrade (and
    criu, its child); False when either link cannot be read."""
    def ns(task: str) -> str:
        try:
            return os.readlink(proc / task / "ns" / kind)
        except OSError:
            return ""
    theirs, mine = ns(str(pid)), ns("self")
    return bool(theirs and mine) and theirs != mine


def cgroup(pid: int, proc: Path = PROC) -> str:
    """The task's cgroup v2 path ("" where it has none: a v1-only system). Raises OSError."""
    for line in (proc / str(pid) / "cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""


def status(pid: int, proc: Path = PROC) -> dict[str, str]:
    out = {}
    for line in (proc / str(pid) / "status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def stat(pid: int, proc: Path = PROC) -> Stat:
    """Raises FileNotFoundError/ProcessLookupError when the task is gone. The name (2) may hold
    spaces and parentheses: the fields start after its last ')'."""
    f = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return Stat(f[0], int(f[1]), int(f[2]), int(f[3]), int(f[4]), int(f[6]))


def comm(pid: int, proc: Path = PROC) -> str:
    """The task's name, or "" when it is gone."""
    try:
        return (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def who(pid: int, proc: Path = PROC) -> str:
    """"PID 5 (name)" as blockers name a task; "PID 5 (gone)" when it no longer exists."""
    return f"PID {pid} ({comm(pid, proc) or 'gone'})"


def pids(proc: Path = PROC) -> list[int]:
    """Every process (thread group) visible in proc."""
    return sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit())


def threads(pid: int, proc: Path = PROC) -> int:
    """How many tasks /proc/PID/task lists (what criu seizes: a zombie leader is counted)."""
    try:
        return sum(1 for _ in (proc / str(pid) / "task").iterdir())
    except OSError:
        return 1


def tids(pid: int, proc: Path = PROC) -> tuple[int, ...]:
    """The IDs of a process's threads, its own PID among them (() when it is gone)."""
    try:
        return tuple(sorted(int(t) for t in os.listdir(proc / str(pid) / "task")))
    except (OSError, ValueError):
        return ()


def fds(pid: int, proc: Path = PROC) -> dict[int, str]:
    """fd -> what it points to (readlink of /proc/PID/fd/N); {} when the task is gone."""
    out = {}
    try:
        names = [n for n in (proc / str(pid) / "fd").iterdir()]
    except OSError:
        return out
    for n in names:
        try:
            out[int(n.name)] = str((proc / str(pid) / "fd" / n.name).readlink())
        except (OSError, ValueError):
            continue
    return out


def sockets(pids, proc: Path = PROC) -> dict[int, list[tuple[int, int]]]:
    """Socket inode -> [(pid, fd)] of the tasks that hold it, in PID and fd order."""
    out: dict[int, list[tuple[int, int]]] = {}
    for pid in pids:
        for fd, link in sorted(fds(pid, proc).items()):
            if link.startswith("socket:["):
                out.setdefault(int(link[8:-1]), []).append((pid, fd))
    return out


def getfd(pid: int, fd: int) -> int:
    """A duplicate of another process's fd (pidfd_open + pidfd_getfd, Linux >= 5.6): the caller
    owns it. Raises OSError."""
    global _libc
    import ctypes           # here: the restore, which imports this module, never calls it
    _libc = _libc or ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        new = _libc.syscall(ctypes.c_long(SYS_PIDFD_GETFD), ctypes.c_long(pidfd), ctypes.c_long(fd), ctypes.c_long(0))
        if new < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd(PID {pid}, fd {fd}): {os.strerror(err)}")
        return new
    finally:
        os.close(pidfd)


def fdinfo(pid: int, fd: int | str, proc: Path = PROC) -> dict[str, str]:
    """/proc/PID/fdinfo/FD as {field: value} (pos, flags, mnt_id, ino, ...); raises OSError when
    the fd or the task is gone."""
    out: dict[str, str] = {}
    for line in (proc / str(pid) / "fdinfo" / str(fd)).read_text().splitlines():
        k, _, v = line.partition(":")
        out.setdefault(k, v.strip())
    return out


def open_files(pid: int, proc: Path = PROC) -> set[str]:
    """The paths a task has open (sockets, pipes and anonymous files left out)."""
    return {p for p in fds(pid, proc).values() if p.startswith("/")}


def used_files(pid: int, proc: Path = PROC) -> set[str]:
    """The paths a task has open or maps."""
    return open_files(pid, proc) | mapped_files(pid, proc)


def map_fields(pid: int | str, proc: Path = PROC) -> list[list[str]]:
    """The columns of each line of /proc/PID/maps, in order: address range, perms, offset,
    device, inode and (not for anonymous memory) the path. Raises OSError (the task is gone)."""
    return [line.split(None, 5) for line in (proc / str(pid) / "maps").read_text().splitlines()]


def maps(pid: int, proc: Path = PROC):
    """(start, end, file offset, path) of each mapping of a file (a path column starting with /)."""
    try:
        rows = map_fields(pid, proc)
    except OSError:
        return
    for parts in rows:
        if len(parts) == 6 and parts[5].startswith("/"):
            a, b = parts[0].split("-")
            yield int(a, 16), int(b, 16), int(parts[2], 16), parts[5]


def mapped_files(pid: int, proc: Path = PROC) -> set[str]:
    """The files a task maps (the path column of /proc/PID/maps)."""
    return {path for *_, path in maps(pid, proc)}
