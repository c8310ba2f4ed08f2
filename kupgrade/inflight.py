"""A run in progress, as this boot knows it: the lock that keeps a second run out, the journal of
what the run has changed so far, and the signals that must not leave those changes behind.

The journal (/run, root-only) names everything the rollback would undo — frozen cgroups, trees
criu left stopped (or was dumping), their TCP sockets, the workloads' OOM scores, the snapshot
tmpfs, a loaded kexec kernel, the device hooks that quiesced — and is rewritten whenever one of
those changes. A run that ends in any way Python sees (a failure, a "no", SIGTERM, SIGHUP,
SIGINT) rolls back and removes it; one that cannot (SIGKILL, the OOM killer) leaves it, and
`kupgrade recover` undoes the rest from it. Both live in /run: after a reboot or a kexec
nothing of the old boot is left to undo.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kupgrade.errors import BlockedError, KupgradeError
from kupgrade.output.record import Blocker, write_private

LOCK = Path("/run/kupgrade.lock")
JOURNAL = Path("/run/kupgrade.journal.json")
SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Interrupted(KupgradeError):
    """A signal asked kupgrade to stop: the pipeline rolls back as for any other failure."""

    exit_code = 130

    def __init__(self, signum: int, *, details: dict | None = None) -> None:
        self.signum = signum
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}",
                         "everything before the kernel switch was undone (see `kupgrade report`)", details=details)

    def _rebuild(self, details: dict) -> "Interrupted":
        return Interrupted(self.signum, details=details)


@dataclass
class Lock:
    """The lock of one run; released when the process ends, however it ends."""
    fd: int

    def release(self) -> None:
        os.close(self.fd)


def holder(path: Path | None = None) -> int:
    """The PID holding the lock (0 when nobody does)."""
    path = path or LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            return int(Path(path).read_text().strip() or 0) or -1
        except (OSError, ValueError):
            return -1
    finally:
        os.close(fd)
    return 0


def acquire(path: Path | None = None, journal: Path | None | bool = True) -> Lock:
    """Take the lock or say who has it; refuse while an interrupted run's journal is left
    (journal=None: `kupgrade recover`, which is there to undo it)."""
    path = path or LOCK
    journal = JOURNAL if journal is True else journal
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BlockedError([running_blocker(holder(path))])
    if journal is not None and (left := interrupted_blocker(journal)) is not None:
        os.close(fd)
        raise BlockedError([left])
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return Lock(fd)


def running_blocker(pid: int) -> Blocker:
    who = f"PID {pid}" if pid > 0 else "another process"
    return Blocker(f"another kupgrade run is in progress ({who} holds {LOCK})",
                   "wait for it to finish; one upgrade at a time")


def interrupted_blocker(journal: Path | None = None) -> Blocker | None:
    """A run that was killed before it could undo its changes, if one was."""
    state = read(journal)
    if state is None:
        return None
    return Blocker(f"kupgrade run {state.get('record', {}).get('id', '?')} (PID {state.get('pid', '?')}) was "
                   f"interrupted and left its changes behind: {', '.join(describe(state)) or 'nothing undone yet'}",
                   "run `kupgrade recover`: it resumes every workload and undoes the rest")


def blockers(lock: Path | None = None, journal: Path | None = None) -> list[Blocker]:
    """For preflight (check changes nothing, so it does not take the lock)."""
    pid = holder(lock)
    if pid == os.getpid():          # this run's own lock: the journal is its own too
        return []
    if pid:
        return [running_blocker(pid)]
    left = interrupted_blocker(journal)
    return [left] if left is not None else []


def read(journal: Path | None = None) -> dict | None:
    journal = journal or JOURNAL
    try:
        return json.loads(journal.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": "?", "record": {}, "unreadable": True}


def write(state: dict, journal: Path | None = None) -> None:
    journal = journal or JOURNAL
    write_private(journal, json.dumps(state, indent=1) + "\n")


def clear(journal: Path | None = None) -> None:
    (journal or JOURNAL).unlink(missing_ok=True)


def describe(state: dict) -> list[str]:
    """What the journal says is left to undo, one phrase each."""
    out = [f"cgroup {cg} frozen" for cg in state.get("frozen_cgroups", [])]
    out += [f"{w['selector']} stopped" for w in state.get("stopped", [])]
    dumping = state.get("dumping") or []
    out += [f"{w['selector']} being dumped" for w in (dumping if isinstance(dumping, list) else [dumping])]
    if state.get("snapshot_mounted"):
        out.append(f"tmpfs {state.get('snapshot_dir')} mounted")
    if state.get("kexec_loaded"):
        out.append("a kexec kernel loaded")
    if state.get("unpacked"):
        out.append("a rehearsal's unpacked snapshot")
    out += [f"{u} stopped (to start fresh)" for u in state.get("stopped_units", [])]
    return out


# --- signals --------------------------------------------------------------------------------

def _raise(signum: int, _frame) -> None:
    if signum == signal.SIGHUP:
        _detach_terminal()
    raise Interrupted(signum)


def _detach_terminal() -> None:
    """The terminal is gone (an ssh session dropped): stdio to /dev/null so that writing to it
    cannot fail the rollback; the log file keeps everything."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def catch_signals() -> None:
    """From now on SIGTERM, SIGHUP and SIGINT raise Interrupted where the run is."""
    for s in SIGNALS:
        signal.signal(s, _raise)


@contextmanager
def deferred():
    """A SIGTERM/SIGHUP/SIGINT that comes while criu works on a tree is answered once criu is done
    with it (then the rollback resumes the tree criu left stopped): killing criu half-way could
    leave the tree seized, with criu's parasite code in it. Run criu in a session of its own too,
    so that a Ctrl-C on the terminal does not reach it (run(..., new_session=True))."""
    got: list[int] = []
    old = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        if old[s] is not signal.SIG_IGN:
            signal.signal(s, lambda signum, _frame: got.append(signum))
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if got and callable(old[got[0]]):
            old[got[0]](got[0], None)


def hold_signals() -> None:
    """While undoing, and from the point of no return on: a signal changes nothing any more
    (the rollback must finish; `kexec --exec` must not be raced by one)."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
