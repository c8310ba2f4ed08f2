"""snapshot: the final criu dump of every tree into a private tmpfs, plus the manifest.

criu leaves the dumped tasks stopped (not killed): until `kexec -e`, a failure resumes them
exactly where they were.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from kupgrade import faults, inflight
from kupgrade.context import Context
from kupgrade.errors import CommandError, HookError, StageError
from kupgrade.hooks import HOOKS_SUBDIR, early, hookpoints
from kupgrade.output.progress import file_bytes, tree_bytes, watch
from kupgrade.output.results import Snapshot
from kupgrade.stages import freeze
from kupgrade.switch import boot, contract, initrd, manifest, packing, pmem, prewarm
from kupgrade.system import criu, oom
from kupgrade.system.run import run as run_cmd
from kupgrade.userspace import carry, mountns, sandbox, systemd, tcp, unixsk, volatile, workloads

log = logging.getLogger("kupgrade.stages.snapshot")
NAME = "snapshot"
MIN_TMPFS = 256 << 20
PARALLEL = 4            # criu dumps at once (bounded by the CPUs too)


def images_root(ctx: Context) -> Path:
    return ctx.snapshot_dir / "images"


def generated_root(ctx: Context) -> Path:
    """The systemd generator's output for the new boot (contract.GENERATED)."""
    return ctx.snapshot_dir / contract.GENERATED


def generate(ctx: Context) -> list[str]:
    """Write, into the snapshot, what the new boot's systemd generator would otherwise start Python
    for inside the pause: the drop-ins that make each carried unit's start restore it, the commit
    unit, the units pulled into multi-user.target (kupgrade/data/systemd-generator copies them)."""
    units = [w.unit for w in ctx.workloads if w.unit]
    start = tuple(f.unit for f in ctx.record.fresh if f.stop)
    if not units and not start:
        return []
    return systemd.generate(generated_root(ctx), ctx.record.id, units, os.path.realpath(boot.restore_command()),
                            Path(contract.RESTORE_DIR), start=start, idents={w.unit: w.ident for w in ctx.workloads})


def hooks_root(ctx: Context) -> Path:
    """The hooks' state (SNAPSHOT/hooks/NAME/, saved.json, the early-restore bundle)."""
    return ctx.snapshot_dir / HOOKS_SUBDIR


def combined_path(ctx: Context) -> Path:
    """The target initrd with the snapshot appended: what the kexec stage loads."""
    return ctx.snapshot_dir / "initrd.img"


def held(est: int, pre_dumps: int) -> int:
    """Bytes the snapshot holds: with pre-dumps, the pages dirtied again after the last one are
    in it twice (counted as 1.5 x the estimate)."""
    return est * 3 // 2 if pre_dumps else est


def tmpfs_size(ctx: Context) -> str:
    if ctx.config.snapshot_size != "auto":
        return ctx.config.snapshot_size
    initrd = ctx.plan.target.initrd.stat().st_size if ctx.plan.target and ctx.plan.target.initrd.exists() else 0
    want = max(MIN_TMPFS, int(held(ctx.plan.estimate_bytes, ctx.plan.pre_dumps) * 2.5) + initrd + (64 << 20))
    return f"{(want >> 20) + 1}M"


def plan(ctx: Context) -> list[str]:
    if ctx.plan.region:
        out = [f"make an ext4 file system (no journal) on {ctx.plan.region.device}, kupgrade's memory region, and mount "
               f"it (mode 0700, DAX where possible) on {ctx.config.snapshot_dir}"]
    else:
        out = [f"mount a private tmpfs (mode 0700) on {ctx.config.snapshot_dir}"]
    pre = ctx.record.stage("preflight")
    sizes = (pre.details.workload_bytes or {}) if pre else {}
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
    if ctx.plan.region:
        out.append(f"write {contract.MANIFEST} (kernels, workloads, PIDs, size and CRC-32 of every file) beside the "
                   "images in the region: nothing is packed, the new kernel mounts the region")
        return out
    out.append(f"pack {ctx.config.snapshot_dir}/initrd.img = target initrd + padding + cpio of the images "
               f"and the hooks' state, and {contract.MANIFEST} (kernels, workloads, PIDs, size and CRC-32 of every "
               "file, hashed while packing); then free the images")
    return out


