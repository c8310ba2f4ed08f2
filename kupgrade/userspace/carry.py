"""What a snapshot carries and what it does not, named per task before anything changes.

criu carries a tree's memory, files, pipes and sockets, its zombies, stopped tasks and pending
signals, the file locks its tasks hold (`--file-locks`, always passed: criu.dump_argv), and SysV
IPC when the tree root has an IPC namespace of its own (criu dumps that namespace whole). This
module names what it would leave behind or refuse, each as a Blocker naming the PID and the
object:

- SysV shared memory, message queues and semaphores of the namespace criu itself runs in (the
  host's) that a task uses: they are not dumped and would not exist after the switch;
- a task in another IPC namespace than the tree root's (criu refuses nested IPC namespaces);
- a tree root that does not lead its session (criu refuses it without --shell-job), a task
  whose session leader is outside the PID namespace, or whose leader has exited where criu
  cannot stand in for it (only for a child of the root);
- a process outside the tree in the session of a task in the tree (it would stay behind);
- a POSIX lock held by a process outside the tree on a file a task in the tree has open;
- a SysV segment attached next to shared memory with the same number (criu takes the two for
  one: `shm_clashes`), when that lasts.

Every reader takes the `proc` root so that tests can use a fake /proc tree.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from pathlib import Path
from typing import Callable

from kupgrade.errors import CommandError
from kupgrade.output.record import Blocker, Workload
from kupgrade.system import procfs
from kupgrade.system.procfs import PROC, Stat, who
from kupgrade.system.run import run as run_cmd

log = logging.getLogger("kupgrade.userspace.carry")

SemPids = Callable[[int, int], set[int]]    # (semid, nsems) -> PIDs of the last semop on each
GETPID = 11                                 # semctl(2) command: PID of the last semop

SYSV_HINT = ("criu carries SysV IPC only with an IPC namespace of the tree's own: restart the workload in "
             "one (`unshare --ipc`, systemd `PrivateIPC=yes`), or have it stop using the object")


def blockers(w: Workload, proc: Path = PROC, sempids: SemPids | None = None,
             leaving: frozenset[int] = frozenset()) -> list[Blocker]:
    """What criu would refuse or leave behind in this tree. leaving: processes outside the tree
    that leave its sessions before the dump (kupgrade stepping out of it: stepout.py)."""
    tasks = {}
    for pid in w.pids:
        try:
            tasks[pid] = procfs.stat(pid, proc)
        except (FileNotFoundError, ProcessLookupError):
            pass    # exited meanwhile (criu walks the tree itself at the dump)
    zombies = {pid for pid, st in tasks.items() if st.state == "Z"}
    return (sessions(w, tasks, proc, leaving) + sysv(w, proc, sempids or last_semops, zombies)
            + locks(w.pids, proc) + shm_blockers(w, proc))


# --- sessions and process groups ---------------------------------------------------------------

def sessions(w: Workload, tasks: dict[int, Stat], proc: Path = PROC,
             leaving: frozenset[int] = frozenset()) -> list[Blocker]:
    """criu rebuilds sessions and process groups from the dumped tasks alone: the root must lead
    its session; a leader that exited is replaced by a stand-in task (pstree.c
    prepare_pstree_ids), for a session only above a child of the root. A live process outside
    the tree in one of its sessions is left behind (a process group lies within a session, so
    this also covers a group whose leader is outside)."""
    root = tasks.get(w.root_pid)
    if root is not None and root.session != w.root_pid:
        # one blocker says it all: the rest of that session is not the tree's
        led = (f"in session {root.session}, led by {who(root.session, proc)}" if root.session else
               "in a session whose leader is outside kupgrade's PID namespace")
        return [Blocker(f"{who(w.root_pid, proc)}, the root of {w.selector}, does not lead its session: it is "
                        f"{led}",
                        "criu dumps only a tree whose root leads its session (kupgrade does not pass "
                        "--shell-job): start the workload with setsid (a systemd service gets its own "
                        "session), or select the session leader")]
    outside = _outsiders({s.session for s in tasks.values()} - {0}, set(tasks) | leaving, proc)
    out = []
    for pid, st in tasks.items():
        if st.session == 0:
            out.append(Blocker(f"{who(pid, proc)} belongs to a session whose leader is outside kupgrade's PID "
                               "namespace", "criu cannot dump it: run kupgrade in the workload's PID "
                               "namespace, or start the workload with setsid"))
        elif st.session not in tasks and st.session not in outside and not _stand_in(pid, tasks, w.root_pid):
            out.append(Blocker(f"{who(pid, proc)} is in session {st.session}, whose leader PID {st.session} has "
                               f"exited, below PID {st.ppid} rather than a child of the root: criu would find "
                               "no leader for that session at restore", "restart the workload, or end that process"))
    for pid, st in sorted(outside.items()):
        members = sorted(p for p, s in tasks.items() if s.session == st.session)
        group = sorted(p for p, s in tasks.items() if s.pgrp == pid)
        lead = f"; it leads process group {pid} of PID(s) {group}" if group else ""
        out.append(Blocker(f"{who(pid, proc)} is not in the tree of {w.selector} but shares session {st.session} "
                           f"with its PID(s) {members}{lead}: it would not be carried",
                           "a workload's session is carried whole or not at all: end that process, or restart "
                           "the workload so that all its processes descend from the tree root"))
    return out


def _outsiders(sids: set[int], tree: set[int], proc: Path) -> dict[int, Stat]:
    """Live processes outside the tree whose session is one of sids (zombies carry nothing)."""
    found = {}
    for pid in procfs.pids(proc):
        if pid in tree:
            continue
        try:
            st = procfs.stat(pid, proc)
        except (FileNotFoundError, ProcessLookupError):
            continue
        if st.session in sids and st.state != "Z":
            found[pid] = st
    return found


def _stand_in(pid: int, tasks: dict[int, Stat], root: int) -> bool:
    """Whether criu stands in for the exited leader of pid's session: the topmost ancestor of
    pid in the same session must be a child of the root."""
    while tasks[pid].ppid in tasks and tasks[tasks[pid].ppid].session == tasks[pid].session:
        pid = tasks[pid].ppid
    return tasks[pid].ppid == root


# --- SysV IPC ----------------------------------------------------------------------------------

def ipc_ns(pid: int | str, proc: Path = PROC) -> str:
    return os.readlink(proc / str(pid) / "ns" / "ipc")


def sysv_table(path: Path) -> list[dict[str, str]]:
    """A /proc/sysvipc file as rows keyed by its header's column names (the columns differ
    between kernels)."""
    try:
        return sysv_rows(path.read_text())
    except FileNotFoundError:
        return []


def sysv_rows(text: str) -> list[dict[str, str]]:
    """A /proc/sysvipc file's text as rows keyed by its header's column names."""
    lines = text.splitlines()
    names = lines[0].split() if lines else []
    return [dict(zip(names, line.split())) for line in lines[1:] if line.strip()]


def attached_shm(pid: int, proc: Path = PROC) -> set[int]:
    """The shmids of the SysV segments pid has attached: /proc/PID/maps names them /SYSVkey and
    gives the shmid as the inode."""
    return {int(f[4]) for f in procfs.map_fields(pid, proc) if len(f) == 6 and f[5].startswith("/SYSV")}


def last_semops(semid: int, nsems: int) -> set[int]:
    """semctl(GETPID) of every semaphore of a set: the PIDs of their last semop (only what the
    kernel keeps: whoever operated before, or holds SEM_UNDO adjustments, is not known)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return {p for n in range(nsems) if (p := libc.semctl(semid, n, GETPID)) > 0}


