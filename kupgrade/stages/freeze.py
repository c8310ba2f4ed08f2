"""freeze: stop the workloads at a consistent point.

Workloads selected by cgroup are frozen with the cgroup v2 freezer (all tasks at once, no
signal visible to them). Workloads selected by PID are seized by criu itself during the
snapshot (ptrace, task by task). Kernel threads cannot be parked from userspace: this stage
does not pretend to.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from kupgrade.context import Context
from kupgrade.errors import HookError, StageError
from kupgrade.hooks import hookpoints
from kupgrade.output.record import DUMP_FAILED, Fresh
from kupgrade.output.results import Freeze
from kupgrade.userspace import selection, systemd, workloads
from kupgrade.userspace.workloads import CGROUP_ROOT

NAME = "freeze"
TIMEOUT_S = 10.0


def plan(ctx: Context) -> list[str]:
    out = [f"systemctl stop {f.unit} (cannot be carried: it starts fresh in the new boot)"
           for f in ctx.record.fresh if f.stop]
    for w in ctx.workloads:         # resolved by preflight
        if w.frozen:
            out.append(f"{w.selector}: write 1 to {CGROUP_ROOT}{w.cgroup}/cgroup.freeze and wait for "
                       "`frozen 1` in cgroup.events")
        elif w.other_cgroups:
            out.append(f"{w.selector}: criu seizes the tree task by task during the snapshot (its tasks are in "
                       f"{', '.join(w.other_cgroups)} too: an ssh session's scope; no cgroup freezer)")
        else:
            out.append(f"{w.selector}: criu seizes the tree during the snapshot (no cgroup of its own)")
    if not ctx.workloads:
        out += [f"cgroup {cg}: cgroup freezer" for cg in ctx.config.cgroups]
        out += [f"unit {u}: cgroup freezer on its cgroup" for u in ctx.config.units]
        out += [f"PID {pid}: criu seizes the tree during the snapshot" for pid in ctx.config.pids]
    return (out or ["nothing selected"]) + hookpoints.plan_line(ctx, "quiesce")


def cgroup_dir(cg: str, root: Path = CGROUP_ROOT) -> Path:
    return root / cg.lstrip("/")


def set_frozen(cg: str, frozen: bool, root: Path = CGROUP_ROOT, timeout: float = TIMEOUT_S) -> float:
    """Freeze or thaw one cgroup and wait until the kernel reports it; returns seconds taken."""
    d = cgroup_dir(cg, root)
    start = time.monotonic()
    (d / "cgroup.freeze").write_text("1" if frozen else "0")
    want = f"frozen {1 if frozen else 0}"
    while want not in (d / "cgroup.events").read_text().splitlines():
        if time.monotonic() - start > timeout:
            raise StageError(f"cgroup {cg} did not {'freeze' if frozen else 'thaw'} within {timeout:.0f} s",
                             "a task may be stuck in the kernel (D state); see `cat /proc/PID/stack`")
        time.sleep(0.005)
    return time.monotonic() - start


def stop_fresh(ctx: Context) -> dict:
    """The services that start fresh (selection.py) stop cleanly first, while the others still
    run: their stop is not part of the carried workloads' pause."""
    units = [f.unit for f in ctx.record.fresh if f.stop]
    if not units:
        return {}
    ctx.stopped_units = list(units)     # before: a stop that fails half-way is undone too
    ctx.note()
    t0 = time.monotonic()
    systemd.stop(units)
    return {"stopped_services": units, "stop_s": round(time.monotonic() - t0, 3)}


def go_fresh(ctx: Context, w, why: str) -> bool:
    """A unit whose dump failed starts fresh instead of aborting the upgrade, where
    workloads.on_blocked allows it (selection.py): thawed (criu resumed its tasks), stopped
    cleanly, started by the next boot. False: the policy says abort."""
    found = {x.unit for x in ctx.workloads if x.unit and x.unit not in ctx.config.units}
    if not w.unit or not selection.may_go_fresh(w.selector, ctx.config.on_blocked, found):
        return False
    if w.cgroup in ctx.frozen_cgroups:
        set_frozen(w.cgroup, False)
        ctx.frozen_cgroups.remove(w.cgroup)
    ctx.workloads = [x for x in ctx.workloads if x.key != w.key]
    ctx.record = replace(ctx.record, workloads=tuple(ctx.workloads),
                         fresh=ctx.record.fresh + (Fresh(w.unit, DUMP_FAILED + why, stop=True),))
    ctx.stopped_units.append(w.unit)
    ctx.note()
    systemd.stop([w.unit])
    return True


def start_fresh(ctx: Context) -> list[str]:
    """Rollback: the services stopped to start fresh run again, as before the upgrade."""
    if not ctx.stopped_units:
        return []
    units = list(ctx.stopped_units)
    systemd.start(units)
    ctx.stopped_units.clear()
    ctx.note()
    return [f"started {', '.join(units)} again"]


def run(ctx: Context) -> tuple[str, Freeze]:
    stopped = stop_fresh(ctx)
    took = {}
    for w in ctx.workloads:
        if w.frozen:
            ctx.frozen_cgroups.append(w.cgroup)     # before: a freeze that times out is undone too
            ctx.note()
            took[w.cgroup] = round(set_frozen(w.cgroup, True), 4)
    _check_frozen_trees(ctx, took)
    seized = [w.selector for w in ctx.workloads if not w.frozen]
    summary = f"froze {len(took)} cgroup(s)" + (f"; {len(seized)} tree(s) left to criu's seize" if seized else "")
    details = Freeze(frozen_cgroups=took, criu_seizes=seized, **stopped)
    if stopped:
        summary = f"stopped {len(details.stopped_services)} service(s) that start fresh; " + summary
    try:
        details = replace(details, hooks=hookpoints.call(ctx, "quiesce"))     # the devices stop changing too
    except HookError as e:
        raise e.in_stage(details.to_json()) from e
    if details.hooks:
        summary += f"; {len(details.hooks)} device hook(s) quiesced"
    return summary, details


def _check_frozen_trees(ctx: Context, took: dict) -> None:
    """Frozen, a cgroup's tasks cannot fork any more: read its trees again. A task that came
    since preflight and is not in the tree (a daemon that double-forked) would be frozen, not
    dumped, and lost: stop here, the rollback thaws it. A tree with a task in another cgroup now
    (an ssh login since preflight: its session scope) is thawed and left to criu's seize."""
    for i, w in enumerate(ctx.workloads):
        if not w.frozen:
            continue
        now = workloads.retree(w)
        if other := workloads.other_cgroups(now):
            set_frozen(w.cgroup, False)
            ctx.frozen_cgroups.remove(w.cgroup)
            took.pop(w.cgroup, None)
            ctx.workloads[i] = replace(now, other_cgroups=other)
            ctx.note()
            continue
        strays = sorted(set(workloads.cgroup_procs(w.cgroup)) - set(now.pids))
        if strays:
            raise StageError(f"{w.selector}: PIDs {strays} joined its cgroup since preflight and are not "
                             f"descendants of its root {w.root_pid}: they would not be carried",
                             "nothing was changed; run `kupgrade check` again and select their tree too")
        ctx.workloads[i] = now


def thaw(ctx: Context) -> list[str]:
    done = []
    for cg in reversed(ctx.frozen_cgroups):
        set_frozen(cg, False)
        done.append(f"thawed {cg}")
    ctx.frozen_cgroups.clear()
    ctx.note()
    return done
