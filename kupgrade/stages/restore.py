"""restore (new kernel): verify the snapshot, criu-restore every tree, record the outcome.

Started by the boot integration after the initramfs script moved the snapshot to
/run/kupgrade. A tree that fails to restore keeps its images (and criu's log) in
/run/kupgrade/images/ and the record says so; the other trees are still restored.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import criu, manifest
from ..errors import CommandError, RestoreError
from ..run import run as run_cmd
from .context import Context

NAME = "restore"
DONE = "restored.json"


def plan(ctx: Context) -> list[str]:
    return ["(new kernel) the initramfs script moves the snapshot to /run/kupgrade",
            "verify manifest.json: target kernel, size and sha256 of every file",
            "criu restore --restore-detached each tree (same PIDs); the tasks run again",
            "free the snapshot memory; record the outcome in /var/lib/kupgrade/records/"]


def pending(restore_dir: Path) -> bool:
    return (restore_dir / manifest.NAME).exists()


def run(ctx: Context) -> tuple[str, dict]:
    snap = Path(ctx.config.restore_dir)
    # a rehearsal restores on the old kernel what was packed for the target kernel
    m, problems = manifest.verify(snap, ctx.target.version if ctx.rehearsal else os.uname().release)
    if problems:
        raise RestoreError(f"snapshot in {snap} failed verification: {problems[0]}"
                           + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""),
                           f"nothing was restored; the snapshot is kept in {snap}")
    results: dict[str, dict] = {}
    for w in m.workloads:
        images = snap / "images" / w.key
        pidfile = images / "restored.pid"
        try:
            run_cmd(criu.restore_argv(images, pidfile), timeout=600, cwd=str(images))
            pid = int(pidfile.read_text())
            results[w.key] = {"selector": w.selector, "ok": True, "root_pid": pid,
                              "same_pid": pid == w.root_pid}
        except (CommandError, OSError, ValueError) as e:
            cause = criu.first_error(images, criu.RESTORE_LOG)
            results[w.key] = {"selector": w.selector, "ok": False,
                              "error": cause or str(e), "images": str(images)}
    failed = [r for r in results.values() if not r["ok"]]
    logs = criu.keep_logs(snap / "images", ctx.state_dir / "logs" / m.id)
    for key, r in results.items():
        if r["ok"]:
            shutil.rmtree(snap / "images" / key, ignore_errors=True)   # free the RAM
    os.replace(snap / manifest.NAME, snap / DONE)
    details = {"snapshot_id": m.id, "verified_files": len(m.files), "verified_bytes": m.total_bytes,
               "workloads": results, "criu_logs": logs}
    if failed:
        err = RestoreError(f"{len(failed)} of {len(results)} workload(s) failed to restore: {failed[0]['error']}",
                           f"their images and criu's restore.log are kept in {snap}/images/ (RAM: lost on reboot)")
        err.details = details  # type: ignore[attr-defined]
        raise err
    return f"restored {len(results)} workload(s) from snapshot {m.id}", details

