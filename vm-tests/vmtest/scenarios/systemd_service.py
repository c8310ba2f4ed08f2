"""systemd-service: the guest boots systemd. heartbeat.service (the two-process 64 MiB test
workload, started by hand, not enabled) and victim.service are selected as units. In the new
boot, a unit started early takes victim's old PID.

With a way back (on_failure = "rollback", the default): heartbeat.service is restored stopped in
6.12 and waits for victim, which cannot be restored there; kupgrade-commit.service then sends
both back to 6.1 with the same snapshot, where both come back as themselves (heartbeat never ran
in 6.12). Then with on_failure = "keep": heartbeat.service comes back as itself in 6.12 (same
main PID, its cgroup, active, not started fresh, `systemctl stop` stops it); victim's restore
fails with a clear message, its snapshot is kept, the other is restored.

On the same guest, a writer with dirty page cache (cgroup /writer, dirty_data.py) is carried
too: first alone through a rehearsal without the prepare stage, then with both units through
the way back and the upgrade; every write it was acknowledged is in its file and its mapping."""

from __future__ import annotations

import json
import re

from ..scenario import (Result, all_kept, booted, heartbeats_back, keep_journal, kupgrade_config, last_record,
                        stage_durations, systemd_up, unit_props, units_installed, units_started, upgrade, wait_outcome,
                        workload_kept, write_config)
from ..workload import GUEST_WORKLOAD, Workload
from . import dirty_data
from .basic import keep_criu_logs

NAME = "systemd-service"
DESCRIPTION = ("systemd units restored as themselves; a PID taken in the new boot sends both units back to the "
               "old kernel (rollback), or fails only that unit (keep); beside them, writes without fsync and a "
               "dirty MAP_SHARED mapping survive")
INIT = "systemd"

UNITS = {
    "heartbeat.service": f"[Unit]\nDescription=test workload (heartbeat)\n[Service]\nEnvironment=KUPGRADE_WL_SAY=1\n"
                         f"ExecStart={GUEST_WORKLOAD}\n",
    "victim.service": "[Unit]\nDescription=test workload whose PID is taken in the next boot\n"
                      "[Service]\nExecStart=/bin/sleep infinity\n",
    # enabled for the next boot only matters there: it takes victim's PID before the restore
    "squat.service": "[Unit]\nDescription=takes a PID before kupgrade restores it (test)\nDefaultDependencies=no\n"
                     "Before=sysinit.target\nConditionKernelCommandLine=kupgrade.snapshot\nConditionKernelVersion=>=6.12\n"
                     "[Service]\nType=oneshot\nRemainAfterExit=yes\nKillMode=process\n"
                     "ExecStart=/usr/local/lib/vmtest/squat.py /etc/vmtest-squat-pid\n"
                     "[Install]\nWantedBy=sysinit.target\n",
}


PROPS = "MainPID,ActiveState,SubState,ControlGroup,NRestarts"


def show(vm, unit: str) -> dict:
    return unit_props(vm, unit, PROPS)


def start_units(vm) -> tuple[dict, dict, Workload, dict]:
    """Once systemd is up: heartbeat and victim started, squat enabled for the next boot with
    victim's PID. Returns both units' properties, the heartbeat workload and its state."""
    systemd_up(vm)
    units_installed(vm, UNITS)
    units_started(vm, "heartbeat.service", "victim.service")
    hb, victim = show(vm, "heartbeat.service"), show(vm, "victim.service")
    wl = Workload(vm, pid=int(hb["MainPID"]))
    before = wl.attach()
    vm.sh("tee", "/etc/vmtest-squat-pid", input=victim["MainPID"])
    vm.sh("systemctl", "enable", "squat.service")
    return hb, victim, wl, before


