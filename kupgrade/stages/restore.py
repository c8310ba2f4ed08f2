"""restore (new kernel): verify the snapshot, criu-restore every tree, record the outcome.

Started by the boot integration once the initramfs left the snapshot in /run/kupgrade (moved
there from the initrd, or kupgrade's memory region mounted there). A tree that fails to restore keeps its images (and criu's log) in
/run/kupgrade/images/ and the record says so; the other trees are still restored.
"""

from __future__ import annotations

import os
import re
import shlex
import threading
from dataclasses import replace
from pathlib import Path

from kupgrade import faults
from kupgrade.context import Context
from kupgrade.errors import CommandError, HookError, KupgradeError, RestoreError
from kupgrade.hooks import early, hookpoints
from kupgrade.output.results import Restore
from kupgrade.output.timeline import Laps
from kupgrade.switch import commit, contract, manifest, prewarm, trees
from kupgrade.system import criu
from kupgrade.system.run import run as run_cmd
from kupgrade.userspace import tcp

NAME = trees.NAME
VERIFIED = trees.VERIFIED


def plan(ctx: Context) -> list[str]:
    where = (f"(new kernel) the initramfs mounts kupgrade's memory region {ctx.plan.region.device} on {ctx.restore_dir}"
             if ctx.plan.region else
             f"(new kernel) the initramfs script moves the snapshot onto a tmpfs of its own at {ctx.restore_dir}")
    return [where,
            "read ahead the files the workloads had open or mapped (restore.prewarm), while:",
            f"verify {contract.MANIFEST}: target kernel, size and CRC-32 of every file",
            ("device hooks: collect their early-restore results, run restore (a critical failure: no "
             "workload is restored, the snapshot is kept)"),
            ("TCP connections in the snapshot: drop their peers' packets (nft table inet kupgrade) until "
             "their tree is restored, so the new kernel does not reset them"),
            "criu restore --restore-detached each tree (same PIDs); the tasks run again",
            "device hooks: run verify",
            f"free the snapshot memory; record the outcome in {ctx.state_dir}/records/"]


def failure(results: dict[str, dict], snap: Path, details: dict) -> RestoreError | None:
    failed = [r for r in results.values() if r.get("ok") is False]
    if not failed:
        return None
    return RestoreError(f"{len(failed)} of {len(results)} workload(s) failed to restore: {failed[0]['error']}",
                        f"their images and criu's restore.log are kept in {snap}/images/ (RAM: lost on reboot)",
                        details=details)


TREE_FILE = re.compile(r"'?images/(tree-[0-9]+)/")


HOOK_STATE = (f"{contract.HOOKS}/",)


def _verified(ctx: Context, snap: Path, done: set[str], only: tuple[str, ...] = ()):
    """The manifest, once every file of the trees still to restore matched it, and the trees
    whose images did not ({key: first problem}): those are not restored (the only copy is
    damaged), the others are. Any other problem (kernel, manifest, hooks) stops everything.
    only=HOOK_STATE: the first pass, the hooks' saved state (small) alone; the full pass then
    leaves it out (a hook may rewrite its own files in the meantime)."""
    if (snap / contract.MOVE_FAILED).exists():
        raise RestoreError(f"the initramfs could not move the snapshot into {snap}: "
                           f"{(snap / contract.MOVE_FAILED).read_text().strip()}",
                           "nothing was restored: the snapshot is incomplete (preflight sizes memory for it; "
                           "see `kupgrade report` and the kernel log)")
    # a rehearsal restores on the old kernel what was packed for the target kernel
    skip = tuple(f"images/{k}/" for k in sorted(done)) + (() if only else HOOK_STATE)
    m, problems = manifest.verify(snap, ctx.plan.target.version if ctx.rehearsal else os.uname().release,
                                  added=early.written_in_new_kernel, skip=skip, only=only)
    corrupt: dict[str, str] = {}
    for p in problems:
        if (tree := TREE_FILE.match(p)) and m is not None:
            corrupt.setdefault(tree.group(1), p)
    problems = [p for p in problems if not TREE_FILE.match(p) or m is None]
    if not only and m is not None and m.criu.get("version") and (
            why := criu.restores(m.criu["version"], _criu_here(ctx))):     # asks criu: the full pass only
        problems.append(why)
    if problems:
        raise RestoreError(f"snapshot in {snap} failed verification: {problems[0]}"
                           + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""),
                           f"nothing was restored; the snapshot is kept in {snap}")
    return m, corrupt


