"""Resolve the configured workloads (PIDs, cgroups) into process trees, and find blockers.

Reads /proc and /sys/fs/cgroup only; changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from .record import Blocker, Workload

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _tree(root: int) -> tuple[int, ...]:
    p = psutil.Process(root)
    return (root,) + tuple(sorted(c.pid for c in p.children(recursive=True)))


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def _tty_nr(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[4])


def process_blockers(pid: int) -> list[Blocker]:
    """What criu cannot dump (or we cannot safely resume) about one process."""
    try:
        st = _status(pid)
        tty = _tty_nr(pid)
    except (FileNotFoundError, ProcessLookupError):
        return []   # exited meanwhile; the tree is resolved again at snapshot time
    name = st.get("Name", "?")
    who = f"PID {pid} ({name})"
    out = []
    if st.get("TracerPid", "0") != "0":
        out.append(Blocker(f"{who} is being traced by PID {st['TracerPid']}",
                           "detach the debugger/strace; criu needs to ptrace the process itself"))
    state = st.get("State", "")
    if state.startswith("D"):
        out.append(Blocker(f"{who} is in uninterruptible sleep (D state)",
                           "wait for its I/O to finish (check the storage it uses) and run check again"))
    if state.startswith("T") or state.startswith("t"):
        out.append(Blocker(f"{who} is stopped ({state})",
                           "continue it (kill -CONT) first; a stopped task cannot be told apart from one we stopped"))
    if tty:
        out.append(Blocker(f"{who} has a controlling terminal",
                           "run it detached from any terminal (setsid, stdin from /dev/null, output to a file) "
                           "or as a service; restoring a terminal across kernels is not supported"))
    if st.get("Kthread") == "1" or (not st.get("VmSize") and pid != os.getpid()):
        out.append(Blocker(f"{who} is a kernel thread", "select userspace processes only"))
    return out


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


def tree_roots(pids: list[int], parent_of) -> list[int]:
    """The members whose parent is not a member: each starts one tree."""
    members = set(pids)
    return sorted(p for p in pids if parent_of(p) not in members)


def resolve(pids: tuple[int, ...], cgroups: tuple[str, ...], units: tuple[str, ...] = (),
            describe_unit=None) -> tuple[list[Workload], list[Blocker]]:
    workloads: list[Workload] = []
    blockers: list[Blocker] = []
    for unit in units:
        if describe_unit is None:
            from .systemd import describe as describe_unit
        props, problem = describe_unit(unit)
        if problem:
            blockers.append(Blocker(problem, "check `workloads.units`; `systemctl status " + unit + "`"))
            continue
        main, cg = int(props["MainPID"]), props["ControlGroup"]
        tree = _tree(main)
        try:
            strays = sorted(set(cgroup_procs(cg)) - set(tree))
        except FileNotFoundError:
            strays = []
        if strays:
            blockers.append(Blocker(f"{unit}: PIDs {strays} in its cgroup are not descendants of its main "
                                    f"process {main}", "criu dumps one process tree: such a unit cannot be kept yet"))
            continue
        workloads.append(Workload(f"unit:{unit}", main, tree, cgroup=cg, name=psutil.Process(main).name(), unit=unit))
    me = os.getpid()
    for pid in pids:
        if not psutil.pid_exists(pid):
            blockers.append(Blocker(f"workload PID {pid} does not exist", "check `workloads.pids` in the config"))
            continue
        workloads.append(Workload(f"pid:{pid}", pid, _tree(pid), name=psutil.Process(pid).name()))
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
                                    "criu dumps one tree at a time: select the trees by PID, or give each its own cgroup"))
            continue
        workloads.append(Workload(f"cgroup:{cg}", roots[0], _tree(roots[0]), cgroup=cg,
                                  name=psutil.Process(roots[0]).name()))
    seen: dict[int, str] = {}
    for w in workloads:
        if w.root_pid == 1:
            blockers.append(Blocker("PID 1 (init) cannot be a workload", "select the service's processes instead"))
        if me in w.pids or w.root_pid in _ancestors(me):
            blockers.append(Blocker(f"{w.selector} contains kupgrade itself", "run kupgrade from outside the workload"))
        for p in w.pids:
            if p in seen and seen[p] != w.selector:
                blockers.append(Blocker(f"PID {p} is selected twice ({seen[p]} and {w.selector})",
                                        "select each process tree once"))
            seen[p] = w.selector
            blockers.extend(process_blockers(p))
    return workloads, blockers


def _ancestors(pid: int) -> set[int]:
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
    tree is exactly what criu dumps, children forked since preflight included."""
    from dataclasses import replace
    try:
        return replace(w, pids=_tree(w.root_pid))
    except psutil.Error:
        return w
