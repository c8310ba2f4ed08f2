"""Run the stages in order: time each, record each, and undo everything on a failure
before the point of no return (`kexec --exec`)."""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

from . import manifest, record
from .errors import KupgradeError, RestoreError
from .record import FAILED, OK, StageResult, UpgradeRecord
from .run import COMMAND_LOG
from .stages import UPGRADE, freeze, kexec as kexec_stage, preflight, restore as restore_stage, snapshot
from .stages.context import Context

log = logging.getLogger("kupgrade.pipeline")


def execute_stage(stage, ctx: Context, ui) -> StageResult:
    ui.stage_start(stage.NAME)
    started, t0 = time.time(), time.monotonic()
    try:
        summary, details = stage.run(ctx)
    except KupgradeError as e:
        res = StageResult(stage.NAME, FAILED, started, time.monotonic() - t0, "",
                          getattr(e, "details", {}), e.message, e.hint)
        ctx.record = ctx.record.with_stage(res)
        ui.stage_end(res)
        raise
    res = StageResult(stage.NAME, OK, started, time.monotonic() - t0, summary, details)
    ctx.record = ctx.record.with_stage(res)
    ui.stage_end(res)
    return res


def new_record(command: str) -> UpgradeRecord:
    return UpgradeRecord(id=record.new_id(), command=command, kernel_from=os.uname().release, created=time.time())


def check(ctx: Context, ui) -> None:
    """Preflight only; the record is returned in ctx, not saved (check changes nothing)."""
    outcome = record.ABORTED
    try:
        execute_stage(preflight, ctx, ui)
        outcome = record.CHECKED
    finally:
        _finish(ctx, outcome, save=False)


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
    _finish(ctx, record.ABORTED)


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


def _finish(ctx: Context, outcome: str, save: bool = True) -> None:
    ctx.record = replace(ctx.record, outcome=outcome, commands=ctx.record.commands + tuple(COMMAND_LOG))
    COMMAND_LOG.clear()
    if save:
        record.save(ctx.record, ctx.state_dir)


def restore(ctx: Context, ui) -> bool:
    """The new-kernel side. Returns False when there was nothing to restore."""
    snap = Path(ctx.config.restore_dir)
    if not restore_stage.pending(snap):
        return False
    try:
        m = manifest.read(snap)
        prior = record.load(ctx.state_dir, m.id)
        if prior is None and (snap / "record.json").exists():
            prior = record.load_file(snap / "record.json")
    except (OSError, ValueError, KeyError) as e:
        raise RestoreError(f"cannot read the snapshot in {snap}: {e}", "nothing was restored; the snapshot is kept")
    if prior is not None:
        ctx.record = replace(prior, command=prior.command)
    else:
        ctx.record = replace(ctx.record, id=m.id, kernel_from=m.kernel_from, kernel_to=m.kernel_to,
                             workloads=m.workloads)
    try:
        execute_stage(restore_stage, ctx, ui)
    except KupgradeError:
        _finish(ctx, record.RESTORE_FAILED)
        raise
    _finish(ctx, record.RESTORED)
    return True
