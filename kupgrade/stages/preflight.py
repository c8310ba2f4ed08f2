"""preflight: find every blocker and estimate the downtime. Changes nothing."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from kupgrade import hooks as hk, inflight
from kupgrade.context import Context, Plan, Target, resolve_target
from kupgrade.errors import BlockedError, CommandError, ConfigError, HookError
from kupgrade.hooks import coverage, hookpoints
from kupgrade.output import estimate, record
from kupgrade.output.record import Blocker
from kupgrade.output.results import Preflight
from kupgrade.stages import prepare, snapshot
from kupgrade.switch import boot, bootpids, contract, manifest, pmem
from kupgrade.system import criu, kexec
from kupgrade.system.run import program
from kupgrade.userspace import mountns, selection, stepout, systemd, tcp, workloads

NAME = "preflight"
MARGIN = 64 << 20


def plan(ctx: Context) -> list[str]:
    return ["check the target kernel and its initrd (carries the kupgrade boot script?)",
            "check that kexec is possible (kexec_load_disabled, lockdown) and choose the load method",
            "`criu check`; the criu that runs (paths.criu) dumps here and restores in the new kernel: can it run "
            "on the target kernel?",
            "resolve each selected PID/cgroup/unit to a process tree; look for traced and D-state tasks, "
            "controlling terminals, a main thread that exited, and what the snapshot would not carry "
            "(host SysV IPC, sessions and process groups reaching outside the tree, locks held outside it, "
            "a user namespace of its own (PrivateUsers), a mount namespace that cannot be carried)",
            "estimate the snapshot size against free memory",
            "device hooks: load them, run their preflight; an unsafe device in use that no hook covers blocks",
            *hookpoints.plan_line(ctx, "preflight")]


# Copies of the packed initrd (target initrd + snapshot) that exist at once during `kexec --load`:
# the file in the snapshot tmpfs and the kernel's copy of the segments, plus one in between —
# kexec-tools' buffer (classic kexec_load reads the whole file into its own memory) or the
# kernel's read buffer (kexec_file_load reads the file into vmalloc'ed memory, then copies it
# into the segments' pages). Measured: counting two for the file load, the OOM killer fired.
LOAD_COPIES = 3


def memory_needed(snapshot: int, initrd: int) -> int:
    """The peak of the upgrade's memory use on this side: packing (the images + the packed
    initrd being written) or the load, whichever is larger. (The new kernel needs less: the
    unpacked snapshot + its largest file while the initramfs moves it, and no workloads yet.)"""
    return max(2 * snapshot + initrd, LOAD_COPIES * (snapshot + initrd)) + MARGIN


def _mem_available(meminfo: Path = Path("/proc/meminfo"), field: str = "MemAvailable") -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def reclaim_note(need: int, avail: int, free: int) -> str | None:
    """When the peak fits only by reclaiming the page cache (above MemFree, within MemAvailable):
    that happens during the kexec load, inside the pause, and can take minutes (not in the estimate)."""
    if not free < need <= avail:
        return None
    return (f"the upgrade's memory peak (~{need >> 20} MiB, at the kexec load inside the pause) is above free "
            f"memory ({free >> 20} MiB): the kernel reclaims ~{(need - free) >> 20} MiB of page cache then, which "
            "can make the pause far longer than estimated (measured in a 2 GiB guest: 1.31 GB needed of 1.51 GB "
            "available, the load took 112 s; with 96 MiB less workload, 5 s); fewer workloads, or the memory-region transport "
            "(`kupgrade install-boot --reserve SIZE`), avoid it")


def region_note(est: int, downtime_s: float, region_s: float | None) -> str | None:
    """Without a memory region (none reserved; transport "auto"): what one would make of the
    pause, and the size to reserve (the snapshot with one pre-dump and its file system, in 256 MiB
    steps). None when the estimate with it is no shorter."""
    if region_s is None or region_s >= downtime_s:
        return None
    step = 256 << 20
    size = max(-(-pmem.needed(snapshot.held(est, 1)) // step) * step, 512 << 20)
    words = f"{size >> 30}G" if size % (1 << 30) == 0 else f"{size >> 20}M"
    return (f"with kupgrade's memory region the estimated downtime is {region_s} s instead of {downtime_s} s (the "
            f"snapshot is neither packed into the initrd nor unpacked and moved inside the pause): `kupgrade "
            f"install-boot --reserve {words}`, then one reboot")


def _boot_pids(ctx: Context, target: str, blockers: list[Blocker]) -> dict:
    """The target's boot gives its own threads the lowest PIDs before the restore can run: a
    task of a workload with one of those cannot get it back (kupgrade/switch/bootpids.py)."""
    here = bootpids.remember(ctx.state_dir)
    guess = bootpids.predict(ctx.state_dir, target, os.cpu_count() or 1, here)
    if guess is None:
        return {"unknown": "no boot recorded the PIDs its kernel's threads take (an initrd without kupgrade's "
                           "init-top script): a workload with a low PID may not get it back"}
    for w in ctx.workloads:
        if low := [p for p in w.ids if p <= guess.upto]:
            blockers.append(Blocker(
                f"{w.selector}: PID(s) {low[:8]}{' …' if len(low) > 8 else ''} would be taken in {target}'s "
                f"boot before the restore ({guess.basis})",
                "a task cannot get a taken PID back: restart that service or program once (it starts fresh with a "
                "higher PID), or leave it out of the selection", w.selector))
    return guess.to_json()


def _basics(ctx: Context) -> tuple[list[Blocker], Target, dict]:
    """Root, no other run, the target kernel and its initrd, the tools and the criu that runs on
    both kernels, something selected: the blockers, the target, that criu."""
    cfg = ctx.config
    blockers: list[Blocker] = []
    if os.geteuid() != 0:
        blockers.append(Blocker("kupgrade must run as root", "run it as root"))
    blockers += inflight.blockers()
    t = _target(resolve_target(cfg), blockers)
    ctx.record = replace(ctx.record, kernel_to=t.version)
    if t.initrd.is_file():
        blockers += _initrd_blockers(t)
    if t.version == ctx.kernel_from:
        blockers.append(Blocker(f"target kernel {t.version} is the running kernel", "choose another target"))
    blockers += _tool_blockers(cfg.health_check)
    found = _criu(t.version, blockers)
    if not cfg.pids and not cfg.cgroups and not cfg.units and not cfg.all_services:
        blockers.append(Blocker("no workloads selected", "set `workloads.pids`, `workloads.cgroups`, "
                                "`workloads.units` or `workloads.all_services`, or pass --pid/--cgroup/--unit/"
                                "--all-services"))
    if ctx.rehearsal and (cfg.units or cfg.all_services):
        blockers.append(Blocker("a rehearsal cannot keep systemd units yet: systemd would see their main "
                                "process end and restart or fail the unit",
                                "rehearse without --unit/--all-services (`workloads.units`, `workloads.all_services`)"))
    return blockers, t, found


def run(ctx: Context) -> tuple[str, Preflight]:
    cfg = ctx.config
    blockers, t, criu_found = _basics(ctx)
    lockdown = kexec.lockdown_mode()
    services, boot_pids = _select(ctx, t.version, blockers)

    conns = _tcp(ctx, blockers)
    # their memory, and a unit's private /tmp and /var/tmp, copied with its mount namespace
    per_tree = {w.key: sum(workloads.anon_bytes(p) for p in w.pids) + mountns.private_bytes(w.root_pid)
                for w in ctx.workloads}
    est = sum(per_tree.values())
    initrd_size = t.initrd.stat().st_size if t.initrd.is_file() else 0
    avail = _mem_available()
    asked = cfg.pre_dump if cfg.pre_dump != "auto" else 0
    cmdline = Path("/proc/cmdline").read_text()
    transport, region = _transport(ctx, t, snapshot.held(est, asked), blockers, cmdline)
    pre_dumps = prepare.iterations(cfg.pre_dump, region, est)
    held = 0 if region else snapshot.held(est, pre_dumps)
    method, too_big = _method(cfg.kexec_method, lockdown, held, initrd_size, avail)
    notes = [n for n in (workloads.own_terminal(ctx.workloads),
                         reclaim_note(memory_needed(held, initrd_size), avail, _mem_available(field="MemFree"))) if n]
    blockers += too_big
    if (ctx.restore_dir / manifest.NAME).exists():
        blockers.append(Blocker(f"a snapshot is still pending in {ctx.restore_dir} (a restore that failed?)",
                                "see `kupgrade report`; `kupgrade restore --retry` once the cause is fixed, "
                                "or `kupgrade restore --discard` to give those workloads up"))
    blockers += snapshot_dir_blockers(Path(cfg.snapshot_dir))
    unreserved = region is None and cfg.transport == "auto" and pmem.marked_start(cmdline) is None
    downtime, basis, machine, region_s = _estimate(ctx, est, initrd_size, transport["name"], "pmem" if unreserved else "")
    notes += [n for n in (region_note(est, downtime, region_s),) if n]
    ctx.plan = Plan(target=t, method=method, region=region, pre_dumps=pre_dumps, estimate_bytes=est,
                    downtime_estimate_s=downtime, back=_way_back(ctx, method, blockers), criu=criu_found)
    hooks_done, hook_error = _hooks(ctx, blockers)      # their requests carry the plan's estimate
    details = Preflight(target={"version": t.version, "vmlinuz": str(t.vmlinuz), "initrd": str(t.initrd)},
                        kexec_method=ctx.plan.method.name, kexec_method_why=ctx.plan.method.why, lockdown=lockdown,
                        transport=transport, pre_dump_iterations=ctx.plan.pre_dumps, snapshot_estimate_bytes=est,
                        workload_bytes=per_tree, mem_available_bytes=avail, downtime_estimate_s=downtime,
                        downtime_basis=basis, machine=machine or None, blockers=[b.to_json() for b in blockers],
                        hooks=hooks_done, hooks_loaded=[h.name for h in ctx.hooks or []],
                        hooks_skipped=ctx.hooks_skipped, devices=len(ctx.devices), tcp=conns, criu=ctx.plan.criu,
                        way_back=ctx.plan.back, boot_pids=boot_pids, services=services or None,
                        notes=notes or None)
    if hook_error is not None:
        raise hook_error.in_stage(details.to_json()) from hook_error
    if blockers:
        raise BlockedError(blockers, details=details.to_json())
    fresh = sum(1 for f in ctx.record.fresh if f.stop)
    return (f"{len(ctx.workloads)} workload(s), ~{est >> 20} MiB to snapshot"
            + (f", {fresh} service(s) start fresh" if fresh else "")
            + f", {ctx.kernel_from} -> {t.version}, criu {ctx.plan.criu.get('version') or '?'} on both, "
            f"estimated downtime {downtime} s"), details


def _select(ctx: Context, target: str, blockers: list[Blocker]) -> tuple[list[dict], dict]:
    """The workloads (the named ones; with all_services every running service) and the services
    that start fresh instead (selection.py: workloads.on_blocked). Extends blockers with what
    still blocks; returns each service's fate and the boot-PID prediction."""
    cfg = ctx.config
    step_out = ctx.step_out_ok and not ctx.rehearsal
    mine = selection.own_units(ancestors=not step_out)
    if step_out:        # the unit kupgrade runs in, unless it can leave its cgroup (stepout.py)
        mine = {u: p for u, p in mine.items() if not stepout.can_leave(u)}
    found, boot = selection.candidates(cfg.start_fresh, cfg.units, mine=mine) if cfg.all_services else ([], [])
    ctx.workloads, found_blockers = workloads.resolve(cfg.pids, cfg.cgroups, cfg.units + tuple(found), step_out=step_out)
    boot_pids = {} if ctx.rehearsal else _boot_pids(ctx, target, found_blockers)
    ctx.workloads, fresh, still = selection.settle(ctx.workloads, found_blockers, cfg.on_blocked, set(found))
    blockers += still
    if cfg.all_services and not ctx.workloads and not still:
        blockers.append(Blocker("nothing to carry: every running service starts fresh or with the boot (see "
                                "the list above)", "a plain reboot does the same; or select workloads that can be carried"))
    ctx.record = replace(ctx.record, workloads=tuple(ctx.workloads), fresh=tuple(fresh + boot))
    services = [{"unit": w.unit, "fate": "carried"} for w in ctx.workloads if w.unit] + [
        {"unit": f.unit, "fate": "fresh" if f.stop else "boot", "reason": f.reason} for f in (*fresh, *boot)]
    return (services if cfg.all_services or fresh else []), boot_pids



