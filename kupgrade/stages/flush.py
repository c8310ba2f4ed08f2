"""flush: make file data durable, so that the files criu checks at restore (size, mode) and
every write the workload made before the freeze are on disk before the kernel switch."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kupgrade.context import Context
from kupgrade.output.progress import watch
from kupgrade.output.results import Flush

NAME = "flush"
SKIPPABLE = ("skipping it moves the write-back into `kexec --exec`'s final sync, "
             "while the workloads are paused anyway; no data is lost")


def plan(ctx: Context) -> list[str]:
    return ["sync(2) with the workloads frozen: write back what they dirtied since the prepare stage, "
            "and filesystem metadata",
            "report dirty/writeback bytes before and after"]


def dirty_bytes(meminfo: Path = Path("/proc/meminfo")) -> dict[str, int]:
    out = {}
    for line in meminfo.read_text().splitlines():
        key = line.split(":")[0]
        if key in ("Dirty", "Writeback"):
            out[key.lower() + "_bytes"] = int(line.split()[1]) * 1024
    return out


def writeback(ctx: Context) -> dict:
    """sync(2), with the dirty bytes before and after and a progress bar of what is left."""
    before = dirty_bytes()
    total = sum(before.values())
    start = time.monotonic()
    with watch(ctx.progress, "write-back", total, lambda: max(0, total - sum(dirty_bytes().values()))):
        os.sync()
    return {"before": before, "after": dirty_bytes(), "sync_s": round(time.monotonic() - start, 4)}


def run(ctx: Context) -> tuple[str, Flush]:
    details = Flush(**writeback(ctx))
    return f"synced {details.before.get('dirty_bytes', 0) >> 10} KiB dirty in {details.sync_s:.2f} s", details