def way_back(vm, image, res: Result, wl, before: dict, units: tuple[dict, dict]) -> bool:
    """The default policy: victim cannot be restored in 6.12, so neither unit runs there; both
    go back to 6.1 with the same snapshot and are restored as themselves. True if it went so."""
    if (switched := upgrade(vm, res)) is None:
        return False
    last_before = wl.beats[-1].counter
    back = switched if switched["kernel"] == image.kernel_from else \
        vm.event("ready", 900, where=lambda e: e.get("kernel") == image.kernel_from)
    wl.follow()
    systemd_up(vm)
    wl.wait_beats(5, after=last_before, timeout=300)
    rec = wait_outcome(vm, "rolled-back", "restored", "restore-failed")
    after = wl.state()
    gap, _, _ = wl.largest_gap_after(last_before - 1)
    now = {"heartbeat": show(vm, "heartbeat.service"), "victim": show(vm, "victim.service")}
    there = [s for s in rec["stages"][:[s["name"] for s in rec["stages"]].index("switch-back")]
             if s["name"] in ("restore-unit", "commit")] if any(s["name"] == "switch-back" for s in rec["stages"]) else []
    held = [s for s in there if s["details"].get("unit") == "heartbeat.service"]
    res.data["way_back"] = {"kernel": back["kernel"], "outcome": rec["outcome"], "units": now, "downtime_s": round(gap, 3),
                            "stages": [s["name"] for s in rec["stages"]], "in_new_kernel": there}
    ok = res.check(back["kernel"] == image.kernel_from and rec["outcome"] == "rolled-back",
                   "rollback: victim not restorable in 6.12 -> both units back on 6.1 (rolled-back)",
                   json.dumps(res.data["way_back"])[:1500])
    ok &= res.check(all(now[n]["MainPID"] == u["MainPID"] and now[n]["ActiveState"] == "active"
                        for n, u in zip(("heartbeat", "victim"), units)),
                    "rollback: both units active on 6.1 with their main PIDs", json.dumps(now))
    ok &= res.check(after["pid"] == before["pid"] and after["child"] == before["child"] and wl.consecutive()
                    and after["sha256"] == before["sha256_start"],
                    "rollback: heartbeat went on as itself, every beat once (it never ran in 6.12)", wl.span())
    ok &= res.check(bool(held) and all(r.get("held") for s in held for r in s["details"]["workloads"].values())
                    and any(s["name"] == "commit" and s["status"] == "failed" for s in there),
                    "rollback: in 6.12 heartbeat was restored stopped and the commit sent both back",
                    json.dumps(there)[:1500])
    return ok


def unit_is_itself(vm, res: Result, hb: dict, before: dict) -> None:
    """heartbeat.service is active with the restored process as its main process, both tasks in its cgroup."""
    hb2 = show(vm, "heartbeat.service")
    res.data["after"] = {"heartbeat": hb2, "victim": show(vm, "victim.service")}
    status = vm.sh("systemctl", "status", "--no-pager", "heartbeat.service", check=False)["stdout"]
    (vm.workdir / "systemctl-status-heartbeat.txt").write_text(status)
    res.check(hb2["MainPID"] == hb["MainPID"] and hb2["ActiveState"] == "active",
              "heartbeat.service is active with the restored process (same PID) as its main process",
              json.dumps(hb2) + "\n" + status[-1500:])
    procs = vm.read(f"/sys/fs/cgroup{hb2['ControlGroup']}/cgroup.procs").split()
    res.check(sorted(procs) == sorted([str(before["pid"]), str(before["child"])]),
              "both restored tasks are in the unit's cgroup", f"{hb2['ControlGroup']}: {procs}")


def journal_name_kept(vm, res: Result, wl) -> None:
    """What the restored process writes is in the journal under the name it had before the
    switch (its ExecStart's program), not the restore's `sh`: the drop-in's SyslogIdentifier=."""
    state = wl.state()          # the workload says each state it writes (KUPGRADE_WL_SAY)
    for _ in range(10):         # journald may file the line after the state file is read
        out = vm.sh("journalctl", "-u", "heartbeat.service", "-o", "json", "--no-pager", check=False)["stdout"]
        said = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        said = [e for e in said if str(e.get("MESSAGE", "")).startswith("workload: state")]
        names = {e.get("SYSLOG_IDENTIFIER") for e in said}
        after = [e for e in said if f"state {state['seq']}," in e["MESSAGE"] and state["kernel"] in e["MESSAGE"]]
        if after:
            break
    res.check(bool(after) and names == {"workload.py"},
              "the restored process's output is in the journal as workload.py, as before the switch",
              json.dumps([(e.get("SYSLOG_IDENTIFIER"), e.get("MESSAGE")) for e in said][-8:]))


def pids_above(vm, res: Result, writer_pid: int) -> None:
    """The snapshot's highest PID (the writer's, above the pid_max of 32768 a 2-CPU kernel boots
    with) was put on the new boot's PID allocator: pid_max was raised first, nothing said it failed."""
    log = "\n".join(line for line in vm.sh("dmesg")["stdout"].splitlines() if "kupgrade: " in line)
    above = [int(w) for w in re.findall(r"new PIDs start above (\d+)", log)]
    res.check(bool(above) and max(above) >= writer_pid and "pid_max raised from 32768" in log
              and "could not make new PIDs" not in log and "did not start above" not in log,
              "the new boot's PIDs started above the snapshot's (pid_max raised first)", log[-1500:])