def _tool_blockers(health_check: str = "") -> list[Blocker]:
    """kexec usable on this kernel, criu installed and satisfied with it, the health check's
    program there (the new kernel runs it from the same root)."""
    out = []
    if health_check and not os.access(prog := health_check.split()[0], os.X_OK):
        out.append(Blocker(f"restore.health_check: {prog} is not an executable program",
                           "install it or fix `restore.health_check`"))
    if not shutil.which(program(kexec.KEXEC)):
        out.append(Blocker(f"kexec is not installed ({program(kexec.KEXEC)})", "apt-get install kexec-tools, or "
                           "set paths.kexec"))
    if not Path("/sys/kernel/kexec_loaded").exists():
        out.append(Blocker("this kernel has no kexec support", "a kernel built with CONFIG_KEXEC is needed"))
    disabled = Path("/proc/sys/kernel/kexec_load_disabled")
    if disabled.exists() and disabled.read_text().strip() == "1":
        out.append(Blocker("kexec is disabled (kernel.kexec_load_disabled = 1)",
                           "it cannot be re-enabled without a reboot; boot without it being set"))
    if not shutil.which(program(criu.CRIU)):
        return out + [Blocker(f"criu is not installed ({program(criu.CRIU)})", "apt-get install criu, or set "
                              "paths.criu")]
    try:
        criu.check()
    except CommandError as e:
        tail = e.stderr_tail.strip()
        out.append(Blocker(f"`criu check` failed: {tail.splitlines()[-1] if tail else e.message}", e.hint))
    return out


