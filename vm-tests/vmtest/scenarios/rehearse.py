"""rehearse: everything that stays on 6.1, on one guest and one workload — first the failures
before the switch, then the dress rehearsal.

1. A truncated target kernel (its header intact, so kexec itself would load it and jump into
   garbage) is refused by preflight: exit 3, one line, nothing changed.
2. The kexec load fails after the snapshot (KUPGRADE_FAULT=kexec-load), the workload selected
   by PID: the tasks criu left stopped are resumed, one line says kexec failed.
3. The same with the workload moved into cgroup /workload and selected by it: the freeze used
   the cgroup freezer, which is thawed. After both: still on 6.1, same PIDs, no task stopped,
   every heartbeat once, buffer intact, no tmpfs, nothing loaded, the record says aborted with
   the rollback complete.
4. `kupgrade rehearse --json` on 6.1, once by cgroup (freezer) and once by PID (criu seizes it):
   dump, pack, load the target kernel, then restore the workload on the running kernel instead
   of switching; every stage ran, the workload goes on with its state (same PIDs, counter
   consecutive, buffer intact, back in its cgroup, thawed), tmpfs and unpacked snapshot gone,
   the kernel unloaded, the record saved like an upgrade's. The aborted runs' records do not
   count for estimates: the next downtime estimate cites the rehearsal; `kupgrade report` shows it.
5. Then, on the same guest and workload, an admin at a terminal (tui.py): `kupgrade rehearse
   --step`, `kupgrade run --step` to 6.12 and `kupgrade report` there.
Downtime: the stepped run's, from the go/no-go answered (tui.py); the rehearsals' pauses are in
`rehearsals`, the failed attempts' longest in aborted.pause_s."""

from __future__ import annotations

import json
import time

from ..scenario import (Result, kupgrade_config, last_record, next_estimate, rolled_back, run_failing, stage_durations,
                        started, workload_kept, write_config)
from ..workload import Workload
from . import tui

NAME = "rehearse"
DESCRIPTION = ("a truncated kernel and failed kexec loads (PID, cgroup) leave the workload unharmed on 6.1; then "
               "kupgrade rehearse (cgroup, then PID): the workload survives with its state, estimates improve; then "
               "rehearse --step and run --step to 6.12 driven through a terminal (tmux), report after")

BAD_KERNEL = "/root/vmlinuz-truncated"


def summary(r: dict) -> dict:
    """A failed run as the results keep it."""
    return {k: r[k] for k in ("rc", "error", "output")}


def truncated_kernel(vm, image, res: Result, pid: int) -> None:
    """A truncated target kernel is blocked by preflight: exit 3, one line saying so."""
    vm.sh("dd", f"if=/boot/vmlinuz-{image.kernel_to}", f"of={BAD_KERNEL}", "bs=1M", "count=4")
    write_config(vm, kupgrade_config(image.kernel_to, pids=[pid]).replace(
        f'kernel = "{image.kernel_to}"',
        f'vmlinuz = "{BAD_KERNEL}"\ninitrd = "/boot/initrd.img-{image.kernel_to}"'))
    r = run_failing(vm)
    res.data["truncated_kernel"] = {"rc": r["rc"], "error": r["error"]}
    res.check(r["rc"] == 3, "truncated kernel: kupgrade run exits 3 (blocked)", str(r["rc"]))
    res.check("truncated" in r["error"], "truncated kernel: the line says so", r["error"])


def load_fails(vm, res: Result, wl) -> None:
    """The kexec load fails after the freeze and the snapshot (PID workload): one line says so."""
    r = run_failing(vm, "kexec-load")
    res.data["kexec_load_fault"] = summary(r)
    res.check(r["rc"] not in (0, None), "failed kexec load: kupgrade run exits non-zero", str(r["rc"]))
    res.check("kexec load failed" in r["error"], "failed kexec load: one line says kexec failed", r["error"])
    wl.wait_beats(5, after=wl.beats[-1].counter, timeout=120)


def load_fails_frozen(vm, res: Result, wl) -> None:
    """The same with the workload in a cgroup: the freeze stage used the cgroup freezer, thawed."""
    r = run_failing(vm, "kexec-load")
    res.data["kexec_load_fault_cgroup"] = summary(r)
    res.check(r["rc"] not in (0, None) and "kexec load failed" in r["error"],
              "cgroup workload, failed kexec load: one line says kexec failed", r["error"])
    res.check("froze 1 cgroup" in r["stdout"], "cgroup workload: the freeze stage used the cgroup freezer",
              r["stdout"][-1500:])
    res.check("frozen 0" in vm.read("/sys/fs/cgroup/workload/cgroup.events").split("\n"),
              "cgroup workload: thawed again", vm.read("/sys/fs/cgroup/workload/cgroup.events"))
    wl.wait_beats(5, after=wl.beats[-1].counter, timeout=120)



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



