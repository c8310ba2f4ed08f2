"""Back to the old kernel when the new one cannot restore the workloads (restore.on_failure =
"rollback", the default): the same snapshot, packed again for the old kernel, kexec'ed back
into it, restored there. The record tells the whole story across the three boots.

What makes it safe: the old kernel's side was checked by preflight before the switch (its image
and initrd with the boot scripts, `way_back` in the manifest); nothing of the snapshot has run in
the new kernel (each tree is restored stopped and none continues until all are back, see
commit.py; a rollback is refused once one has run here: its snapshot is stale); the way back
is taken once (the manifest packed for it says `rollback`).
Runs on the new kernel's boot path: imports neither typer nor rich nor psutil.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

from kupgrade.errors import KupgradeError
from kupgrade.output import record
from kupgrade.output.record import OK, StageResult
from kupgrade.output.results import SwitchBack
from kupgrade.switch import contract, initrd, manifest, packing, pmem
from kupgrade.system import fsfreeze, kexec
from kupgrade.system.run import COMMAND_LOG, program, run

WORKDIR = "/run/kupgrade-back"          # a tmpfs of its own for the packed initrd


def _back_manifest(snap: Path, m: manifest.Manifest):
    """The manifest the way back carries: the same files, unchanged, marked `rollback`."""
    def make(files: dict) -> manifest.Manifest:
        if changed := [rel for rel, f in files.items() if rel in m.files and f != m.files[rel]
                       and not manifest.matches(snap, rel, m.files[rel])]:     # (a sum of another kind)
            raise KupgradeError(f"{changed[0]} is not what the old kernel packed: going back would restore "
                                "damaged memory", f"the snapshot stays in {snap}")
        return manifest.make(m.id, m.kernel_to, m.kernel_from, m.workloads, files, rollback=True, start=m.start,
                         criu=m.criu)
    return make


def _pack(snap: Path, m: manifest.Manifest, rec: record.UpgradeRecord, out: Path) -> manifest.Manifest:
    """The old kernel's initrd + the snapshot's images, hooks and generator output, with a manifest for it."""
    made: list[manifest.Manifest] = []
    # only the files the old kernel packed: criu's PID file and log of a tree restored (held)
    # here would make criu refuse the restore there (it creates the PID file exclusively)
    warm = _prewarm(snap)
    initrd.assemble(Path(m.back["initrd"]), out, lambda w: made.append(
        packing.fill(w, snap / contract.IMAGES, snap / contract.HOOKS, m.workloads, _back_manifest(snap, m),
                     rec.dumps(), only=lambda arc: arc in m.files, prewarm=warm, generated=snap / contract.GENERATED)))
    return made[0]


def _prewarm(snap: Path) -> bytes:
    """The old kernel's list of files to read ahead: good for the way back too."""
    try:
        return (snap / contract.PREWARM).read_bytes()
    except OSError:
        return b""


def _seal(snap: Path, m: manifest.Manifest, rec: record.UpgradeRecord) -> manifest.Manifest:
    """The memory-region transport: the snapshot stays where it is; what this kernel wrote beside
    it (criu's PID files and logs, the verified mark, the units' PID files) goes, as in _pack."""
    warm = _prewarm(snap)
    for rel in manifest.unlisted(snap, m.files):
        (snap / rel).unlink()
    for top in snap.iterdir():
        if top.name in contract.DIRS:
            continue
        if top.is_dir() and not top.is_symlink():
            shutil.rmtree(top)
        else:
            top.unlink()
    return packing.seal(snap, m.workloads, _back_manifest(snap, m), rec.dumps(), only=lambda arc: arc in m.files,
                        prewarm=warm)


def go(ctx, m: manifest.Manifest, cause: KupgradeError) -> None:
    """Pack, load and execute the old kernel. Returns only if that failed (then raises)."""
    snap, back = ctx.restore_dir, m.back
    t0, started = time.monotonic(), time.time()
    if pmem.is_region(pmem.source(snap)):      # the snapshot stays in kupgrade's memory region
        _switch(ctx, m, cause, None, started, t0)
        return
    work = Path(WORKDIR)
    work.mkdir(mode=0o700, exist_ok=True)
    size_kib = (sum(f.stat().st_size for f in snap.rglob("*") if f.is_file())
                + Path(back["initrd"]).stat().st_size) // 1024 + 65536
    run(["mount", "-t", "tmpfs", "-o", f"mode=0700,size={size_kib}k,nosuid,nodev,noexec", "kupgrade-back",
         str(work)], timeout=30)
    try:
        _switch(ctx, m, cause, work, started, t0)
    finally:                    # only reached when the switch did not happen: free the memory
        run(["umount", str(work)], timeout=60, check=False)


def _switch(ctx, m: manifest.Manifest, cause: KupgradeError, work: Path | None, started: float, t0: float) -> None:
    """work: the tmpfs the old kernel's initrd is packed in (None: the memory-region transport)."""
    snap, back = ctx.restore_dir, m.back
    note = StageResult("switch-back", OK, started, 0.0,
                       f"the restore failed in {m.kernel_to} ({cause.message}); back to {back['kernel']} "
                       "with the same snapshot", SwitchBack(cause=cause.message, kernel=back["kernel"],
                                                      boot_id=kexec.boot_id()))
    if work is None:
        sent, packed = _seal(snap, m, ctx.record.with_stage(note)), Path(back["initrd"])
    else:
        packed = work / "initrd.img"
        sent = _pack(snap, m, ctx.record.with_stage(note), packed)
    method = kexec.Method(back["method"], "chosen by preflight in the old kernel")
    cmdline = kexec.command_line(back["cmdline"], m.id, max_pid=max((p for w in m.workloads for p in w.ids), default=1))
    run(kexec.load_argv(method, Path(back["vmlinuz"]), packed, cmdline), timeout=600,
        hint="the old kernel could not be loaded; the snapshot stays in " + str(snap))
    if work is not None:
        packed.unlink()
    note = replace(note, duration_s=time.monotonic() - t0,
                   details=replace(note.details, snapshot_bytes=sent.total_bytes, cmdline=cmdline,
                                   transport="initrd" if work else "pmem"))
    ctx.record = replace(ctx.record.with_stage(note), outcome=record.ROLLING_BACK,
                         commands=ctx.record.commands + tuple(COMMAND_LOG))
    COMMAND_LOG.clear()
    record.save(ctx.record, ctx.state_dir)
    os.sync()
    if work is None:    # the region's file system frozen: consistent for the old kernel
        run(fsfreeze.exec_argv(program(kexec.KEXEC), [str(snap)]), timeout=120)
    else:
        run(kexec.exec_argv(), timeout=120)
    raise KupgradeError("kexec --exec returned without switching back", f"the snapshot stays in {snap}")
