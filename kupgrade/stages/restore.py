"""restore (new kernel): verify the snapshot, criu-restore every tree, record the outcome.

Started by the boot integration once the initramfs left the snapshot in /run/kupgrade (moved
there from the initrd, or kupgrade's memory region mounted there). A tree that fails to restore keeps its images (and criu's log) in
/run/kupgrade/images/ and the record says so; the other trees are still restored.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import threading
from dataclasses import replace
from pathlib import Path

from kupgrade import faults
from kupgrade.context import Context
from kupgrade.errors import CommandError, KupgradeError, RestoreError
from kupgrade.hooks import early, hookpoints
from kupgrade.output.results import Restore
from kupgrade.output.timeline import Laps
from kupgrade.switch import commit, contract, manifest, pmem, prewarm, switchback
from kupgrade.system import criu
from kupgrade.system.run import run as run_cmd
from kupgrade.userspace import mountns, systemd, tcp, unixsk, volatile

NAME = "restore"
DONE = contract.DONE
VERIFIED = contract.VERIFIED       # written once every file matched the manifest


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


def pending(restore_dir: Path) -> bool:
    return (restore_dir / manifest.NAME).exists()


def _taken(w) -> str:
    """Why this tree cannot get its PIDs back in this boot ("" if it can): its threads' too."""
    for pid in w.ids:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except FileNotFoundError:
            continue
        return (f"PID {pid} of {w.selector} is taken in this boot by `{comm}`: restoring it would change the "
                "PIDs, so it was not restored")
    return ""


def restore_one(snap: Path, w, pidfile: Path | None = None, state_dir: Path = Path(contract.STATE_DIR),
                hold: bool = False) -> dict:
    """criu-restore one tree from snap/images/TREE; the result for the record. hold: its tasks
    stay stopped, its peers' packets dropped, its images kept, until commit.py continues it."""
    images = snap / "images" / w.key
    socks = tcp.read(images)
    result = _restore(images, w, pidfile or images / "restored.pid", socks, state_dir, hold)
    if any(s.connected for s in socks):
        result["tcp"] = {"connections": [str(s) for s in socks if s.connected]}
        if not hold:                        # restored or lost: the peers' packets may come in again
            result["tcp"].update(tcp.release(socks))
    return result


def _restore(images: Path, w, pidfile: Path, socks: list, state_dir: Path, hold: bool) -> dict:
    if (why := _taken(w)):
        return {"selector": w.selector, "ok": False, "error": why, "images": str(images)}
    pidfile.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pidfile.unlink(missing_ok=True)     # criu creates it exclusively: one left by an earlier attempt fails it
    opened: list[int] = []
    try:
        inherit = {}
        if (images / criu.STDIO).exists():
            # the tree's stdio sockets (to the old boot's journald) become our stdout: when a
            # unit's start restores it, that is the unit's journal stream in this boot
            opened.append(os.dup(1))
            inherit = {res: opened[0] for res in json.loads((images / criu.STDIO).read_text())}
        ns = mountns.load(images)       # a unit's own mount namespace: what this boot lacks is made
        if ns:
            files = mountns.prepare(ns, images)
            opened += files.values()
            inherit.update(files)
        conns = [s for s in socks if s.connected]
        put_back = volatile.put_back(images)     # its files on tmpfs this boot does not have
        faults.point("restore", f"criu restore of {w.selector} failed")
        run_cmd(criu.restore_argv(images, pidfile, inherit, tcp=bool(conns),
                                  action_script=tcp.action_script(state_dir) if any(not s.wscale for s in conns) else "",
                                  stopped=hold, no_new_privs=(images / criu.NO_NEW_PRIVS).exists(),
                                  ext_unix=(images / unixsk.EXT_UNIX).exists(), extra=ns.restore_args() if ns else ()),
                timeout=600, cwd=str(images), pass_fds=tuple(opened))
        pid = int(pidfile.read_text())
        result = {"selector": w.selector, "ok": True, "root_pid": pid, "same_pid": pid == w.root_pid}
        if put_back:
            result["files_put_back"] = put_back
        if w.other_cgroups:     # an ssh session's scope: criu made its cgroup again; systemd adopts it
            result["scopes"] = {cg: systemd.adopt(cg) for cg in w.other_cgroups}
        if hold:
            result["held"] = True
    except (KupgradeError, OSError, ValueError) as e:
        cause = criu.first_error(images, criu.RESTORE_LOG)
        result = {"selector": w.selector, "ok": False, "error": cause or str(e), "images": str(images)}
    finally:
        for fd in opened:
            os.close(fd)
    return result