def boost_undone(vm, res: Result, rec: dict, pids: list[int]) -> None:
    """kupgrade-restore.service ran with its session boosted (nice -10, system/sched.py), and no
    restored task kept it: their autogroups are at nice 0."""
    start = next((s["details"].get("start", {}) for s in rec["stages"] if s["name"] == "restore"), {})
    groups = {p: vm.read(f"/proc/{p}/autogroup").strip() for p in pids}
    res.check(start.get("autogroup_nice") == -10 and all(g.endswith(" nice 0") for g in groups.values()),
              "the restore ran boosted, the restored tasks did not keep it", json.dumps([start, groups]))


def victim_failed(vm, res: Result, victim: dict) -> dict:
    """victim.service failed (not started fresh), the record and the report say why, its snapshot
    is kept. Returns the record."""
    victim2 = res.data["after"]["victim"]
    res.check(victim2["ActiveState"] == "failed", "victim.service failed instead of starting fresh",
              json.dumps(victim2))
    rec = last_record(vm)
    unit_stages = {s["details"].get("unit"): s for s in rec["stages"] if s["name"] == "restore-unit"}
    v = unit_stages.get("victim.service", {})
    res.check(f"PID {victim['MainPID']}" in v.get("error", "") and "is taken in this boot" in v.get("error", ""),
              "the record says why: victim's PID is taken in this boot", json.dumps(v)[:1500])
    kept = v.get("details", {}).get("workloads", {})
    images = next(iter(kept.values()), {}).get("images", "")
    res.check(bool(images) and vm.sh("test", "-d", images, check=False)["rc"] == 0,
              "victim's snapshot is kept", images)
    res.check(rec["outcome"] == "restore-failed", "the outcome says one workload failed", rec["outcome"])
    report = vm.sh("kupgrade", "report", timeout=300)["stdout"]
    (vm.workdir / "report.txt").write_text(report)
    res.check("NOT restored" in report and "is taken in this boot" in report and "restored, same PID" in report,
              "kupgrade report shows which unit came back and which did not, and why", report[-2000:])
    return rec


def run(vm, image, res: Result) -> None:
    booted(vm, res)
    hb, victim, wl, before = start_units(vm)
    pid, first = dirty_data.start_writer(vm)
    # What the pause costs when all dirty data is in it: the writer alone, without the pre-flush.
    write_config(vm, kupgrade_config(image.kernel_to, cgroups=[dirty_data.CGROUP]))
    reh, mid = dirty_data.rehearse_without_prepare(vm, res, pid, first)
    config = kupgrade_config(image.kernel_to, cgroups=[dirty_data.CGROUP],
                             units=["heartbeat.service", "victim.service"])
    write_config(vm, config)
    res.data["before"] = {"heartbeat": hb, "victim": victim}
    if not way_back(vm, image, res, wl, before, (hb, victim)):
        return

    write_config(vm, config + '[restore]\non_failure = "keep"\n')
    if upgrade(vm, res, to=image.kernel_to) is None:
        return
    systemd_up(vm)
    keep_journal(vm, "heartbeat.service", "victim.service", "kupgrade-restore.service", "squat.service")
    pids_above(vm, res, pid)
    last_before = heartbeats_back(vm, res, wl)      # relayed again only from here on
    unit_is_itself(vm, res, hb, before)
    journal_name_kept(vm, res, wl)
    kept = workload_kept(res, wl, before, "heartbeat.service, not started fresh")
    rec = victim_failed(vm, res, victim)
    keep_criu_logs(vm, rec)             # criu's warm-up among them: what its probing waited for
    chain = vm.sh("systemd-analyze", "critical-chain", "kupgrade-restore.service", "heartbeat.service", check=False)
    (vm.workdir / "critical-chain.txt").write_text(chain["stdout"] + chain["stderr"])
    boost_undone(vm, res, rec, [before["pid"], before["child"], pid])
    writes = dirty_data.writes_kept(vm, image, res, pid, mid)
    dirty_data.flushes(res, reh, rec)
    all_kept(res, kept, writes)
    gap, _, _ = wl.largest_gap_after(last_before - 1)     # this upgrade's (the way back's is in way_back)
    res.data["downtime_s"] = round(gap, 3)
    res.data["stages"] = stage_durations(rec)
    res.data["record"] = rec

    vm.sh("systemctl", "stop", "heartbeat.service")
    gone = vm.sh("kill", "-0", str(before["pid"]), check=False)["rc"] != 0
    res.check(gone, "systemctl stop heartbeat.service stops the restored process")
