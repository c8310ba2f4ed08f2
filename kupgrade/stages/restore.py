"""restore (new kernel): verify the snapshot, criu-restore every tree, record the outcome.

Started by the boot integration after the initramfs script moved the snapshot to
/run/kupgrade. A tree that fails to restore keeps its images (and criu's log) in
/run/kupgrade/images/ and the record says so; the other trees are still restored.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .. import criu, early, manifest, tcp
from ..errors import CommandError, RestoreError
from ..run import run as run_cmd
from . import hookpoints
from .context import Context

NAME = "restore"
DONE = "restored.json"
VERIFIED = "verified"           # written once every file matched the manifest


def plan(ctx: Context) -> list[str]:
    return ["(new kernel) the initramfs script moves the snapshot to /run/kupgrade",
            "verify manifest.json: target kernel, size and sha256 of every file",
            ("device hooks: collect their early-restore results, run restore (a critical failure: no "
             "workload is restored, the snapshot is kept)"),
            ("TCP connections in the snapshot: drop their peers' packets (nft table inet kupgrade) until "
             "their tree is restored, so the new kernel does not reset them"),
            "criu restore --restore-detached each tree (same PIDs); the tasks run again",
            "device hooks: run verify",
            "free the snapshot memory; record the outcome in /var/lib/kupgrade/records/"]


def pending(restore_dir: Path) -> bool:
    return (restore_dir / manifest.NAME).exists()


def _taken(w) -> str:
    """Why this tree cannot get its PIDs back in this boot ("" if it can)."""
    for pid in w.pids:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except FileNotFoundError:
            continue
        return (f"PID {pid} of {w.selector} is taken in this boot by `{comm}`: restoring it would change the "
                "PIDs, so it was not restored")
    return ""


def restore_one(snap: Path, w, pidfile: Path | None = None, state_dir: Path = Path("/var/lib/kupgrade")) -> dict:
    """criu-restore one tree from snap/images/TREE; the result for the record."""
    images = snap / "images" / w.key
    socks = tcp.read(images)
    result = _restore(images, w, pidfile or images / "restored.pid", socks, state_dir)
    if any(s.connected for s in socks):     # restored or lost: the peers' packets may come in again
        result["tcp"] = {"connections": [str(s) for s in socks if s.connected], **tcp.release(socks)}
    return result


def _restore(images: Path, w, pidfile: Path, socks: list, state_dir: Path) -> dict:
    if (why := _taken(w)):
        return {"selector": w.selector, "ok": False, "error": why, "images": str(images)}
    pidfile.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    ours = -1
    try:
        inherit = {}
        if (images / criu.STDIO).exists():
            # the tree's stdio sockets (to the old boot's journald) become our stdout: when a
            # unit's start restores it, that is the unit's journal stream in this boot
            ours = os.dup(1)
            inherit = {res: ours for res in json.loads((images / criu.STDIO).read_text())}
        conns = [s for s in socks if s.connected]
        run_cmd(criu.restore_argv(images, pidfile, inherit, tcp=bool(conns),
                                  action_script=tcp.action_script(state_dir) if any(not s.wscale for s in conns) else ""),
                timeout=600, cwd=str(images), pass_fds=(ours,) if ours >= 0 else ())
        pid = int(pidfile.read_text())
        result = {"selector": w.selector, "ok": True, "root_pid": pid, "same_pid": pid == w.root_pid}
    except (CommandError, OSError, ValueError) as e:
        cause = criu.first_error(images, criu.RESTORE_LOG)
        result = {"selector": w.selector, "ok": False, "error": cause or str(e), "images": str(images)}
    finally:
        if ours >= 0:
            os.close(ours)
    return result


def finish_trees(ctx: Context, snap: Path, snapshot_id: str, results: dict[str, dict]) -> list[str]:
    """Keep the criu logs on disk, free the images of the restored trees."""
    logs = criu.keep_logs(snap / "images", ctx.state_dir / "logs" / snapshot_id)
    for key, r in results.items():
        if r.get("ok"):
            shutil.rmtree(snap / "images" / key, ignore_errors=True)   # free the RAM
    return logs


def failure(results: dict[str, dict], snap: Path, details: dict) -> RestoreError | None:
    failed = [r for r in results.values() if r.get("ok") is False]
    if not failed:
        return None
    err = RestoreError(f"{len(failed)} of {len(results)} workload(s) failed to restore: {failed[0]['error']}",
                       f"their images and criu's restore.log are kept in {snap}/images/ (RAM: lost on reboot)")
    err.details = details  # type: ignore[attr-defined]
    return err


def run(ctx: Context) -> tuple[str, dict]:
    """Verify the whole snapshot, restore the trees that are not systemd units; units are
    restored by their own start (see kupgrade/systemd.py), after this."""
    snap = Path(ctx.config.restore_dir)
    # a rehearsal restores on the old kernel what was packed for the target kernel
    m, problems = manifest.verify(snap, ctx.target.version if ctx.rehearsal else os.uname().release,
                                  added=early.written_in_new_kernel)
    if problems:
        raise RestoreError(f"snapshot in {snap} failed verification: {problems[0]}"
                           + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""),
                           f"nothing was restored; the snapshot is kept in {snap}")
    # before any address is configured (network hook, the distribution's networking): the
    # peers' packets would meet no socket and be answered with an RST
    try:
        protected: int | str = tcp.install([s for w in m.workloads for s in tcp.read(snap / "images" / w.key)])
    except CommandError as e:       # the workloads still come back; their connections may be reset
        protected = f"not protected: {e.message}"
    hooks_done = hookpoints.restore(ctx, snap)    # HookError (critical): no workload is restored
    (snap / VERIFIED).write_text(m.id + "\n")
    results: dict[str, dict] = {}
    for w in m.workloads:
        if w.unit:
            results[w.key] = {"selector": w.selector, "ok": None, "unit": w.unit,
                              "pending": f"restored when {w.unit} starts"}
        else:
            results[w.key] = restore_one(snap, w, state_dir=ctx.state_dir)
    logs = finish_trees(ctx, snap, m.id, results)
    if not any(w.unit for w in m.workloads):
        os.replace(snap / manifest.NAME, snap / DONE)
    details = {"snapshot_id": m.id, "verified_files": len(m.files), "verified_bytes": m.total_bytes,
               "workloads": results, "criu_logs": logs, "hooks": hooks_done,
               "hooks_load_s": ctx.hooks_load_s, "tcp_protected": protected}
    verify_err = hookpoints.verify(ctx, snap, details)     # before anything deletes snap/hooks
    if (err := failure(results, snap, details) or verify_err):
        raise err
    units = sum(1 for w in m.workloads if w.unit)
    return (f"restored {len(results) - units} workload(s) from snapshot {m.id}"
            + (f"; {units} unit(s) restore when systemd starts them" if units else "")), details
