"""Downtime estimate: each stage takes a fixed time plus the snapshot's bytes at a rate (dump,
kexec load, the kernel switch, restore), fitted to the recent upgrades and rehearsals of the same
transport on this machine; what they cannot tell (one size only; nothing yet) from what this
machine measures of itself (`first_rates`): its memory copy and checksum speed, and how long this
boot took from the kernel's start to the point where kupgrade-restore runs."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from kupgrade.output.record import REHEARSED, RESTORED, UpgradeRecord
from kupgrade.switch import contract, manifest


@dataclass(frozen=True)
class Rates:
    """A stage's seconds = its fixed part + bytes / its rate (the kernel switch: boot_s + bytes /
    deliver_bps, the bytes only with the initrd transport)."""
    dump_bps: float       # criu dump + packing (hashing) into the initrd
    load_bps: float       # kexec load of the combined initrd
    boot_s: float         # kexec --exec → restore starting in the new kernel (its fixed part)
    restore_bps: float    # verification + criu restore
    source: str           # where the numbers come from
    deliver_bps: float = float("inf")   # initrd transport: the new kernel unpacking and moving it (per byte)
    dump_fixed_s: float = 0.0
    load_fixed_s: float = 0.0
    restore_fixed_s: float = 0.0
    machine: str = ""     # what this machine measured of itself (the cost per byte that one size cannot tell)


DEFAULTS = Rates(200e6, 500e6, 8.0, 200e6, "stated defaults (no upgrade measured on this machine yet)")
HANDOFF_S = 1.0             # `kexec --exec` -> the new kernel's first line (TCG: 1.1-2.2 s; hardware: less)
EARLY_USERSPACE_S = 3.0     # init-top -> the restore point, when this boot did not record the latter
# The initramfs of a switch finding the snapshot and moving it (initrd) or mounting its region
# (pmem), which a plain boot's restore point lacks, beside the bytes the initrd's carries
# (deliver): the benchmark's 64 MiB switches spent 1.8 s (initrd, 1.1 s of it the bytes at the
# fitted rate) and 0.3 s (region) more from the new kernel's banner to init than the same kexec
# without a snapshot (bench of 2026-12-06 on a539422)
EARLY_SNAPSHOT_S = {"initrd": 1.0, "pmem": 0.5}
LATEST_RESTORE_POINT_S = 600.0  # a restore point marked later than this is no boot's (run by hand)
CALIBRATE_BYTES = 8 << 20
CALIBRATE_ROUNDS = 3    # the fastest counts: a first round under QEMU TCG measured 58 MB/s, later ones 240-390
# Before the first upgrade, per transport: each stage's cost per byte as (checksum passes, memory
# copy passes) of this machine, and its fixed seconds: criu's dump (+ packing into the initrd),
# the kexec load of the initrd with the snapshot, the new kernel unpacking + moving the archive
# (its fixed part: the restore point), verify + criu restore. Fitted to the benchmark's 64 MiB and
# 1 GiB switches of each transport (vm-tests/bench of 2026-12-06 on a539422, QEMU TCG with a 256
# MiB translation buffer, a quiet host; this machine's memory copy 300-430 MB/s, CRC-32 ~1250 MB/s
# measured in the same preflights): a GiB is copied at memory speed, the calibration's few MiB
# nearer the cache's, hence more passes than copies made. With the region the images are written
# once and read in place: no packing, load or unpacking (load and deliver: the initrd's, unused).
PASSES = {"initrd": {"dump": (1.0, 6.3), "load": (0.0, 4.5), "deliver": (0.0, 4.3), "restore": (1.0, 0.75)},
          "pmem": {"dump": (1.0, 0.5), "load": (0.0, 4.5), "deliver": (0.0, 4.3), "restore": (1.0, 1.0)}}
FIXED_S = {"initrd": {"dump": 0.5, "load": 0.2, "restore": 1.3},
           "pmem": {"dump": 1.6, "load": 0.0, "restore": 1.1}}
RECENT = 6          # records of each outcome the fit reads, newest first
SPAN = 1.5          # samples whose largest size is this many times their smallest: a line is fitted
WITHIN = 3.0        # a fitted cost per byte stays within this factor of what this machine's speed says,
CLEAR_S = 5.0       # when the samples' sizes differ by fewer seconds than this at that speed (noise rules)


# Where the restore runs, as systemd's targets show it in this boot: the restore unit before
# sysinit.target; carried units when systemd starts them, in their order (multi-user.target
# waits for them), so with units among the workloads the pause lasts until about there.
SYSINIT = ("sysinit.target", "this boot reached sysinit.target (where the restore unit runs)")
MULTI_USER = ("multi-user.target", "this boot reached multi-user.target (the carried units are restored as systemd "
                                   "starts them, in their order)")


def restore_point(systemd_us: str = "", marked: Path = Path(contract.RESTORE_POINT),
                  early: Path = Path(contract.EARLY_PIDS), target: tuple[str, str] = SYSINIT) -> tuple[float | None, str]:
    """Seconds from this boot's kernel start to where the restore runs, and how it is known:
    systemd reached `target` (`systemd_us`, its ActiveEnterTimestampMonotonic), kupgrade-restore
    marked it, or init-top's time + a stated allowance for the rest of the initramfs."""
    if systemd_us.strip().isdigit() and 0 < int(systemd_us) <= LATEST_RESTORE_POINT_S * 1e6:
        return int(systemd_us) / 1e6, target[1]
    try:
        seconds = float(marked.read_text().split()[0])
        if seconds <= LATEST_RESTORE_POINT_S:       # else: a first call by hand, long after the boot
            return seconds, "this boot's kupgrade-restore ran"
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = dict(line.split(" ", 1) for line in early.read_text().splitlines() if " " in line)
        return float(fields["uptime"]) + EARLY_USERSPACE_S, (f"this boot's initramfs started, + {EARLY_USERSPACE_S:.0f} s "
                                                             "stated for the rest of early boot")
    except (OSError, ValueError, KeyError):
        return None, ""