def mount(ctx: Context) -> str:
    """Mount the snapshot's tmpfs or memory region (once: prepare may have, for its pre-dumps)."""
    d = ctx.snapshot_dir
    where = f"{ctx.plan.region.size >> 20} MiB region {ctx.plan.region.device}" if ctx.plan.region else tmpfs_size(ctx)
    if ctx.snapshot_mounted:
        return where
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    if ctx.plan.region:          # made afresh: whatever an earlier use left there is gone
        pmem.make(ctx.plan.region)
        dax = pmem.mount(ctx.plan.region.device, d)
        ctx.snapshot_mounted = True
        ctx.note()
        return where + (", DAX" if dax else "")
    size = where
    run_cmd(["mount", "-t", "tmpfs", "-o", f"mode=0700,size={size},nosuid,nodev,noexec",
             "kupgrade-snapshot", str(d)], timeout=30)     # the source name /proc/mounts shows
    ctx.snapshot_mounted = True
    ctx.note()
    return size


def unmount(ctx: Context) -> list[str]:
    if not ctx.snapshot_mounted:
        return []
    done = pmem.release(ctx.snapshot_dir)     # the region (not a tmpfs) is zeroed too
    ctx.snapshot_mounted = False
    ctx.note()
    try:
        ctx.snapshot_dir.rmdir()
    except OSError:
        pass
    return done or [f"unmounted {ctx.snapshot_dir}"]


def run(ctx: Context) -> tuple[str, Snapshot]:
    size = mount(ctx)
    t0 = time.monotonic()
    images_root(ctx).mkdir(parents=True, mode=0o700, exist_ok=True)
    todo = [(w, *_markers(w, images_root(ctx) / w.key, own=(str(ctx.snapshot_dir),))) for w in list(ctx.workloads)]
    failed = _dump_all(ctx, todo)
    for w, images, _socks in todo:
        if w.key in failed:
            if not freeze.go_fresh(ctx, w, failed[w.key].message):
                raise failed[w.key]
            shutil.rmtree(images)
            continue
        w = next(x for x in ctx.workloads if x.key == w.key)      # as dumped (its tree read again)
        volatile.save(w.pids, images)      # its files on tmpfs, as the stopped tasks left them
        # the tasks are stopped now: exactly the sockets criu dumped (and locked)
        ctx.tcp[w.key] = socks_tcp = tcp.with_options(tcp.sockets(w.pids), w.pids)
        ctx.locks[w.key] = criu.lock_tables(images, w.root_pid)     # its log is packed away next
        if socks_tcp:
            tcp.write(images, socks_tcp)
        ctx.oom.update(oom.protect(w.pids))
        ctx.note()
    dump_s = time.monotonic() - t0
    hook_notes, hooks_done = _save_hooks(ctx)

    def make(files: dict) -> manifest.Manifest:
        return manifest.make(ctx.record.id, ctx.kernel_from, ctx.plan.target.version, tuple(ctx.workloads), files,
                             back=ctx.plan.back, start=tuple(f.unit for f in ctx.record.fresh if f.stop), criu=ctx.plan.criu)

    t1 = time.monotonic()
    faults.point("pack", "packing the snapshot failed")
    warm = prewarm.text(prewarm.list_files([p for w in ctx.workloads for p in w.pids]))    # the tasks are stopped
    generate(ctx)
    if ctx.plan.region:
        m = packing.seal(ctx.snapshot_dir, ctx.workloads, make, ctx.record.dumps(), known=ctx.prehashed,
                         prewarm=warm)
        sizes = {"transport": "pmem", "total_bytes": m.total_bytes, **ctx.plan.region.to_json()}
    else:
        m, sizes = _pack(ctx, make, warm)
    pack_s = time.monotonic() - t1
    dumps = {w.key: {"selector": w.selector,
                     "bytes": sum(f["size"] for rel, f in m.files.items() if rel.startswith(f"images/{w.key}/")),
                     "tcp": [str(s) for s in ctx.tcp.get(w.key, [])]}
             | ({"clash_wait_s": ctx.clash_waits[w.key]} if w.key in ctx.clash_waits else {})
             for w in ctx.workloads}
    where = (f"in the {size}" if ctx.plan.region else
             f"packed with the target initrd into {sizes['total_bytes'] >> 20} MiB ({size} tmpfs)")
    return (f"dumped {len(dumps)} tree(s), {m.total_bytes >> 20} MiB, {where}",
            Snapshot(tmpfs_size=size, dumps=dumps, snapshot_bytes=m.total_bytes, files=len(m.files),
                     dump_s=round(dump_s, 4), pack_s=round(pack_s, 4), hooks=hooks_done, early_restore=hook_notes,
                     **sizes))


