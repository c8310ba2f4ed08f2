"""The new kernel's restore, one tree at a time, and the snapshot's state in this boot: what the
whole restore (stages/restore.py) and each systemd unit's start (unitrestore.py) share.

A tree is restored by criu with its old PIDs, its stdio, mount namespace, volatile files and
TCP connections put back; held (stopped) when the way back may still be needed. A snapshot is
pending while its manifest is there, verified once every file matched it, done when every
tree is back. Kept lean: a unit's start imports this, not the whole restore stage.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from kupgrade import faults
from kupgrade.errors import CommandError, KupgradeError
from kupgrade.switch import commit, contract, manifest, pmem
from kupgrade.system import criu, sched
from kupgrade.system.run import run as run_cmd
from kupgrade.userspace import mountns, systemd, tcp, unixsk, volatile

if TYPE_CHECKING:
    from kupgrade.context import Context
    from kupgrade.output.record import UpgradeRecord

NAME = "restore"
DONE = contract.DONE
VERIFIED = contract.VERIFIED       # written once every file matched the manifest


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
        sched.unboost()     # the boot-time boost of the restore's session is not the workload's
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
    if (snap / criu.WARM_LOG).is_file():         # the warm-up's probing (restore.py), beside the trees' logs
        logs.append(criu.keep_log(snap / criu.WARM_LOG, ctx.state_dir / "logs" / snapshot_id, criu.WARM_LOG))
    for key, r in results.items():
        if r.get("ok") and not r.get("held"):       # a held tree's images go when it continues
            shutil.rmtree(snap / "images" / key, ignore_errors=True)   # free the RAM
    return logs


SWITCHES = ("exec", "switch-back")     # the stages after which another kernel restores


def attempts(rec) -> list:
    """The restore stages of this kernel: those after the last switch (after a way back, the
    new kernel's failed attempt is not this kernel's), with the commit that continued them."""
    last = max((i for i, s in enumerate(rec.stages) if s.name in SWITCHES), default=-1)
    return [s for s in rec.stages[last + 1:] if s.name in (NAME, "restore-unit", commit.STAGE)]


def restored_keys(rec) -> set[str]:
    """The trees an earlier attempt in this kernel brought back (held or running)."""
    return {k for k, r in commit.results(attempts(rec)).items() if r.get("ok")}


def refused(m: manifest.Manifest, rec: UpgradeRecord, rehearsal: bool = False) -> str:
    """Why this failed restore does not go back ("" when it does)."""
    if rehearsal:
        return "a rehearsal has no other kernel to go back to"
    if not m.back:
        return "restore.on_failure is \"keep\" (or preflight found no way back)"
    if m.rollback:
        return "this is the way back already: there is no second one"
    tried = attempts(rec)
    if running := sorted(commit.continued(tried)):
        return f"{', '.join(running)} already run on in this kernel: their snapshot is stale"
    if earlier := next((s.details.no_rollback for s in tried if s.details.no_rollback), ""):
        return earlier                  # answered once in this kernel already (the way back failed)
    if corrupt := sorted(k for k, r in commit.results(tried).items() if r.get("corrupt")):
        return f"the images of {', '.join(corrupt)} are damaged: the old kernel has no better copy"
    missing = [p for p in (m.back["vmlinuz"], m.back["initrd"]) if not Path(p).is_file()]
    return f"{missing[0]} is gone" if missing else ""