def _criu(target: str, blockers: list[Blocker]) -> dict:
    """The criu that runs (paths.criu): it dumps on this kernel and restores on the target (the
    same program, on the shared root), so it must know both."""
    found = criu.identity()         # {}: not installed, _tool_blockers said so
    if found and (why := criu.unfit(found["version"], target)):
        blockers.append(Blocker(why, "install a criu that knows both kernels (it must pass `criu check` here "
                                "too) and point paths.criu at it"))
    return found


def _estimate(ctx: Context, est: int, initrd_size: int, transport: str,
              also: str = "") -> tuple[float, str, dict, float | None]:
    """The downtime estimate, its basis, and what this machine measured of itself (always: the
    upgrades of one size leave the cost per byte to it; before the first, it is all there is);
    with `also`, the estimate through that transport too (else None)."""
    copy_bps, hash_bps = estimate.calibrate()
    target = estimate.MULTI_USER if any(w.unit for w in ctx.workloads) else estimate.SYSINIT
    point = estimate.restore_point(systemd.reached_us(target[0]), target=target)
    machine = {"copy_bps": round(copy_bps), "hash_bps": round(hash_bps), "restore_point_s": point[0],
               "restore_point_basis": point[1]}

    def through(name: str) -> tuple[float, str]:
        recs = [r for outcome in (record.RESTORED, record.REHEARSED)
                for r in record.recent(ctx.state_dir, (outcome,), lambda rec: estimate.transport_of(rec) == name,
                                       estimate.RECENT)]
        rates = estimate.rates_from(recs, estimate.first_rates(copy_bps, hash_bps, point, name), name)
        return estimate.downtime(est, initrd_size, rates, name)
    downtime, basis = through(transport)
    return downtime, basis, machine, through(also)[0] if also else None


