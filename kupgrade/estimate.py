"""Downtime estimate: snapshot size × bandwidths + kernel switch time, taken from the last
successful upgrade on this machine when there is one, else stated defaults."""

from __future__ import annotations

from dataclasses import dataclass

from .record import REHEARSED, RESTORED, UpgradeRecord


@dataclass(frozen=True)
class Rates:
    dump_bps: float       # criu dump + packing (hashing) into the initrd
    load_bps: float       # kexec load of the combined initrd
    boot_s: float         # kexec --exec → restore starting in the new kernel
    restore_bps: float    # verification + criu restore
    source: str           # where the numbers come from


DEFAULTS = Rates(200e6, 500e6, 8.0, 200e6, "stated defaults (no upgrade measured on this machine yet)")


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


def rates_from(upgrade: UpgradeRecord | None, rehearsal: UpgradeRecord | None = None) -> Rates:
    """Rates from the last restored upgrade and the last rehearsal on this machine: bandwidths
    from the newer of the two, the kernel switch time only from a real upgrade; DEFAULTS for
    whatever neither measured."""
    upgrade = upgrade if upgrade is not None and upgrade.outcome == RESTORED else None
    rehearsal = rehearsal if rehearsal is not None and rehearsal.outcome == REHEARSED else None
    candidates = [r for r in (upgrade, rehearsal) if r is not None and _bandwidths(r)]
    bw_rec = max(candidates, key=lambda r: r.created, default=None)
    boot = _boot_s(upgrade) if upgrade else None
    if bw_rec is None and boot is None:
        return DEFAULTS
    dump, load, restore = _bandwidths(bw_rec) if bw_rec else (DEFAULTS.dump_bps, DEFAULTS.load_bps,
                                                               DEFAULTS.restore_bps)
    what = []
    if bw_rec is not None:
        what.append(f"bandwidths measured by {'upgrade' if bw_rec is upgrade else 'rehearsal'} {bw_rec.id}")
    if boot is not None:
        what.append(f"kernel switch measured by upgrade {upgrade.id} ({upgrade.kernel_from} -> {upgrade.kernel_to})")
    else:
        what.append(f"kernel switch: stated default {DEFAULTS.boot_s:.0f} s (no upgrade measured here yet)")
    return Rates(dump, load, boot if boot is not None else DEFAULTS.boot_s, restore, "; ".join(what))


def transport_of(rec: UpgradeRecord) -> str:
    """How that upgrade's snapshot crossed (records older than the transports: the initrd)."""
    snap = rec.stage("snapshot")
    return (snap.details.get("transport") if snap else None) or "initrd"


def downtime(snapshot_bytes: int, initrd_bytes: int, r: Rates, transport: str = "initrd") -> tuple[float, str]:
    """The estimate and how it was made. transport "pmem": the snapshot is not in the loaded
    initrd (the rates should come from an upgrade of the same transport: see preflight)."""
    packed = transport == "initrd"
    parts = {"dump+pack" if packed else "dump": snapshot_bytes / r.dump_bps,
             "kexec load": ((snapshot_bytes if packed else 0) + initrd_bytes) / r.load_bps,
             "kernel switch": r.boot_s,
             "restore": snapshot_bytes / r.restore_bps}
    basis = ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()) + f"; rates: {r.source}"
    return round(sum(parts.values()), 1), basis
