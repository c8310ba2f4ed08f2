"""snapshot: the final criu dump of every tree into a private tmpfs, plus the manifest.

criu leaves the dumped tasks stopped (not killed): until `kexec -e`, a failure resumes them
exactly where they were.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

from .. import contract, criu, early, faults, initrd, manifest, oom, packing, tcp, unixsk, volatile, workloads
from ..hooks import HOOKS_SUBDIR
from ..progress import file_bytes, tree_bytes, watch
from ..errors import CommandError, HookError, StageError
from ..run import run as run_cmd
from . import freeze, hookpoints
from .context import Context

NAME = "snapshot"
MIN_TMPFS = 256 << 20


def images_root(ctx: Context) -> Path:
    return ctx.snapshot_dir / "images"


def hooks_root(ctx: Context) -> Path:
    """The hooks' state (SNAPSHOT/hooks/NAME/, saved.json, the early-restore bundle)."""
    return ctx.snapshot_dir / HOOKS_SUBDIR


def combined_path(ctx: Context) -> Path:
    """The target initrd with the snapshot appended: what the kexec stage loads."""
    return ctx.snapshot_dir / "initrd.img"


def tmpfs_size(ctx: Context) -> str:
    if ctx.config.snapshot_size != "auto":
        return ctx.config.snapshot_size
    initrd = ctx.target.initrd.stat().st_size if ctx.target and ctx.target.initrd.exists() else 0
    want = max(MIN_TMPFS, int(ctx.estimate_bytes * 2.5) + initrd + (64 << 20))
    return f"{(want >> 20) + 1}M"


def plan(ctx: Context) -> list[str]:
    out = [f"mount a private tmpfs (mode 0700) on {ctx.config.snapshot_dir}"]
    pre = ctx.record.stage("preflight")
    sizes = pre.details.get("workload_bytes", {}) if pre else {}
    for w in ctx.workloads or []:
        mib = f", ~{sizes[w.key] >> 20} MiB" if w.key in sizes else ""
        out.append(f"criu dump --tree {w.root_pid} ({w.selector}, {w.name}, {len(w.pids)} task(s){mib}) --leave-stopped")
        socks = tcp.sockets(w.pids)
        if any(s.connected for s in socks):
            out.append(f"  --tcp-established: {', '.join(str(s) for s in socks if s.connected)} (locked by "
                       "criu; the new kernel drops their peers' packets until they are restored)")
    if not ctx.workloads:
        out.append("criu dump each selected tree, leaving its tasks stopped")
    out += hookpoints.plan_line(ctx, "save") + hookpoints.plan_line(ctx, "early-restore")
    out.append(f"pack {ctx.config.snapshot_dir}/initrd.img = target initrd + padding + cpio of the images "
               f"and the hooks' state, and {contract.MANIFEST} (kernels, workloads, PIDs, size and sha256 of every "
               "file, hashed while packing); then free the images")
    return out


def mount(ctx: Context) -> str:
    d = ctx.snapshot_dir
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    size = tmpfs_size(ctx)
    run_cmd(["mount", "-t", "tmpfs", "-o", f"mode=0700,size={size},nosuid,nodev,noexec",
             "kupgrade-snapshot", str(d)], timeout=30)     # the source name /proc/mounts shows
    ctx.snapshot_mounted = True
    ctx.note()
    return size


def unmount(ctx: Context) -> list[str]:
    if not ctx.snapshot_mounted:
        return []
    run_cmd(["umount", str(ctx.snapshot_dir)], timeout=60)
    ctx.snapshot_mounted = False
    ctx.note()
    try:
        ctx.snapshot_dir.rmdir()
    except OSError:
        pass
    return [f"unmounted {ctx.snapshot_dir}"]


