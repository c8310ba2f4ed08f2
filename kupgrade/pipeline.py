"""Run the stages in order: time each, record each, and undo everything on a failure
before the point of no return (`kexec --exec`)."""

from __future__ import annotations

import logging
import os
import signal
import time

from . import record
from .errors import KupgradeError
from .record import FAILED, OK, StageResult
from .stages import flush, freeze, kexec as kexec_stage, preflight, restore, snapshot
from .stages.context import Context
from .steps import execute_stage, finish

UPGRADE = (preflight, freeze, flush, snapshot, kexec_stage)
ALL = UPGRADE + (restore,)

log = logging.getLogger("kupgrade.pipeline")


def check(ctx: Context, ui) -> None:
    """Preflight only; the record is returned in ctx, not saved (check changes nothing)."""
    outcome = record.ABORTED
    try:
        execute_stage(preflight, ctx, ui)
        outcome = record.CHECKED
    finally:
        finish(ctx, outcome, save=False)


def upgrade(ctx: Context, ui, confirm) -> None:
    """Every stage up to the kexec; then confirm() and switch. Returns only if it did not switch."""
    try:
        for stage in UPGRADE:
            execute_stage(stage, ctx, ui)
        if not confirm(ctx):
            raise KupgradeError("stopped before the kernel switch; the workloads were resumed", "")
        ui.point_of_no_return(ctx)
        kexec_stage.execute(ctx)
        raise KupgradeError("kexec --exec returned without switching kernels",
                            "see dmesg; the workloads were resumed")
    except BaseException as e:
        rollback(ctx, ui, e)
        raise


def rollback(ctx: Context, ui, cause: BaseException) -> None:
    """Undo every change, in reverse order; each step is attempted even if another failed."""
    started, t0 = time.time(), time.monotonic()
    done, problems = [], []
    steps = [lambda: kexec_stage.unload(ctx), lambda: freeze.thaw(ctx), lambda: _resume_stopped(ctx),
             lambda: snapshot.discard(ctx)]
    for step in steps:
        try:
            done += step()
        except Exception as e:  # noqa: BLE001 - every undo step must get its chance
            problems.append(str(e))
            log.exception("rollback step failed")
    res = StageResult("rollback", FAILED if problems else OK, started, time.monotonic() - t0,
                      "; ".join(done) or "nothing to undo", {"done": done, "problems": problems,
                                                             "cause": str(cause) or type(cause).__name__},
                      "; ".join(problems))
    ctx.record = ctx.record.with_stage(res)
    ui.stage_end(res)
    finish(ctx, record.ABORTED)


def _resume_stopped(ctx: Context) -> list[str]:
    done = []
    for w in reversed(ctx.stopped):
        for pid in w.pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        done.append(f"resumed {w.selector} ({len(w.pids)} task(s))")
    ctx.stopped.clear()
    return done