def _key(row: dict[str, str]) -> str:
    return f"key 0x{int(row['key']) & 0xFFFFFFFF:08x}"


def _uses(pid: int, row: dict[str, str], roles: dict[str, str]) -> list[str]:
    return [what for col, what in roles.items() if row.get(col) == str(pid)]


def sysv(w: Workload, proc: Path = PROC, sempids: SemPids = last_semops, zombies=frozenset()) -> list[Blocker]:
    """The SysV objects of criu's own IPC namespace (kupgrade starts criu: ours, normally the
    host's) used by a live task of the tree (a zombie named as the last user uses nothing now);
    objects of the root's own namespace are carried."""
    try:
        mine, root_ns = ipc_ns("self", proc), ipc_ns(w.root_pid, proc)
    except OSError:
        return []
    out, host_users = [], []
    for pid in w.pids:
        try:
            ns = ipc_ns(pid, proc)
        except OSError:
            continue
        if ns != root_ns:
            out.append(Blocker(f"{who(pid, proc)} is in another IPC namespace ({ns}) than the root of "
                               f"{w.selector} ({root_ns}): criu cannot dump nested IPC namespaces",
                               "select that process's tree separately, or keep the workload in one namespace"))
        elif ns == mine and pid not in zombies:
            host_users.append(pid)
    if not host_users:
        return out
    tables = {name: sysv_table(proc / "sysvipc" / name) for name in ("shm", "msg", "sem")}
    users: dict[str, dict[str, list[int]]] = {}     # object -> how it is used -> by which PIDs
    for pid in host_users:
        for obj, how in _sysv_of(pid, tables, proc, sempids):
            users.setdefault(obj, {}).setdefault(how, []).append(pid)
    for obj, hows in users.items():     # one blocker per object (PostgreSQL: 6 processes, 2 segments)
        (how, pids), *more = hows.items()
        also = "; ".join(f"PID{'s' if len(p) > 1 else ''} {', '.join(map(str, p))} of its tree too ({h})"
                         for h, p in [(how, pids[1:])] + more if p)
        out.append(Blocker(f"{who(pids[0], proc)} uses {obj}; {how})" + (f", and {also}" if also else "")
                           + " in the host IPC namespace: it is not in the snapshot and would not exist after the "
                           "switch", SYSV_HINT))
    return out


