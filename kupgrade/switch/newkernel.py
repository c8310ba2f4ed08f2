"""The new kernel's side: what `kupgrade-restore` (restorecmd.py) does, kept lean: it imports
neither typer nor rich nor psutil, which cost ~5 s under QEMU TCG, inside the downtime."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from kupgrade.context import Context
from kupgrade.errors import KupgradeError, RestoreError
from kupgrade.output import logfile, record
from kupgrade.output.record import FAILED, OK, StageResult
from kupgrade.output.results import Commit, Discard, RestoreUnit
from kupgrade.output.ui import PlainUi
from kupgrade.stages import restore as restore_stage
from kupgrade.steps import execute_stage, finish, new_record, os_problem
from kupgrade.switch import bootpids, commit, contract, manifest, switchback
from kupgrade.userspace import systemd

log = logging.getLogger("kupgrade.restore")


@contextmanager
def record_lock(state_dir: Path):
    """The early restore and each unit's restore update one record: one at a time."""
    d = state_dir / "records"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(d / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _prior(ctx: Context, snap: Path, m) -> record.UpgradeRecord:
    prior = record.load(ctx.state_dir, m.id)
    if prior is None and (snap / contract.RECORD).exists():
        prior = record.load_file(snap / contract.RECORD)
    return prior if prior is not None else replace(ctx.record, id=m.id, kernel_from=m.kernel_from,
                                                   kernel_to=m.kernel_to, workloads=m.workloads)


def _outcome(rec: record.UpgradeRecord, m) -> str:
    """restoring while a unit has not been restored yet or a tree waits for the others; then
    restored or restore-failed."""
    tried = restore_stage.attempts(rec)         # this kernel's (after a way back, not the other's)
    results = commit.results(tried)
    if any(w.key not in results for w in m.workloads) or commit.held(tried):
        return record.RESTORING
    if not all(r.get("ok") for r in results.values()):
        return record.RESTORE_FAILED
    return record.ROLLED_BACK if m.rollback else record.RESTORED


def read_manifest(snap: Path) -> manifest.Manifest:
    try:
        return manifest.read(snap)
    except OSError as e:
        raise RestoreError(f"cannot read the snapshot in {snap}: {os_problem(e)}",
                           "nothing was restored; the snapshot is kept")
    except ValueError as e:
        raise RestoreError(f"the snapshot in {snap} is damaged: {manifest.NAME}: {e}",
                           f"nothing was restored; the snapshot is kept in {snap} (see `kupgrade report`)")


def _load_prior(ctx: Context, m) -> None:
    try:
        ctx.record = _prior(ctx, ctx.restore_dir, m)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RestoreError(f"cannot read the upgrade record of {m.id}: {e}", "nothing was restored")


def _failed(ctx: Context, m, cause: KupgradeError, ui) -> None:
    """The restore failed: back to the old kernel when the policy and the state allow it (does
    not return then); else the record says why not, with the snapshot kept for --retry."""
    why_not = switchback.refused(m, ctx.record, ctx.rehearsal)
    if not why_not:
        ui.print(f"kupgrade: {cause.message}; back to {m.back['kernel']} with the same snapshot")
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
    tried = restore_stage.attempts(ctx.record)
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
    if not restore_stage.pending(snap):
        return False
    m = read_manifest(snap)
    logfile.start(m.id)     # the same file the old kernel's `kupgrade run` wrote
    bootpids.remember(ctx.state_dir)    # this kernel's own early PIDs, for the next upgrade into it
    with record_lock(ctx.state_dir):
        _load_prior(ctx, m)
        if restore_stage.attempts(ctx.record) and not retry:
            raise RestoreError(f"the restore of snapshot {m.id} was attempted already "
                               f"({len(restore_stage.restored_keys(ctx.record))} of {len(m.workloads)} "
                               "workload(s) restored)", "`kupgrade report` says why; once the cause is fixed "
                               "`kupgrade restore --retry`, or `kupgrade restore --discard` to give them up")
        try:
            execute_stage(restore_stage, ctx, ui)
        except KupgradeError as e:
            _failed(ctx, m, e, ui)
            raise
        finish(ctx, _outcome(ctx.record, m))
    _release(snap)
    return True


def _release(snap: Path) -> None:
    if done := restore_stage.release_region(snap):
        log.info("%s", done)


def discard(ctx: Context, ui) -> bool:
    """`kupgrade restore --discard`: give up the workloads a failed restore left in the snapshot
    (the admin's decision, recorded): free their images, let their peers' packets in."""
    from kupgrade.userspace import tcp
    snap = ctx.restore_dir
    if not restore_stage.pending(snap):
        return False
    m = read_manifest(ctx.restore_dir)
    logfile.start(m.id)
    with record_lock(ctx.state_dir):
        _load_prior(ctx, m)
        done = restore_stage.restored_keys(ctx.record)
        given_up = [w for w in m.workloads if w.key not in done]
        for w in given_up:
            tcp.release(tcp.read(snap / "images" / w.key))
        started = time.time()
        ctx.record = ctx.record.with_stage(StageResult(
            "discard", OK, started, 0.0, f"gave up {len(given_up)} workload(s) at the admin's request",
            Discard(discarded=[w.selector for w in given_up], restored=sorted(done))))
        restore_stage.clear(snap)
        finish(ctx, record.RESTORED if not given_up else record.RESTORE_FAILED)
    ui.print(f"kupgrade: discarded {', '.join(w.selector for w in given_up) or 'nothing'}; snapshot {m.id} removed")
    return True


def restore_unit(ctx: Context, unit: str, ui) -> None:
    """ExecStart of a systemd unit in the boot after the switch (see kupgrade/userspace/systemd.py)."""
    snap = ctx.restore_dir
    if not restore_stage.pending(snap):
        raise RestoreError(f"{unit}: no kupgrade snapshot is pending in {snap} (restored already in this boot?)",
                           "to start it fresh: `systemctl daemon-reload` (the generator then drops the restore "
                           "drop-in), then start it again")
    if not (snap / restore_stage.VERIFIED).exists():
        raise RestoreError(f"{unit}: the snapshot in {snap} was not verified, so it is not restored",
                           "see `journalctl -u kupgrade-restore` and `kupgrade report`")
    corrupt = (snap / restore_stage.VERIFIED).read_text().split("corrupt ")[1:]
    m = read_manifest(snap)
    w = next((w for w in m.workloads if w.unit == unit), None)
    if w is None:
        raise RestoreError(f"{unit} is not in snapshot {m.id}", "nothing to restore for it")
    if w.key in (c.strip() for c in corrupt):
        raise RestoreError(f"{unit}: its images failed verification: the only copy is damaged, it is not restored",
                           "`kupgrade report` names the file; start the unit fresh after `systemctl daemon-reload`")
    logfile.start(m.id)
    started, t0 = time.time(), time.monotonic()
    with record_lock(ctx.state_dir):
        hold = not switchback.refused(m, _prior(ctx, snap, m), ctx.rehearsal)
    result = restore_stage.restore_one(snap, w, pidfile=systemd.pidfile(snap, unit), state_dir=ctx.state_dir,
                                       hold=hold)
    if result["ok"] and (wrote := systemd.restore_pidfile(w, result["root_pid"])):
        result["pidfile"] = wrote
    with record_lock(ctx.state_dir):
        ctx.record = _prior(ctx, snap, m)
        logs = restore_stage.finish_trees(ctx, snap, m.id, {w.key: result})
        res = StageResult("restore-unit", OK if result["ok"] else FAILED, started, time.monotonic() - t0,
                          f"restored {unit} (main PID {result.get('root_pid')})"
                          + (", stopped until all are back" if hold else "") if result["ok"] else "",
                          RestoreUnit(unit=unit, workloads={w.key: result}, criu_logs=logs),
                          "" if result["ok"] else result["error"])
        ctx.record = ctx.record.with_stage(res)
        outcome = _outcome(ctx.record, m)
        if outcome in (record.RESTORED, record.ROLLED_BACK):
            restore_stage.mark_restored(snap)
        finish(ctx, outcome)
    _release(snap)
    ui.print(f"kupgrade: {res.summary or res.error}")
    if not result["ok"]:
        raise RestoreError(f"{unit}: {result['error']}", f"its images and criu's log are kept in {result['images']}")


def commit_pending(ctx: Context, ui) -> bool:
    """`kupgrade-restore --commit` (kupgrade-commit.service, after every unit of the snapshot):
    all trees back, held: continue them together; one failed or never restored while a way back
    exists: go back to the old kernel with the same snapshot (does not return then)."""
    snap = ctx.restore_dir
    if not restore_stage.pending(snap):
        return False
    m = read_manifest(snap)
    logfile.start(m.id)
    with record_lock(ctx.state_dir):
        _load_prior(ctx, m)
        if switchback.refused(m, ctx.record, ctx.rehearsal):
            return False            # no way back: each tree continued as soon as it was restored
        tried = restore_stage.attempts(ctx.record)
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
        restore_stage.mark_restored(snap)
        finish(ctx, _outcome(ctx.record, m))
    _release(snap)
    ui.print(f"kupgrade: {ctx.record.stages[-1].summary}")
    return True


def generator(dirs: list[str], restore_dir: Path) -> None:
    """systemd generator: drop-ins that make each unit's start restore it (this boot only)."""
    if len(dirs) != 3 or not restore_stage.pending(restore_dir):
        return
    m = read_manifest(restore_dir)
    units = [w.unit for w in m.workloads if w.unit]
    if units or m.start:
        systemd.generate(Path(dirs[1]), m.id, units, os.path.realpath(sys.argv[0]), restore_dir, start=m.start)


def dispatch(args, cfg, started: dict | None = None) -> int:
    """kupgrade-restore's work (restorecmd.py parsed the arguments and loaded the settings; started:
    how long its own start took, for the record)."""
    ui = PlainUi()
    if args.generator is not None:
        generator(args.generator, Path(contract.RESTORE_DIR))
    elif args.unit:
        restore_unit(Context(cfg, new_record("restore")), args.unit, ui)
    elif args.commit:
        commit_pending(Context(cfg, new_record("restore")), ui)
    elif not restore_pending(Context(cfg, new_record("restore"), started=started or {}), ui):
        ui.print(f"kupgrade: no snapshot pending in {contract.RESTORE_DIR}")
    return 0