def failed_attempts(vm, image, res: Result, wl: Workload, before: dict) -> None:
    """abort's cases, in order, then what they must leave: still on 6.1, the workload as itself,
    nothing of the runs left, the record aborted (kept as res.data["aborted"])."""
    # 1. truncated kernel: blocked by preflight.
    truncated_kernel(vm, image, res, wl.pid)

    # 2. kexec load fails after freeze + snapshot.
    write_config(vm, kupgrade_config(image.kernel_to, pids=[wl.pid]))
    load_fails(vm, res, wl)

    # 3. the same through the cgroup freezer: move both tasks into their own cgroup first.
    vm.sh("mkdir", "-p", "/sys/fs/cgroup/workload")
    for p in (before["pid"], before["child"]):
        vm.sh("tee", "/sys/fs/cgroup/workload/cgroup.procs", input=str(p))
    write_config(vm, kupgrade_config(image.kernel_to, cgroups=["/workload"]))
    load_fails_frozen(vm, res, wl)

    kernel = vm.sh("uname", "-r")["stdout"].strip()
    res.check(kernel == image.kernel_from, "still on the old kernel", kernel)
    workload_kept(res, wl, before, "still running")
    rec = rolled_back(vm, res, wl, "after the failed loads")
    # The longest the workload was paused by a failed attempt, until its rollback.
    res.data["aborted"] = {"record": rec, "stages": stage_durations(rec), "pause_s": round(wl.largest_gap()[0], 3)}


def back_in_cgroup(vm, res: Result, before: dict) -> None:
    """After the cgroup rehearsal: the cgroup thawed, both restored tasks in it."""
    events = vm.read("/sys/fs/cgroup/workload/cgroup.events").split("\n")
    res.check("frozen 0" in events, "cgroup: not frozen after the rehearsal", " ".join(events))
    procs = vm.read("/sys/fs/cgroup/workload/cgroup.procs").split()
    res.check(sorted(procs) == sorted([str(before["pid"]), str(before["child"])]),
              "cgroup: the restored tasks are back in their cgroup", " ".join(procs))


def nothing_left(vm, res: Result, wl: Workload) -> None:
    """After the rehearsals: both tasks running, no tmpfs, nothing loaded, no unpacked snapshot."""
    after = wl.state()
    states = vm.sh("ps", "-o", "stat=", "-p", f"{after['pid']},{after['child']}")["stdout"].split()
    res.check(len(states) == 2 and not any(s.startswith(("T", "Z")) for s in states), "both tasks running",
              " ".join(states))
    res.check("kupgrade-snapshot" not in vm.read("/proc/mounts"), "snapshot tmpfs unmounted")
    res.check(vm.read("/sys/kernel/kexec_loaded").strip() == "0", "the target kernel is unloaded again")
    res.check(vm.sh("test", "-e", "/run/kupgrade", check=False)["rc"] != 0, "the unpacked snapshot is gone")


def estimate_and_report(vm, res: Result, rec2: dict, pid: int) -> None:
    """The record is the rehearsal's; the next estimate cites it; `kupgrade report` shows it."""
    res.check(last_record(vm)["id"] == rec2["id"], "the record is saved like an upgrade's")
    pre = next_estimate(vm, res, "--pid", str(pid))
    res.check(f"rehearsal {rec2['id']}" in str(pre.get("downtime_basis")),
              "the downtime estimate uses the rehearsal's bandwidths", str(pre.get("downtime_basis")))
    report = vm.sh("kupgrade", "report", timeout=300)["stdout"]
    res.say(report)
    res.check("rehearsed" in report and "restored, same PID" in report and "paused for about" in report,
              "kupgrade report shows the rehearsal", report[-1500:])


def run(vm, image, res: Result) -> None:
    wl, before = started(vm, res)
    failed_attempts(vm, image, res, wl, before)

    write_config(vm, kupgrade_config(image.kernel_to))
    rec = rehearse(vm, res, wl, "cgroup", "--cgroup", "/workload")
    back_in_cgroup(vm, res, before)
    rec2 = rehearse(vm, res, wl, "pid", "--pid", str(before["pid"]))

    kernel = vm.sh("uname", "-r")["stdout"].strip()
    res.check(res.data["kernel_before"] == kernel == image.kernel_from, f"still on {image.kernel_from}", kernel)
    workload_kept(res, wl, before, "after two rehearsals")
    nothing_left(vm, res, wl)
    estimate_and_report(vm, res, rec2, before["pid"])
    res.data["rehearsal_records"] = [rec["id"], rec2["id"]]
    # the same workload, at a terminal: stepped rehearsal, stepped run to 6.12 (the results' record,
    # stages, downtime), report
    tui.at_a_terminal(vm, image, res, wl, before)
