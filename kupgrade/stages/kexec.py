"""kexec: load the target kernel with the initrd the snapshot stage packed, and switch.

`kexec --exec` is the point of no return. Everything before it is undone on failure.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from kupgrade import configchecks, faults, inflight
from kupgrade.context import Context
from kupgrade.output import record
from kupgrade.output.results import Exec, Kexec
from kupgrade.stages.snapshot import combined_path
from kupgrade.switch import contract
from kupgrade.system import fsfreeze, oom
from kupgrade.system import kexec as kx
from kupgrade.system.run import COMMAND_LOG, program
from kupgrade.system.run import run as run_cmd

NAME = "kexec"


def plan(ctx: Context) -> list[str]:
    t = ctx.plan.target
    method = ctx.plan.method or kx.choose_method(ctx.config.kexec_method, kx.lockdown_mode())
    kernel = t.vmlinuz if t else "the target kernel"
    initrd = ("its own initrd, in prepare, before the freeze (the snapshot stays in kupgrade's memory region)"
              if ctx.plan.region else "the packed initrd")
    return [f"kexec load {kernel} with {initrd} and the current command line + {contract.CMDLINE_KEY}=ID",
            f"{method.name} load: {method.why}",
            "save the upgrade record, sync, freeze the file systems the workloads use (FIFREEZE: no write-back "
            "or journal commit in flight), then `kexec --exec` (the point of no return)"]


def loaded_initrd(ctx: Context) -> Path:
    """The initrd to load: with the snapshot appended, or (memory-region transport) the target's own."""
    return ctx.plan.target.initrd if ctx.plan.region else combined_path(ctx)


def load(ctx: Context) -> dict:
    """`kexec --load` of the target with its initrd (the packed one, or with the memory-region
    transport its own: then prepare loads it before the freeze, outside the pause)."""
    cmdline = kx.command_line(Path("/proc/cmdline").read_text(), ctx.record.id, ctx.config.append,
                              max_pid=pid_bound(ctx, exact=ctx.record.stage("snapshot") is not None),
                              pid_max=configchecks.pid_max())
    t0 = time.monotonic()
    faults.point("kexec-load", "kexec load failed")
    # the memory peak: should memory run out anyway, the OOM killer takes kexec (the load fails,
    # the rollback runs), not kupgrade (nobody would roll back) nor a workload (protected)
    mine = oom.protect([os.getpid()], adj=-999)
    try:
        run_cmd(oom.first_victim(kx.load_argv(ctx.plan.method, ctx.plan.target.vmlinuz, loaded_initrd(ctx), cmdline)),
                timeout=600, hint="see the kernel log (dmesg) for why the load was refused")
    finally:
        oom.restore(mine)
    ctx.kexec_loaded = True
    ctx.note()
    load_s = time.monotonic() - t0
    initrd_bytes = loaded_initrd(ctx).stat().st_size
    if not ctx.rehearsal and not ctx.plan.region:    # the rehearsal unpacks it again; a real switch frees the memory
        combined_path(ctx).unlink()  # the kernel holds its own copy of the segments
    return {"method": ctx.plan.method.name, "method_why": ctx.plan.method.why, "cmdline": cmdline,
            "initrd_bytes": initrd_bytes, "load_s": round(load_s, 4)}


# PIDs the workloads may take between a load before their dump (prepare) and the dump
PID_HEADROOM = 4096


def pid_bound(ctx: Context, exact: bool, sysctl: Path = Path("/proc/sys/kernel")) -> int:
    """What no PID of the snapshot will be above (the command line's kupgrade.maxpid): once
    dumped, exactly its highest; before (the target loaded in prepare), the highest PID handed
    out so far + PID_HEADROOM, unless that comes near pid_max (the new kernel's PIDs, starting
    above it, would soon wrap around into the snapshot's)."""
    top = max((p for w in ctx.workloads for p in w.ids), default=1)
    if exact:
        return top
    try:
        last, most = (int((sysctl / name).read_text()) for name in ("ns_last_pid", "pid_max"))
    except (OSError, ValueError):
        return top
    bound = max(top, last) + PID_HEADROOM
    return bound if bound + PID_HEADROOM < most else top


def run(ctx: Context) -> tuple[str, Kexec]:
    early = ctx.record.stage("prepare")
    loaded = early.details.kexec_load if early and ctx.kexec_loaded else None
    again = ""
    if loaded and (kx.max_pid_word(loaded["cmdline"]) or 0) < (top := pid_bound(ctx, exact=True)):
        loaded, again = None, (f"loaded again: the snapshot has PID {top}, above the kupgrade.maxpid= "
                               "it was loaded with before the freeze")
    details = Kexec(**(loaded or load(ctx)), loaded_before_freeze=bool(loaded), reloaded=again or None)
    freeze = fsfreeze.targets([p for w in ctx.workloads for p in w.pids])
    if ctx.plan.region:      # frozen last: the file system in the region is consistent for the new kernel
        freeze.append(str(ctx.snapshot_dir))
    return (f"{'loaded before the freeze' if loaded else 'loaded'}: {ctx.plan.target.version} ({ctx.plan.method.name} load) "
            f"with a {details.initrd_bytes >> 20} MiB initrd", replace(details, freeze=freeze))


def execute(ctx: Context) -> None:
    """Save the record for the new kernel, sync, and switch. Returns only if kexec failed."""
    inflight.hold_signals()     # from here on nothing may race `kexec --exec`
    mark = record.StageResult("exec", record.OK, time.time(), 0.0, "kexec --exec: the point of no return",
                              Exec(boot_id=kx.boot_id()))
    ctx.record = replace(ctx.record.with_stage(mark), outcome=record.KEXECED, commands=tuple(COMMAND_LOG))
    record.save(ctx.record, ctx.state_dir)
    os.sync()
    loaded = ctx.record.stage(NAME)
    binary = "false" if faults.active("exec") else program(kx.KEXEC)      # the test fault: the kernel does not switch
    run_cmd(fsfreeze.exec_argv(binary, (loaded.details.freeze or []) if loaded else []), timeout=120)


def unload(ctx: Context) -> list[str]:
    if not ctx.kexec_loaded:
        return []
    run_cmd(kx.unload_argv(ctx.plan.method), timeout=60)
    ctx.kexec_loaded = False
    ctx.note()
    return ["unloaded the kexec kernel"]
