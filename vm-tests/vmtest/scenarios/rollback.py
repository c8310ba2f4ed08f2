"""rollback: the restore fails in the new kernel — criu cannot restore the second of two trees
there (injected: `kupgrade.fault=restore:second` on its command line) after the first was
restored, then the configured health check (run once both are restored, stopped) says 6.12 is
not fit — so kupgrade kexecs back into
the old kernel with the same snapshot and restores both workloads there: the first tree, restored
stopped in 6.12, never ran there (all or nothing, kupgrade/switch/commit.py); same PIDs, same memory,
heartbeat continued; the record tells the story of the three boots (6.1 -> 6.12 -> 6.1). Then
`on_failure = "keep"` (retry, a damaged copy, discard) and a power cut right after a switch."""

from __future__ import annotations

import json
import time

from ..qemu import LostVMError
from ..scenario import Result, booted, kupgrade_config, last_record, stage_of, started, wait_outcome, write_config
from ..workload import Workload

NAME = "rollback"
DESCRIPTION = ("a restore failing in 6.12 (criu on one of two trees; the health check) goes back to 6.1 with "
               "the same snapshot for both; "
               "on_failure = keep: retry, a damaged copy named and discarded; a power cut after a switch")


# Two causes of a failed restore in 6.12, each answered by the way back to 6.1: criu failing
# there for the second tree after the first was restored (injected), and the configured health
# check saying the new kernel is not fit.
CAUSES = {
    "criu-restore-fails": ('append = "kupgrade.fault=restore:second"', "", "fault injected"),
    # with two pre-dump iterations: criu's `parent` links go through the initrd and back
    "health-check-fails": ("\n[snapshot]\npre_dump = 2", "health_check = \"/bin/sh -c 'test $(uname -r) = {old}'\"\n",
                           "the health check"),
}


def run(vm, image, res: Result) -> None:
    wl, before = started(vm, res, cgroup="/workload")
    small = Workload(vm, env={"KUPGRADE_WL_DIR": "/var/lib/small", "KUPGRADE_WL_MIB": "16"})
    small.start(last_pid=31000)
    res.data["way_back"] = {}
    for label in CAUSES:
        res.data["way_back"][label] = way_back(vm, image, res, (wl, small), (before, small.state()), label)
    gap, _, _ = wl.largest_gap()
    res.data["downtime_s"] = round(gap, 3)
    res.data["pids_preserved"] = all(c["pids_preserved"] for c in res.data["way_back"].values())
    res.data["state_preserved"] = all(c["state_preserved"] for c in res.data["way_back"].values())
    res.data["keep"] = keep(vm, image, res, wl, before, small)
    power_cut(vm, image, res, to=image.kernel_from)


