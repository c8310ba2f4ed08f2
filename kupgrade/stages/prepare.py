"""prepare: work done while the workloads still run, so that the pause is shorter.

Today: write back the dirty page cache (sync) before the freeze; the flush after the freeze
then only writes what was dirtied since. (Pre-copying memory with `criu pre-dump` belongs here
too; not done yet.)
"""

from __future__ import annotations

from .. import faults
from .context import Context
from .flush import writeback

NAME = "prepare"
SKIPPABLE = "it only moves write-back out of the pause; the flush after the freeze writes everything anyway"


def plan(ctx: Context) -> list[str]:
    return ["sync(2) while the workloads still run: most dirty page cache is written before the pause",
            "report dirty/writeback bytes before and after"]


def run(ctx: Context) -> tuple[str, dict]:
    details = writeback(ctx)
    faults.point("prepare", "prepare failed")
    return (f"pre-flushed {details['before'].get('dirty_bytes', 0) >> 10} KiB dirty in {details['sync_s']:.2f} s "
            "while the workloads ran"), details