def _pack(ctx: Context, make, warm: bytes) -> tuple[manifest.Manifest, dict]:
    """The initrd transport: target initrd + the snapshot's archive; the images are freed."""
    made: list[manifest.Manifest] = []

    def fill(w: initrd.CpioWriter) -> None:
        made.append(packing.fill(w, images_root(ctx), hooks_root(ctx), ctx.workloads, make, ctx.record.dumps(),
                                 prewarm=warm, generated=generated_root(ctx)))

    pack_total = tree_bytes(images_root(ctx)) + ctx.plan.target.initrd.stat().st_size
    with watch(ctx.progress, "pack", pack_total, lambda: file_bytes(combined_path(ctx))):
        sizes = initrd.assemble(ctx.plan.target.initrd, combined_path(ctx), fill)
    shutil.rmtree(images_root(ctx))     # its bytes are in the combined initrd now; free the memory
    shutil.rmtree(hooks_root(ctx), ignore_errors=True)
    shutil.rmtree(generated_root(ctx), ignore_errors=True)
    return made[0], {"transport": "initrd", **sizes}


def _markers(w, images: Path, own: tuple[str, ...] = ()) -> tuple[Path, list[str]]:
    """A tree's images dir (with its pre-dumps, if any) and what the restore must know besides
    criu's images; returns it and the tree's unit stdio sockets. The tasks are frozen."""
    images.mkdir(parents=True, mode=0o700, exist_ok=True)
    try:
        if sandbox.own_namespace(w.root_pid, "mnt"):   # a unit's sandbox: its mounts and private /tmp
            mountns.save(mountns.plan(w.root_pid, w.pids, own), images)
        elif foreign := mountns.foreign(w.pids):    # logind's session FIFO in an ssh session's sshd
            mountns.save(foreign, images)
    except mountns.NotCarried as e:
        raise StageError(f"{w.selector}: its mount namespace cannot be carried: {e}",
                         "`kupgrade check` names it; leave it out of the workloads") from e
    socks = criu.stdio_sockets(w.pids) if w.unit else []
    if socks:   # in the new boot the unit's own journal stream takes their place (--inherit-fd)
        (images / criu.STDIO).write_text(json.dumps(socks) + "\n")
    if criu.no_new_privs(w.root_pid):   # criu does not restore it: the restore runs criu with it
        (images / criu.NO_NEW_PRIVS).write_text("1\n")
    if w.unit and unixsk.needs_ext_unix_sk(w.pids):      # syslog's /dev/log: connected again by name
        (images / unixsk.EXT_UNIX).write_text("1\n")
    return images, socks