def _transport(ctx: Context, t: Target, est: int, blockers: list[Blocker], cmdline: str,
               block: Path = pmem.BLOCK) -> tuple[dict, pmem.Region | None]:
    """How the snapshot crosses, and why: kupgrade's memory region (returned), else the initrd."""
    want = ctx.config.transport
    if want == "initrd":
        return {"name": "initrd", "why": "configured (snapshot.transport = \"initrd\")"}, None
    region, why_not = pmem.find(cmdline, block)
    if region and pmem.needed(est) > region.size:
        why_not = (f"the snapshot (~{est >> 20} MiB, {pmem.needed(est) >> 20} MiB with its file system) does not fit "
                   f"the {region.size >> 20} MiB memory region {region.device}")
    elif region and not shutil.which("mkfs.ext4"):
        why_not = "mkfs.ext4 is missing (it makes the file system in the memory region)"
    elif region:
        why_not = _region_drivers(ctx, t)
    if why_not:
        if want == "pmem":
            blockers.append(Blocker(f"snapshot.transport = \"pmem\", but {why_not}",
                                    "`kupgrade install-boot --reserve SIZE` and a reboot (or a larger SIZE; "
                                    "apt-get install e2fsprogs), or set snapshot.transport = \"auto\""))
        return {"name": "initrd", "why": why_not}, None
    return {"name": "pmem", "why": "kupgrade's memory region is active and the snapshot fits in it: no packing, "
                                   "unpacking or moving", **region.to_json()}, region