def _criu_here(ctx: Context) -> str:
    """The version of the criu that restores here (paths.criu), asked once per restore."""
    if not ctx.plan.criu:      # this kernel's side has no preflight: its plan knows only this
        ctx.plan = replace(ctx.plan, criu=criu.identity())
    return ctx.plan.criu.get("version", "")


HEALTH_TIMEOUT = 60.0


def _go_on(ctx: Context, snap: Path, m, keys: list[str], details: dict) -> dict:
    """Every tree is back, held: the health check, then they all continue (commit.py). A failing
    check raises: none has run in this kernel, so the way back carries them all."""
    try:
        details["health_check"] = health_check(ctx, m)
    except RestoreError as e:
        raise e.in_stage(details) from e
    return commit.resume(snap, m, keys)


def health_check(ctx: Context, m) -> dict:
    """restore.health_check, before any workload runs in this kernel: with a way back, once every
    tree is restored (stopped); without, before the first is restored."""
    cmd = ctx.config.health_check
    if not cmd:
        return {}
    if m.rollback or ctx.rehearsal:
        return {"command": cmd, "skipped": "the way back: the old kernel is the fallback" if m.rollback
                else "a rehearsal has no way back"}
    try:
        run_cmd(shlex.split(cmd), timeout=HEALTH_TIMEOUT)
    except CommandError as e:
        raise RestoreError(f"the health check `{cmd}` failed in {os.uname().release}: {e.message}",
                           "no workload has run in this kernel; see `kupgrade report`")
    return {"command": cmd, "ok": True}


def _protect(snap: Path, todo) -> int | str:
    """Before any address is configured (network hook, the distribution's networking): the
    peers' packets would meet no socket and be answered with an RST. Before the images are
    verified (the hooks run alongside): a tree whose TCP state cannot be read is passed over,
    and one found damaged is let go again (_let_go)."""
    socks = []
    for w in todo:
        try:
            socks += tcp.read(snap / "images" / w.key)
        except (OSError, ValueError, KeyError, TypeError):
            pass                    # damaged: the verification says so, the tree is not restored
    try:
        return tcp.install(socks)
    except CommandError as e:       # the workloads still come back; their connections may be reset
        return f"not protected: {e.message}"


def _let_go(snap: Path, corrupt: dict[str, str]) -> None:
    """The peers of the trees that will not be restored (damaged): their packets may come in."""
    for key in sorted(corrupt):
        try:
            tcp.release(tcp.read(snap / "images" / key))
        except (KupgradeError, OSError, ValueError, KeyError, TypeError):
            pass


def _verify_beside_hooks(ctx: Context, snap: Path, done: set[str], retry: bool, laps: Laps):
    """The hooks' state verified first, the TCP peers held off, then the device hooks' restore
    runs while the images are verified (they do not depend on each other; both sit in the pause).
    Returns (manifest, corrupt trees, the hooks' results, the protection); raises what the
    verification found, else what a critical hook did, after both are done."""
    with laps.lap("verify_hook_state"):
        m, _ = _verified(ctx, snap, done, only=HOOK_STATE)
    todo = [w for w in m.workloads if w.key not in done]
    with laps.lap("protect"):
        protected = _protect(snap, todo)     # units too: they restore later
    hooked: dict = {"done": [], "error": None}

    def hooks():
        with laps.lap("hooks"):
            try:
                hooked["done"] = [] if retry else hookpoints.restore(ctx, snap)
            except HookError as e:          # critical: none is restored
                hooked["error"] = e
    t = threading.Thread(target=hooks, name="kupgrade-hooks-restore", daemon=True)
    t.start()
    failed = None
    try:
        with laps.lap("verify"):
            m, corrupt = _verified(ctx, snap, done)
    except RestoreError as e:
        failed = e
    finally:                            # whatever the verification raised: no hook is left running
        with laps.lap("hooks_wait"):
            t.join()
    if failed is not None:              # nothing is restored; what the hooks did is recorded
        ran = hooked["done"] or (hooked["error"].details.get("hooks", []) if hooked["error"] else [])
        raise failed.in_stage({"hooks": ran}) from failed
    if hooked["error"] is not None:
        raise hooked["error"]
    _let_go(snap, corrupt)
    return m, corrupt, hooked["done"], protected


