"""Downtime estimate: snapshot size × bandwidths + kernel switch time, taken from the last
successful upgrade on this machine when there is one, else stated defaults."""

from __future__ import annotations

from dataclasses import dataclass

from .record import RESTORED, UpgradeRecord


@dataclass(frozen=True)
class Rates:
    dump_bps: float       # criu dump + packing (hashing) into the initrd
    load_bps: float       # kexec load of the combined initrd
    boot_s: float         # kexec --exec → restore starting in the new kernel
    restore_bps: float    # verification + criu restore
    source: str           # where the numbers come from


DEFAULTS = Rates(200e6, 500e6, 8.0, 200e6, "stated defaults (no upgrade measured on this machine yet)")


def rates_from(rec: UpgradeRecord | None) -> Rates:
    """Measured rates from a restored upgrade record, or DEFAULTS."""
    if rec is None or rec.outcome != RESTORED:
        return DEFAULTS
    snap, kx, ex, rs = (rec.stage(n) for n in ("snapshot", "kexec", "exec", "restore"))
    if not all((snap, kx, ex, rs)):
        return DEFAULTS
    size = snap.details.get("snapshot_bytes", 0)
    dump_s = snap.details.get("dump_s", 0) + snap.details.get("pack_s", 0)
    initrd = kx.details.get("initrd_bytes", 0)
    load_s = kx.details.get("load_s", 0)
    boot_s = rs.started - ex.started
    if min(size, dump_s, initrd, load_s, rs.duration_s) <= 0 or boot_s <= 0:
        return DEFAULTS
    return Rates(size / dump_s, initrd / load_s, boot_s, size / rs.duration_s,
                 f"measured by upgrade {rec.id} ({rec.kernel_from} -> {rec.kernel_to})")


def downtime(snapshot_bytes: int, initrd_bytes: int, r: Rates) -> tuple[float, str]:
    parts = {"dump+pack": snapshot_bytes / r.dump_bps,
             "kexec load": (snapshot_bytes + initrd_bytes) / r.load_bps,
             "kernel switch": r.boot_s,
             "restore": snapshot_bytes / r.restore_bps}
    basis = ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()) + f"; rates: {r.source}"
    return round(sum(parts.values()), 1), basis
