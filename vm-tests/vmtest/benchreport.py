"""The benchmark's numbers, from what the session measured (no VM needed: unit-tested).

`assemble()` turns the session's measurements into bench.json: the floor (a plain kexec boot
of the target), the reboot baseline, kupgrade's downtime per snapshot size with its breakdown,
the least-squares slope of downtime over size and the ratios. Nothing here judges a number:
the benchmark writes them, it never asserts them."""

from __future__ import annotations

REFERENCE_MIB = 64          # the reference workload: the same 64 MiB Workload as the basic scenario
# Switches with it per transport, like the floor's plain kexecs: their median is the reference (a
# transport's first switch of a session ran code TCG had not translated yet: the region's first
# 64 MiB dump took 2.0 s, a later one of the same workload 1.1 s)
REFERENCE_SAMPLES = 3
DEFAULT_TRANSPORT = "initrd"    # what kupgrade uses without a reserved region: the top-level figures
PRE_DUMP_ITERATIONS = (0, 1, 3)
DIRTY_MIB_S = 8             # the pre-dump series' workload dirties memory at this rate
THROTTLE_BPS = 16 << 20     # the pre-warm pair's root disk bandwidth (QEMU throttling)
RESTORE_PHASE = "restore_begin->first_heartbeat"
# The pre-warm pair's workload maps a data file this large and reads it every beat: at 4 MiB/s
# with 16 MiB the restore's own reads (modules, criu, the hooks' tools) filled the disk as much,
# and reading ahead only moved its reads before theirs (restore to first beat 0.1-1.1 s shorter)
PREWARM_MAP_MIB = 64
PAUSE_STAGES = ("freeze", "flush", "snapshot", "kexec")     # the old kernel's side of the pause


def parse_sizes(text: str) -> list[int]:
    """"16,64,256" -> [16, 64, 256]: workload sizes in MiB, the reference size always among them."""
    try:
        sizes = {int(word) for word in text.replace(",", " ").split()}
    except ValueError:
        raise ValueError(f"sizes are MiB numbers separated by commas, not {text!r}") from None
    if any(m <= 0 for m in sizes):
        raise ValueError(f"sizes must be positive: {text!r}")
    return sorted(sizes | {REFERENCE_MIB})


def cpu_model_name(cpuinfo: str) -> str:
    """The first "model name" of /proc/cpuinfo's text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown"


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares (slope, intercept) of y over x; None with fewer than two distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    slope = sxy / sxx
    return slope, my - slope * mx


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def until_first_beat(breakdown: dict[str, float]) -> list[tuple[str, float]]:
    """The breakdown's segments that make up the downtime: from the last heartbeat before the
    switch to the first one after it (the restore may end after that first heartbeat)."""
    out, inside = [], False
    for key, seconds in breakdown.items():
        start, end = key.split("->")
        inside = inside or start == "last_heartbeat"
        if inside:
            out.append((key, seconds))
        if end == "first_heartbeat":
            break
    return out


def stage_seconds(record: dict) -> dict[str, float]:
    """Seconds per stage of an upgrade record (stages of one name summed, in record order)."""
    out: dict[str, float] = {}
    for s in record.get("stages", []):
        out[s["name"]] = round(out.get(s["name"], 0.0) + s["duration_s"], 3)
    return out


def stage_details(record: dict, name: str) -> dict:
    return next((s.get("details") or {} for s in record.get("stages", []) if s["name"] == name), {})


def size_entry(mib: int, downtime_s: float, breakdown: dict[str, float], record: dict) -> dict:
    """One snapshot size's measurement as bench.json lists it (assemble() adds the ratios)."""
    snap, load, pre = stage_details(record, "snapshot"), stage_details(record, "kexec"), stage_details(record, "preflight")
    estimate = pre.get("downtime_estimate_s")
    return {"mib": mib, "downtime_s": round(downtime_s, 3),
            "estimate_s": estimate, "estimate_error_pct": round(100 * (estimate - downtime_s) / downtime_s, 1)
            if estimate is not None and downtime_s else None,
            "estimate_basis": pre.get("downtime_basis"), **({"machine": pre["machine"]} if pre.get("machine") else {}),
            "phases": dict(until_first_beat(breakdown)), "breakdown": breakdown, "stages": stage_seconds(record),
            "restore_steps": stage_details(record, "restore").get("seconds", {}),
            "restore_start": stage_details(record, "restore").get("start", {}),
            "snapshot_bytes": snap.get("snapshot_bytes"), "initrd_bytes": load.get("initrd_bytes"),
            "kexec_method": load.get("method"), "record_id": record.get("id"), "outcome": record.get("outcome"),
            "transport": snap.get("transport", DEFAULT_TRANSPORT),
            "pre_dumps": stage_details(record, "prepare").get("pre_dump") or {}}


def pause_s(entry: dict) -> float:
    """The old kernel's side of the pause: the stages from the freeze to `kexec --exec`."""
    return round(sum(entry["stages"].get(n, 0.0) for n in PAUSE_STAGES), 3)


