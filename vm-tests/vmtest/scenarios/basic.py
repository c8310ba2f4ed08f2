"""basic: boot 6.1, start the workload (in its own cgroup), `kupgrade run` to 6.12; the same
processes go on with their memory intact."""

from __future__ import annotations

import json

from ..scenario import Result, started, final_record, kupgrade_config, next_estimate, upgrade, write_config
from ..timeline import breakdown, marks

NAME = "basic"
SLOW_STEPS = r'/^\(/ { t = substr($1, 2) + 0; if (t - prev > 0.2) printf "%.2f s after: %s\n", t - prev, last; prev = t; last = $0 }'
DESCRIPTION = "live-upgrade 6.1 -> 6.12 with a 64 MiB two-process workload in its own cgroup"


def run(vm, image, res: Result) -> None:
    wl, before = started(vm, res, cgroup="/workload")
    write_config(vm, kupgrade_config(image.kernel_to, cgroups=["/workload"]))
    plan = vm.sh("kupgrade", "plan", "--cgroup", "/workload", timeout=300)["stdout"]
    (vm.workdir / "plan.txt").write_text(plan)
    res.say(plan)
    res.check("no blockers" in plan and "downtime estimate" in plan and "/workload" in plan,
              "kupgrade plan shows the workload, no blockers and the estimate", plan[-1500:])
    chk = vm.sh("kupgrade", "check", check=False, timeout=300)
    res.say(chk["stdout"] + chk["stderr"])
    res.check(chk["rc"] == 0, "kupgrade check finds no blocker", (chk["stdout"] + chk["stderr"])[-1500:])

    if (switched := upgrade(vm, res, show=True)) is None:
        return
    last_before = wl.beats[-1].counter     # everything the old kernel's agent relayed came first
    wl.follow()
    try:
        wl.wait_beats(5, after=last_before, timeout=180)
    finally:
        res.data["restore_log"] = vm.read("/var/log/kupgrade-restore.log")[-4000:]
    after = wl.state()

    res.check(res.data["kernel_before"] == image.kernel_from, f"booted {image.kernel_from} first", res.data["kernel_before"])
    res.check(switched["kernel"] == image.kernel_to, f"now running {image.kernel_to}", switched["kernel"])
    same_pids = after["pid"] == before["pid"] and after["child"] == before["child"]
    beat_pids = {(b.pid, b.ppid) for b in wl.beats}
    res.data["pids_preserved"] = same_pids and beat_pids == {(before["child"], before["pid"])}
    res.check(res.data["pids_preserved"], "same PIDs (parent and child)",
              f"before {before['pid']}/{before['child']}, after {after['pid']}/{after['child']}, heartbeat pids {sorted(beat_pids)}")
    consecutive = wl.consecutive()
    res.check(consecutive, "counter continued: every heartbeat once, in order, no restart",
              wl.span())
    res.data["state_preserved"] = after["sha256"] == before["sha256_start"] == after["sha256_start"] and consecutive
    res.check(after["sha256"] == before["sha256_start"], "64 MiB buffer checksum intact", after["sha256"])
    res.check(after["counter"] > before["counter"], "counter went on after the upgrade",
              f"{before['counter']} -> {after['counter']}")

    rec = final_record(vm)
    res.check(rec["outcome"] == "restored", "upgrade record says restored", rec["outcome"])
    restore = next((s for s in rec["stages"] if s["name"] == "restore"), {})
    res.check(restore.get("details", {}).get("workloads", {}) != {} and
              all(w.get("same_pid") for w in restore["details"]["workloads"].values()),
              "record: every workload restored with its PID", json.dumps(restore.get("details", {}))[:800])
    res.data["stages"] = {s["name"]: s["duration_s"] for s in rec["stages"]}
    log = vm.sh("grep", "-E", "ran: criu (dump|restore)|kupgrade (run|restore)", f"/var/log/kupgrade/{rec['id']}.log",
                check=False)["stdout"]
    res.check("ran: criu dump" in log and "ran: criu restore" in log,
              "one log file covers both kernels (criu dump and criu restore)", log[-1500:])
    # The next estimate is based on what this upgrade measured (checking the way back to 6.1).
    pre = next_estimate(vm, res, "--kernel", image.kernel_from)
    res.check(f"measured by upgrade {rec['id']}" in str(pre.get("downtime_basis")),
              "the next downtime estimate uses this upgrade's measurements", str(pre.get("downtime_basis")))
    for path in restore.get("details", {}).get("criu_logs", []):     # evidence, kept as artifacts
        # The whole log is too big for the serial line: keep its tail and where the time went.
        log = vm.sh("tail", "-c", "16000", path)["stdout"]
        slow = vm.sh("awk", SLOW_STEPS, path)["stdout"]
        (vm.workdir / ("criu-" + path.rsplit("/", 1)[-1])).write_text(
            f"--- steps after which more than 0.2 s passed ---\n{slow}\n--- tail ---\n{log}")
    report = vm.sh("kupgrade", "report", "--svg", "/root/kupgrade-report.svg", timeout=300)["stdout"]
    res.say(report)
    res.check("restored, same PID" in report and "paused for about" in report and "wrote /root/kupgrade-report.svg" in report,
              "kupgrade report shows the outcome per workload, the downtime and writes the SVG", report[-1500:])
    res.data["record"] = rec

    gap, a, b = wl.largest_gap()
    res.data["downtime_s"] = round(gap, 3)
    res.data["downtime_breakdown"] = breakdown(a.t, b.t, marks(vm, image.kernel_to, a.t))
    res.say(f"downtime (host-measured heartbeat gap): {gap:.2f} s\n" +
            "\n".join(f"  {k:45s} {v:7.2f} s" for k, v in res.data["downtime_breakdown"].items()))
    res.check(a.counter == last_before and b.counter == last_before + 1, "the largest heartbeat gap is the upgrade",
              f"gap between beats {a.counter} and {b.counter}")