def _sysv_of(pid: int, tables: dict[str, list[dict[str, str]]], proc: Path, sempids: SemPids) -> list[tuple[str, str]]:
    """(the object, how this task uses it) for every SysV object of the table it uses."""
    try:
        attached = attached_shm(pid, proc)
    except OSError:
        attached = set()
    found = []
    for row in tables["shm"]:
        how = (["attached"] if int(row["shmid"]) in attached else []) + _uses(
            pid, row, {"cpid": "created by it", "lpid": "last attached or detached by it"})
        if how:
            found.append((f"SysV shared memory segment shmid {row['shmid']} ({_key(row)}, {row.get('size', '?')} "
                          "bytes", ", ".join(how)))
    for row in tables["msg"]:
        if how := _uses(pid, row, {"lspid": "last sent to by it", "lrpid": "last received from by it"}):
            found.append((f"SysV message queue msqid {row['msqid']} ({_key(row)}, {row.get('qnum', '?')} "
                          "message(s) queued", ", ".join(how)))
    for row in tables["sem"]:
        if pid in sempids(int(row["semid"]), int(row.get("nsems", "0"))):
            found.append((f"SysV semaphore set semid {row['semid']} ({_key(row)}", "last operated on by it"))
    return found


# --- SysV segments numbered like the shared memory next to them ------------------------------

CLASH_WAIT_S = 5.0      # how long a clash may last and still be waited out (check and the snapshot)
CLASH_HINT = ("restart the workload: its shared memory gets other numbers (PostgreSQL with "
              "`dynamic_shared_memory_type = sysv`: `posix`, Debian's default, keeps its segments in /dev/shm)")


ShmOf = Callable[[int], list[dict[str, str]]]   # a task -> the SysV segments of its IPC namespace


