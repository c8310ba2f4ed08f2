"""The new kernel's side: what `kupgrade-restore` (restorecmd.py) does, kept lean: it imports
neither typer nor rich nor psutil, which cost ~5 s under QEMU TCG, inside the downtime."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from kupgrade.context import Context
from kupgrade.errors import KupgradeError, RestoreError
from kupgrade.output import logfile, record
from kupgrade.output.record import FAILED, OK, StageResult
from kupgrade.output.results import Commit, Discard
from kupgrade.output.ui import PlainUi
from kupgrade.stages import restore as restore_stage
from kupgrade.steps import execute_stage, finish, new_record
from kupgrade.switch import bootpids, commit, contract, trees
from kupgrade.switch.restorerecord import outcome_of, prior_record, read_manifest, record_lock, release
from kupgrade.userspace import systemd


def _load_prior(ctx: Context, m) -> None:
    try:
        ctx.record = prior_record(ctx, ctx.restore_dir, m)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RestoreError(f"cannot read the upgrade record of {m.id}: {e}", "nothing was restored")


def _failed(ctx: Context, m, cause: KupgradeError, ui) -> None:
    """The restore failed: back to the old kernel when the policy and the state allow it (does
    not return then); else the record says why not, with the snapshot kept for --retry."""
    why_not = trees.refused(m, ctx.record, ctx.rehearsal)
    if not why_not:
        ui.print(f"kupgrade: {cause.message}; back to {m.back['kernel']} with the same snapshot")
        # the way back: not imported on the way forward
        from kupgrade.switch import switchback
        try:
            switchback.go(ctx, m, cause)
        except KupgradeError as e:
            why_not = f"the way back failed: {e.message}"
    last = ctx.record.stages[-1]
    ctx.record = replace(ctx.record, stages=ctx.record.stages[:-1] + (
        replace(last, details=last.details.plus(no_rollback=why_not)),))
    _resume(ctx, m, f"no way back ({why_not})")
    finish(ctx, record.RESTORE_FAILED)


def _resume(ctx: Context, m, why: str) -> None:
    """Continue the trees held for the way back that is not taken (the restored ones run in this
    kernel); the failed ones stay in the snapshot for --retry, their peers' packets let in."""
    tried = trees.attempts(ctx.record)
    keys = commit.held(tried)
    if not keys:
        return
    started, t0 = time.time(), time.monotonic()
    done = commit.resume(ctx.restore_dir, m, keys)
    commit.release_failed(ctx.restore_dir, m, [k for k, r in commit.results(tried).items() if r.get("ok") is False])
    ctx.record = ctx.record.with_stage(StageResult(
        commit.STAGE, OK, started, time.monotonic() - t0,
        f"continued {len(keys)} workload(s) restored in this kernel: {why}", Commit(commit=done)))


def restore_pending(ctx: Context, ui, retry: bool = False) -> bool:
    """The new-kernel side. Returns False when there was nothing to restore. A snapshot whose
    restore was attempted already is restored again only with retry (`kupgrade restore --retry`)."""
    snap = ctx.restore_dir
    if not trees.pending(snap):
        return False
    m = read_manifest(snap)
    logfile.start(m.id)     # the same file the old kernel's `kupgrade run` wrote
    bootpids.remember(ctx.state_dir)    # this kernel's own early PIDs, for the next upgrade into it
    with record_lock(ctx.state_dir):
        _load_prior(ctx, m)
        if trees.attempts(ctx.record) and not retry:
            raise RestoreError(f"the restore of snapshot {m.id} was attempted already "
                               f"({len(trees.restored_keys(ctx.record))} of {len(m.workloads)} "
                               "workload(s) restored)", "`kupgrade report` says why; once the cause is fixed "
                               "`kupgrade restore --retry`, or `kupgrade restore --discard` to give them up")
        try:
            execute_stage(restore_stage, ctx, ui)
        except KupgradeError as e:
            _failed(ctx, m, e, ui)
            raise
        finish(ctx, outcome_of(ctx.record, m))
    release(snap)
    return True


