"""prepare: work done while the workloads still run, so that the pause is shorter.

Write back the dirty page cache (sync) before the freeze, so that the flush after the freeze
only writes what was dirtied since; with N pre-dump iterations (`snapshot.pre_dump`, as preflight
resolved it), mount the snapshot's tmpfs or memory region now and copy each tree's memory with N
`criu pre-dump` iterations while it runs, so that the final dump in the pause copies only the
pages dirtied after the last one.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace

from kupgrade import faults, inflight
from kupgrade.context import Context
from kupgrade.errors import CommandError
from kupgrade.output.progress import tree_bytes
from kupgrade.output.results import Prepare
from kupgrade.stages import kexec as kexec_stage
from kupgrade.stages import snapshot
from kupgrade.stages.flush import writeback
from kupgrade.switch import packing, pmem
from kupgrade.system import criu
from kupgrade.system.run import run as run_cmd

NAME = "prepare"
SKIPPABLE = "it only moves write-back out of the pause; the flush after the freeze writes everything anyway"


AUTO_PRE_DUMP = 1       # snapshot.pre_dump = "auto" with the memory region (bench: freeze 2.9 s -> 0.9 s, 64 MiB)


def iterations(setting: int | str, region, est: int) -> int:
    """snapshot.pre_dump resolved (preflight): "auto" is AUTO_PRE_DUMP when the snapshot crosses
    in the memory region and fits there with its pre-dumped pages, else none."""
    if setting != "auto":
        return int(setting)
    return AUTO_PRE_DUMP if region is not None and pmem.needed(snapshot.held(est, AUTO_PRE_DUMP)) <= region.size else 0


def plan(ctx: Context) -> list[str]:
    out = ["sync(2) while the workloads still run: most dirty page cache is written before the pause",
           "report dirty/writeback bytes before and after"]
    if ctx.plan.region:
        out.append(f"kexec load {ctx.plan.target.version if ctx.plan.target else 'the target'} with its own initrd now (the "
                   "snapshot crosses in kupgrade's memory region): the load is not in the pause")
    if n := ctx.plan.pre_dumps:
        out.append(f"mount the snapshot's {'memory region' if ctx.plan.region else 'tmpfs'} now; {n} criu pre-dump "
                   "iteration(s) per tree while it runs (--track-mem): the final dump in the pause copies only "
                   "the pages dirtied after the last")
    return out


def run(ctx: Context) -> tuple[str, Prepare]:
    details = Prepare(**writeback(ctx))
    faults.point("prepare", "prepare failed")
    summary = (f"pre-flushed {details.before.get('dirty_bytes', 0) >> 10} KiB dirty in {details.sync_s:.2f} s "
               "while the workloads ran")
    if ctx.plan.region:      # nothing of the snapshot is in the initrd: the kernel is loaded outside the pause
        details = replace(details, kexec_load=kexec_stage.load(ctx))
        summary += f"; loaded {ctx.plan.target.version} for kexec"
    if ctx.plan.pre_dumps:
        details = replace(details, pre_dump=pre_dump(ctx, ctx.plan.pre_dumps))
        copied = sum(it["bytes"] for t in details.pre_dump["trees"].values() for it in t["iterations"])
        summary += f"; pre-dumped {copied >> 20} MiB of memory"
    return summary, details


def pre_dump(ctx: Context, n: int) -> dict:
    """n pre-dump iterations of every tree into its images dir (pre-1 ... pre-n). A failed one is
    no failure of the upgrade: criu lets the tasks go on, and that tree gets one full dump in the
    pause (said so in the record)."""
    where = snapshot.mount(ctx)
    trees: dict[str, dict] = {}
    out: dict = {"mounted": where, "trees": trees}
    for w in ctx.workloads:
        images = snapshot.images_root(ctx) / w.key
        images.mkdir(parents=True, mode=0o700, exist_ok=True)
        its: list[dict] = []
        trees[w.key] = {"selector": w.selector, "iterations": its}
        for i in range(1, n + 1):
            t0 = time.monotonic()
            (images / criu.PRE_DIR.format(n=i)).mkdir(mode=0o700, exist_ok=True)    # criu does not make it
            try:
                with inflight.deferred():   # criu is never killed half-way through a tree
                    run_cmd(criu.pre_dump_argv(w, images, i), timeout=600, cwd=str(images), new_session=True)
            except CommandError as e:
                cause = criu.first_error(images, criu.PRE_LOG.format(n=i)) or e.message
                shutil.rmtree(images, ignore_errors=True)
                ctx.pre_dumped.pop(w.key, None)
                trees[w.key]["failed"] = f"pre-dump {i}: {cause}; this tree is dumped whole in the pause"
                break
            its.append({"s": round(time.monotonic() - t0, 4),
                        "bytes": tree_bytes(images / criu.PRE_DIR.format(n=i))})
            ctx.pre_dumped[w.key] = i
    if ctx.plan.region:      # the pre-dumps do not change any more: hashed now, not in the pause
        t0 = time.monotonic()
        ctx.prehashed = packing.hashed(ctx.snapshot_dir)
        out["hashed"] = {"s": round(time.monotonic() - t0, 4), "files": len(ctx.prehashed)}
    return out