def shmem_numbers(pid: int, proc: Path = PROC, rows: list[list[str]] | None = None) -> dict[int, str]:
    """The kernel's numbers (inodes of its internal shmem mount) of the task's shared anonymous
    mappings (`/dev/zero (deleted)` in maps) and memfds (mapped or open), each with what it is.
    SysV segments are numbered by their shmid instead (/SYSV in maps): not listed here. rows:
    its maps as procfs.map_fields read them already."""
    found: dict[int, str] = {}
    try:
        for f in procfs.map_fields(pid, proc) if rows is None else rows:
            if len(f) == 6 and "s" in f[1] and (f[5].startswith("/dev/zero (deleted)") or f[5].startswith("/memfd:")):
                found.setdefault(int(f[4]), f"{f[5].removesuffix(' (deleted)')} mapped at {f[0]}")
        for fd in (proc / str(pid) / "fd").iterdir():
            try:
                if (link := os.readlink(fd)).startswith("/memfd:"):
                    found.setdefault(os.stat(fd).st_ino, f"{link.removesuffix(' (deleted)')} open as fd {fd.name}")
            except OSError:
                continue
    except OSError:
        pass        # exited meanwhile
    return found


def ns_shm(pid: int) -> list[dict[str, str]]:
    """The SysV segments of the task's IPC namespace: /proc/sysvipc/shm shows the reader's own
    namespace's, so it is read through nsenter."""
    try:
        out = run_cmd(["nsenter", f"--ipc=/proc/{pid}/ns/ipc", "cat", "/proc/sysvipc/shm"], timeout=10).stdout
    except CommandError as e:
        log.warning("could not read the SysV segments of PID %d's IPC namespace: %s", pid, e.message)
        return []
    return sysv_rows(out.decode(errors="replace"))


def shm_clashes(w: Workload, proc: Path = PROC, shm_of: ShmOf | None = None) -> list[str]:
    """Where criu would take a SysV segment of the tree's IPC namespace and a mapping of the
    kernel's other shmem (shared anonymous memory, a memfd) with the same number for one, each
    said in a line. The kernel numbers SysV segments by their shmid and the rest by an inode
    counter: both start small, so they meet; criu keys both by that number in one table
    (shmem.c shmem_find). Measured: a segment that merely exists (detached, not yet removed)
    while the tree's 1 MiB shared memory had its number: the dump went through and the memory
    came back with the segment's content, zeros (the services scenario's counter restarted;
    CI run of 2026-12-06). And a segment attached next to such a mapping: criu reads a task's
    mappings in order and takes a mapping with the same device and inode as the one before it
    for the same file (proc_parse.c vma_get_mapfile: "borrows vfi from previous"): then PostgreSQL's 142 MiB main shared memory counted as part of
    its dynamic segment 4, and the dump failed ("Can't open 0/map_files/..." in
    dump_one_sysv_shmem; measured in a CI run with criu 3.17, `dynamic_shared_memory_type = sysv`,
    its main shared memory numbered 4). Mappings that are not next to each other are told apart.
    Only a tree with an IPC namespace of its own can have a segment in the snapshot (the host's
    are refused: `sysv`): the others are not read, which keeps this off the pause."""
    try:
        if ipc_ns(w.root_pid, proc) == ipc_ns("self", proc):
            return []
    except OSError:
        return []
    out, adjacent, numbers = [], set(), {}
    for pid in w.pids:
        try:
            rows = procfs.map_fields(pid, proc)
        except OSError:
            continue        # exited meanwhile
        prev: list[str] = []
        for f in rows:
            if (len(f) == 6 and len(prev) == 6 and f[3:5] == prev[3:5] and f[4] != "0"
                    and f[5].startswith("/SYSV") != prev[5].startswith("/SYSV")):
                sysv, other = (f, prev) if f[5].startswith("/SYSV") else (prev, f)
                adjacent.add(int(sysv[4]))
                out.append(f"{who(pid, proc)} has SysV segment shmid {sysv[4]} attached at {sysv[0]} next to "
                           f"{other[5].removesuffix(' (deleted)')} at {other[0]}, which has the same number: "
                           "criu's dump would take them for one")
            prev = f
        for n, what in shmem_numbers(pid, proc, rows).items():
            numbers.setdefault(n, (pid, what))
    if not numbers:
        return out          # nothing to clash with: the namespace is not read
    for row in (shm_of or ns_shm)(w.root_pid):
        if (n := int(row.get("shmid", "-1"))) in numbers and n not in adjacent:
            pid, what = numbers[n]
            out.append(f"SysV segment shmid {n} ({_key(row)}, {row.get('size', '?')} bytes) of its IPC namespace "
                       f"and {who(pid, proc)}'s {what} have the same number, {n}: criu's dump would take the one "
                       "for the other (the shared memory restored with the segment's content)")
    return out


