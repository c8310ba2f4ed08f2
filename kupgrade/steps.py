"""Run one stage: time it, turn its outcome into a StageResult, add it to the record."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace

from . import record
from .errors import KupgradeError
from .record import FAILED, OK, StageResult, UpgradeRecord
from .run import COMMAND_LOG
from .stages.context import Context


log = logging.getLogger("kupgrade.stage")


def execute_stage(stage, ctx: Context, ui) -> StageResult:
    log.info("stage %s: start", stage.NAME)
    ui.stage_start(stage.NAME)
    started, t0 = time.time(), time.monotonic()
    try:
        summary, details = stage.run(ctx)
    except KupgradeError as e:
        res = StageResult(stage.NAME, FAILED, started, time.monotonic() - t0, "",
                          getattr(e, "details", {}), e.message, e.hint)
        ctx.record = ctx.record.with_stage(res)
        ctx.note()
        log.info("stage %s: FAILED after %.3f s: %s", stage.NAME, res.duration_s, e.message)
        ui.stage_end(res)
        raise
    res = StageResult(stage.NAME, OK, started, time.monotonic() - t0, summary, details)
    ctx.record = ctx.record.with_stage(res)
    ctx.note()
    log.info("stage %s: done in %.3f s: %s", stage.NAME, res.duration_s, summary)
    ui.stage_end(res)
    return res


def new_record(command: str) -> UpgradeRecord:
    return UpgradeRecord(id=record.new_id(), command=command, kernel_from=os.uname().release, created=time.time())


def finish(ctx: Context, outcome: str, save: bool = True) -> None:
    ctx.record = replace(ctx.record, outcome=outcome, commands=ctx.record.commands + tuple(COMMAND_LOG))
    COMMAND_LOG.clear()
    if save:
        record.save(ctx.record, ctx.state_dir)


