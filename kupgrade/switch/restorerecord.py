"""The record and the snapshot every restore in the new kernel shares: the early restore
(newkernel.py) and each unit's (unitrestore.py) update one record, one at a time, and agree on
its outcome; both read the manifest and let go of kupgrade's memory region the same way."""

from __future__ import annotations

import fcntl
import logging
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from kupgrade.context import Context
from kupgrade.errors import RestoreError
from kupgrade.output import record
from kupgrade.steps import os_problem
from kupgrade.switch import commit, contract, manifest, trees

log = logging.getLogger("kupgrade.restore")


@contextmanager
def record_lock(state_dir: Path):
    """The early restore and each unit's restore update one record: one at a time."""
    d = state_dir / "records"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(d / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def prior_record(ctx: Context, snap: Path, m) -> record.UpgradeRecord:
    prior = record.load(ctx.state_dir, m.id)
    if prior is None and (snap / contract.RECORD).exists():
        prior = record.load_file(snap / contract.RECORD)
    return prior if prior is not None else replace(ctx.record, id=m.id, kernel_from=m.kernel_from,
                                                   kernel_to=m.kernel_to, workloads=m.workloads)


def outcome_of(rec: record.UpgradeRecord, m) -> str:
    """restoring while a unit has not been restored yet or a tree waits for the others; then
    restored or restore-failed."""
    tried = trees.attempts(rec)         # this kernel's (after a way back, not the other's)
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


def release(snap: Path) -> None:
    if done := trees.release_region(snap):
        log.info("%s", done)
