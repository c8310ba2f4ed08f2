"""The upgrade as a timeline, from the record alone: when the workloads stopped, what each stage
took, the kernel switch between `kexec --exec` and the restore, and the resulting downtime.
Wall clocks of two kernels are compared (the new one starts from the RTC): about ±1 s."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

from kupgrade.output.record import UpgradeRecord


@dataclass(frozen=True)
class Span:
    label: str
    start: float      # seconds from the first stage's start
    seconds: float
    status: str = "ok"


def spans(rec: UpgradeRecord) -> list[Span]:
    if not rec.stages:
        return []
    t0 = rec.stages[0].started
    out = []
    for s in rec.stages:
        if s.name == "restore" and (ex := rec.stage("exec")) is not None:
            out.append(Span("kernel switch", ex.started - t0, max(0.0, s.started - ex.started)))
        if s.name != "exec":
            out.append(Span(s.name, s.started - t0, s.duration_s, s.status))
    return out


def downtime(rec: UpgradeRecord) -> float | None:
    """From the freeze (cgroup workloads) or the dump (criu seizes PID workloads) to the end of
    the restore (or of the commit that continued the held trees); None unless the record covers both."""
    frz, snap = rec.stage("freeze"), rec.stage("snapshot")
    ends = [s.started + s.duration_s for s in rec.stages if s.name in ("restore", "restore-unit", "commit")]
    if not ends or snap is None:
        return None
    froze = frz is not None and frz.details.frozen_cgroups
    start = frz.started if froze else snap.started
    return round(max(ends) - start, 1)


def bars(rec: UpgradeRecord, width: int = 40) -> list[tuple[str, str, float, str]]:
    """(label, bar, seconds, status) rows; the bar is `width` columns for the whole upgrade."""
    sp = spans(rec)
    if not sp:
        return []
    total = max(s.start + s.seconds for s in sp) or 1.0
    rows = []
    for s in sp:
        a = int(round(s.start / total * width))
        n = max(1, int(round(s.seconds / total * width)))
        a = min(a, width - n)
        rows.append((s.label, " " * a + "█" * n + " " * (width - a - n), s.seconds, s.status))
    return rows


class Laps(dict):
    """Seconds of the named steps of a stage, for its details (`with laps.lap("verify"): ...`)."""

    @contextmanager
    def lap(self, name: str):
        t0 = time.monotonic()
        try:
            yield
        finally:
            self[name] = round(time.monotonic() - t0, 3)
