"""The new kernel's side, kept lean: `kupgrade-restore` (what the boot integration runs) imports
neither typer nor rich nor psutil, which cost ~5 s under QEMU TCG, inside the downtime."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from . import config as config_mod, logfile, manifest, record
from .errors import KupgradeError, RestoreError, explain
from .stages import restore as restore_stage
from .stages.context import Context
from .steps import execute_stage, finish, new_record
from .ui import PlainUi


def restore_pending(ctx: Context, ui) -> bool:
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
    logfile.start(m.id)     # the same file the old kernel's `kupgrade run` wrote
    if prior is not None:
        ctx.record = prior
    else:
        ctx.record = replace(ctx.record, id=m.id, kernel_from=m.kernel_from, kernel_to=m.kernel_to,
                             workloads=m.workloads)
    try:
        execute_stage(restore_stage, ctx, ui)
    except KupgradeError:
        finish(ctx, record.RESTORE_FAILED)
        raise
    finish(ctx, record.RESTORED)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kupgrade-restore", description="Restore the workloads carried across "
                                 "a kexec by `kupgrade run` (run early by the boot integration). Does nothing "
                                 "when no snapshot is pending in /run/kupgrade.")
    ap.add_argument("--config", "-c", type=Path, help="config file (default /etc/kupgrade/kupgrade.toml)")
    args = ap.parse_args(argv)
    logfile.stderr_handler(debug=False)
    ui = PlainUi()
    try:
        cfg = config_mod.load(args.config)
        if not restore_pending(Context(cfg, new_record("restore")), ui):
            ui.print(f"kupgrade: no snapshot pending in {cfg.restore_dir}")
        return 0
    except KupgradeError as e:
        print(explain(e), file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
