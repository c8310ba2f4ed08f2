"""What is carried: the named workloads, and with `workloads.all_services` every running service.

Each running service unit ends up in one of three places, never dropped silently:

  carried  dumped and restored as itself (same unit, same PIDs), like a unit named in
           `workloads.units`;
  fresh    it cannot be carried (the reason: its blockers, as `kupgrade check` found them):
           stopped cleanly (`systemctl stop`) before the freeze and started again by the next
           boot (the generator pulls it in, see systemd.generate); on a rollback before the
           switch it is started again here. Policy `workloads.on_blocked`;
  boot     never carried: a unit that starts fresh in every boot anyway (PID 1's helpers:
           journald, udevd, logind, dbus, gettys, user managers, network managers; BOOT and
           `workloads.start_fresh`), or a unit kupgrade itself runs in (an ssh session's sshd,
           the agent that started it). They run until the switch; the new boot starts them as
           it always does.

Named PIDs and cgroups cannot start fresh (nothing would start them again): their blockers
always block, as do those not about one workload (a transient unit's, see systemd.blockers: the
new boot has no such unit to start).
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from kupgrade.output.record import Blocker, Fresh, Workload
from kupgrade.system import procfs
from kupgrade.system.procfs import PROC
from kupgrade.userspace import systemd

BOOT = ("systemd-*.service", "dbus.service", "dbus-broker.service", "polkit.service",
        "getty@*.service", "serial-getty@*.service", "console-getty.service", "container-getty@*.service",
        "user@*.service", "user-runtime-dir@*.service", "NetworkManager.service", "wpa_supplicant.service",
        "ModemManager.service", "kupgrade-*.service")
UNIT = "unit:"
EVERY_BOOT = "starts fresh in every boot"


def boot_pattern(unit: str, extra: tuple[str, ...] = ()) -> str:
    """The pattern that makes a unit start fresh in every boot ("" if none)."""
    return next((p for p in (*BOOT, *extra) if fnmatch.fnmatchcase(unit, p)), "")


def own_units(pid: int | None = None, proc: Path = PROC, ancestors: bool = True) -> dict[str, int]:
    """The service units of kupgrade and its ancestors (unit -> the PID found in it): stopping or
    freezing one would stop kupgrade itself (an ssh session's sshd, the agent that started it).
    ancestors=False: kupgrade's own only (it steps out of its ancestors' trees: stepout.py)."""
    pid = os.getpid() if pid is None else pid
    out: dict[str, int] = {}
    while pid > 1:
        try:
            cgroup = procfs.cgroup(pid, proc)
            ppid = procfs.stat(pid, proc).ppid
        except (OSError, ValueError, IndexError):
            break
        for part in cgroup.split("/"):
            if part.endswith(".service"):
                out.setdefault(part, pid)
        if not ancestors:
            break
        pid = ppid
    return out


def candidates(start_fresh: tuple[str, ...] = (), named: tuple[str, ...] = (),
               running=None, mine=None) -> tuple[list[str], list[Fresh]]:
    """--all-services: the running service units to try to carry, and those left to the boot."""
    running = systemd.running_services() if running is None else running
    mine = own_units() if mine is None else mine
    carry, boot = [], []
    for unit in running:
        if unit in named:
            continue
        if pattern := boot_pattern(unit, start_fresh):
            boot.append(Fresh(unit, f"{EVERY_BOOT} ({pattern})"))
        elif unit in mine:
            boot.append(Fresh(unit, f"kupgrade runs inside it (PID {mine[unit]}): it runs until the switch and "
                                    "starts with the new boot"))
        else:
            carry.append(unit)
    return carry, boot


def may_go_fresh(selector: str, policy: str, found: set[str]) -> bool:
    """A workload whose blockers make it start fresh instead of blocking the upgrade."""
    if not selector.startswith(UNIT):
        return False
    return policy == "fresh" or (policy == "auto" and selector[len(UNIT):] in found)


def settle(workloads: list[Workload], blockers: list[Blocker], policy: str, found: set[str],
           dependents=None) -> tuple[list[Workload], list[Fresh], list[Blocker]]:
    """Apply workloads.on_blocked: the units whose blockers let them start fresh leave the
    carried workloads (with their blockers as the reason), and so does every carried unit that
    stopping one of them would stop too (Requires=, BindsTo=, PartOf=). Returns (carried,
    fresh, the blockers that still block)."""
    dependents = systemd.dependents if dependents is None else dependents
    reasons: dict[str, list[str]] = {}
    keep = []
    for b in blockers:
        if b.workload and may_go_fresh(b.workload, policy, found):
            reasons.setdefault(b.workload[len(UNIT):], []).append(b.message)
        else:
            keep.append(b)
    carried_units = {w.unit for w in workloads if w.unit}
    todo = list(reasons)
    while todo:
        unit = todo.pop()
        for dep in sorted(dependents(unit) & carried_units - set(reasons)):
            reasons[dep] = [f"it needs {unit}, which starts fresh: stopping {unit} stops it too"]
            todo.append(dep)
    fresh = [Fresh(unit, "; ".join(msgs), stop=True) for unit, msgs in reasons.items()]
    carried = [w for w in workloads if w.unit not in reasons]
    return carried, fresh, keep


def lines(services: list[dict]) -> list[str]:
    """Each running service's fate (preflight's `services`), for check, plan and the report."""
    carried = [s["unit"] for s in services if s["fate"] == "carried"]
    boot = [s["unit"] for s in services if s["fate"] == "boot" and s["reason"].startswith(EVERY_BOOT)]
    out = [f"carried: {', '.join(carried)}"] if carried else []
    out += [f"starts fresh (stopped before the switch, started by the new boot): {s['unit']}: {s['reason']}"
            for s in services if s["fate"] == "fresh"]
    out += [f"left to the boot: {s['unit']}: {s['reason']}" for s in services
            if s["fate"] == "boot" and s["unit"] not in boot]
    if boot:
        out.append(f"left to the boot (they start fresh in every boot): {', '.join(boot)}")
    return out