def mark_restored(snap: Path) -> None:
    """Every tree is back: the manifest becomes DONE, so nothing is pending any more."""
    if (snap / manifest.NAME).exists():
        os.replace(snap / manifest.NAME, snap / DONE)


def clear(snap: Path) -> None:
    """Remove the snapshot (its tmpfs too, when it has one; kupgrade's memory region is zeroed):
    nothing is pending any more."""
    pmem.release(snap, lazy=True)
    shutil.rmtree(snap, ignore_errors=True)


def release_region(snap: Path) -> str:
    """Every tree is back and nothing reads the snapshot any more: kupgrade's memory region is
    unmounted and zeroed now (a tmpfs goes with this boot). What was done, or why not. Called
    once the record is final: zeroing a large region is not part of the restore's time."""
    if not (snap / DONE).exists() or not pmem.is_region(pmem.source(snap)):
        return ""
    try:
        return "; ".join(pmem.release(snap))
    except (CommandError, OSError) as e:
        return f"kupgrade's memory region was not released: {getattr(e, 'message', e)}"


def finish_trees(ctx: Context, snap: Path, snapshot_id: str, results: dict[str, dict]) -> list[str]:
    """Keep the criu logs on disk, free the images of the restored trees."""
    logs = criu.keep_logs(snap / "images", ctx.state_dir / "logs" / snapshot_id)
    for key, r in results.items():
        if r.get("ok") and not r.get("held"):       # a held tree's images go when it continues
            shutil.rmtree(snap / "images" / key, ignore_errors=True)   # free the RAM
    return logs


def failure(results: dict[str, dict], snap: Path, details: dict) -> RestoreError | None:
    failed = [r for r in results.values() if r.get("ok") is False]
    if not failed:
        return None
    return RestoreError(f"{len(failed)} of {len(results)} workload(s) failed to restore: {failed[0]['error']}",
                        f"their images and criu's restore.log are kept in {snap}/images/ (RAM: lost on reboot)",
                        details=details)


SWITCHES = ("exec", "switch-back")     # the stages after which another kernel restores


def attempts(rec) -> list:
    """The restore stages of this kernel: those after the last switch (after a way back, the
    new kernel's failed attempt is not this kernel's), with the commit that continued them."""
    last = max((i for i, s in enumerate(rec.stages) if s.name in SWITCHES), default=-1)
    return [s for s in rec.stages[last + 1:] if s.name in (NAME, "restore-unit", commit.STAGE)]


def restored_keys(rec) -> set[str]:
    """The trees an earlier attempt in this kernel brought back (held or running)."""
    return {k for k, r in commit.results(attempts(rec)).items() if r.get("ok")}


TREE_FILE = re.compile(r"'?images/(tree-[0-9]+)/")