def calibrate(size: int = CALIBRATE_BYTES, rounds: int = CALIBRATE_ROUNDS) -> tuple[float, float]:
    """This machine's (memory copy, manifest checksum) bytes per second, on `size` bytes in memory,
    the fastest of `rounds` (the first pays for warming up: page allocation, and under QEMU TCG
    the translation of the code). The checksum's as the snapshot is summed, a thread per CPU
    (manifest.checksums), counted as that many times one CPU's (timing threads on a sample this
    small measured their start-up: half the speed under QEMU TCG, where two threads summed a
    large file 1.96 x as fast as one)."""
    chunk = os.urandom(1 << 20)
    copy_s = hash_s = math.inf
    for _ in range(max(1, rounds)):
        fd = os.memfd_create("kupgrade-calibrate")
        try:
            t0 = time.perf_counter()
            for _ in range(size >> 20):
                os.write(fd, chunk)
            os.lseek(fd, 0, os.SEEK_SET)
            data = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
            t1 = time.perf_counter()
            h = manifest.Crc32s()
            h.update(data)
            t2 = time.perf_counter()
        finally:
            os.close(fd)
        copy_s, hash_s = min(copy_s, t1 - t0), min(hash_s, t2 - t1)
    return 2 * size / max(copy_s, 1e-6), manifest.threads() * size / max(hash_s, 1e-6)


def first_rates(copy_bps: float, hash_bps: float, point: tuple[float | None, str],
                transport: str = "initrd") -> Rates:
    """Rates before any upgrade was measured here, from what this machine measures of itself:
    the cost per byte of each stage with this transport (PASSES), with the stated fixed parts
    (FIXED_S)."""
    passes, fixed = PASSES.get(transport, PASSES["initrd"]), FIXED_S.get(transport, FIXED_S["initrd"])
    early = EARLY_SNAPSHOT_S.get(transport, EARLY_SNAPSHOT_S["initrd"])

    def bps(stage: str) -> float:
        hashes, copies = passes[stage]
        return 1 / (hashes / hash_bps + copies / copy_bps)
    seconds, how = point
    boot = seconds + HANDOFF_S + early if seconds is not None else DEFAULTS.boot_s
    switch = (f"kernel switch from {how} {seconds:.1f} s after its kernel started, + {HANDOFF_S:.0f} s hand-off "
              f"+ {early:g} s for the initramfs to find the snapshot"
              if seconds is not None else f"kernel switch: stated default {DEFAULTS.boot_s:.0f} s")
    machine = f"this machine's memory copy {copy_bps / 1e6:.0f} MB/s and CRC-32 {hash_bps / 1e6:.0f} MB/s"
    return Rates(bps("dump"), bps("load"), boot, bps("restore"),
                 f"no upgrade measured here yet: {machine}, stated fixed parts; {switch}", bps("deliver"),
                 fixed["dump"], fixed["load"], fixed["restore"], machine)