def _dump_all(ctx: Context, todo: list) -> dict[str, StageError]:
    """criu dump of every tree, up to PARALLEL at once (the trees are independent: each its own
    images, cgroup freeze and connection lock); their tasks left stopped. Each tree dumped is
    read again (children forked since preflight are in the dump and must be resumed too).
    Returns the trees whose dump failed (criu resumed their tasks) and why."""
    failed: dict[str, StageError] = {}
    going = []
    for w, images, socks in todo:
        try:
            faults.point("dump", "criu dump failed")
            going.append((w, images, socks))
        except StageError as e:
            failed[w.key] = e
    ctx.dumping = [w for w, _, _ in going]
    ctx.note()

    def one(item) -> CommandError | list[str] | None:
        w, images, socks = item
        clashes, waited = unclash(w)
        if waited:
            ctx.clash_waits[w.key] = round(waited, 3)
        if clashes:
            return clashes
        try:
            ns = mountns.load(images)
            run_cmd(criu.dump_argv(w, images, external=socks, ext_unix=(images / unixsk.EXT_UNIX).exists(),
                                   pre=ctx.pre_dumped.get(w.key, 0), extra=ns.dump_args() if ns else ()),
                    timeout=600, cwd=str(images), new_session=True)
        except CommandError as e:
            return e
        return None

    # criu is never killed half-way through a tree: a signal is answered once every criu is done
    with inflight.deferred(), watch(ctx.progress, "dump", max(ctx.plan.estimate_bytes, 1),
                                    lambda: tree_bytes(images_root(ctx))):
        with ThreadPoolExecutor(max_workers=max(1, min(PARALLEL, os.cpu_count() or 1, len(going)))) as pool:
            errors = list(pool.map(one, going))
    for (w, images, _socks), err in zip(going, errors):
        ctx.dumping.remove(w)
        if isinstance(err, list):
            failed[w.key] = StageError(f"{w.selector} was not dumped: {'; '.join(err)} (for {carry.CLASH_WAIT_S:.0f} s, "
                                       "the tree running meanwhile)", carry.CLASH_HINT)
            continue
        if err is not None:
            cause = criu.first_error(images, criu.DUMP_LOG)
            kept = criu.keep_logs(images_root(ctx), ctx.state_dir / "logs" / ctx.record.id)
            failed[w.key] = StageError(f"criu dump of {w.selector} failed: {cause or err.message}",
                                       f"criu's log: {kept[-1] if kept else 'none written'}; the tasks were "
                                       "resumed by criu")
            continue
        dumped = workloads.retree(w)
        ctx.workloads = [dumped if x.key == w.key else x for x in ctx.workloads]
        ctx.stopped.append(dumped)
    ctx.record = replace(ctx.record, workloads=tuple(ctx.workloads))
    ctx.note()
    return failed


def unclash(w, clock=time.monotonic) -> tuple[list[str], float]:
    """([], s) once criu can dump the tree's SysV segments (carry.shm_clashes), else the clashes
    left after carry.CLASH_WAIT_S seconds; s: how long it waited (0: no clash). A workload ends a
    segment only when it runs: a tree frozen by its cgroup is thawed while it waits and frozen
    again before it is looked at last."""
    if not (found := carry.shm_clashes(w)):
        return [], 0.0
    log.warning("%s: %s; waiting up to %.0f s for it to end", w.selector, "; ".join(found), carry.CLASH_WAIT_S)
    start = clock()
    end = start + carry.CLASH_WAIT_S
    if not w.frozen:
        found = carry.wait_unclashed(w, max(0.0, end - clock()))
        return found, clock() - start
    while True:
        freeze.set_frozen(w.cgroup, False)
        try:
            carry.wait_unclashed(w, max(0.0, end - clock()))
        finally:
            freeze.set_frozen(w.cgroup, True)
        if not (found := carry.shm_clashes(workloads.retree(w))) or clock() >= end:     # with children forked since
            log.warning("%s: %s after %.2f s", w.selector, "; ".join(found) or "the clash ended", clock() - start)
            return found, clock() - start


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