def pre_dump_fields(runs: list[dict]) -> dict:
    """The pause on the old kernel's side (`freeze_s`: freeze, flush, snapshot, kexec) by number
    of pre-dump iterations for the workload dirtying memory, and for the mostly idle reference
    and largest sizes with one iteration (`idle`, with their ratio)."""
    out: dict = {}
    for n in PRE_DUMP_ITERATIONS:
        r = next((r for r in runs if r["pre_dump"] == n and r["dirty_mib_s"]), None)
        out[str(n)] = ({"freeze_s": pause_s(r), "downtime_s": r["downtime_s"], "mib": r["mib"],
                        "dirty_mib_s": r["dirty_mib_s"], "transport": r["transport"], "stages": r["stages"]}
                       if r else {"freeze_s": None, "not_measured": "not reached (see missing)"})
    idle = {str(r["mib"]): {"freeze_s": pause_s(r), "downtime_s": r["downtime_s"], "transport": r["transport"]}
            for r in runs if r["pre_dump"] == 1 and not r["dirty_mib_s"]}
    if idle:
        sizes = sorted(idle, key=int)
        out["idle"] = {**idle, "ratio_largest_to_reference": ratio(idle[sizes[-1]]["freeze_s"],
                                                                  idle.get(str(REFERENCE_MIB), {}).get("freeze_s"))}
    return out


def prewarm_fields(runs: list[dict]) -> dict:
    """The downtime with restore.prewarm off and on, the root disk throttled across the switch."""
    by = {("on" if r["prewarm"] else "off"): {"downtime_s": r["downtime_s"], "restore_s": r["stages"].get("restore"),
                                               "phases": r["phases"], "throttle_bps": r["throttle_bps"],
                                               "mapped_mib": r.get("map_mib", 0), "transport": r["transport"]}
          for r in runs}
    if "on" in by and "off" in by:
        by["gain_s"] = round(by["off"]["downtime_s"] - by["on"]["downtime_s"], 3)
        # the part pre-warm can change: the rest of a boot from a throttled disk varies by seconds
        restore = [by[k]["phases"].get(RESTORE_PHASE) for k in ("off", "on")]
        if None not in restore:
            by["restore_gain_s"] = round(restore[0] - restore[1], 3)
    return by


def defaults_fields(runs: list[dict], floor_s: float | None, reboot_s: float | None) -> dict:
    """The reference workload as kupgrade runs it by default on a machine with its memory region
    (transport and pre-dump "auto"): what was chosen (from the record), the downtime and ratios,
    the old kernel's side of the pause."""
    if not runs:
        return {}
    r = runs[0]
    return {"downtime_s": r["downtime_s"], "ratio_to_floor": ratio(r["downtime_s"], floor_s),
            "ratio_to_reboot": ratio(r["downtime_s"], reboot_s), "transport": r["transport"],
            "pre_dumps": r.get("pre_dumps"), "freeze_s": pause_s(r), "estimate_s": r.get("estimate_s"),
            "estimate_error_pct": r.get("estimate_error_pct"), "phases": r["phases"], "stages": r["stages"],
            "record_id": r.get("record_id")}


def summary(sizes: list[dict], floor_s: float | None, reboot_s: float | None) -> dict:
    """One transport's figures: the reference downtime (the median of its samples), its ratios,
    the slope over size (every sample a point)."""
    refs = [s["downtime_s"] for s in sizes if s["mib"] == REFERENCE_MIB]
    downtime_s = sorted(refs)[len(refs) // 2] if refs else None
    fit = fit_line([(s["mib"], s["downtime_s"]) for s in sizes])
    return {"downtime_s": downtime_s, "reference_samples_s": refs,
            "ratio_to_floor": ratio(downtime_s, floor_s), "ratio_to_reboot": ratio(downtime_s, reboot_s),
            "slope_ms_per_mb": round(fit[0] * 1000, 2) if fit else None,
            "intercept_s": round(fit[1], 3) if fit else None}


def assemble(meta: dict, floor: dict | None, reboot: dict | None, sizes: list[dict],
             missing: list[str] = (), floor_back: list[dict] = (), pre_dump_runs: list[dict] = (),
             prewarm_runs: list[dict] = (), defaults_runs: list[dict] = ()) -> dict:
    """bench.json: `meta` (machine, kernels, date, commit), `floor` and `reboot` ({"seconds",
    "basis", "breakdown", ...}), `sizes` from size_entry(); `missing` names what could not be
    measured (the command then exits non-zero); `floor_back`: plain kexecs the other way. The
    top-level downtime, ratios and slope are the default transport's; `transports` has each."""
    floor_s = floor["seconds"] if floor else None
    reboot_s = reboot["seconds"] if reboot else None
    names = sorted({s.get("transport", DEFAULT_TRANSPORT) for s in sizes}, key=lambda t: (t != DEFAULT_TRANSPORT, t))
    sizes = [{**s, "ratio_to_floor": ratio(s["downtime_s"], floor_s), "ratio_to_reboot": ratio(s["downtime_s"], reboot_s)}
             for s in sorted(sizes, key=lambda s: (names.index(s.get("transport", DEFAULT_TRANSPORT)), s["mib"]))]
    per = {t: summary([s for s in sizes if s.get("transport", DEFAULT_TRANSPORT) == t], floor_s, reboot_s)
           for t in names}
    return {
        **meta,
        "floor_s": floor_s, "floor": floor, "floor_back": list(floor_back),
        "reboot_s": reboot_s, "reboot_basis": reboot["basis"] if reboot else None, "reboot": reboot,
        "reference_mib": REFERENCE_MIB,
        **per.get(DEFAULT_TRANSPORT, summary([], floor_s, reboot_s)),
        "transports": per,
        "defaults": defaults_fields(list(defaults_runs), floor_s, reboot_s),
        "sizes": sizes,
        "pre_dump": pre_dump_fields(list(pre_dump_runs)),
        "prewarm": prewarm_fields(list(prewarm_runs)),
        "missing": list(missing),
    }
