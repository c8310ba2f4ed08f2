"""rehearse: the dress rehearsal on 6.1 — dump, pack, load the target kernel, then restore the
workload on the running kernel instead of switching. The workload goes on with its state, and
the next downtime estimate uses the measured bandwidths. Once selected by cgroup (freezer), once
by PID (criu seizes it)."""

from __future__ import annotations

import json
import time

from ..scenario import (Result, kupgrade_config, last_record, next_estimate, stage_durations, started, workload_kept,
                        write_config)
from ..workload import Workload

NAME = "rehearse"
DESCRIPTION = "kupgrade rehearse on 6.1 (cgroup, then PID): the workload survives with its state, estimates improve"


def rehearse(vm, res: Result, wl: Workload, label: str, *args: str) -> dict:
    """One rehearsal; returns its record (from --json stdout)."""
    last = wl.beats[-1].counter
    t_call = time.time()
    r = vm.sh("kupgrade", "rehearse", "--yes", "--json", *args, check=False, timeout=600)
    res.say(r["stderr"])
    try:
        rec = json.loads(r["stdout"])
    except ValueError:
        rec = {"outcome": None, "stages": []}
    res.check(r["rc"] == 0, f"{label}: kupgrade rehearse exits 0", (r["stdout"][-800:] + r["stderr"][-2000:]))
    res.check(rec["outcome"] == "rehearsed", f"{label}: --json prints the record, outcome rehearsed",
              str(rec.get("outcome")))
    stages = [(s["name"], s["status"]) for s in rec["stages"]]
    res.check(stages == [(n, "ok") for n in ("preflight", "prepare", "freeze", "flush", "snapshot", "kexec", "handover", "restore")],
              f"{label}: every stage ran, kexec load included, then handover and restore", str(stages))
    res.check("Rehearsal passed" in r["stderr"], f"{label}: human text on stderr, not stdout", r["stderr"][-600:])
    t_reply = time.time()
    wl.wait_beats(5, after=last, timeout=180)
    gap, a, b = wl.largest_gap_after(last - 1)
    res.check(a.t >= t_call and b.t <= t_reply + 30, f"{label}: the largest heartbeat gap is during the rehearsal",
              f"gap {gap:.2f} s between beats {a.counter} and {b.counter}")
    (vm.workdir / f"beats-{label}.txt").write_text(
        f"call {t_call:.3f} reply {t_reply:.3f}\n" + "".join(f"{x.t:.3f} {x.counter}\n" for x in wl.beats))
    res.data.setdefault("rehearsals", {})[label] = {"downtime_s": round(gap, 3), "stages": stage_durations(rec)}
    return rec


def run(vm, image, res: Result) -> None:
    wl, before = started(vm, res, cgroup="/workload")
    write_config(vm, kupgrade_config(image.kernel_to))

    rec = rehearse(vm, res, wl, "cgroup", "--cgroup", "/workload")
    events = vm.read("/sys/fs/cgroup/workload/cgroup.events").split("\n")
    res.check("frozen 0" in events, "cgroup: not frozen after the rehearsal", " ".join(events))
    procs = vm.read("/sys/fs/cgroup/workload/cgroup.procs").split()
    res.check(sorted(procs) == sorted([str(before["pid"]), str(before["child"])]),
              "cgroup: the restored tasks are back in their cgroup", " ".join(procs))

    rec2 = rehearse(vm, res, wl, "pid", "--pid", str(before["pid"]))
    # No switch: the longer of the two rehearsals' pauses, the last one's stages (both in rehearsals).
    res.data["downtime_s"] = max(r["downtime_s"] for r in res.data["rehearsals"].values())
    res.data["downtime_source"] = "largest heartbeat gap of the two rehearsals"
    res.data["stages"] = res.data["rehearsals"]["pid"]["stages"]
    res.data["kernel_after"] = vm.sh("uname", "-r")["stdout"].strip()
    res.check(res.data["kernel_before"] == res.data["kernel_after"] == image.kernel_from,
              f"still on {image.kernel_from}")
    res.data.update(workload_kept(res, wl, before, "after two rehearsals"))
    after = wl.state()
    states = vm.sh("ps", "-o", "stat=", "-p", f"{after['pid']},{after['child']}")["stdout"].split()
    res.check(len(states) == 2 and not any(s.startswith(("T", "Z")) for s in states), "both tasks running",
              " ".join(states))
    res.check("kupgrade-snapshot" not in vm.read("/proc/mounts"), "snapshot tmpfs unmounted")
    res.check(vm.read("/sys/kernel/kexec_loaded").strip() == "0", "the target kernel is unloaded again")
    res.check(vm.sh("test", "-e", "/run/kupgrade", check=False)["rc"] != 0, "the unpacked snapshot is gone")
    res.check(last_record(vm)["id"] == rec2["id"], "the record is saved like an upgrade's")

    pre = next_estimate(vm, res, "--pid", str(before["pid"]))
    res.check(f"rehearsal {rec2['id']}" in str(pre.get("downtime_basis")),
              "the downtime estimate uses the rehearsal's bandwidths", str(pre.get("downtime_basis")))
    report = vm.sh("kupgrade", "report", timeout=300)["stdout"]
    res.say(report)
    res.check("rehearsed" in report and "restored, same PID" in report and "paused for about" in report,
              "kupgrade report shows the rehearsal", report[-1500:])
    res.data["record"] = rec2
    res.data["first_record"] = rec["id"]
