"""handover (rehearsal only): instead of `kexec --exec`, hand the workloads over to their own
snapshot on this kernel, as the new kernel would: unload the kexec kernel (its load was
measured), unpack the snapshot archive from the packed initrd into /run/kupgrade exactly as the
initramfs script leaves it, then end the original (stopped or frozen) tasks so that their PIDs
are free for the restore stage.

Ending the tasks is the rehearsal's point of no return: from there on, the workloads live on
only in the snapshot, as after a real kernel switch. Everything before it is rolled back.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

from kupgrade.context import Context
from kupgrade.errors import RestoreError
from kupgrade.output.results import Handover
from kupgrade.stages import freeze
from kupgrade.stages import kexec as kexec_stage
from kupgrade.stages.snapshot import combined_path
from kupgrade.switch import initrd, pmem
from kupgrade.switch.packing import restore_tmpfs_kib
from kupgrade.system.run import run as run_cmd

NAME = "handover"
PID_WAIT_S = 10.0


def plan(ctx: Context) -> list[str]:
    where = (f"mount kupgrade's memory region on {ctx.restore_dir} instead of {ctx.snapshot_dir}, as the initramfs "
             "would" if ctx.plan.region else
             f"unpack the snapshot from the packed initrd into {ctx.restore_dir}, as the initramfs would")
    return ["(rehearsal) unload the kexec kernel instead of executing it", where,
            "end the stopped/frozen original tasks (SIGKILL) and wait until their PIDs are free"]


def _taken(pids: list[int]) -> list[int]:
    """The PIDs still taken (a task, or a zombie its parent has not reaped yet)."""
    return [p for p in pids if os.path.exists(f"/proc/{p}")]


def run(ctx: Context) -> tuple[str, Handover]:
    unloaded = kexec_stage.unload(ctx)
    dest = ctx.restore_dir
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest.chmod(0o700)
    t0 = time.monotonic()
    files = _from_region(ctx, dest) if ctx.plan.region else _unpack(ctx, dest)
    unpack_s = time.monotonic() - t0

    ctx.replaced = True          # from here on the workloads live on in the snapshot only
    ctx.note()
    pids = [p for w in ctx.workloads for p in w.pids]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    ctx.stopped.clear()
    deadline = time.monotonic() + PID_WAIT_S
    while (taken := _taken(pids)) and time.monotonic() < deadline:
        time.sleep(0.01)
    thawed = freeze.thaw(ctx)    # the restored tasks go back into these cgroups
    if taken:
        raise RestoreError(f"PID {taken[0]} is still taken {PID_WAIT_S:.0f} s after its task was ended "
                           "(a zombie its parent does not reap?)",
                           f"the snapshot is kept in {dest}; once the PIDs are free: "
                           f"criu restore -D {dest}/images/TREE --restore-detached")
    return (f"unpacked {files} file(s) in {unpack_s:.2f} s; ended {len(pids)} original task(s)",
            Handover(unpacked_files=files, unpack_s=round(unpack_s, 4), ended_pids=pids, done=unloaded + thawed))


def _unpack(ctx: Context, dest) -> int:
    """The initrd transport: the archive onto a tmpfs of its own, as the initramfs script does."""
    snap = combined_path(ctx)
    sizes = ctx.record.stage("snapshot").details
    ctx.unpacked = True         # before the mount: an interruption right after it is undone too
    ctx.note()
    # as in the new kernel's initramfs: a tmpfs of its own (a tmpfs /run is limited in size)
    run_cmd(["mount", "-t", "tmpfs", "-o", f"mode=0700,size={restore_tmpfs_kib(sizes.snapshot_bytes)}k,"
             "nosuid,nodev,noexec", "kupgrade-restore", str(dest)], timeout=30)
    files = initrd.extract(snap, sizes.target_initrd_bytes + sizes.padding_bytes, dest)
    snap.unlink()
    return files


def _from_region(ctx: Context, dest) -> int:
    """The memory-region transport: the region's file system moves to where the new kernel's
    init-top script mounts it (unmounted and mounted again: /run is a shared mount)."""
    run_cmd(["umount", str(ctx.snapshot_dir)], timeout=60)
    ctx.snapshot_mounted = False
    ctx.unpacked = True
    ctx.note()
    pmem.mount(ctx.plan.region.device, dest)
    return sum(len(files) for _d, _s, files in os.walk(dest))


def discard(ctx: Context) -> list[str]:
    """Rollback (before the tasks were ended): remove what run() unpacked."""
    if not ctx.unpacked:
        return []
    done = pmem.release(ctx.restore_dir)       # kupgrade's memory region is zeroed too
    shutil.rmtree(ctx.restore_dir, ignore_errors=True)
    ctx.unpacked = False
    ctx.note()
    return done + [f"removed the unpacked snapshot in {ctx.restore_dir}"]