def run(ctx: Context) -> tuple[str, dict]:
    size = mount(ctx)
    t0 = time.monotonic()
    images_root(ctx).mkdir(parents=True, mode=0o700, exist_ok=True)
    for w in list(ctx.workloads):
        images = images_root(ctx) / w.key
        images.mkdir(parents=True, mode=0o700)
        socks = criu.stdio_sockets(w.pids) if w.unit else []
        if socks:   # in the new boot the unit's own journal stream takes their place (--inherit-fd)
            (images / criu.STDIO).write_text(json.dumps(socks) + "\n")
        if criu.no_new_privs(w.root_pid):   # criu does not restore it: the restore runs criu with it
            (images / criu.NO_NEW_PRIVS).write_text("1\n")
        if w.unit and unixsk.needs_ext_unix_sk(w.pids):      # syslog's /dev/log: connected again by name
            (images / unixsk.EXT_UNIX).write_text("1\n")
        try:
            w = _dump(ctx, w, images, socks)
        except StageError as e:
            if not freeze.go_fresh(ctx, w, e.message):
                raise
            shutil.rmtree(images)
            continue
        volatile.save(w.pids, images)      # its files on tmpfs, as the stopped tasks left them
        # the tasks are stopped now: exactly the sockets criu dumped (and locked)
        ctx.tcp[w.key] = socks_tcp = tcp.with_options(tcp.sockets(w.pids), w.pids)
        if socks_tcp:
            tcp.write(images, socks_tcp)
        ctx.oom.update(oom.protect(w.pids))
        ctx.note()
    dump_s = time.monotonic() - t0
    hook_notes, hooks_done = _save_hooks(ctx)
    made: list[manifest.Manifest] = []

    def fill(w: initrd.CpioWriter) -> None:
        made.append(packing.fill(w, images_root(ctx), hooks_root(ctx), ctx.workloads, lambda files: manifest.make(
            ctx.record.id, ctx.kernel_from, ctx.target.version, tuple(ctx.workloads), files, back=ctx.back,
            start=tuple(f.unit for f in ctx.record.fresh if f.stop)),
            ctx.record.dumps()))

    t1 = time.monotonic()
    faults.point("pack", "packing the snapshot failed")
    pack_total = tree_bytes(images_root(ctx)) + ctx.target.initrd.stat().st_size
    with watch(ctx.progress, "pack", pack_total, lambda: file_bytes(combined_path(ctx))):
        sizes = initrd.assemble(ctx.target.initrd, combined_path(ctx), fill)
    pack_s = time.monotonic() - t1
    shutil.rmtree(images_root(ctx))     # its bytes are in the combined initrd now; free the memory
    shutil.rmtree(hooks_root(ctx), ignore_errors=True)
    m = made[0]
    dumps = {w.key: {"selector": w.selector,
                     "bytes": sum(f["size"] for rel, f in m.files.items() if rel.startswith(f"images/{w.key}/")),
                     "tcp": [str(s) for s in ctx.tcp.get(w.key, [])]}
             for w in ctx.workloads}
    return (f"dumped {len(dumps)} tree(s), {m.total_bytes >> 20} MiB, packed with the target initrd "
            f"into {sizes['total_bytes'] >> 20} MiB ({size} tmpfs)",
            {"tmpfs_size": size, "dumps": dumps, "snapshot_bytes": m.total_bytes, "files": len(m.files),
             "dump_s": round(dump_s, 4), "pack_s": round(pack_s, 4), "hooks": hooks_done,
             "early_restore": hook_notes, **sizes})


def _dump(ctx: Context, w, images: Path, socks: list[str]):
    """criu dump of one tree, its tasks left stopped; returns the workload as dumped (its tree
    read again: children forked since preflight are in the dump and must be resumed too)."""
    ctx.dumping = w
    ctx.note()
    try:
        faults.point("dump", "criu dump failed")
        with watch(ctx.progress, "dump", max(ctx.estimate_bytes, 1), lambda: tree_bytes(images_root(ctx))):
            run_cmd(criu.dump_argv(w, images, external=socks, ext_unix=(images / unixsk.EXT_UNIX).exists()),
                    timeout=600, cwd=str(images))
    except CommandError as e:
        ctx.dumping = None
        cause = criu.first_error(images, criu.DUMP_LOG)
        kept = criu.keep_logs(images_root(ctx), ctx.state_dir / "logs" / ctx.record.id)
        raise StageError(f"criu dump of {w.selector} failed: {cause or e.message}",
                         f"criu's log: {kept[-1] if kept else 'none written'}; the tasks were resumed by criu")
    dumped = workloads.retree(w)
    ctx.workloads = [dumped if x.key == w.key else x for x in ctx.workloads]
    ctx.record = replace(ctx.record, workloads=tuple(ctx.workloads))
    ctx.stopped.append(dumped)
    ctx.dumping = None
    return dumped


def _save_hooks(ctx: Context) -> tuple[list[str], list[dict]]:
    """After the dumps, before packing: the hooks' save, then the early-restore bundle."""
    if not ctx.hooks:
        return [], []
    done = hookpoints.call(ctx, "save", snapshot_dir=ctx.snapshot_dir)   # a HookError carries its details
    try:
        notes = early.bundle(ctx.hooks, ctx.devices, hookpoints.extra(ctx), ctx.snapshot_dir,
                             restore_dir=ctx.restore_dir)
    except HookError as e:      # a critical hook that cannot run in the initramfs
        raise e.with_details({"hooks": done}) from e
    return notes, done


def discard(ctx: Context) -> list[str]:
    if ctx.snapshot_mounted:
        for p in (images_root(ctx), hooks_root(ctx), combined_path(ctx)):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
    return unmount(ctx)