def _verified(ctx: Context, snap: Path, done: set[str]):
    """The manifest, once every file of the trees still to restore matched it, and the trees
    whose images did not ({key: first problem}): those are not restored (the only copy is
    damaged), the others are. Any other problem (kernel, manifest, hooks) stops everything."""
    if (snap / contract.MOVE_FAILED).exists():
        raise RestoreError(f"the initramfs could not move the snapshot into {snap}: "
                           f"{(snap / contract.MOVE_FAILED).read_text().strip()}",
                           "nothing was restored: the snapshot is incomplete (preflight sizes memory for it; "
                           "see `kupgrade report` and the kernel log)")
    # a rehearsal restores on the old kernel what was packed for the target kernel
    m, problems = manifest.verify(snap, ctx.plan.target.version if ctx.rehearsal else os.uname().release,
                                  added=early.written_in_new_kernel, skip=tuple(f"images/{k}/" for k in sorted(done)))
    corrupt: dict[str, str] = {}
    for p in problems:
        if (tree := TREE_FILE.match(p)) and m is not None:
            corrupt.setdefault(tree.group(1), p)
    problems = [p for p in problems if not TREE_FILE.match(p) or m is None]
    if m is not None and m.criu.get("version") and (why := criu.restores(m.criu["version"], _criu_here(ctx))):
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


def _protect(snap: Path, trees) -> int | str:
    """Before any address is configured (network hook, the distribution's networking): the
    peers' packets would meet no socket and be answered with an RST."""
    try:
        return tcp.install([s for w in trees for s in tcp.read(snap / "images" / w.key)])
    except CommandError as e:       # the workloads still come back; their connections may be reset
        return f"not protected: {e.message}"


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
            criu.warm()
    t = threading.Thread(target=work, name="kupgrade-warm-up", daemon=True)
    t.start()
    return t


def run(ctx: Context) -> tuple[str, Restore]:
    """Verify the snapshot, restore the trees that are not systemd units; units are restored by
    their own start (see kupgrade/userspace/systemd.py), after this. A retry (`kupgrade restore --retry`)
    restores what an earlier attempt did not, without running the device hooks again."""
    snap = ctx.restore_dir
    done = restored_keys(ctx.record)
    laps = Laps()
    warm = prewarm.start(snap) if ctx.config.prewarm and not done else {}     # read ahead while verifying
    warming = _warm_up(snap, laps)
    if not attempts(ctx.record) and (last := sorted((snap / "images").glob("tree-*"))[-1:]):
        faults.corrupt(last[0])         # the test fault: the last tree's copy damaged on the way
    with laps.lap("verify"):
        m, corrupt = _verified(ctx, snap, done)
    todo = [w for w in m.workloads if w.key not in done]
    with laps.lap("protect"):
        protected = _protect(snap, [w for w in todo if w.key not in corrupt])     # units too: they restore later
    retry = any(s.name == NAME for s in attempts(ctx.record))
    with laps.lap("hooks"):
        hooks_done = [] if retry else hookpoints.restore(ctx, snap)    # HookError (critical): none restored
    hold = not corrupt and not switchback.refused(m, ctx.record, ctx.rehearsal)    # all or nothing (commit.py)
    health = {} if hold else health_check(ctx, m)      # holding: when all are back, before any runs
    (snap / VERIFIED).write_text(m.id + "\n" + "".join(f"corrupt {k}\n" for k in sorted(corrupt)))
    with laps.lap("warm_up_wait"):      # the units' restores, later, read criu's cache too
        warming.join()
    results = {w.key: _one(ctx, snap, w, corrupt, hold, laps) for w in todo}
    logs = finish_trees(ctx, snap, m.id, results)
    details = {"snapshot_id": m.id, "verified_files": len(m.files), "verified_bytes": m.total_bytes,
               "workloads": results, "criu_logs": logs, "hooks": hooks_done,
               "hooks_load_s": ctx.hooks_load_s, "tcp_protected": protected, "health_check": health, "hold": hold,
               "prewarm": warm, "criu": {"dumped_by": m.criu, "restored_by": ctx.plan.criu}, "seconds": laps,
               "start": ctx.started or None}
    if hold and all(r.get("ok") for r in results.values()):    # no unit to wait for: all are back
        with laps.lap(commit.STAGE):
            details[commit.STAGE] = _go_on(ctx, snap, m, [k for k, r in results.items() if r.get("held")], details)
    if all(r.get("ok") for r in results.values()):      # kept for `kupgrade restore --retry` otherwise
        mark_restored(snap)
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
        return restore_one(snap, w, state_dir=ctx.state_dir, hold=hold)