def discard(ctx: Context, ui) -> bool:
    """`kupgrade restore --discard`: give up the workloads a failed restore left in the snapshot
    (the admin's decision, recorded): free their images, let their peers' packets in."""
    from kupgrade.userspace import tcp
    snap = ctx.restore_dir
    if not trees.pending(snap):
        return False
    m = read_manifest(ctx.restore_dir)
    logfile.start(m.id)
    with record_lock(ctx.state_dir):
        _load_prior(ctx, m)
        done = trees.restored_keys(ctx.record)
        given_up = [w for w in m.workloads if w.key not in done]
        for w in given_up:
            tcp.release(tcp.read(snap / "images" / w.key))
        started = time.time()
        ctx.record = ctx.record.with_stage(StageResult(
            "discard", OK, started, 0.0, f"gave up {len(given_up)} workload(s) at the admin's request",
            Discard(discarded=[w.selector for w in given_up], restored=sorted(done))))
        trees.clear(snap)
        finish(ctx, record.RESTORED if not given_up else record.RESTORE_FAILED)
    ui.print(f"kupgrade: discarded {', '.join(w.selector for w in given_up) or 'nothing'}; snapshot {m.id} removed")
    return True


def commit_pending(ctx: Context, ui) -> bool:
    """`kupgrade-restore --commit` (kupgrade-commit.service, after every unit of the snapshot):
    all trees back, held: continue them together; one failed or never restored while a way back
    exists: go back to the old kernel with the same snapshot (does not return then)."""
    snap = ctx.restore_dir
    if not trees.pending(snap):
        return False
    m = read_manifest(snap)
    logfile.start(m.id)
    with record_lock(ctx.state_dir):
        _load_prior(ctx, m)
        if trees.refused(m, ctx.record, ctx.rehearsal):
            return False            # no way back: each tree continued as soon as it was restored
        tried = trees.attempts(ctx.record)
        keys = commit.held(tried)
        started, t0 = time.time(), time.monotonic()
        missing = commit.missing(m, tried)
        failed = sorted(k for k, r in commit.results(tried).items() if r.get("ok") is False) + missing
        if not keys and not failed:
            return False
        try:
            if failed:
                names = {w.key: w.unit or w.selector for w in m.workloads}
                raise RestoreError(f"{len(failed)} of {len(m.workloads)} workload(s) not restored in "
                                   f"{os.uname().release}: " + ", ".join(
                                       names[k] + (" (its start did not restore it)" if k in missing else "")
                                       for k in failed), f"the snapshot is kept in {snap}")
            health = restore_stage.health_check(ctx, m)
        except RestoreError as cause:
            ctx.record = ctx.record.with_stage(StageResult(commit.STAGE, FAILED, started, time.monotonic() - t0,
                                                           "", Commit(failed=failed, held=keys), cause.message))
            _failed(ctx, m, cause, ui)
            raise
        done = commit.resume(snap, m, keys)
        ctx.record = ctx.record.with_stage(StageResult(
            commit.STAGE, OK, started, time.monotonic() - t0,
            f"continued {len(keys)} workload(s) together, all restored", Commit(commit=done, health_check=health)))
        trees.mark_restored(snap)
        finish(ctx, outcome_of(ctx.record, m))
    release(snap)
    ui.print(f"kupgrade: {ctx.record.stages[-1].summary}")
    return True


def generator(dirs: list[str], restore_dir: Path) -> None:
    """systemd generator: drop-ins that make each unit's start restore it (this boot only)."""
    if len(dirs) != 3 or not trees.pending(restore_dir):
        return
    m = read_manifest(restore_dir)
    units = [w.unit for w in m.workloads if w.unit]
    if units or m.start:
        systemd.generate(Path(dirs[1]), m.id, units, os.path.realpath(sys.argv[0]), restore_dir, start=m.start,
                         idents={w.unit: w.ident for w in m.workloads})


def dispatch(args, cfg, started: dict | None = None) -> int:
    """kupgrade-restore's work (restorecmd.py parsed the arguments and loaded the settings; started:
    how long its own start took, for the record)."""
    ui = PlainUi()
    if args.generator is not None:
        generator(args.generator, Path(contract.RESTORE_DIR))
    elif args.commit:
        commit_pending(Context(cfg, new_record("restore")), ui)
    elif not restore_pending(Context(cfg, new_record("restore"), started=started or {}), ui):
        ui.print(f"kupgrade: no snapshot pending in {contract.RESTORE_DIR}")
    return 0
