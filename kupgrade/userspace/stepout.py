"""Stepping out of a carried tree. An admin runs kupgrade over ssh; the session's processes are
children of the sshd listener, so carrying ssh.service carries the sessions with it, their ptys
and connections included — but criu cannot dump a tree that holds kupgrade (it is criu's parent).
So kupgrade steps out: once the admin said go (asked before anything changes, since the terminal
is not kupgrade's after this), it forks; the parent ends (its shell gets the terminal back and is
carried with the rest of the tree), the child starts a session of its own, outside the tree, and
does the upgrade with its output in the log only. The terminal freezes with its tree at the
switch and continues in the new kernel, where `kupgrade report` says how it went.

When kupgrade also runs in the tree's cgroup (an ssh session on a host without pam_systemd
stays in ssh.service's cgroup, which the freezer freezes), the child moves itself into a
transient scope of its own (`kupgrade-PID.scope`; without dbus a cgroup of its own:
systemd.own_scope) before anything changes.

Not possible, and a blocker as before, when kupgrade is the tree's root, is in a workload's
cgroup where systemd cannot give it a scope, or `--step` asks on the terminal."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace

import psutil

from kupgrade.errors import KupgradeError
from kupgrade.output.record import Workload
from kupgrade.system import procfs
from kupgrade.userspace import systemd

ADOPTED_WAIT_S = 5.0
MOVED_WAIT_S = 30.0     # measured: the move came after the check at once, with PostgreSQL starting
log = logging.getLogger("kupgrade.userspace.stepout")
_terminal = ""      # the admin's terminal, kept by the child that stepped out of it (tell)


def _cgroup(pid: int) -> str:
    try:
        return procfs.cgroup(pid)
    except OSError:
        return ""


def mine(me: int | None = None) -> set[int]:
    """kupgrade's own process and its children (criu, hooks): never part of a workload."""
    me = me or os.getpid()
    try:
        return {me} | {c.pid for c in psutil.Process(me).children(recursive=True)}
    except psutil.Error:
        return {me}


def inside(w: Workload, me: int | None = None, cgroup_of=_cgroup) -> bool:
    """kupgrade runs in a cgroup of the workload's tasks: its own (its freezer would freeze
    kupgrade), or an ssh session's scope in its tree (workloads.other_cgroups). criu, kupgrade's
    child, must not share one either: criu leaves its own cgroup out of the images ("Set 1 is
    criu one"), and the restore of the tasks in it fails ("cg: No set 1 found", measured)."""
    mine = cgroup_of(me or os.getpid())
    return any(procfs.under(mine, cg) for cg in (w.cgroup, *w.other_cgroups) if cg)


def why_not(w: Workload, me: int | None = None, cgroup_of=_cgroup, scopes=systemd.has_scopes) -> str:
    """Why kupgrade cannot step out of this tree ("" when it can)."""
    me = me or os.getpid()
    if w.root_pid == me:
        return "kupgrade is its root"
    if inside(w, me, cgroup_of) and not scopes():
        return f"kupgrade runs in its cgroup {w.cgroup}, which is frozen for the snapshot, and there is no systemd " \
               "to give it a scope of its own"
    return ""


def can_leave(unit: str, me: int | None = None, show=systemd.show, scopes=systemd.has_scopes) -> bool:
    """kupgrade can leave the cgroup of this unit, which it runs in (a scope of its own): it is
    not the unit's main process."""
    me = me or os.getpid()
    return scopes() and int(show(unit).get("MainPID") or 0) != me


def trimmed(w: Workload, me: int | None = None) -> Workload:
    """The tree as it will be dumped: without kupgrade and its children."""
    gone = mine(me)
    threads = {t for p in gone for t in procfs.tids(p)}
    return replace(w, pids=tuple(p for p in w.pids if p not in gone), tids=tuple(t for t in w.tids if t not in threads))


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
    global _terminal
    _terminal = next((os.ttyname(fd) for fd in (0, 1, 2) if os.isatty(fd)), "")
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    deadline = time.monotonic() + ADOPTED_WAIT_S
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.01)
    adopter = os.getppid()
    _leave_cgroups(trees)
    for w in trees:
        try:
            inside = {w.root_pid} | {c.pid for c in psutil.Process(w.root_pid).children(recursive=True)}
        except psutil.Error:
            continue
        if adopter in inside or os.getpid() in inside:
            raise KupgradeError(f"stepping out of {w.selector} failed: PID {adopter} of that tree adopted kupgrade",
                                "run kupgrade from outside the workload (the console, or a terminal not carried)")
    return os.getpid()


def tell(line: str, terminal: str | None = None) -> bool:
    """One line on the admin's terminal after kupgrade stepped out of it: an upgrade that stops
    before the switch gives the terminal back running, and its admin must not wait for a switch
    that will not come. As `write` does: opened without becoming its controlling terminal."""
    terminal = _terminal if terminal is None else terminal
    if not terminal:
        return False
    try:
        fd = os.open(terminal, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        os.write(fd, f"\r\n{line}\r\n".encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _leave_cgroups(trees: list[Workload], cgroup_of=_cgroup) -> None:
    """Out of every tree's cgroup (its freezer freezes it): into a scope of kupgrade's own."""
    holding = [w for w in trees if inside(w, None, cgroup_of)]
    if not holding:
        return
    systemd.sweep_own()
    where = systemd.own_scope(os.getpid(), f"kupgrade run, stepped out of {', '.join(w.selector for w in holding)}")
    # systemd moves the PID when the scope's start job runs, after StartTransientUnit answered
    deadline = time.monotonic() + MOVED_WAIT_S
    while any(inside(w, None, cgroup_of) for w in holding) and time.monotonic() < deadline:
        time.sleep(0.02)
    log.info("kupgrade left the cgroup of %s for %s", ", ".join(w.selector for w in holding), where)
    if still := [w.selector for w in holding if inside(w, None, cgroup_of)]:
        raise KupgradeError(f"stepping out of {', '.join(still)} failed: kupgrade is still in its cgroup "
                            f"({cgroup_of(os.getpid())})", "run kupgrade from outside the workload")