def way_back(vm, image, res: Result, wls, befores, label: str) -> dict:
    """6.1 -> 6.12, where the restore fails (label: why) -> back to 6.1 with the same snapshot
    for both workloads (wl, followed; small, queried)."""
    (wl, small), (before, small_before) = wls, befores
    target, restore, why = CAUSES[label]
    cfg = kupgrade_config(image.kernel_to, cgroups=["/workload"], pids=[small.pid]).replace(
        f'kernel = "{image.kernel_to}"', f'kernel = "{image.kernel_to}"\n{target}')
    write_config(vm, cfg + '[restore]\non_failure = "rollback"\n' + restore.format(old=image.kernel_from))
    chk = vm.sh("kupgrade", "check", "--json", check=False, timeout=300)
    found = json.loads(chk["stdout"])["stages"][0]["details"].get("way_back", {})
    res.check(chk["rc"] == 0 and found.get("kernel") == image.kernel_from,
              f"{label}: check finds the way back to the running kernel", chk["stdout"][-800:] + chk["stderr"][-400:])
    rid = vm.send("run", argv=["kupgrade", "run", "--yes"], timeout_s=600, output="/dev/console")
    there = vm.wait_switch(rid, 600)
    last_before = wl.beats[-1].counter     # everything the old kernel's agent relayed came first
    res.check(there.get("kernel") == image.kernel_to, f"{label}: switched to {image.kernel_to} first",
              json.dumps(there)[:600])
    back = vm.event("ready", 600, where=lambda e: e.get("kernel") == image.kernel_from)
    res.data["kernel_after"] = back["kernel"]
    wl.follow()
    wl.wait_beats(5, after=last_before, timeout=300)
    rec = wait_outcome(vm, "rolled-back", "restored", "restore-failed")
    after, small_after = wl.state(), alive_or_why(vm, small, label)
    names = [s["name"] for s in rec["stages"]]
    out = {"kernel_between": there.get("kernel"), "kernel_after": back["kernel"], "outcome": rec["outcome"],
           "pids_preserved": after["pid"] == before["pid"] and after["child"] == before["child"]
           and (small_after["pid"], small_after["child"]) == (small_before["pid"], small_before["child"]),
           "state_preserved": after["sha256"] == before["sha256_start"] and wl.consecutive()
           and small_after["sha256"] == small_before["sha256_start"]
           and small_after["counter"] > small_before["counter"],
           "stages": {f"{i}-{s['name']}": s["duration_s"] for i, s in enumerate(rec["stages"])}}
    res.data["stages"], res.data["record"] = out["stages"], rec
    res.check(back["kernel"] == image.kernel_from, f"{label}: back on {image.kernel_from}", back["kernel"])
    res.check(out["pids_preserved"], f"{label}: same PIDs of both workloads after the way back",
              f"{before['pid']} -> {after['pid']}, {small_before['pid']} -> {small_after['pid']}")
    res.check(out["state_preserved"], f"{label}: both buffers intact, every heartbeat once, in order, the second "
              "workload's counter went on", f"{wl.span()}; small {small_before['counter']} -> {small_after['counter']}")
    res.check(rec["outcome"] == "rolled-back", f"{label}: the record says rolled-back", rec["outcome"])
    failed = next((s for s in rec["stages"] if s["name"] == "restore" and s["status"] == "failed"), {})
    res.check(why in json.dumps(failed) and "switch-back" in names and names[-1] == "restore",
              f"{label}: the record has the failed restore, the switch back and the restore on the old kernel",
              str(names) + json.dumps(failed)[:400])
    cgroup = vm.read("/proc/%d/cgroup" % before["pid"]).strip()
    res.check(cgroup.endswith("/workload"), f"{label}: the workload is back in its cgroup", cgroup)
    trees = {k: r for k, r in failed.get("details", {}).get("workloads", {}).items()}
    if label == "criu-restore-fails":
        res.check(sorted(bool(r.get("ok")) for r in trees.values()) == [False, True]
                  and all(r.get("held") for r in trees.values() if r.get("ok")),
                  f"{label}: in 6.12 one tree was restored (stopped, held for the others) and one failed; "
                  "both went back", json.dumps(trees)[:800])
    else:
        res.check(len(trees) == 2 and all(r.get("ok") and r.get("held") for r in trees.values()),
                  f"{label}: the check ran in 6.12 once both trees were restored, stopped, before either ran",
                  json.dumps(trees)[:800])
    if "pre_dump" in target:
        pre_dumped(res, rec, label, 2)
    return out


def pre_dumped(res: Result, rec: dict, label: str, n: int) -> None:
    """The record's prepare stage: n pre-dump iterations of every tree, none failed."""
    trees = stage_of(rec, "prepare").get("details", {}).get("pre_dump", {}).get("trees", {})
    res.check(len(trees) == 2 and all(len(t["iterations"]) == n and "failed" not in t and t["iterations"][0]["bytes"]
                                      for t in trees.values()),
              f"{label}: {n} pre-dump iterations of both trees while they ran; the final dump built on them",
              json.dumps(trees)[:800])


def alive_or_why(vm, wl: Workload, label: str) -> dict:
    """The second workload's state, or (it is gone) the evidence of why: the report and criu's logs."""
    try:
        return wl.state()
    except RuntimeError as e:
        rec = vm.read("/var/lib/kupgrade/records/last").strip()
        (vm.workdir / f"lost-{label}.txt").write_text(
            vm.sh("kupgrade", "report", check=False, timeout=300)["stdout"] + "\n" + vm.sh(
                "sh", "-c", f"tail -n 40 /var/lib/kupgrade/logs/{rec}/*/restore.log /run/kupgrade/images/*/restore.log",
                check=False)["stdout"])
        return {"pid": None, "child": None, "sha256": None, "counter": -1, "error": str(e)[-400:]}


