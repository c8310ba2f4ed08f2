"""Files the new kernel's boot will not have. criu dumps an open file by its path, not its
contents (unless it was deleted): at restore it opens that path again. A file on a tmpfs or ramfs
(/run, /dev/shm, a tmpfs /tmp) is gone after any kernel switch, and a file in a directory the
boot empties (systemd-tmpfiles `D /tmp`, Debian's default) is gone once systemd-tmpfiles-setup
ran: criu then fails ("Can't open file … on restore"), in the new kernel and on the way back
alike (the old kernel's boot empties them too). Measured in the guest: a unit with a file open
in /tmp could not be restored in 6.12 nor after the way back to 6.1.

Carried: the regular files (at most MAX_FILE each, MAX_TREE a tree) and directories (a working
directory) on a tmpfs/ramfs that a tree has open, maps or works in: daemons hold such files (cron
keeps /run/crond.pid open and locked, a POSIX shared memory segment is a file in /dev/shm).
After the dump (the tasks are stopped: nothing changes them any more) `save` copies them into the
tree's images with their owner and mode and those of the directories above them up to the mount
point; before criu restores the tree, `put_back` recreates whatever is missing (the new kernel
and the way back alike); criu then opens them and takes their locks again (--file-locks).
FIFOs too (made again, empty: criu carries the data in the pipe). A file from a mount the task's
namespace does not have (logind's session FIFO in an ssh session's sshd, passed over the bus from
logind's own namespace) is mountns.foreign's. Named by preflight instead (`blockers`): larger ones, files in a directory
emptied at boot (the boot would delete them after they were put back), anything else on a tmpfs.

Open files (fdinfo mnt_id → the task's mountinfo), the working directory and mapped files are
looked at; deleted files are not (criu carries their contents as ghost files), nor sockets, pipes
and device nodes (also when a service's own /dev is a tmpfs: PrivateDevices)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

from kupgrade.output.record import Blocker
from kupgrade.system import procfs
from kupgrade.system.procfs import PROC, who
from kupgrade.userspace import mountns

FILESYSTEMS = ("tmpfs", "ramfs")
TMPFILES_DIRS = ("/etc/tmpfiles.d", "/run/tmpfiles.d", "/usr/lib/tmpfiles.d", "/lib/tmpfiles.d")
HINT = ("keep it on a filesystem that survives a reboot (/var/tmp, /var/lib), or have the program close it, "
        "or leave the program out of the selection")
MAX_FILE = 16 << 20
MAX_TREE = 64 << 20
SAVED = "kupgrade-files"        # next to the images: the files on tmpfs, and SAVED.json describing them


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
    """mount id -> (mount point, filesystem type), from the task's mountinfo. A unit's private
    /tmp or /var/tmp (a bind of a systemd-private-* directory) is carried with its namespace
    (mountns.py): its type is given as PRIVATE."""
    return {m.mount_id: (m.point, PRIVATE if mountns.PRIVATE_MARK in m.root else m.fstype)
            for m in procfs.mounts(proc / str(pid) / "mountinfo")}


PRIVATE = "private"


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
            for what, path, mnt in found if path.startswith("/") and not path.endswith(" (deleted)")
            and (not mnt or mnt in mounts)]     # a file from another namespace: mountns.foreign


def _device(pid: int, what: str, path: str, proc: Path) -> bool:
    """A device node (/dev/null in a service's own /dev, a tmpfs under PrivateDevices): every boot
    has it; criu reopens it by its device number."""
    try:
        st = os.stat(proc / str(pid) / "fd" / what.split()[1]) if what.startswith("fd ") else os.stat(path)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)


def _volatile(pids, proc: Path, emptied: list[str], own: tuple[str, ...]):
    """(pid, what, path, mount point, why) of every file of the tasks the new boot will not have."""
    seen = set()
    for pid in pids:
        try:
            mounts = _mounts(pid, proc)
            paths = _paths(pid, proc, mounts)
        except OSError:
            continue            # exited meanwhile
        for what, path, (point, fstype) in paths:
            if fstype == PRIVATE:
                continue
            why = (f"it is on a {fstype} ({point})" if fstype in FILESYSTEMS and not _device(pid, what, path, proc)
                   else next((f"{d} is emptied at boot (systemd-tmpfiles)" for d in emptied
                              if path.startswith(d.rstrip("/") + "/")), ""))
            if why and not any(path == o or path.startswith(o.rstrip("/") + "/") for o in own) \
                    and (pid, path) not in seen:
                seen.add((pid, path))
                yield pid, what, path, point, why


def _stat(pid: int, path: str, why: str, proc: Path) -> os.stat_result | None:
    """The file as the task sees it, when it is on a tmpfs (a file emptied at boot is not carried)."""
    if not why.startswith("it is on a"):
        return None
    try:
        return os.stat(proc / str(pid) / "root" / path.lstrip("/"))
    except OSError:
        return None


def _fits(st: os.stat_result | None) -> bool:
    """`save` carries it: a directory, a FIFO (made again empty: criu carries what is in the pipe;
    logind's session FIFO an ssh session holds), or a regular file of at most MAX_FILE."""
    return st is not None and (stat.S_ISDIR(st.st_mode) or stat.S_ISFIFO(st.st_mode)
                               or (stat.S_ISREG(st.st_mode) and st.st_size <= MAX_FILE))


def carried(pids, proc: Path = PROC, own: tuple[str, ...] = ()) -> dict[str, tuple[int, str]]:
    """The files `save` carries: path -> (a PID that has it, its mount point)."""
    out: dict[str, tuple[int, str]] = {}
    for pid, _, path, point, why in _volatile(pids, proc, [], own):
        if path not in out and _fits(_stat(pid, path, why, proc)):
            out[path] = (pid, point)
    return out


def blockers(pids, proc: Path = PROC, emptied: list[str] | None = None, own: tuple[str, ...] = ()) -> list[Blocker]:
    """A blocker per task and file the new boot will not have and `save` does not carry. own:
    kupgrade's own directories."""
    emptied = emptied_at_boot() if emptied is None else emptied
    out, total = [], 0
    for pid, what, path, point, why in _volatile(pids, proc, emptied, own):
        st = _stat(pid, path, why, proc)
        size = st.st_size if st is not None and stat.S_ISREG(st.st_mode) else 0
        if _fits(st) and total + size <= MAX_TREE:
            total += size
            continue
        limit = f" and larger than kupgrade carries ({MAX_FILE >> 20} MiB a file, {MAX_TREE >> 20} MiB a tree)" \
            if size else ""
        out.append(Blocker(f"{who(pid, proc)} has {path} open ({what}): {why}{limit}, so the new kernel's boot "
                           "will not have it and criu could not restore the process", HINT))
    return out


def _meta(p: Path) -> dict:
    st = p.lstat()
    return {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}


def save(pids, images: Path, proc: Path = PROC) -> int:
    """After the dump: copy the tree's files on tmpfs into images/SAVED (the tasks are stopped).
    Returns the number of files and directories saved."""
    entries = []
    for n, (path, (pid, point)) in enumerate(sorted(carried(pids, proc).items())):
        src = proc / str(pid) / "root" / path.lstrip("/")
        parents, d = [], Path(path).parent
        while str(d).startswith(point.rstrip("/") + "/"):
            parents.insert(0, {"path": str(d), **_meta(proc / str(pid) / "root" / str(d).lstrip("/"))})
            d = d.parent
        entry = {"path": path, "dir": src.is_dir(), **_meta(src), "parents": parents}
        if stat.S_ISFIFO(src.stat().st_mode):
            entry["fifo"] = True
        elif not entry["dir"]:
            (images / SAVED).mkdir(exist_ok=True, mode=0o700)
            shutil.copyfile(src, images / SAVED / str(n))
            entry["blob"] = str(n)
        entries.append(entry)
    if entries:
        (images / f"{SAVED}.json").write_text(json.dumps(entries, indent=1) + "\n")
    return len(entries)


def _make(path: Path, meta: dict, blob: Path | None = None) -> None:
    if meta.get("fifo"):
        os.mkfifo(path, 0o600)
    elif blob is None:
        path.mkdir(mode=0o700)
    else:
        shutil.copyfile(blob, path)
    os.chown(path, meta["uid"], meta["gid"])
    os.chmod(path, meta["mode"])


def put_back(images: Path, root: Path = Path("/")) -> list[str]:
    """Before criu restores the tree: recreate its files on tmpfs that this boot does not have
    (those it has already, e.g. a RuntimeDirectory= systemd made, are left as they are)."""
    try:
        entries = json.loads((images / f"{SAVED}.json").read_text())
    except FileNotFoundError:
        return []
    done = []
    for e in entries:
        for parent in e["parents"]:
            if not (p := root / parent["path"].lstrip("/")).exists():
                _make(p, parent)
        if not os.path.lexists(p := root / e["path"].lstrip("/")):
            _make(p, e, None if e["dir"] or e.get("fifo") else images / SAVED / e["blob"])
            done.append(e["path"])
    return done
