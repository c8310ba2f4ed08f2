"""A service's own mount namespace, carried: what the dump tells criu, what the restore rebuilds.

systemd gives a unit a mount namespace of its own for PrivateTmp, ProtectSystem, ProtectHome,
PrivateDevices, DynamicUser and most other sandboxing options. Every mount in it is a bind of
something on the host (a slave of the host's mount: "master:N" in its mountinfo line) or one
the namespace made for itself (PrivateDevices' /dev, a new /proc). Measured with criu 3.17 on
Debian bookworm (explore-sandbox: a unit with PrivateTmp + ProtectSystem=strict + DynamicUser,
and Debian's memcached.service as shipped, dumped, killed and restored by the unit's start:
same main PID, same DynamicUser UID, the counter and memcached's keys continued):

- the dump succeeds when every mount that is a slave of the host's is `--external mnt[POINT]:cN`
  and every file the tree opened on a host mount the namespace does not have (systemd opens
  the unit's stdio /dev/null before it enters the namespace) is `--external file[MNT:INO]`;
- the restore binds each cN from a host path and then gives it its master back with
  MOVE_MOUNT_SET_GROUP from the host mount that path is on. The kernel refuses that ("Failed to
  copy sharing ...: Invalid argument") unless every mount of one master group comes from the
  file system of that group's host mount: so a source is always the host mount of the master
  group plus the mount's root within it, never a copy elsewhere, and never bound onto itself;
- what the new boot does not have is made before criu runs: the unit's private /tmp and
  /var/tmp directories (systemd-tmpfiles removes every systemd-private-* at boot: their content
  is copied into the snapshot, the tree frozen, and put back at the same path), systemd's
  per-unit directories (/run/systemd/propagate/UNIT: made empty), and kupgrade's own snapshot
  mount, which propagated into the namespace (an empty directory instead).

A tree in the host's namespace can hold files from a namespace it is not in, too: logind, a
sandboxed unit, passes an ssh session's sshd the write end of its session FIFO
(/run/systemd/sessions/N.ref) over the system bus, and criu cannot dump a file whose mount it
cannot see ("Can't lookup mount=268 for fd=8", measured). `foreign` makes such files externals
the same way. A FIFO from another namespace is restored as one end of a pipe of kupgrade's own:
its other end was held by a process of that namespace, which is not carried (the new boot's
logind does not know the session), so nothing would ever come through it.

Not carried (`NotCarried`, named by check): a namespace whose root is not the host's / (RootDirectory,
RootImage), a mount whose host counterpart is gone, tasks of one tree in different mount
namespaces, a regular file from outside on a tmpfs.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from kupgrade.system import procfs
from kupgrade.system.procfs import PROC
from kupgrade.system.run import run

NAME = "kupgrade-mountns.json"     # next to the images: the plan below
PRIVATE = "private"                 # images/TREE/private/cN: a private /tmp's content
EMPTY = "/run/kupgrade-empty"       # the source of kupgrade's own mounts seen in the namespace
PRIVATE_MARK = "/systemd-private-"  # systemd's PrivateTmp directories: /tmp/systemd-private-BOOT-UNIT-X/tmp

HOST, PRIVATE_DIR, MADE, EMPTY_DIR = "host", "private", "made", "empty"


class NotCarried(Exception):
    """This namespace cannot be carried; the message says why (check shows it)."""


@dataclass(frozen=True)
class ExtMount:
    key: str        # criu's name for it: cN
    point: str      # where it is mounted inside the namespace
    source: str     # the host path it is bound from, in both boots
    kind: str       # HOST: there in the new boot too; PRIVATE_DIR: copied with the snapshot;
                    # MADE: a directory made empty if missing; EMPTY_DIR: kupgrade's own mount
    is_dir: bool = True


@dataclass(frozen=True)
class ExtFile:
    key: str        # file[MNT:INO], hex, as criu names a file outside the namespace
    path: str       # its path on the host, opened again at restore
    flags: int      # O_RDONLY / O_WRONLY / O_RDWR
    device: bool = True     # a device node (every boot has it: /dev/null)
    fifo: bool = False      # a FIFO whose other end is outside the tree: a pipe's end at restore (_stand_in)

    @property
    def mount_id(self) -> str:
        return str(int(self.key[len("file["):].split(":")[0], 16))


@dataclass(frozen=True)
class Point:
    path: str       # a host path that a mount of the namespace is mounted on (inside an external)
    is_dir: bool


@dataclass(frozen=True)
class Plan:
    mounts: tuple[ExtMount, ...]
    files: tuple[ExtFile, ...]
    points: tuple[Point, ...] = ()

    def dump_args(self) -> list[str]:
        argv = []
        for m in self.mounts:
            argv += ["--external", f"mnt[{m.point}]:{m.key}"]
        for f in self.files:
            argv += ["--external", f.key]
        return argv

    def restore_args(self) -> list[str]:
        argv = ["--root", "/"] if self.mounts else []
        for m in self.mounts:
            argv += ["--external", f"mnt[{m.key}]:{m.source}"]
        return argv

    def to_json(self) -> dict:
        return {"mounts": [asdict(m) for m in self.mounts], "files": [asdict(f) for f in self.files],
                "points": [asdict(p) for p in self.points]}

    @classmethod
    def from_json(cls, d: dict) -> Plan:
        return cls(tuple(ExtMount(**m) for m in d["mounts"]), tuple(ExtFile(**f) for f in d["files"]),
                   tuple(Point(**p) for p in d.get("points", ())))


def _source(m: procfs.Mount, host: list[procfs.Mount]) -> procfs.Mount | None:
    """The host mount of m's master peer group that holds m's root (the widest such)."""
    peers = [h for h in host if h.tag("shared") == m.tag("master") and procfs.under(m.root, h.root)]
    return min(peers, key=lambda h: len(h.root), default=None)


def plan(root_pid: int, pids=(), own: tuple[str, ...] = (), proc: Path = PROC) -> Plan:
    """What criu must be told of the tree's mount namespace. own: kupgrade's own mount points
    (the snapshot's), whose copies in the namespace are restored as empty directories. Raises
    NotCarried."""
    ns = procfs.mounts(proc / str(root_pid) / "mountinfo")
    host = procfs.mounts(proc / "self" / "mountinfo")
    mine = os.readlink(proc / str(root_pid) / "ns" / "mnt")
    for pid in pids:
        try:
            theirs = os.readlink(proc / str(pid) / "ns" / "mnt")
        except OSError:
            continue
        if theirs != mine:
            raise NotCarried(f"PID {pid} is in another mount namespace than its tree root {root_pid}")
    top = next((m for m in reversed(ns) if m.point == "/"), None)
    host_top = next((m for m in reversed(host) if m.point == "/"), None)
    if top is None or host_top is None or top.root != "/" or top.tag("master") != host_top.tag("shared"):
        raise NotCarried("its root is not the host's / (RootDirectory= or RootImage=)")
    bound: dict[str, ExtMount] = {}     # mount id -> how it is restored
    for m in ns:
        if m is top or not m.tag("master"):
            continue        # the namespace's own (a private /dev, a new /proc): criu makes them
        base = _source(m, host)
        if base is None:
            raise NotCarried(f"{m.point} in it is bound from a host mount that is gone")
        key = f"c{len(bound) + 1}"
        path = os.path.normpath(os.path.join(base.point, os.path.relpath(m.root, base.root)))
        if any(procfs.under(base.point, o) for o in own):
            bound[m.mount_id] = ExtMount(key, m.point, EMPTY, EMPTY_DIR)
            continue
        kind = PRIVATE_DIR if PRIVATE_MARK in path else HOST
        bound[m.mount_id] = ExtMount(key, m.point, path, kind, os.path.isdir(path) or not os.path.exists(path))
    files = _files(pids or (root_pid,), {m.mount_id for m in ns}, proc)
    volatile = {h.mount_id: h for h in host if h.fstype in ("tmpfs", "ramfs")}
    for f in files:
        if f.mount_id in volatile and not f.device and not f.fifo:
            raise NotCarried(f"it has {f.path} open from outside its namespace, on a {volatile[f.mount_id].fstype} "
                             f"({volatile[f.mount_id].point}) that the new boot does not have")
    return Plan(tuple(bound.values()), tuple(files), _points(ns, top, bound))


def foreign(pids, proc: Path = PROC) -> Plan | None:
    """For a tree in the host's mount namespace: the files it holds from mounts that namespace
    does not have (logind's session FIFO in an ssh session's sshd), as externals; None when there
    are none. Raises NotCarried for a regular file among them on a tmpfs the new boot lacks."""
    pids = tuple(pids)
    try:
        ns = procfs.mounts(proc / str(pids[0]) / "mountinfo")
    except (OSError, IndexError):
        return None
    files = tuple(_files(pids, {m.mount_id for m in ns}, proc))
    for f in files:
        if not f.fifo and not f.device:
            raise NotCarried(f"it has {f.path} open from another mount namespace (passed to it by a process there)")
    return Plan((), files) if files else None


def _points(ns: list[procfs.Mount], top: procfs.Mount, bound: dict[str, ExtMount]) -> tuple[Point, ...]:
    """Where a mount sits inside one bound from the host, criu needs its mount point there, in
    the new boot's file systems too: /run/kupgrade-snapshot inside the namespace's /run (a bind of
    the host's /run, where the new boot has no such directory)."""
    sources = {top.mount_id: ExtMount("", "/", "/", HOST)} | bound
    out = []
    for m in ns:
        parent = sources.get(m.parent_id)
        if m is top or parent is None:
            continue
        path = os.path.normpath(os.path.join(parent.source, os.path.relpath(m.point, parent.point)))
        mine = bound.get(m.mount_id)
        out.append(Point(path, mine.is_dir if mine else True))
    return tuple(dict.fromkeys(out))


def private_bytes(root_pid: int, proc: Path = PROC) -> int:
    """What the snapshot carries of a unit's private /tmp and /var/tmp (0 for a tree in the
    host's mount namespace, or one that cannot be carried)."""
    if not procfs.own_namespace(root_pid, "mnt", proc):
        return 0
    try:
        p = plan(root_pid, proc=proc)
    except (OSError, NotCarried):
        return 0
    total = 0
    for m in p.mounts:
        for d, _, files in os.walk(m.source) if m.kind == PRIVATE_DIR else ():
            for f in files:
                try:
                    total += os.lstat(os.path.join(d, f)).st_size
                except OSError:
                    continue        # removed meanwhile
    return total


def _files(pids, ns_ids: set[str], proc: Path) -> list[ExtFile]:
    """The files the tree has open on mounts its namespace does not have."""
    found: dict[str, ExtFile] = {}
    for pid in pids:
        for fd, link in sorted(procfs.fds(pid, proc).items()):
            if not link.startswith("/"):
                continue                # socket:[..], pipe:[..], anon_inode:..
            try:
                info = procfs.fdinfo(pid, fd, proc)
                mnt = info.get("mnt_id", "")
                if not mnt or mnt in ns_ids:
                    continue
                st = os.stat(proc / str(pid) / "fd" / str(fd))
                ino, device = st.st_ino, stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                fifo = stat.S_ISFIFO(st.st_mode)
                flags = int(info.get("flags", "0"), 8) & os.O_ACCMODE
            except (OSError, ValueError):
                continue
            key = f"file[{int(mnt):x}:{ino:x}]"
            if key in found and found[key].flags != flags:
                flags = os.O_RDWR         # opened twice, differently: one fd that can do both
            found[key] = ExtFile(key, link, flags, device, fifo)
    return list(found.values())


def _owners(top: str) -> list[list]:
    """[relative path, mode, uid, gid] of a directory and everything in it: the snapshot's archive
    keeps neither (every file in it is root's, 0600), the restored tasks need them."""
    paths = [top] + [os.path.join(d, name) for d, dirs, files in os.walk(top) for name in dirs + files]
    out = []
    for path in paths:
        st = os.lstat(path)
        out.append(["" if path == top else os.path.relpath(path, top), st.st_mode & 0o7777, st.st_uid, st.st_gid])
    return out


def _chown_back(top: str, owners: list[list]) -> None:
    for rel, mode, uid, gid in owners:
        path = os.path.join(top, rel) if rel else top
        os.lchown(path, uid, gid)
        if not os.path.islink(path):
            os.chmod(path, mode)


def save(p: Plan, images: Path) -> int:
    """Write the plan next to the images and copy the private directories' content (the tree
    frozen), with their owners and modes. Returns the bytes copied."""
    copied, owners = 0, {}
    for m in p.mounts:
        if m.kind == PRIVATE_DIR:
            dest = images / PRIVATE / m.key
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            run(["cp", "-a", "--", m.source, str(dest)], timeout=600,
                hint=f"the private directory {m.source} could not be copied into the snapshot")
            owners[m.key] = _owners(m.source)
            copied += sum(f.stat().st_size for f in dest.rglob("*") if f.is_file() and not f.is_symlink())
    (images / NAME).write_text(json.dumps({**p.to_json(), "owners": owners}, indent=1) + "\n")
    return copied


def load(images: Path) -> Plan | None:
    f = images / NAME
    return Plan.from_json(json.loads(f.read_text())) if f.exists() else None


def _owners_saved(images: Path) -> dict[str, list[list]]:
    return json.loads((images / NAME).read_text()).get("owners", {})


def _stand_in(f: ExtFile) -> int:
    """A FIFO from another namespace, its other end not carried: one end of a pipe of our own
    (criu wants a FIFO there, mode 0600 as the session FIFO's: "bad mode 020666" for /dev/null,
    measured); the other end is closed, nothing comes through it."""
    r, w = os.pipe()
    keep, drop = (r, w) if f.flags == os.O_RDONLY else (w, r)
    os.close(drop)
    return keep


def prepare(p: Plan, images: Path) -> dict[str, int]:
    """Before criu restores the tree: make what the new boot lacks, open the files that were
    outside the namespace. Returns criu's --inherit-fd map (key -> our fd; the caller closes them)."""
    for m in p.mounts:
        if os.path.lexists(m.source):
            continue
        if m.kind == PRIVATE_DIR:
            parent = os.path.dirname(m.source)      # systemd makes it root-only
            os.makedirs(parent, mode=0o700, exist_ok=True)
            run(["cp", "-a", "--", str(images / PRIVATE / m.key), m.source], timeout=600,
                hint=f"the private directory {m.source} could not be put back from the snapshot")
            _chown_back(m.source, _owners_saved(images).get(m.key, []))
        elif m.is_dir:          # systemd's per-unit directories, the empty stand-in
            os.makedirs(m.source, mode=0o755, exist_ok=True)
    for point in p.points:
        if not os.path.lexists(point.path):
            if point.is_dir:
                os.makedirs(point.path, mode=0o755, exist_ok=True)
            else:
                Path(point.path).touch(mode=0o644)
    fds: dict[str, int] = {}
    try:
        for f in p.files:
            fds[f.key] = _stand_in(f) if f.fifo else os.open(f.path, f.flags | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds
