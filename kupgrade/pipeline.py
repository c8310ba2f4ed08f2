"""Run the stages in order: time each, record each, ask where the admin wants to be asked, and
undo everything on a failure before the point of no return (`kexec --exec`; in a rehearsal,
ending the original tasks)."""

from __future__ import annotations

import logging
import os
import signal
import time

from kupgrade import faults, inflight
from kupgrade.context import Context
from kupgrade.errors import CommandError, KupgradeError
from kupgrade.hooks import hookpoints
from kupgrade.output import record
from kupgrade.output.record import FAILED, OK, SKIPPED, StageResult
from kupgrade.output.results import Rollback, StepOut
from kupgrade.output.ui import PlainUi
from kupgrade.stages import flush, freeze, handover, preflight, prepare, restore, snapshot
from kupgrade.stages import kexec as kexec_stage
from kupgrade.steps import execute_stage, finish
from kupgrade.system import criu, oom
from kupgrade.system.run import use_programs
from kupgrade.userspace import stepout, tcp, workloads

UPGRADE = (preflight, prepare, freeze, flush, snapshot, kexec_stage)
ALL = UPGRADE + (restore,)
REHEARSAL = UPGRADE + (handover, restore)

CONTINUE, SKIP, ABORT = "continue", "skip", "abort"
UNDONE = "the workloads are running as before; everything done so far was undone"

log = logging.getLogger("kupgrade.pipeline")


class Gate:
    """Who decides between the stages. Default: nobody, except the go/no-go before the point of
    no return; `step`: the admin before every stage too; `yes`: nobody at all."""

    def __init__(self, ui, step: bool = False, yes: bool = False, skip: tuple[str, ...] = ()) -> None:
        self.ui, self.step, self.yes, self.skip = ui, step, yes, skip

    def before(self, stage, ctx: Context) -> str:
        if stage.NAME in self.skip:
            return SKIP
        if not self.step:
            return CONTINUE
        return self.ui.ask_stage(stage.NAME, stage.plan(ctx), getattr(stage, "SKIPPABLE", ""))

    def go(self, ctx: Context, question: str) -> bool:
        return True if self.yes else self.ui.go_no_go(ctx, question)


def skippable() -> dict[str, str]:
    """Stage name -> why skipping it is safe, for the stages that allow it."""
    return {s.NAME: s.SKIPPABLE for s in REHEARSAL if getattr(s, "SKIPPABLE", "")}


def check(ctx: Context, ui) -> None:
    """Preflight only; the record is returned in ctx, not saved (check changes nothing)."""
    outcome = record.ABORTED
    try:
        execute_stage(preflight, ctx, ui)
        outcome = record.CHECKED
    finally:
        finish(ctx, outcome, save=False)


def _stages(stages, ctx: Context, ui, gate: Gate) -> None:
    for stage in stages:
        choice = gate.before(stage, ctx)
        if choice == ABORT:
            raise KupgradeError(f"aborted by the admin before the {stage.NAME} stage", UNDONE)
        if choice == SKIP and getattr(stage, "SKIPPABLE", ""):
            res = StageResult(stage.NAME, SKIPPED, time.time(), 0.0, "skipped by the admin")
            ctx.record = ctx.record.with_stage(res)
            ui.stage_end(res)
            continue
        execute_stage(stage, ctx, ui)


def upgrade(ctx: Context, ui, gate: Gate) -> None:
    """Every stage up to the kexec; then the go/no-go and the switch. Returns only if it did not switch.
    Inside a tree that is carried (an admin's ssh session), the go/no-go comes right after
    preflight, and kupgrade steps out of the tree before anything changes (stepout.py)."""
    try:
        _stages(UPGRADE[:1], ctx, ui, gate)
        if trees := _holding_me(ctx):
            ui, gate = _step_out(ctx, ui, gate, trees)
        _stages(UPGRADE[1:], ctx, ui, gate)
        faults.point("go", "stopped at the go/no-go")
        if not gate.go(ctx, f"Switch to {ctx.plan.target.version} now?"):
            raise KupgradeError("stopped before the kernel switch", UNDONE)
        ui.point_of_no_return(ctx)
        kexec_stage.execute(ctx)
        raise KupgradeError("kexec --exec returned without switching kernels", "see dmesg")
    except BaseException as e:
        rollback(ctx, ui, e)
        if any(s.name == "step-out" for s in ctx.record.stages):
            why = e.message if isinstance(e, KupgradeError) else (str(e) or type(e).__name__)
            stepout.tell(f"kupgrade (PID {os.getpid()}): the upgrade stopped before the kernel switch: {why}. "
                         "The workloads were resumed; `kupgrade report` says more.")
        raise


def _holding_me(ctx: Context) -> list:
    """The selected trees kupgrade runs inside of (its ancestors are in them, or it is in their cgroup)."""
    me = workloads.ancestors(os.getpid())
    return [w for w in ctx.workloads if w.root_pid in me or stepout.inside(w)]


def _step_out(ctx: Context, ui, gate: Gate, trees: list):
    """Ask now (the terminal is carried with the trees from here on), step out, and go on
    with no terminal: output to the log only, nothing asked any more."""
    question = (f"Switch to {ctx.plan.target.version}? kupgrade runs inside {', '.join(w.selector for w in trees)}, "
                "which is carried: it goes on in the background from here, this terminal freezes with it")
    if not gate.go(ctx, question):
        raise KupgradeError("stopped before anything changed", UNDONE)
    started, t0, before = time.time(), time.monotonic(), os.getpid()
    ui.__exit__(None, None, None)       # the live view ends here; the parent prints the last line
    pid = stepout.step_out(trees, ui.print)
    quiet = PlainUi(quiet=True)
    ctx.record = ctx.record.with_stage(StageResult(
        "step-out", OK, started, time.monotonic() - t0, f"kupgrade stepped out of {trees[0].selector}: PID {before} "
        f"-> {pid}, no terminal from here", StepOut(from_pid=before, pid=pid, trees=[w.selector for w in trees])))
    ctx.note()
    return quiet, Gate(quiet, yes=True, skip=gate.skip)