@dataclass(frozen=True)
class Fit:
    """A stage's seconds = fixed_s + bytes / bps, and how that was found."""
    fixed_s: float
    bps: float
    how: str
    mine: bool = False      # this machine's speed set the cost per byte (or bounded it)


def fit(samples: list[tuple[float, float]], bps: float) -> Fit | None:
    """A line through (bytes, seconds) samples. Sizes spanning SPAN×: least squares (a negative
    fixed part: through zero); if the sizes differ by less than CLEAR_S at `bps` (this machine's
    speed), its cost per byte is kept within WITHIN× of that speed: noise between close sizes can
    tilt a line far. One size (or a line falling with size): `bps`, and the fixed part is what
    the samples took beyond it (if they were faster, their own rate)."""
    samples = [(x, y) for x, y in samples if x > 0 and y > 0]
    if not samples:
        return None
    xs, ys, n = [x for x, _ in samples], [y for _, y in samples], len(samples)
    if max(xs) >= SPAN * min(xs):
        mx, my = sum(xs) / n, sum(ys) / n
        slope = sum((x - mx) * (y - my) for x, y in samples) / sum((x - mx) ** 2 for x in xs)
        if slope > 0:
            fixed, per = my - slope * mx, slope
            if fixed < 0:
                fixed, per = 0.0, sum(x * y for x, y in samples) / sum(x * x for x in xs)
            close = math.isfinite(bps) and (max(xs) - min(xs)) / bps < CLEAR_S
            bounded = min(max(per, 1 / (bps * WITHIN)), WITHIN / bps) if close else per
            fixed = max(0.0, my - bounded * mx) if bounded != per else fixed
            how = f"a line through {'zero and ' if fixed == 0 else ''}{n} samples"
            return Fit(fixed, 1 / bounded, how + (", its slope bounded by this machine's speed"
                                                  if bounded != per else ""), bounded != per)
    fixed = sum(y - x / bps for x, y in samples) / n
    if fixed < 0:
        return Fit(0.0, sum(xs) / sum(ys), f"the rate of {n} sample(s) of one size")
    return Fit(fixed, bps, f"this machine's speed, the rest of {n} sample(s) of one size fixed", True)


def _measured(rec: UpgradeRecord) -> dict[str, tuple[float, float]]:
    """What one upgrade or rehearsal measured, per stage: (bytes, seconds) — the stages' whole
    durations (the pause holds all of them); the kernel switch only from a real upgrade."""
    snap, kx, ex, rs = (rec.stage(n) for n in ("snapshot", "kexec", "exec", "restore"))
    if rec.outcome not in (RESTORED, REHEARSED) or snap is None or rs is None:
        return {}
    size = snap.details.snapshot_bytes or 0
    out = {"dump": (size, snap.duration_s), "restore": (size, rs.duration_s)}
    if kx is not None and not kx.details.loaded_before_freeze:
        out["load"] = (kx.details.initrd_bytes or 0, kx.duration_s)
    if rec.outcome == RESTORED and ex is not None and rs.started > ex.started:
        out["switch"] = (size, rs.started - ex.started)
    return {k: v for k, v in out.items() if min(v) > 0}


LABELS = {"dump": "dump+pack", "load": "kexec load", "switch": "kernel switch", "restore": "restore"}


def _said(label: str, f: Fit) -> str:
    per = f" + 1 s per {f.bps / 1e6:.0f} MB" if math.isfinite(f.bps) else ""
    return f"{label} {f.fixed_s:.1f} s{per} ({f.how})"


