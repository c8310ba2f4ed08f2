"""Downtime estimate: snapshot size × bandwidths + kernel switch time, taken from the last
successful upgrade on this machine when there is one; before the first, from what this machine
measures of itself (`first_rates`): its memory copy and sha256 speed, and how long this boot took
from the kernel's start to the point where kupgrade-restore runs."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from . import contract
from .record import REHEARSED, RESTORED, UpgradeRecord


@dataclass(frozen=True)
class Rates:
    dump_bps: float       # criu dump + packing (hashing) into the initrd
    load_bps: float       # kexec load of the combined initrd
    boot_s: float         # kexec --exec → restore starting in the new kernel
    restore_bps: float    # verification + criu restore
    source: str           # where the numbers come from
    deliver_bps: float = float("inf")   # initrd transport: the new kernel unpacking and moving it (per byte)


DEFAULTS = Rates(200e6, 500e6, 8.0, 200e6, "stated defaults (no upgrade measured on this machine yet)")
HANDOFF_S = 1.0             # `kexec --exec` -> the new kernel's first line (TCG: 1.1-2.2 s; hardware: less)
EARLY_USERSPACE_S = 3.0     # init-top -> the restore point, when this boot did not record the latter
CALIBRATE_BYTES = 16 << 20
# Before the first upgrade: seconds per byte as (sha256 passes, memory copy passes) of this machine,
# fitted to the first upgrade of the benchmark (vm-tests/bench, QEMU TCG, 64 MiB workload): criu's
# dump + packing, the kexec load, the new kernel unpacking + moving the archive, verify + criu restore.
PASSES = {"dump": (1.0, 5.0), "load": (0.0, 2.2), "deliver": (0.0, 14.6), "restore": (1.0, 8.0)}


def mark_restore_point(path: Path = Path(contract.RESTORE_POINT), uptime: Path = Path("/proc/uptime")) -> None:
    """kupgrade-restore, every time it runs: how long after the kernel started this boot got
    here (the next estimate's kernel switch). Never raises."""
    try:
        if not path.exists():
            path.write_text(uptime.read_text().split()[0] + "\n")
    except (OSError, IndexError):
        pass


def restore_point(systemd_us: str = "", marked: Path = Path(contract.RESTORE_POINT),
                  early: Path = Path(contract.EARLY_PIDS)) -> tuple[float | None, str]:
    """Seconds from this boot's kernel start to where the restore runs, and how it is known:
    systemd reached sysinit.target (the restore unit runs before it: `systemd_us`, its
    ActiveEnterTimestampMonotonic), kupgrade-restore marked it, or init-top's time + a stated
    allowance for the rest of the initramfs."""
    if systemd_us.strip().isdigit() and int(systemd_us) > 0:
        return int(systemd_us) / 1e6, "this boot reached sysinit.target (where the restore unit runs)"
    try:
        return float(marked.read_text().split()[0]), "this boot's kupgrade-restore ran"
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = dict(line.split(" ", 1) for line in early.read_text().splitlines() if " " in line)
        return float(fields["uptime"]) + EARLY_USERSPACE_S, (f"this boot's initramfs started, + {EARLY_USERSPACE_S:.0f} s "
                                                             "stated for the rest of early boot")
    except (OSError, ValueError, KeyError):
        return None, ""


def calibrate(size: int = CALIBRATE_BYTES) -> tuple[float, float]:
    """This machine's (memory copy, sha256) bytes per second, on `size` bytes in memory."""
    chunk = os.urandom(1 << 20)
    fd = os.memfd_create("kupgrade-calibrate")
    try:
        t0 = time.perf_counter()
        for _ in range(size >> 20):
            os.write(fd, chunk)
        os.lseek(fd, 0, os.SEEK_SET)
        data = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
        t1 = time.perf_counter()
        hashlib.sha256(data).digest()
        t2 = time.perf_counter()
    finally:
        os.close(fd)
    return 2 * size / max(t1 - t0, 1e-6), size / max(t2 - t1, 1e-6)


def first_rates(copy_bps: float, hash_bps: float, point: tuple[float | None, str]) -> Rates:
    """Rates before any upgrade was measured here, from what this machine measures of itself."""
    def bps(stage: str) -> float:
        hashes, copies = PASSES[stage]
        return 1 / (hashes / hash_bps + copies / copy_bps)
    seconds, how = point
    boot = seconds + HANDOFF_S if seconds is not None else DEFAULTS.boot_s
    switch = (f"kernel switch from {how} {seconds:.1f} s after its kernel started, + {HANDOFF_S:.0f} s hand-off"
              if seconds is not None else f"kernel switch: stated default {DEFAULTS.boot_s:.0f} s")
    return Rates(bps("dump"), bps("load"), boot, bps("restore"),
                 f"no upgrade measured here yet: this machine's memory copy {copy_bps / 1e6:.0f} MB/s and sha256 "
                 f"{hash_bps / 1e6:.0f} MB/s; {switch}", bps("deliver"))


def _bandwidths(rec: UpgradeRecord) -> tuple[float, float, float] | None:
    """(dump, load, restore) bytes/s measured by an upgrade or a rehearsal, or None."""
    snap, kx, rs = (rec.stage(n) for n in ("snapshot", "kexec", "restore"))
    if not all((snap, kx, rs)):
        return None
    size = snap.details.get("snapshot_bytes", 0)
    dump_s = snap.details.get("dump_s", 0) + snap.details.get("pack_s", 0)
    initrd, load_s = kx.details.get("initrd_bytes", 0), kx.details.get("load_s", 0)
    if min(size, dump_s, initrd, load_s, rs.duration_s) <= 0:
        return None
    return size / dump_s, initrd / load_s, size / rs.duration_s


def _boot_s(rec: UpgradeRecord) -> float | None:
    ex, rs = rec.stage("exec"), rec.stage("restore")
    if ex is None or rs is None or rs.started <= ex.started:
        return None
    return rs.started - ex.started


def rates_from(upgrade: UpgradeRecord | None, rehearsal: UpgradeRecord | None = None,
               first: Rates = DEFAULTS) -> Rates:
    """Rates from the last restored upgrade and the last rehearsal on this machine: bandwidths
    from the newer of the two, the kernel switch time only from a real upgrade (it includes
    delivering that upgrade's snapshot); `first` (what this machine measured of itself, or
    DEFAULTS) for whatever neither measured."""
    upgrade = upgrade if upgrade is not None and upgrade.outcome == RESTORED else None
    rehearsal = rehearsal if rehearsal is not None and rehearsal.outcome == REHEARSED else None
    candidates = [r for r in (upgrade, rehearsal) if r is not None and _bandwidths(r)]
    bw_rec = max(candidates, key=lambda r: r.created, default=None)
    boot = _boot_s(upgrade) if upgrade else None
    if bw_rec is None and boot is None:
        return first
    dump, load, restore = _bandwidths(bw_rec) if bw_rec else (first.dump_bps, first.load_bps, first.restore_bps)
    what = []
    if bw_rec is not None:
        what.append(f"bandwidths measured by {'upgrade' if bw_rec is upgrade else 'rehearsal'} {bw_rec.id}")
    if boot is not None:
        what.append(f"kernel switch measured by upgrade {upgrade.id} ({upgrade.kernel_from} -> {upgrade.kernel_to})")
        return Rates(dump, load, boot, restore, "; ".join(what))
    what.append(f"for the rest {first.source}")
    return replace(first, dump_bps=dump, load_bps=load, restore_bps=restore, source="; ".join(what))


def transport_of(rec: UpgradeRecord) -> str:
    """How that upgrade's snapshot crossed (records older than the transports: the initrd)."""
    snap = rec.stage("snapshot")
    return (snap.details.get("transport") if snap else None) or "initrd"


def downtime(snapshot_bytes: int, initrd_bytes: int, r: Rates, transport: str = "initrd") -> tuple[float, str]:
    """The estimate and how it was made. transport "pmem": the snapshot is not in the initrd, which
    prepare loads before the freeze (the rates should come from an upgrade of the same transport:
    see preflight)."""
    packed = transport == "initrd"
    parts = {"dump+pack" if packed else "dump": snapshot_bytes / r.dump_bps,
             "kexec load": (snapshot_bytes + initrd_bytes) / r.load_bps if packed else 0.0,    # else before the freeze
             "kernel switch": r.boot_s + (snapshot_bytes / r.deliver_bps if packed else 0.0),
             "restore": snapshot_bytes / r.restore_bps}
    basis = ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()) + f"; rates: {r.source}"
    return round(sum(parts.values()), 1), basis
