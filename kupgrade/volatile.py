"""Files the new kernel's boot will not have. criu dumps an open file by its path, not its
contents (unless it was deleted): at restore it opens that path again. A file on a tmpfs or ramfs
(/run, /dev/shm, a tmpfs /tmp) is gone after any kernel switch, and a file in a directory the
boot empties (systemd-tmpfiles `D /tmp`, Debian's default) is gone once systemd-tmpfiles-setup
ran: criu then fails ("Can't open file … on restore"), in the new kernel and on the way back
alike (the old kernel's boot empties them too). Measured in the guest: a unit with a file open
in /tmp could not be restored in 6.12 nor after the way back to 6.1. kupgrade does not carry such
files (yet): preflight names each, with the PID and the path.

Open files (fdinfo mnt_id → the task's mountinfo), the working directory and mapped files
(a POSIX shared memory segment is a file in /dev/shm) are looked at; deleted files are not
(criu carries their contents as ghost files), nor sockets, pipes and device nodes (also when a
service's own /dev is a tmpfs: PrivateDevices)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from . import procfs
from .procfs import PROC, who
from .record import Blocker

FILESYSTEMS = ("tmpfs", "ramfs")
TMPFILES_DIRS = ("/etc/tmpfiles.d", "/run/tmpfiles.d", "/usr/lib/tmpfiles.d", "/lib/tmpfiles.d")
HINT = ("kupgrade does not carry such files: keep it on a filesystem that survives a reboot (/var/tmp, "
        "/var/lib), or have the program close it, or leave the program out of the selection")


def emptied_at_boot(dirs=TMPFILES_DIRS, systemd: Path = Path("/run/systemd/system")) -> list[str]:
    """Directories whose contents systemd-tmpfiles removes at boot (`D` and `R` lines; a file of
    the same name in an earlier directory overrides a later one). None without systemd."""
    if not systemd.is_dir():
        return []
    seen: dict[str, Path] = {}
    for d in dirs:
        for f in sorted(Path(d).glob("*.conf")) if Path(d).is_dir() else []:
            seen.setdefault(f.name, f)
    out = []
    for f in seen.values():
        try:
            lines = f.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) >= 2 and parts[0].rstrip("!-=~^+") in ("D", "R") and parts[1].startswith("/"):
                out.append(parts[1].rstrip("/") or "/")
    return sorted(set(out))


def _mounts(pid: int, proc: Path) -> dict[str, tuple[str, str]]:
    """mount id -> (mount point, filesystem type), from the task's mountinfo."""
    out = {}
    for line in (proc / str(pid) / "mountinfo").read_text().splitlines():
        head, _, tail = line.partition(" - ")
        f, t = head.split(), tail.split()
        if len(f) >= 5 and t:
            out[f[0]] = (f[4].replace("\\040", " "), t[0])
    return out


def _mount_of(path: str, mounts: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """(mount point, type) of the mount a path is on: the longest mount point that contains it."""
    best = ("", "")
    for point, fstype in mounts.values():
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, fstype)
    return best


def _paths(pid: int, proc: Path, mounts: dict[str, tuple[str, str]]) -> list[tuple[str, str, tuple[str, str]]]:
    """(what, path, (mount point, type)) of the task's files that exist by name: fds (their mount
    from fdinfo), the working directory, mapped files (their mount from the path)."""
    found: list[tuple[str, str, str]] = []
    for fd, path in sorted(procfs.fds(pid, proc).items()):
        try:
            found.append((f"fd {fd}", path, procfs.fdinfo(pid, fd, proc).get("mnt_id", "")))
        except OSError:
            continue
    try:
        found.append(("working directory", os.readlink(proc / str(pid) / "cwd"), ""))
    except OSError:
        pass
    found += [("mapping", path, "") for path in sorted(procfs.mapped_files(pid, proc))]
    return [(what, path, mounts[mnt] if mnt in mounts else _mount_of(path, mounts))
            for what, path, mnt in found if path.startswith("/") and not path.endswith(" (deleted)")]


def _device(pid: int, what: str, path: str, proc: Path) -> bool:
    """A device node (/dev/null in a service's own /dev, a tmpfs under PrivateDevices): every boot
    has it; criu reopens it by its device number."""
    try:
        st = os.stat(proc / str(pid) / "fd" / what.split()[1]) if what.startswith("fd ") else os.stat(path)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)


def blockers(pids, proc: Path = PROC, emptied: list[str] | None = None, own: tuple[str, ...] = ()) -> list[Blocker]:
    """A blocker per task and file the new boot will not have. own: kupgrade's own directories."""
    emptied = emptied_at_boot() if emptied is None else emptied
    out, seen = [], set()
    for pid in pids:
        try:
            mounts = _mounts(pid, proc)
            paths = _paths(pid, proc, mounts)
        except OSError:
            continue            # exited meanwhile
        for what, path, (point, fstype) in paths:
            why = (f"it is on a {fstype} ({point})" if fstype in FILESYSTEMS and not _device(pid, what, path, proc)
                   else next((f"{d} is emptied at boot (systemd-tmpfiles)" for d in emptied
                              if path.startswith(d.rstrip("/") + "/")), ""))
            if why and not any(path == o or path.startswith(o.rstrip("/") + "/") for o in own) \
                    and (pid, path) not in seen:
                seen.add((pid, path))
                out.append(Blocker(f"{who(pid, proc)} has {path} open ({what}): {why}, so the new kernel's boot "
                                   "will not have it and criu could not restore the process", HINT))
    return out
