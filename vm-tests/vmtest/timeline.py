"""Host-side breakdown of the downtime from console lines timestamped on receipt."""

from __future__ import annotations

from .qemu import Guest

MARKS = (
    ("kexec_exec", "Starting new kernel"),
    ("new_kernel_banner", "Linux version {to}"),
    ("initramfs_snapshot_ready", "kupgrade: snapshot"),
    ("init_started", "vmtest-init: kernel {to} up"),
    ("restore_begin", "vmtest-init: restore begin"),
    ("restore_end", "vmtest-init: restore end"),
)


def marks(vm: Guest, kernel_to: str, since: float, table=MARKS) -> dict[str, float]:
    """The host time of the first console line since `since` that has each mark's text."""
    out: dict[str, float] = {}
    for name, pattern in table:
        pat = pattern.format(to=kernel_to)
        for line in vm.console:
            if line.t >= since and pat in line.text:
                out[name] = line.t
                break
    return out


def intervals(points: dict[str, float]) -> dict[str, float]:
    """Seconds between consecutive points in time order, keyed "a->b"."""
    ordered = sorted(points.items(), key=lambda kv: kv[1])
    return {f"{a}->{b}": round(tb - ta, 3) for (a, ta), (b, tb) in zip(ordered, ordered[1:])}


def breakdown(last_beat: float, first_beat: float, m: dict[str, float]) -> dict[str, float]:
    """Seconds between consecutive marks, from the last heartbeat before the switch; the first
    heartbeat after it may come before the restore command has finished (it saves the record)."""
    return intervals({"last_heartbeat": last_beat, "first_heartbeat": first_beat, **m})
