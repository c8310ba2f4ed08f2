"""basic: boot 6.1, start the workload (in its own cgroup), `kupgrade run` to 6.12; the same
processes go on with their memory intact."""

from __future__ import annotations

import json

from ..scenario import (Result, heartbeat_downtime, heartbeats_back, kupgrade_config, next_estimate, restored_record,
                        stage_of, started, upgrade, workload_kept, write_config)

NAME = "basic"
SLOW_STEPS = r'/^\(/ { t = substr($1, 2) + 0; if (t - prev > 0.2) printf "%.2f s after: %s\n", t - prev, last; prev = t; last = $0 }'
DESCRIPTION = "live-upgrade 6.1 -> 6.12 with a 64 MiB two-process workload in its own cgroup"


def plan_and_check(vm, res: Result) -> None:
    """`kupgrade plan` shows the workload and the estimate, `kupgrade check` finds no blocker and,
    as no memory region is reserved here, says what one would make of the pause."""
    plan = vm.sh("kupgrade", "plan", "--cgroup", "/workload", timeout=300)["stdout"]
    (vm.workdir / "plan.txt").write_text(plan)
    res.say(plan)
    res.check("no blockers" in plan and "downtime estimate" in plan and "/workload" in plan,
              "kupgrade plan shows the workload, no blockers and the estimate", plan[-1500:])
    chk = vm.sh("kupgrade", "check", check=False, timeout=300)
    res.say(chk["stdout"] + chk["stderr"])
    res.check(chk["rc"] == 0, "kupgrade check finds no blocker", (chk["stdout"] + chk["stderr"])[-1500:])
    said = " ".join((chk["stdout"] + chk["stderr"]).split())       # as the terminal wrapped it
    res.check("with kupgrade's memory region the estimated downtime is" in said and "install-boot --reserve" in said,
              "kupgrade check (no memory region reserved) says what one would make of the pause and what to reserve",
              said[-1500:])


def check_record(vm, res: Result, rec: dict) -> None:
    """Every workload restored with its PID; one log file covers both kernels."""
    details = stage_of(rec, "restore").get("details", {})
    res.check(details.get("workloads", {}) != {} and all(w.get("same_pid") for w in details["workloads"].values()),
              "record: every workload restored with its PID", json.dumps(details)[:800])
    log = vm.sh("grep", "-E", "ran: criu (dump|restore)|kupgrade (run|restore)", f"/var/log/kupgrade/{rec['id']}.log",
                check=False)["stdout"]
    res.check("ran: criu dump" in log and "ran: criu restore" in log,
              "one log file covers both kernels (criu dump and criu restore)", log[-1500:])


def keep_criu_logs(vm, rec: dict) -> None:
    """criu's restore logs as artifacts: too big for the serial line, so their tail and the steps
    after which more than 0.2 s passed."""
    for path in stage_of(rec, "restore").get("details", {}).get("criu_logs", []):
        log = vm.sh("tail", "-c", "16000", path)["stdout"]
        slow = vm.sh("awk", SLOW_STEPS, path)["stdout"]
        (vm.workdir / ("criu-" + path.rsplit("/", 1)[-1])).write_text(
            f"--- steps after which more than 0.2 s passed ---\n{slow}\n--- tail ---\n{log}")


def check_report(vm, res: Result) -> None:
    report = vm.sh("kupgrade", "report", "--svg", "/root/kupgrade-report.svg", timeout=300)["stdout"]
    res.say(report)
    res.check("restored, same PID" in report and "paused for about" in report and "wrote /root/kupgrade-report.svg" in report,
              "kupgrade report shows the outcome per workload, the downtime and writes the SVG", report[-1500:])


def run(vm, image, res: Result) -> None:
    wl, before = started(vm, res, cgroup="/workload")
    upgraded(vm, image, res, wl, before)


def upgraded(vm, image, res: Result, wl, before: dict) -> None:
    """The upgrade of the running workload `wl` (in cgroup /workload; `before`: its state) and
    every check of it: plan, check, run, the same processes with their memory, the record, the
    next estimate, the report, the heartbeat gap (basic-dracut runs it on its dracut guest)."""
    write_config(vm, kupgrade_config(image.kernel_to, cgroups=["/workload"]))
    plan_and_check(vm, res)

    if upgrade(vm, res, show=True) is None:
        return
    last_before = heartbeats_back(vm, res, wl)
    res.check(res.data["kernel_before"] == image.kernel_from, f"booted {image.kernel_from} first", res.data["kernel_before"])
    res.check(res.data["kernel_after"] == image.kernel_to, f"now running {image.kernel_to}", res.data["kernel_after"])
    res.data.update(workload_kept(res, wl, before, "the workload"))

    rec = restored_record(vm, res)
    check_record(vm, res, rec)
    # The next estimate is based on what this upgrade measured (checking the way back to 6.1).
    pre = next_estimate(vm, res, "--kernel", image.kernel_from)
    res.check(f"measured by upgrade {rec['id']}" in str(pre.get("downtime_basis")),
              "the next downtime estimate uses this upgrade's measurements", str(pre.get("downtime_basis")))
    keep_criu_logs(vm, rec)
    check_report(vm, res)
    heartbeat_downtime(vm, res, image.kernel_to, wl, last_before)
