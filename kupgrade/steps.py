"""Run one stage: time it, turn its outcome into a StageResult, add it to the record."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace

from kupgrade.context import Context
from kupgrade.errors import KupgradeError, StageError
from kupgrade.output import record
from kupgrade.output.record import FAILED, OK, StageResult, UpgradeRecord
from kupgrade.system.run import COMMAND_LOG

log = logging.getLogger("kupgrade.stage")


def execute_stage(stage, ctx: Context, ui) -> StageResult:
    """Run the stage; a failure is recorded as a failed StageResult, then raised. An OSError (a
    full or failing file system, a vanished file) becomes a StageError, so that the caller's
    rollback and the top-level handler treat it like any other stage failure."""
    log.info("stage %s: start", stage.NAME)
    ui.stage_start(stage.NAME)
    started, t0 = time.time(), time.monotonic()
    try:
        summary, details = stage.run(ctx)
    except KupgradeError as e:
        _failed(stage, ctx, ui, started, t0, e)
        raise
    except OSError as e:
        err = StageError(f"{stage.NAME}: {os_problem(e)}",
                         "check that file system or device (free space: `df -h`, I/O errors: `dmesg`), "
                         "then try again")
        _failed(stage, ctx, ui, started, t0, err)
        raise err from e
    res = StageResult(stage.NAME, OK, started, time.monotonic() - t0, summary, details)
    ctx.record = ctx.record.with_stage(res)
    ctx.note()
    log.info("stage %s: done in %.3f s: %s", stage.NAME, res.duration_s, summary)
    ui.stage_end(res)
    return res


def _failed(stage, ctx: Context, ui, started: float, t0: float, e: KupgradeError) -> None:
    res = StageResult(stage.NAME, FAILED, started, time.monotonic() - t0, "",
                      e.details, e.message, e.hint)
    ctx.record = ctx.record.with_stage(res)
    log.info("stage %s: FAILED after %.3f s: %s", stage.NAME, res.duration_s, e.message)
    ui.stage_end(res)


def os_problem(e: OSError) -> str:
    """`No space left on device: /path` (strerror and the file names), or what the error says."""
    what = e.strerror or str(e) or type(e).__name__
    names = [str(n) for n in (e.filename, e.filename2) if n is not None]
    return what + (f": {' -> '.join(names)}" if names else "")


def new_record(command: str) -> UpgradeRecord:
    return UpgradeRecord(id=record.new_id(), command=command, kernel_from=os.uname().release, created=time.time())


def finish(ctx: Context, outcome: str, save: bool = True) -> None:
    ctx.record = replace(ctx.record, outcome=outcome, commands=ctx.record.commands + tuple(COMMAND_LOG))
    COMMAND_LOG.clear()
    if save:
        record.save(ctx.record, ctx.state_dir)