def rehearse(ctx: Context, ui, gate: Gate) -> None:
    """The dress rehearsal: every stage up to the kexec load, then hand the workloads over to
    their snapshot on this kernel (handover + restore) instead of switching."""
    ctx.rehearsal = True
    try:
        _stages(UPGRADE, ctx, ui, gate)
        if not gate.go(ctx, "Replace the workloads' tasks by their restored copies now?"):
            raise KupgradeError("stopped before the handover", UNDONE)
        _stages(REHEARSAL[len(UPGRADE):], ctx, ui, gate)
    except BaseException as e:
        if not ctx.replaced:
            rollback(ctx, ui, e)
            raise
        inflight.hold_signals()
        snapshot.unmount(ctx)
        finish(ctx, record.REHEARSAL_FAILED)
        _clear_journal(ctx)
        raise
    inflight.hold_signals()
    snapshot.unmount(ctx)
    handover.discard(ctx)
    finish(ctx, record.REHEARSED)
    _clear_journal(ctx)


def rollback(ctx: Context, ui, cause: BaseException) -> None:
    """Undo every change, in reverse order; each step is attempted even if another failed.
    The device hooks' `resume` comes before the thaw: the devices run again before the workloads."""
    inflight.hold_signals()     # a second Ctrl-C or SIGTERM must not cut the undoing short
    started, t0 = time.time(), time.monotonic()
    done, problems = [], []
    seen = len(ctx.hook_results)
    steps = [lambda: kexec_stage.unload(ctx), lambda: hookpoints.resume(ctx), lambda: oom.restore(ctx.oom),
             lambda: freeze.thaw(ctx), lambda: _resume_stopped(ctx), lambda: snapshot.discard(ctx),
             lambda: handover.discard(ctx), lambda: freeze.start_fresh(ctx)]
    for step in steps:
        try:
            done += step()
        except Exception as e:  # noqa: BLE001 - every undo step must get its chance
            problems.append(str(e))
            log.exception("rollback step failed")
        ctx.note()
    res = StageResult("rollback", FAILED if problems else OK, started, time.monotonic() - t0,
                      "; ".join(done) or "nothing to undo",
                      Rollback(done=done, problems=problems, cause=str(cause) or type(cause).__name__,
                               hooks=hookpoints.results_json(ctx.hook_results[seen:])),
                      "; ".join(problems))
    ctx.record = ctx.record.with_stage(res)
    try:
        ui.stage_end(res)
    except OSError:             # the terminal is gone (SIGHUP): the record and the log have it
        pass
    finish(ctx, record.ABORTED)
    if not problems:
        _clear_journal(ctx)


def _clear_journal(ctx: Context) -> None:
    if ctx.journal is not None:
        inflight.clear(ctx.journal)


CRIU_WAIT_S = 600.0


def recover(state: dict, ui) -> Context:
    """`kupgrade recover`: the rollback of a run that was killed, from its journal. A criu dump
    it started may still be running (criu outlives its parent): wait for it first."""
    from kupgrade import journal
    ctx = journal.context(state)
    ctx.journal = inflight.JOURNAL
    use_programs(ctx.config.programs)       # the run's own criu and kexec, not the config found now
    if ctx.dumping:
        criu.wait_gone(ctx.snapshot_dir, CRIU_WAIT_S)
    if state.get("hooks_touched"):
        hookpoints.load(ctx)
    if ctx.replaced:        # a rehearsal past its handover: the workloads live on in the snapshot
        snapshot.unmount(ctx)
        finish(ctx, record.REHEARSAL_FAILED)
        _clear_journal(ctx)
        return ctx
    rollback(ctx, ui, KupgradeError(f"run {ctx.record.id} (PID {state.get('pid')}) was interrupted; "
                                    "recovered by `kupgrade recover`"))
    return ctx


def _resume_stopped(ctx: Context) -> list[str]:
    """SIGCONT the trees criu left stopped, except the tasks that were stopped before kupgrade
    (job control: they stay as found); their TCP connections are unlocked first (criu's rules
    deleted, the sockets out of repair mode). Every tree is resumed even if one's unlock failed;
    the failure is raised afterwards, for the rollback's problems."""
    done, failed = [], []
    for w in ctx.dumping:           # killed during their dump: criu left them stopped or resumed them
        w = workloads.retree(w)
        ctx.tcp.setdefault(w.key, tcp.sockets(w.pids))
        ctx.stopped.append(w)
    ctx.dumping = []
    for w in reversed(ctx.stopped):
        try:
            tables = ctx.locks.get(w.key) or criu.lock_tables(snapshot.images_root(ctx) / w.key, w.root_pid)
            done += tcp.unlock(ctx.tcp.get(w.key, []), w.pids, tables)
        except (OSError, CommandError) as e:
            failed.append(f"{w.selector}: its TCP connections could not be unlocked ({e}); they will stall")
        resume = [p for p in w.pids if p not in w.stopped_before]
        for pid in resume:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        kept = f"; left stopped as found: {list(w.stopped_before)}" if w.stopped_before else ""
        done.append(f"resumed {w.selector} ({len(resume)} task(s){kept})")
    ctx.stopped.clear()
    if failed:
        raise RuntimeError("; ".join(failed))
    return done