def _region_drivers(ctx: Context, t: Target, boot_dir: Path = Path("/boot")) -> str:
    """Why a kernel the snapshot may boot into (the target; with a way back, this one) could not
    mount the region ("": both can): built without its drivers, or an initrd without them."""
    kernels = [(t.version, t.initrd)]
    if ctx.config.on_restore_failure == "rollback" and not ctx.rehearsal:
        kernels.append((ctx.kernel_from, boot_dir / f"initrd.img-{ctx.kernel_from}"))
    for release, initrd in kernels:
        modules, why = pmem.modules_needed(release, boot_dir)
        if why:
            return why
        try:
            if initrd.is_file() and (missing := boot.missing_modules(initrd, modules)):
                return (f"{initrd} lacks {', '.join(missing)}: kernel {release} could not mount the region "
                        f"(`kupgrade install-boot --kernel {release}` adds them)")
        except CommandError:
            return f"cannot list {initrd} to see that it carries {', '.join(modules)}"
        except ConfigError as e:
            return f"cannot list {initrd} to see that it carries {', '.join(modules)}: {e.message}"
    return ""


def _method(configured: str, lockdown: str, est: int, initrd_size: int, avail: int) -> tuple[kexec.Method, list]:
    """The kexec load method, and the blockers: it is refused, or the upgrade's memory peak does not fit."""
    method = kexec.choose_method(configured, lockdown)
    out = []
    if method.name == "classic" and lockdown != "none":
        out.append(Blocker(f"kexec.method = \"classic\", but the kernel is locked down ({lockdown}): it refuses "
                           "kexec_load", "set kexec.method = \"file\" or \"auto\" (a signed target kernel is needed)"))
    if (need := memory_needed(est, initrd_size)) <= avail:
        return method, out
    return method, out + [Blocker(f"not enough free memory: the snapshot needs about {need >> 20} MiB at its peak "
                    f"({LOAD_COPIES} copies of the {(est + initrd_size) >> 20} MiB packed initrd during the kexec "
                    f"load, + margin), {avail >> 20} MiB available",
                    "free memory or select fewer workloads")]


def _target(t: Target, blockers: list[Blocker], role: str = "target") -> Target:
    """The target with its release as the image itself says it (what `uname -r` will print in
    the new kernel, which the restore compares with the manifest): never from a file name."""
    for what, path in (("kernel image", t.vmlinuz), ("initrd", t.initrd)):
        if not path.is_file():
            blockers.append(Blocker(f"{role} {what} {path} does not exist",
                                    f"install the kernel package for {t.version or t.vmlinuz.name}, or fix `target` in the config"))
    if not t.vmlinuz.is_file():
        return t
    if (problem := kexec.check_bzimage(t.vmlinuz)):
        blockers.append(Blocker(f"{role} kernel image: {problem}", "reinstall the kernel package or fix `target`"))
        return t
    release = kexec.bzimage_version(t.vmlinuz)
    if not release:
        blockers.append(Blocker(f"{t.vmlinuz} does not say which kernel release it is (no version in its "
                                "boot header): the new kernel could not tell that the snapshot is meant for it",
                                "use a kernel image built with the x86 boot protocol 2.0 or later"))
        return t
    if t.version and release != t.version:
        blockers.append(Blocker(f"{t.vmlinuz} is kernel {release}, not {t.version}",
                                f"fix `target` in the config (--kernel {release}?) or reinstall the kernel package"))
    return replace(t, version=release)


def _initrd_blockers(t: Target) -> list[Blocker]:
    """The target initrd must carry the boot scripts of this kupgrade's contract (listed with the
    lister of this machine's initrd builder: lsinitramfs or lsinitrd)."""
    try:
        lister = boot.builder(listing=True)
    except ConfigError as e:
        return [Blocker(f"cannot check that {t.initrd} carries the kupgrade boot script: {e.message}", e.hint)]
    try:
        if boot.initrd_has_hook(t.initrd, lister):
            return []
    except CommandError as e:
        return [Blocker(f"cannot list {t.initrd}: {e.message}", "check that the initrd is intact")]
    return [Blocker(f"{t.initrd} does not carry the kupgrade boot script (contract {contract.VERSION})",
                    f"run `kupgrade install-boot --kernel {t.version}`")]


