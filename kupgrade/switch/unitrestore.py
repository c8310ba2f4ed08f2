"""A systemd unit's restore in the new kernel (`kupgrade-restore --unit NAME`, the unit's own start
in the boot after the switch; kupgrade/userspace/systemd.py writes the drop-ins): its tree
only, and the record all the restores of one snapshot share (one at a time, under a lock).

Several units start at once, each one its own process: this module imports only what one
tree's restore needs (trees.py), not the whole restore stage with the device hooks, the
read-ahead and the way back (newkernel.py); what both share is in restorerecord.py.
"""

from __future__ import annotations

import logging
import time

from kupgrade.context import Context
from kupgrade.errors import RestoreError
from kupgrade.output import logfile, record
from kupgrade.output.record import FAILED, OK, StageResult
from kupgrade.output.results import RestoreUnit
from kupgrade.output.ui import PlainUi
from kupgrade.steps import finish, new_record
from kupgrade.switch import trees
from kupgrade.switch.restorerecord import outcome_of, prior_record, read_manifest, record_lock, release
from kupgrade.userspace import systemd

log = logging.getLogger("kupgrade.restore")


def restore_unit(ctx: Context, unit: str, ui) -> None:
    """ExecStart of a systemd unit in the boot after the switch (see kupgrade/userspace/systemd.py)."""
    snap = ctx.restore_dir
    if not trees.pending(snap):
        raise RestoreError(f"{unit}: no kupgrade snapshot is pending in {snap} (restored already in this boot?)",
                           "to start it fresh: `systemctl daemon-reload` (the generator then drops the restore "
                           "drop-in), then start it again")
    if not (snap / trees.VERIFIED).exists():
        raise RestoreError(f"{unit}: the snapshot in {snap} was not verified, so it is not restored",
                           "see `journalctl -u kupgrade-restore` and `kupgrade report`")
    corrupt = (snap / trees.VERIFIED).read_text().split("corrupt ")[1:]
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
        hold = not trees.refused(m, prior_record(ctx, snap, m), ctx.rehearsal)
    result = trees.restore_one(snap, w, pidfile=systemd.pidfile(snap, unit), state_dir=ctx.state_dir,
                                       hold=hold)
    if result["ok"] and (wrote := systemd.restore_pidfile(w, result["root_pid"])):
        result["pidfile"] = wrote
    with record_lock(ctx.state_dir):
        ctx.record = prior_record(ctx, snap, m)
        logs = trees.finish_trees(ctx, snap, m.id, {w.key: result})
        res = StageResult("restore-unit", OK if result["ok"] else FAILED, started, time.monotonic() - t0,
                          f"restored {unit} (main PID {result.get('root_pid')})"
                          + (", stopped until all are back" if hold else "") if result["ok"] else "",
                          RestoreUnit(unit=unit, workloads={w.key: result}, criu_logs=logs),
                          "" if result["ok"] else result["error"])
        ctx.record = ctx.record.with_stage(res)
        outcome = outcome_of(ctx.record, m)
        if outcome in (record.RESTORED, record.ROLLED_BACK):
            trees.mark_restored(snap)
        finish(ctx, outcome)
    release(snap)
    ui.print(f"kupgrade: {res.summary or res.error}")
    if not result["ok"]:
        raise RestoreError(f"{unit}: {result['error']}", f"its images and criu's log are kept in {result['images']}")


def main(cfg, unit: str) -> int:
    """`kupgrade-restore --unit NAME` (restorecmd.py parsed the arguments and loaded the settings)."""
    restore_unit(Context(cfg, new_record("restore")), unit, PlainUi())
    return 0