def keep(vm, image, res: Result, wl, before: dict, small: Workload) -> dict:
    """restore.on_failure = "keep": to 6.12, where the first restore of the workload fails (a
    cause the admin then fixes: `restore:once`) and a second workload's copy is damaged (the
    checksum catches it). Nothing goes back; `kupgrade restore --retry` brings the first back
    as itself, the damaged one is named and given up with `--discard`."""
    cfg = kupgrade_config(image.kernel_to, cgroups=["/workload"], pids=[small.pid]).replace(
        f'kernel = "{image.kernel_to}"', f'kernel = "{image.kernel_to}"\nappend = "kupgrade.fault=restore:once,corrupt"')
    write_config(vm, cfg + '[restore]\non_failure = "keep"\n')
    rid = vm.send("run", argv=["kupgrade", "run", "--yes"], timeout_s=600, output="/dev/console")
    there = vm.wait_switch(rid, 600)
    last_before = wl.beats[-1].counter
    first = wait_outcome(vm, "restore-failed", "restored")
    retry = vm.sh("kupgrade", "restore", "--retry", check=False, timeout=600)
    wl.follow()
    wl.wait_beats(3, after=last_before, timeout=300)
    after = wl.state()
    discard = vm.sh("kupgrade", "restore", "--discard", check=False, timeout=300)
    rec = last_record(vm)
    out = {"kernel": there.get("kernel"), "first": first["outcome"], "retry_rc": retry["rc"],
           "retry": (retry["stdout"] + retry["stderr"])[-600:], "discard": discard["stdout"][-400:],
           "stages": [s["name"] for s in rec["stages"]], "outcome": rec["outcome"]}
    damaged = next((r for s in rec["stages"] if s["name"] == "restore"
                    for r in s["details"].get("workloads", {}).values() if r.get("corrupt")), {})
    res.check(there.get("kernel") == image.kernel_to and first["outcome"] == "restore-failed"
              and "switch-back" not in out["stages"], "keep: the failed restore stays in 6.12, nothing goes back",
              json.dumps(out)[:800])
    res.check(after["pid"] == before["pid"] and after["sha256"] == before["sha256_start"] and wl.consecutive(),
              "keep: `kupgrade restore --retry` brought the workload back as itself", wl.span())
    res.check("the only copy is damaged" in damaged.get("error", "") and damaged.get("selector") == f"pid:{small.pid}",
              "keep: the damaged copy was caught by the checksum and named, not restored", json.dumps(damaged)[:600])
    res.check(out["stages"][-1] == "discard" and "discarded" in out["discard"] and
              vm.sh("test", "-e", "/run/kupgrade/manifest.json", check=False)["rc"] != 0,
              "keep: `--discard` gave the damaged one up on record and freed the snapshot", json.dumps(out)[:800])
    return out


def power_cut(vm, image, res: Result, to: str) -> None:
    """QEMU killed right after a switch to `to` (a power loss): the next boot is a normal one
    (QEMU boots the old kernel), the report says what happened, nothing of the lost snapshot
    blocks the next upgrade."""
    write_config(vm, kupgrade_config(to, cgroups=["/workload"]))
    t0 = time.time()
    vm.send("run", argv=["kupgrade", "run", "--yes"], timeout_s=600, output="/dev/console")
    deadline = time.monotonic() + 600
    while not any(f"Linux version {to}" in line.text for line in vm.console if line.t >= t0):
        if time.monotonic() > deadline:
            raise LostVMError(f"{to} never started", vm.console_tail())
        time.sleep(0.05)
    vm.power_cut()
    again = booted(vm, Result("power-cut"))
    report = vm.sh("kupgrade", "report", check=False, timeout=300)
    check = vm.sh("kupgrade", "check", check=False, timeout=300)
    res.data["power_cut"] = {"kernel": again["kernel"], "report": report["stdout"][-1200:],
                             "check": (check["stdout"] + check["stderr"])[-800:]}
    res.check(again["kernel"] == image.kernel_from, "after the power cut: a normal boot of the old kernel",
              again["kernel"])
    res.check("reset after the switch" in " ".join(report["stdout"].split()),
              "after the power cut: the report says the machine was reset after the switch and what was lost",
              report["stdout"][-1200:])
    res.check("kupgrade recover" not in check["stdout"] + check["stderr"] and "pending" not in check["stdout"],
              "after the power cut: nothing of the lost run blocks the next check", res.data["power_cut"]["check"])
