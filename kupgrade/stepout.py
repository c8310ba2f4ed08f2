"""Stepping out of a carried tree. An admin runs kupgrade over ssh; the session's processes are
children of the sshd listener, so carrying ssh.service carries the sessions with it, their ptys
and connections included — but criu cannot dump a tree that holds kupgrade (it is criu's parent).
So kupgrade steps out: once the admin said go (asked before anything changes, since the terminal
is not kupgrade's after this), it forks; the parent ends (its shell gets the terminal back and is
carried with the rest of the tree), the child starts a session of its own, outside the tree, and
does the upgrade with its output in the log only. The terminal freezes with its tree at the
switch and continues in the new kernel, where `kupgrade report` says how it went.

Not possible, and a blocker as before, when kupgrade is the tree's root, is in a cgroup that is
frozen as a workload (it would freeze itself), or `--step` asks on the terminal."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import psutil

from .errors import KupgradeError
from .record import Workload

ADOPTED_WAIT_S = 5.0


def _cgroup(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cgroup").read_text().strip().split("::", 1)[-1]
    except OSError:
        return ""


def mine(me: int | None = None) -> set[int]:
    """kupgrade's own process and its children (criu, hooks): never part of a workload."""
    me = me or os.getpid()
    try:
        return {me} | {c.pid for c in psutil.Process(me).children(recursive=True)}
    except psutil.Error:
        return {me}


def why_not(w: Workload, me: int | None = None, cgroup_of=_cgroup) -> str:
    """Why kupgrade cannot step out of this tree ("" when it can)."""
    me = me or os.getpid()
    if w.root_pid == me:
        return "kupgrade is its root"
    if w.cgroup and (cgroup_of(me) + "/").startswith(w.cgroup.rstrip("/") + "/"):
        return f"kupgrade runs in its cgroup {w.cgroup}, which is frozen for the snapshot"
    return ""


def trimmed(w: Workload, me: int | None = None) -> Workload:
    """The tree as it will be dumped: without kupgrade and its children."""
    gone = mine(me)
    return replace(w, pids=tuple(p for p in w.pids if p not in gone))


def step_out(trees: list[Workload], say) -> int:
    """Fork; the parent says where the upgrade went and ends (os._exit), the child returns its
    new PID once it belongs to no tree any more. Raises (in the child: nothing was changed yet)
    when a process of a tree adopted it (a subreaper)."""
    parent = os.getpid()
    child = os.fork()
    if child:
        say(f"kupgrade steps out of this terminal (it is carried with {', '.join(w.selector for w in trees)}) and "
            f"goes on as PID {child}, logging to /var/log/kupgrade/. This terminal freezes at the switch and "
            "continues in the new kernel: `kupgrade report` there says how it went.")
        os._exit(0)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    deadline = time.monotonic() + ADOPTED_WAIT_S
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.01)
    adopter = os.getppid()
    for w in trees:
        try:
            inside = {w.root_pid} | {c.pid for c in psutil.Process(w.root_pid).children(recursive=True)}
        except psutil.Error:
            continue
        if adopter in inside or os.getpid() in inside:
            raise KupgradeError(f"stepping out of {w.selector} failed: PID {adopter} of that tree adopted kupgrade",
                                "run kupgrade from outside the workload (the console, or a terminal not carried)")
    return os.getpid()
