"""Resolve the configured workloads (PIDs, cgroups, units) into process trees, and find their
blockers: the tasks' states here, what the snapshot would not carry in carry.py.

Reads /proc and /sys/fs/cgroup only; changes nothing.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import psutil

from kupgrade.output.record import Blocker, Workload
from kupgrade.system import procfs
from kupgrade.system.procfs import PROC
from kupgrade.userspace import carry, sandbox, stepout, systemd, unixsk, volatile

CGROUP_ROOT = systemd.CGROUP_ROOT      # where cgroup v2 is mounted: one definition, in systemd.py


def _tree(root: int) -> tuple[int, ...]:
    p = psutil.Process(root)
    return (root,) + tuple(sorted(c.pid for c in p.children(recursive=True)))


def pts_index(tty_nr: int) -> int | None:
    """The /dev/pts number of a controlling terminal (stat's tty_nr), None for another kind."""
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    return (major - 136) * 256 + minor if 136 <= major <= 143 else None


def pty_masters(pids, proc: Path = PROC) -> set[int]:
    """The pseudo-terminals whose master these tasks hold (/dev/ptmx fds: their tty-index): a
    terminal inside the tree, like an ssh session's under its sshd, which criu carries whole."""
    out: set[int] = set()
    for pid in pids:
        for fd, target in procfs.fds(pid, proc).items():
            if target in ("/dev/ptmx", "/dev/pts/ptmx"):
                try:
                    out.add(int(procfs.fdinfo(pid, fd, proc)["tty-index"]))
                except (OSError, KeyError, ValueError):
                    continue
    return out


def process_blockers(pid: int, root: bool = False, proc: Path = PROC, inner_ptys: set[int] = frozenset()) -> list[Blocker]:
    """What criu cannot dump (or we cannot safely resume) about one task's state. Carried, so no
    blocker: a zombie (criu recreates it), a task stopped by job control (restored stopped; see
    `stopped`), pending signals, a controlling terminal the tree holds both ends of (inner_ptys)."""
    try:
        st, sf = procfs.status(pid, proc), procfs.stat(pid, proc)
    except (FileNotFoundError, ProcessLookupError):
        return []   # exited meanwhile; the tree is resolved again at snapshot time
    who = f"PID {pid} ({st.get('Name', '?')})"
    if st.get("Kthread") == "1" or sf.kthread:      # Kthread: only in newer kernels' status
        return [Blocker(f"{who} is a kernel thread", "select userspace processes only")]
    out = []
    tracer = st.get("TracerPid", "0")
    if tracer != "0" or sf.state == "t":
        out.append(Blocker(f"{who} is being traced" + (f" by PID {tracer}" if tracer != "0" else " (tracing stop)"),
                           "detach the debugger/strace; criu needs to ptrace the process itself"))
    if sf.state == "Z":
        return out + _zombie(pid, who, root, proc)
    if sf.state == "D":
        out.append(Blocker(f"{who} is in uninterruptible sleep (D state)",
                           "wait for its I/O to finish (check the storage it uses) and run check again"))
    if sf.tty_nr and pts_index(sf.tty_nr) not in inner_ptys:
        out.append(Blocker(f"{who} has a controlling terminal",
                           "run it detached from any terminal (setsid, stdin from /dev/null, output to a file) "
                           "or as a service; restoring a terminal across kernels is not supported"))
    return out


def _zombie(pid: int, who: str, root: bool, proc: Path) -> list[Blocker]:
    """A zombie is carried, unless it is the tree root or its main thread exited (pthread_exit)
    while other threads run (criu seize.c: "Zombies with threads are not supported")."""
    if (n := procfs.threads(pid, proc)) > 1:
        return [Blocker(f"{who}: its main thread has exited while {n - 1} other thread(s) run: criu cannot dump "
                        "a process whose main thread is a zombie",
                        "restart the program so that its main thread stays alive (it must not call "
                        "pthread_exit), or end it")]
    if root:
        return [Blocker(f"{who}, the root of its tree, has exited (zombie): criu cannot dump a dead root",
                        "select a live process")]
    return []


def stopped(pids, proc: Path = PROC) -> tuple[int, ...]:
    """The tasks stopped by job control (SIGSTOP, SIGTSTP...): criu restores them stopped, and a
    rollback must not continue them."""
    out = []
    for pid in pids:
        try:
            if procfs.stat(pid, proc).state == "T":
                out.append(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return tuple(out)


def anon_bytes(pid: int) -> int:
    """Anonymous memory of one process (what criu must copy), from smaps_rollup."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def cgroup_procs(cgroup: str, root: Path = CGROUP_ROOT) -> list[int]:
    path = root / cgroup.lstrip("/") / "cgroup.procs"
    return sorted(int(x) for x in path.read_text().split())


def other_cgroups(w: Workload, cgroup_of=procfs.cgroup) -> tuple[str, ...]:
    """The cgroups outside the tree's own that tasks of the tree are in. An ssh session's
    processes are descendants of the sshd listener, but logind (pam_systemd, Debian's default)
    moves each session into a scope of its own (user.slice/user-0.slice/session-3.scope). Such a
    tree is not frozen with the cgroup freezer: criu's freezer mode seizes only the one cgroup's
    tasks ("Unseizable non-zombie … state S" for the others), and tasks kupgrade froze itself
    cannot run criu's parasite (the dump waits forever, measured). criu seizes it task by task,
    as a tree selected by PID."""
    out: set[str] = set()
    for pid in w.pids:
        try:
            cg = cgroup_of(pid)
        except OSError:
            continue        # gone meanwhile
        if not procfs.under(cg, w.cgroup):
            out.add(cg)
    return tuple(sorted(out))


def tree_roots(pids: list[int], parent_of) -> list[int]:
    """The members whose parent is not a member: each starts one tree."""
    members = set(pids)
    return sorted(p for p in pids if parent_of(p) not in members)


def _tids(pids) -> tuple[int, ...]:
    """The IDs of these processes' threads, but the processes' own."""
    return tuple(sorted({t for p in pids for t in procfs.tids(p)} - set(pids)))


def _workload(selector: str, root: int, **kw) -> Workload:
    pids = _tree(root)
    return Workload(selector, root, pids, name=psutil.Process(root).name(), stopped_before=stopped(pids),
                    tids=_tids(pids), **kw)


def _from_units(units, describe_unit, blockers: list[Blocker], unit_props: dict[str, dict]) -> list[Workload]:
    out = []
    for unit in units:
        if describe_unit is None:
            describe_unit = systemd.describe
        selector = f"unit:{unit}"
        props, problem = describe_unit(unit)
        if problem:
            blockers.append(Blocker(problem, "check `workloads.units`; `systemctl status " + unit + "`", selector))
            continue
        unit_props[unit] = props
        main, cg = int(props["MainPID"]), props["ControlGroup"]
        w = _workload(selector, main, cgroup=cg, unit=unit, pidfile=props.get("PIDFile", ""),
                      ident=systemd.identifier(props))
        try:
            strays = sorted(set(cgroup_procs(cg)) - set(w.pids))
        except FileNotFoundError:
            strays = []
        blockers.extend(systemd.blockers(unit, props, selector))
        if strays:
            blockers.append(Blocker(f"{unit}: PIDs {strays} in its cgroup are not descendants of its main "
                                    f"process {main}", "criu dumps one process tree: such a unit cannot be kept yet",
                                    selector))
            continue
        out.append(w)
    return out


def _from_cgroups(cgroups, blockers: list[Blocker]) -> list[Workload]:
    out = []
    for cg in cgroups:
        try:
            procs = cgroup_procs(cg)
        except FileNotFoundError:
            blockers.append(Blocker(f"cgroup {cg} does not exist under {CGROUP_ROOT}",
                                    "check `workloads.cgroups`; paths are cgroup v2 paths like /workload"))
            continue
        if not procs:
            blockers.append(Blocker(f"cgroup {cg} has no processes", "remove it from `workloads.cgroups`"))
            continue
        roots = tree_roots(procs, lambda p: psutil.Process(p).ppid())
        if len(roots) > 1:
            blockers.append(Blocker(f"cgroup {cg} holds {len(roots)} separate process trees (roots {roots})",
                                    "criu dumps one tree at a time: select the trees by PID, or give each its "
                                    "own cgroup"))
            continue
        out.append(_workload(f"cgroup:{cg}", roots[0], cgroup=cg))
    return out


def resolve(pids: tuple[int, ...], cgroups: tuple[str, ...], units: tuple[str, ...] = (),
            describe_unit=None, step_out: bool = False) -> tuple[list[Workload], list[Blocker]]:
    """The selected trees, and everything that blocks them: each task's state, and what the
    snapshot would not carry (carry.blockers; files the new boot will not have: volatile.blockers;
    a sandbox's namespaces and no_new_privs: sandbox.blockers). step_out: a tree that holds
    kupgrade is taken without it (kupgrade steps out before the dump: stepout.py)."""
    blockers: list[Blocker] = []
    unit_props: dict[str, dict] = {}
    workloads = _from_units(units, describe_unit, blockers, unit_props)
    for pid in pids:
        if not psutil.pid_exists(pid):
            blockers.append(Blocker(f"workload PID {pid} does not exist", "check `workloads.pids` in the config"))
            continue
        workloads.append(_workload(f"pid:{pid}", pid))
    workloads += _from_cgroups(cgroups, blockers)
    me = os.getpid()
    holding = {w.key for w in workloads if me in w.pids or w.root_pid in ancestors(me)}
    why = {w.key: "" if step_out and not stepout.why_not(w, me) else
           f" ({stepout.why_not(w, me) or 'kupgrade can step out of it only in a plain `kupgrade run`'})"
           for w in workloads if w.key in holding}
    leaving = {w.key for w in workloads if w.key in holding and not why[w.key]}     # kupgrade steps out of these
    workloads = [stepout.trimmed(w, me) if w.key in leaving else w for w in workloads]
    mine = frozenset(stepout.mine(me)) if leaving else frozenset()
    workloads = [replace(w, other_cgroups=other_cgroups(w)) if w.cgroup else w for w in workloads]
    seen: dict[int, str] = {}
    for w in workloads:
        found: list[Blocker] = []
        if w.root_pid == 1:
            found.append(Blocker("PID 1 (init) cannot be a workload", "select the service's processes instead"))
        if w.key in holding and why[w.key]:
            found.append(Blocker(f"{w.selector} contains kupgrade itself{why[w.key]}",
                                 "run kupgrade from outside the workload, or with `kupgrade run` (no --step)"))
        inner = pty_masters(w.pids)
        for p in w.pids:
            if p in seen and seen[p] != w.selector:
                found.append(Blocker(f"PID {p} is selected twice ({seen[p]} and {w.selector})",
                                     "select each process tree once"))
            seen[p] = w.selector
            found.extend(process_blockers(p, root=p == w.root_pid, inner_ptys=inner))
        found.extend(carry.blockers(w, leaving=mine if w.key in leaving else frozenset()))
        found.extend(volatile.blockers(w.pids))
        found.extend(_unix_blockers(w))
        found.extend(sandbox.blockers(w, unit_props.get(w.unit)))
        blockers.extend(replace(b, workload=b.workload or w.selector) for b in found)
    return workloads, blockers


def own_terminal(workloads: list[Workload], fds=(0, 1, 2)) -> str:
    """"" unless kupgrade runs on a terminal that the snapshot does not carry (its session's
    processes are in no selected tree): then what becomes of that terminal at the switch."""
    tty = next((os.ttyname(fd) for fd in fds if os.isatty(fd)), "")
    if not tty:
        return ""
    leader = os.getsid(0)
    if carried := [w.selector for w in workloads if leader in w.pids]:
        return (f"this terminal ({tty}) is carried with {', '.join(carried)}: `kupgrade run` asks first, then steps "
                "out of it and goes on in the background (log: /var/log/kupgrade/); the terminal freezes at the "
                "switch and continues in the new kernel, where `kupgrade report` says how it went")
    try:
        name = " ".join(psutil.Process(leader).cmdline()) or psutil.Process(leader).name()
    except psutil.Error:
        name = "?"
    return (f"this terminal ({tty}, the session of PID {leader}: {name[:60]}) is not carried: it ends at the kernel "
            "switch (an ssh connection drops). The upgrade goes on without it: log in again afterwards and see "
            "`kupgrade report` (or run kupgrade in tmux/screen of a carried service, or on the console)")


def _unix_blockers(w: Workload) -> list[Blocker]:
    try:
        return unixsk.blockers(w.pids, w.unit)
    except OSError as e:
        return [Blocker(f"cannot list the unix sockets of {w.selector} (sock_diag): {e.strerror}",
                        "criu needs the kernel's unix_diag too: `modprobe unix_diag`")]


def ancestors(pid: int) -> set[int]:
    out = set()
    try:
        p = psutil.Process(pid)
        while p is not None and p.pid > 1:
            p = p.parent()
            if p is not None:
                out.add(p.pid)
    except psutil.Error:
        pass
    return out


def retree(w: Workload) -> Workload:
    """The same workload with its tree read again: once its tasks are frozen or stopped, the
    tree is exactly what criu dumps, children forked since preflight included, and its threads'
    IDs, which the restore needs back too (a memcached started at boot has worker threads whose
    IDs are above every process PID of the snapshot)."""
    try:
        pids = _tree(w.root_pid)
    except psutil.Error:
        return w
    return replace(w, pids=pids, tids=_tids(pids))
