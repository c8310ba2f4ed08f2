"""pmem: the snapshot crosses the kernel switch in kupgrade's memory region instead of the
initrd. The guest boots with the words `kupgrade install-boot --reserve 512M` writes for it
(memmap=512M!1280M kupgrade.pmem=0x50000000); snapshot.transport is left at "auto". Check picks
the region; a restore that fails in 6.12 goes back to 6.1 through the same region (nothing
packed, the old kernel mounts it); then the upgrade to 6.12 through it, with a criu pre-dump
while the workloads run (its images hashed before the pause). Both workloads keep their
PIDs and memory each time, and the region is zeroed once the restore is done with it."""

from __future__ import annotations

import json

from ..qemu import Machine
from ..scenario import (Result, final_record, heartbeats_back, kupgrade_config, stage_durations, stage_of, started,
                        upgrade, workload_kept, write_config)
from ..workload import Workload
from .rollback import pre_dumped, way_back

NAME = "pmem"
DESCRIPTION = ("the snapshot in kupgrade's memory region (memmap=, no initrd packing): a failed restore in 6.12 "
               "back to 6.1 through it, then 6.1 -> 6.12 through it; the region zeroed after each")
START = 0x50000000
MACHINE = Machine(append=f"memmap=512M!{START >> 20}M kupgrade.pmem={START:#x}")


def run(vm, image, res: Result) -> None:
    wl, before = started(vm, res, cgroup="/workload")
    small = Workload(vm, env={"KUPGRADE_WL_DIR": "/var/lib/small", "KUPGRADE_WL_MIB": "16"})
    small.start(last_pid=31000)
    small_before = small.state()
    region_chosen(vm, image, res, small)
    res.data["way_back"] = way_back(vm, image, res, (wl, small), (before, small_before), "criu-restore-fails")
    region_used(vm, res, "the way back (6.1 -> 6.12 -> 6.1)", switch_back=True)

    write_config(vm, kupgrade_config(image.kernel_to, cgroups=["/workload"], pids=[small.pid])
                 + "\n[snapshot]\npre_dump = 1\n")
    if upgrade(vm, res, to=image.kernel_to) is None:
        return
    heartbeats_back(vm, res, wl)
    rec = region_used(vm, res, "6.1 -> 6.12")
    res.check(rec["outcome"] == "restored", "upgrade record says restored", rec["outcome"])
    pre_dumped(res, rec, "6.1 -> 6.12", 1)
    res.data.update(workload_kept(res, wl, before))
    small_after = small.state()
    res.check((small_after["pid"], small_after["child"]) == (small_before["pid"], small_before["child"])
              and small_after["sha256"] == small_before["sha256_start"], "the second workload: same PIDs, memory "
              "intact", json.dumps(small_after))
    metrics_written(vm, res)
    gap, _, _ = wl.largest_gap()
    res.data["downtime_s"] = round(gap, 3)
    res.data["stages"] = stage_durations(rec)


def region_chosen(vm, image, res: Result, small: Workload) -> None:
    """`kupgrade check` chooses the region (transport "auto")."""
    write_config(vm, kupgrade_config(image.kernel_to, cgroups=["/workload"], pids=[small.pid]))
    chk = vm.sh("kupgrade", "check", "--json", check=False, timeout=300)
    transport = json.loads(chk["stdout"])["stages"][0]["details"].get("transport", {}) if chk["stdout"] else {}
    res.data["transport"] = transport
    res.check(chk["rc"] == 0 and transport.get("name") == "pmem" and transport.get("start") == hex(START),
              "check chooses kupgrade's memory region for the snapshot", json.dumps(transport) + chk["stderr"][-400:])


def region_used(vm, res: Result, what: str, switch_back: bool = False) -> dict:
    """The last record: the snapshot went through the region (no packed initrd was loaded; the
    way back too), and the region is all zeros again once the restore let go of it."""
    rec = final_record(vm)
    snap, loaded = stage_of(rec, "snapshot").get("details", {}), stage_of(rec, "kexec").get("details", {})
    back = stage_of(rec, "switch-back").get("details", {})
    target_initrd = int(vm.sh("stat", "-c", "%s", f"/boot/initrd.img-{rec['kernel_to']}")["stdout"])
    res.check(snap.get("transport") == "pmem" and loaded.get("initrd_bytes") == target_initrd
              and (not switch_back or back.get("transport") == "pmem"),
              f"{what}: the snapshot went through the region; the kexec loaded the target's own initrd",
              json.dumps({"snapshot": snap.get("transport"), "initrd_bytes": loaded.get("initrd_bytes"),
                          "target_initrd": target_initrd, "switch_back": back.get("transport")}))
    device = snap.get("device", "/dev/pmem0")
    # the restore zeroes the region once its record is final, and logs it
    vm.sh("sh", "-c", f"until grep -qE 'zeroed {device}|region was not released' /var/log/kupgrade/{rec['id']}.log; "
          "do sleep 0.1; done", timeout=300)
    left = vm.sh("sh", "-c", f"tr -d '\\000' < {device} | head -c 64 | wc -c", timeout=300)["stdout"].strip()
    res.data.setdefault("region_zeroed", {})[what] = left == "0"
    res.check(left == "0", f"{what}: the region is zeroed after the restore", f"{left} non-zero bytes in {device}")
    return rec


def metrics_written(vm, res: Result) -> None:
    """`kupgrade report --prometheus FILE`: the upgrade, as node_exporter's textfile collector reads it."""
    vm.sh("kupgrade", "report", "--prometheus", "/run/kupgrade.prom", timeout=300)
    text = vm.read("/run/kupgrade.prom")
    res.data["prometheus"] = text
    res.check('outcome="restored"' in text and "kupgrade_last_upgrade_success 1" in text
              and 'kupgrade_last_upgrade_workloads{state="carried"} 2' in text,
              "report --prometheus: the upgrade's outcome and both workloads carried, as metrics", text[-800:])