def _warm_up(snap: Path, laps: Laps) -> threading.Thread:
    """Alongside the verification, what the restore would otherwise wait for in turn: criu's
    probing of this kernel (criu.warm) and, with TCP connections in the snapshot, the module
    their protection needs. Reads the images before they are verified only to decide that."""
    def work():
        with laps.lap("warm_up"):
            try:
                if any(s.connected for d in sorted((snap / "images").glob("tree-*")) for s in tcp.read(d)):
                    tcp.load_module()
            except (KupgradeError, OSError, ValueError):
                pass                # the protection loads it again, and says what failed
            criu.warm(snap / criu.WARM_LOG)
    t = threading.Thread(target=work, name="kupgrade-warm-up", daemon=True)
    t.start()
    return t


def run(ctx: Context) -> tuple[str, Restore]:
    """Verify the snapshot, restore the trees that are not systemd units; units are restored by
    their own start (see kupgrade/userspace/systemd.py), after this. A retry (`kupgrade restore --retry`)
    restores what an earlier attempt did not, without running the device hooks again."""
    snap = ctx.restore_dir
    done = trees.restored_keys(ctx.record)
    laps = Laps()
    warm = prewarm.start(snap) if ctx.config.prewarm and not done else None   # reads while this verifies
    warming = _warm_up(snap, laps)
    if not trees.attempts(ctx.record) and (last := sorted((snap / "images").glob("tree-*"))[-1:]):
        faults.corrupt(last[0])         # the test fault: the last tree's copy damaged on the way
    retry = any(s.name == NAME for s in trees.attempts(ctx.record))
    m, corrupt, hooks_done, protected = _verify_beside_hooks(ctx, snap, done, retry, laps)
    todo = [w for w in m.workloads if w.key not in done]
    hold = not corrupt and not trees.refused(m, ctx.record, ctx.rehearsal)    # all or nothing (commit.py)
    health = {} if hold else health_check(ctx, m)      # holding: when all are back, before any runs
    (snap / VERIFIED).write_text(m.id + "\n" + "".join(f"corrupt {k}\n" for k in sorted(corrupt)))
    with laps.lap("warm_up_wait"):      # the units' restores, later, read criu's cache too
        warming.join()
    results = {w.key: _one(ctx, snap, w, corrupt, hold, laps) for w in todo}
    logs = trees.finish_trees(ctx, snap, m.id, results)
    details = {"snapshot_id": m.id, "verified_files": len(m.files), "verified_bytes": m.total_bytes,
               "workloads": results, "criu_logs": logs, "hooks": hooks_done,
               "hooks_load_s": ctx.hooks_load_s, "tcp_protected": protected, "health_check": health, "hold": hold,
               "prewarm": warm.summary() if warm else {}, "criu": {"dumped_by": m.criu, "restored_by": ctx.plan.criu},
               "seconds": laps,
               "start": ctx.started or None}
    if hold and all(r.get("ok") for r in results.values()):    # no unit to wait for: all are back
        with laps.lap(commit.STAGE):
            details[commit.STAGE] = _go_on(ctx, snap, m, [k for k, r in results.items() if r.get("held")], details)
    if all(r.get("ok") for r in results.values()):      # kept for `kupgrade restore --retry` otherwise
        trees.mark_restored(snap)
    with laps.lap("verify_hooks"):
        verify_err = hookpoints.verify(ctx, snap, details)     # before anything deletes snap/hooks
    if (err := failure(results, snap, details) or verify_err):
        raise err
    units = sum(1 for w in m.workloads if w.unit)
    return (f"restored {len(results) - units} workload(s) from snapshot {m.id}"
            + (f"; {units} unit(s) restore when systemd starts them" if units else "")
            + ("; all stay stopped until the last is back" if hold and units else "")), Restore(**details)


def _one(ctx: Context, snap: Path, w, corrupt: dict[str, str], hold: bool, laps: Laps) -> dict:
    """One tree's result: restored here, left to its unit's start, or not restored (damaged)."""
    if w.key in corrupt:
        return {"selector": w.selector, "ok": False, "corrupt": True, "images": str(snap / "images" / w.key),
                "error": f"its images failed verification ({corrupt[w.key]}): the only copy is "
                         "damaged, it was not restored"}
    if w.unit:
        return {"selector": w.selector, "ok": None, "unit": w.unit, "pending": f"restored when {w.unit} starts"}
    with laps.lap(f"criu {w.key}"):
        return trees.restore_one(snap, w, state_dir=ctx.state_dir, hold=hold)