def wait_unclashed(w: Workload, timeout: float = CLASH_WAIT_S, proc: Path = PROC, shm_of: ShmOf | None = None,
                   clock=time.monotonic, pause=time.sleep) -> list[str]:
    """shm_clashes, once none is left or after `timeout` seconds of them (a segment that comes and
    goes, like PostgreSQL's dynamic shared memory, is waited out; one that stays is named)."""
    end = clock() + timeout
    while (found := shm_clashes(w, proc, shm_of)) and clock() < end:
        pause(0.05)
    return found


def shm_blockers(w: Workload, proc: Path = PROC, shm_of: ShmOf | None = None) -> list[Blocker]:
    return [Blocker(f"{line} (for {CLASH_WAIT_S:.0f} s)", CLASH_HINT)
            for line in wait_unclashed(w, CLASH_WAIT_S, proc, shm_of)]


# --- file locks --------------------------------------------------------------------------------

def _open_files(pids, proc: Path) -> dict[tuple[int, int, int], tuple[int, str]]:
    """(major, minor, inode) of every file the tasks have open -> (first PID, path). From fdinfo's
    mnt_id and ino (a kernel whose fdinfo lacks ino matches nothing) and the mount's device in
    mountinfo: the superblock's device, as /proc/locks prints it, without a stat() that a hung
    network filesystem could block."""
    found: dict[tuple[int, int, int], tuple[int, str]] = {}
    for pid in pids:
        task = proc / str(pid)
        try:
            devs = {m.mount_id: m.dev for m in procfs.mounts(task / "mountinfo")}
        except OSError:
            continue
        for fd, path in procfs.fds(pid, proc).items():
            try:
                info = procfs.fdinfo(pid, fd, proc)
            except OSError:
                continue
            dev, ino = devs.get(info.get("mnt_id", "")), info.get("ino", "")
            if dev and ino.isdigit():
                major, minor = dev.split(":")
                found.setdefault((int(major), int(minor), int(ino)), (pid, path))
    return found


def locks(pids, proc: Path = PROC) -> list[Blocker]:
    """POSIX locks held by a process outside the tree on a file a task of the tree has open.
    The tree's own locks are carried (--file-locks). Only POSIX locks name their owner in
    /proc/locks: a flock or OFD lock belongs to an open file description that the tree may
    share, so it is not attributed here."""
    try:
        lines = (proc / "locks").read_text().splitlines()
    except FileNotFoundError:
        return []
    tree, opened, out, seen = set(pids), None, [], set()
    for line in lines:     # "1: POSIX  ADVISORY  WRITE 15527 fe:00:1477826 0 EOF"; waiters have "->"
        f = line.split()
        if len(f) < 6 or f[1] != "POSIX" or not f[4].isdigit() or int(f[4]) in tree:
            continue
        holder, (maj, mnr, ino) = int(f[4]), f[5].split(":")
        key = (int(maj, 16), int(mnr, 16), int(ino))
        opened = _open_files(pids, proc) if opened is None else opened
        if key in opened and (holder, key) not in seen:
            seen.add((holder, key))
            pid, path = opened[key]
            out.append(Blocker(f"{who(holder, proc)}, outside the tree, holds a POSIX lock on {path}, which "
                               f"{who(pid, proc)} has open: neither that process nor its lock is carried",
                               "let it release the lock or end it first, or select it as a workload too"))
    return out