def _source(fits: dict[str, Fit], used: list[UpgradeRecord], first: Rates, transport: str) -> str:
    """Which records measured what, each stage's line, and what this machine's own measurement
    (or the defaults) added: upgrades first, newest first."""
    names = [f"upgrade {r.id}" for r in used if r.outcome == RESTORED] + \
            [f"rehearsal {r.id}" for r in used if r.outcome == REHEARSED]
    said = [_said("dump" if k == "dump" and transport != "initrd" else LABELS[k], fits[k]) for k in LABELS if k in fits]
    if any(k not in fits for k in ("dump", "restore", "switch")):
        said.append(f"for the rest {first.source}")
    elif any(f.mine for f in fits.values()):
        said.append(first.machine or first.source)
    return f"measured by {', '.join(names)}: {'; '.join(said)}"


def _switch(samples: list[tuple[float, float]], first: Rates, transport: str) -> Fit | None:
    """The kernel switch: with the initrd a line over the snapshot's size (the new kernel unpacks
    and moves it); with the memory region it does not depend on the size: the newest upgrade's."""
    if transport != "initrd":
        return Fit(samples[0][1], float("inf"), "the newest upgrade's") if samples else None
    return fit(samples, first.deliver_bps)


def rates_from(records: list[UpgradeRecord], first: Rates = DEFAULTS, transport: str = "initrd") -> Rates:
    """Rates from recent restored upgrades and rehearsals of one transport on this machine: each
    stage fitted to the newest RECENT of them that measured it (see fit), the kernel switch only
    from upgrades; `first` (what this machine measured of itself, or DEFAULTS) for the cost per
    byte that one size cannot tell, and for whatever none measured."""
    recs = sorted((r for r in records if _measured(r)), key=lambda r: (r.created, r.id), reverse=True)
    if not recs:
        return first
    seen = [(r, _measured(r)) for r in recs]
    fits, used = {}, []
    for stage, bps in (("dump", first.dump_bps), ("load", first.load_bps), ("restore", first.restore_bps),
                       ("switch", None)):
        mine = [(r, m[stage]) for r, m in seen if stage in m][:RECENT]
        f = _switch([s for _, s in mine], first, transport) if bps is None else fit([s for _, s in mine], bps)
        if f is not None:
            fits[stage] = f
            used += [r for r, _ in mine if r not in used]
    if not fits:
        return first
    switch = fits.get("switch", Fit(first.boot_s, first.deliver_bps, ""))
    dump, load, restore = (fits.get(k, Fit(fx, bps, "")) for k, fx, bps in (
        ("dump", first.dump_fixed_s, first.dump_bps), ("load", first.load_fixed_s, first.load_bps),
        ("restore", first.restore_fixed_s, first.restore_bps)))
    return Rates(dump.bps, load.bps, switch.fixed_s, restore.bps,
                 _source(fits, used, first, transport), switch.bps,
                 dump.fixed_s, load.fixed_s, restore.fixed_s)


def transport_of(rec: UpgradeRecord) -> str:
    """How that upgrade's snapshot crossed (records older than the transports: the initrd)."""
    snap = rec.stage("snapshot")
    return (snap.details.transport if snap else None) or "initrd"


def downtime(snapshot_bytes: int, initrd_bytes: int, r: Rates, transport: str = "initrd") -> tuple[float, str]:
    """The estimate and how it was made. transport "pmem": the snapshot is not in the initrd, which
    prepare loads before the freeze (the rates should come from an upgrade of the same transport:
    see preflight)."""
    packed = transport == "initrd"
    parts = {"dump+pack" if packed else "dump": r.dump_fixed_s + snapshot_bytes / r.dump_bps,
             "kexec load": r.load_fixed_s + (snapshot_bytes + initrd_bytes) / r.load_bps if packed else 0.0,
             "kernel switch": r.boot_s + (snapshot_bytes / r.deliver_bps if packed else 0.0),
             "restore": r.restore_fixed_s + snapshot_bytes / r.restore_bps}
    basis = ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()) + f"; rates: {r.source}"
    return round(sum(parts.values()), 1), basis