def _way_back(ctx: Context, method: kexec.Method, blockers: list[Blocker], boot: Path = Path("/boot")) -> dict:
    """restore.on_failure = "rollback": the new kernel must be able to kexec back into this one
    with the snapshot. Checked here, before anything changes: this kernel's image (its header
    says it is this release) and its initrd, carrying the boot scripts of this contract."""
    if ctx.config.on_restore_failure != "rollback" or ctx.rehearsal:
        return {}
    here = Target(ctx.kernel_from, boot / f"vmlinuz-{ctx.kernel_from}", boot / f"initrd.img-{ctx.kernel_from}")
    found: list[Blocker] = []
    if _target(here, found, role="the running kernel's").version != ctx.kernel_from and not found:
        found.append(Blocker(f"{here.vmlinuz} is not the running kernel {ctx.kernel_from}", ""))
    if here.initrd.is_file() and not found:
        found += _initrd_blockers(here)
    for b in found:
        blockers.append(Blocker(f"restore.on_failure = \"rollback\", but the way back is not there: {b.message}",
                                f"`kupgrade install-boot --kernel {ctx.kernel_from}` (it must carry the boot scripts "
                                "too), or set restore.on_failure = \"keep\""))
    return {"kernel": ctx.kernel_from, "vmlinuz": str(here.vmlinuz), "initrd": str(here.initrd),
            "cmdline": Path("/proc/cmdline").read_text().strip(), "method": method.name} if not found else {}
def snapshot_dir_blockers(d: Path) -> list[Blocker]:
    """The snapshot's tmpfs is mounted over `snapshot.dir`: it must not be mounted yet, and be an
    empty directory or not exist (the tmpfs would hide what is there)."""
    if os.path.ismount(d):
        return [Blocker(f"{d} is already mounted (a previous run?)", f"check nothing is running, then `umount {d}`")]
    try:
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            return [Blocker(f"snapshot.dir {d} exists and is not an empty directory: the snapshot's tmpfs would "
                            "hide what is in it", "set `snapshot.dir` to a directory of kupgrade's own under /run")]
    except OSError as e:
        return [Blocker(f"cannot look into snapshot.dir {d}: {e.strerror}", "run kupgrade as root")]
    return []


def _tcp(ctx: Context, blockers: list[Blocker]) -> dict[str, list[str]]:
    """The workloads' TCP connections (tree key -> "local <-> peer"), and what carrying them
    needs: nft for the drop table in the next kernel (criu's own lock uses libnftables), no
    network configuration by the initramfs (`ip=`), which would come before that table."""
    found = {w.key: [s for s in tcp.sockets(w.pids) if s.connected] for w in ctx.workloads}
    socks = [s for ss in found.values() for s in ss]
    if socks:
        if not shutil.which(tcp.NFT):
            blockers.append(Blocker(f"the workloads have {len(socks)} TCP connection(s) and nft is not installed: "
                                    "the new kernel must drop the peers' packets until the connections are "
                                    "restored", "apt-get install nftables"))
        cmdline = kexec.command_line(Path("/proc/cmdline").read_text(), "x", ctx.config.append).split()
        if any(w.startswith("ip=") for w in cmdline):
            blockers.append(Blocker("the kernel command line has `ip=`: the new kernel's initramfs would configure "
                                    "the network before the TCP connections are protected, and reset them",
                                    "remove ip= from the command line (kexec.append / the boot loader)"))
    return {k: [str(s) for s in v] for k, v in found.items() if v}


def _hooks(ctx: Context, blockers: list[Blocker]) -> tuple[list[dict], HookError | None]:
    """Load the hooks, run their preflight, add their blockers and those of unsafe devices in use
    (blockers is extended). A failing hook is returned, raised once the details are complete."""
    hookpoints.load(ctx)
    if ctx.devices_error:
        blockers.append(Blocker(ctx.devices_error, "install python3-pyudev and check that /sys is mounted"))
    seen = len(ctx.hook_results)
    try:
        done = hookpoints.call(ctx, "preflight")
    except HookError as e:
        return e.details["hooks"], e
    blockers += hk.blockers(ctx.hook_results[seen:])
    blockers += coverage.unsafe_blockers(ctx.devices, ctx.hooks, ctx.config.hooks_allow)
    return done, None
