"""md: an md RAID1 mirror in the middle of its resync, with the workload's files on it.

Two blank 256 MiB virtio disks (vdb, vdc) become /dev/md0 (RAID1, metadata 1.2); its initial
resync is held at 1000 KB/s (a per-array limit, as an admin sets it), so it runs through the
whole upgrade. ext4 on it is mounted on /var/lib/workload: the heartbeat workload's log, its
state file and a 16 MiB blob of known content live on the mirror. The guest's initrds carry no
md and its init no udev: in the new kernel nothing but the block hook assembles the array.

1. `kupgrade hooks list`: md0 and the three disks covered by the block hook.
2. A hooks.d hook failing at quiesce (after block's): exit 7; the rollback un-froze the resync,
   which goes on.
3. The upgrade 6.1 -> 6.12: the hook froze the resync at the freeze (md wrote its checkpoint);
   at the snapshot it was still frozen and no disk had I/O in flight; in the new kernel, before
   the workload, it assembled md0 from both members, put the 1000 KB/s limit back and mounted
   the filesystem;
   md resumed the resync from the checkpoint, not from zero, and it advances; the workload is
   back with its PIDs and every heartbeat; the blob is intact. Then the resync is let run to the
   end and a `check` of the mirror finds no mismatch.
"""

from __future__ import annotations

import json
import time

from ..qemu import Machine
from ..scenario import (Result, booted, heartbeat_downtime, heartbeats_back, hook_calls, hook_record, kupgrade_config,
                        last_record, run_with_hook, stage_of, upgrade, workload_kept, workload_running, write_config)
from ..workload import Workload
from .hooks import ALL_DEVICES
from .watchdog import FAILING_HOOK

NAME = "md"
DESCRIPTION = "md RAID1 mid-resync under the workload's files: paused at the freeze, reassembled, remounted, resumed"
MACHINE = Machine(disks=("256M", "256M"))
MNT = "/var/lib/workload"           # the heartbeat workload's directory: its open file is on the mirror
MD = "/sys/block/md0/md"
SPEED_KBS = 1000
FAILING = "zz-failquiesce"          # after "block" in name order


def md_attr(vm, name: str) -> str:
    return vm.read(f"{MD}/{name}").strip()


def position(vm) -> int | None:
    head = md_attr(vm, "sync_completed").split("/")[0].strip()
    return int(head) if head.isdigit() else None


def wait_for(vm, what: str, test, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise RuntimeError(f"guest: {what} did not happen within {timeout:.0f} s")
        time.sleep(1)


def make_mirror(vm, res: Result) -> dict:
    sizes = {d: vm.read(f"/sys/block/{d}/size").strip() for d in ("vdb", "vdc")}
    vm.sh("modprobe", "raid1")
    vm.sh("tee", "/proc/sys/dev/raid/speed_limit_max", input=str(SPEED_KBS))   # slow from the first sector
    vm.sh("mdadm", "--create", "/dev/md0", "--run", "--level=1", "--raid-devices=2", "--metadata=1.2",
          "/dev/vdb", "/dev/vdc", input="y\n")
    vm.sh("tee", f"{MD}/sync_speed_max", input=str(SPEED_KBS))                # the array's own limit
    vm.sh("tee", "/proc/sys/dev/raid/speed_limit_max", input="200000")         # the system default again
    vm.sh("mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", "/dev/md0", timeout=300)
    vm.sh("mkdir", "-p", MNT)
    vm.sh("mount", "/dev/md0", MNT)
    vm.sh("dd", "if=/dev/urandom", f"of={MNT}/blob", "bs=1M", "count=16", "status=none")
    blob = vm.sh("sha256sum", f"{MNT}/blob")["stdout"].split()[0]
    state = {"disks": sizes, "sync_action": md_attr(vm, "sync_action"), "sync_speed_max": md_attr(vm, "sync_speed_max"),
             "position": position(vm), "blob_sha256": blob}
    res.check(state["sync_action"] == "resync" and state["sync_speed_max"] == f"{SPEED_KBS} (local)",
              f"md0 resyncing at its own {SPEED_KBS} KB/s limit, ext4 mounted on {MNT}", json.dumps(state))
    return state


def check_listing(vm, res: Result) -> None:
    doc = json.loads(vm.sh("kupgrade", "hooks", "list", "--json", "--all", timeout=300)["stdout"])
    text = vm.sh("kupgrade", "hooks", "list", timeout=300)["stdout"]
    (vm.workdir / "hooks-list.json").write_text(json.dumps(doc, indent=2) + "\n")
    (vm.workdir / "hooks-list.txt").write_text(text)
    res.say(text)
    sysfs_devices = set(json.loads(vm.sh("python3", "-c", ALL_DEVICES)["stdout"]))
    listed = {c["device"]["sys_path"] for c in doc["devices"]}
    res.check(sysfs_devices <= listed, "hooks list --json --all: every device of the VM is listed",
              f"missing {sorted(sysfs_devices - listed)[:20]}")
    rows = {c["device"]["sys_name"]: c["hooks"] for c in doc["devices"]}
    res.check(all(rows.get(d) == ["block"] for d in ("md0", "vda", "vdb", "vdc")) and not doc["blockers"],
              "hooks list: md0, vda, vdb, vdc covered by the block hook, no blockers",
              json.dumps({d: rows.get(d) for d in ("md0", "vda", "vdb", "vdc")}))


def failing_quiesce(vm, res: Result, wl: Workload) -> None:
    r = run_with_hook(vm, FAILING, FAILING_HOOK)
    last = wl.beats[-1].counter             # delivered before the command returned
    res.check(r["rc"] == 7, "failing quiesce hook: kupgrade run exits 7", f"{r['rc']}\n{r['stderr'][-1500:]}")
    rec = last_record(vm)
    q = hook_calls(stage_of(rec, "freeze")).get(("block", "quiesce"), {})
    resumed = hook_calls(stage_of(rec, "rollback")).get(("block", "resume"), {})
    res.data["rollback"] = {"quiesce": q, "resume": resumed}
    res.check(q.get("ok") is True and [f["was"] for f in q.get("reply", {}).get("frozen", [])] == ["resync"],
              "failing quiesce hook: block's quiesce ran first and froze the resync", json.dumps(q)[:1200])
    res.check(resumed.get("ok") is True and [u["name"] for u in resumed.get("reply", {}).get("unfrozen", [])] == ["md0"],
              "failing quiesce hook: the rollback's resume un-froze md0", json.dumps(resumed)[:1200])
    p0 = position(vm)
    wait_for(vm, "the resync advancing after the rollback",
             lambda: md_attr(vm, "sync_action") == "resync" and (position(vm) or 0) > (p0 or 0), 120)
    wl.wait_beats(5, after=last, timeout=120)
    res.check(wl.consecutive(), "failing quiesce hook: the resync and the workload went on", wl.span())


def check_hook_replies(res: Result, mine: dict) -> tuple[dict, dict, dict]:
    """What block's calls in the record say: the resync frozen at the freeze with its checkpoint,
    still paused at the snapshot, md0 assembled and mounted in the new kernel, resumed past the
    checkpoint. Returns the quiesce's frozen array, the restore's and the verify's arrays."""
    res.check(all(c.get("ok") is True for c in mine.values()), "record: block's quiesce, save, restore, verify all ok",
              json.dumps(mine)[:3000])
    frozen = mine["quiesce"].get("reply", {}).get("frozen", [{}])[0]
    checkpoint = frozen.get("checkpoint")
    res.check(frozen.get("was") == "resync" and frozen.get("action") == "frozen" and checkpoint,
              "at the freeze: md0's resync frozen with its checkpoint in the superblock",
              json.dumps(mine["quiesce"].get("reply"))[:1200])
    saved = mine["save"].get("reply", {}).get("state", {}).get("arrays", [{}])[0]
    res.check(saved.get("at_save") == "frozen" and saved.get("resync_start") == checkpoint and
              "drained_s" in mine["save"].get("reply", {}),
              "at the snapshot: no disk I/O in flight, md0 still paused, its checkpoint in the state",
              json.dumps(mine["save"].get("reply"))[:1200])
    restored = mine["restore"].get("reply", {}).get("arrays", [{}])[0]
    res.check(restored.get("how") == "assembled" and restored.get("mounted") == [MNT],
              f"new kernel, before the workload: the hook assembled md0 and mounted {MNT}", json.dumps(restored))
    v = mine["verify"].get("reply", {}).get("arrays", [{}])[0]
    res.check(v.get("resumed_from_checkpoint") is True, "verify: the resync position is past the checkpoint",
              json.dumps(v))
    return frozen, restored, v


def check_resync_resumed(vm, res: Result, frozen: dict, restored: dict, v: dict) -> None:
    """In the new kernel the resync goes on from the checkpoint, at the array's own limit."""
    checkpoint = frozen.get("checkpoint")
    p1 = position(vm)
    speed = md_attr(vm, "sync_speed_max")
    wait_for(vm, "the resync advancing in the new kernel", lambda: (position(vm) or 0) > (p1 or 0), 120)
    res.data["resync"] = {"frozen_at": frozen.get("at"), "checkpoint": checkpoint,
                          "at_restore": restored.get("sync_completed"), "at_verify": v.get("sync_completed"),
                          "first_sample": p1, "later": position(vm), "sync_speed_max": speed}
    res.check(p1 is not None and checkpoint is not None and p1 >= checkpoint,
              "new kernel: md resumed the resync from the checkpoint, not from the start", json.dumps(res.data["resync"]))
    res.check(speed == f"{SPEED_KBS} (local)" and md_attr(vm, "sync_action") == "resync",
              f"new kernel: the resync goes on at the array's {SPEED_KBS} KB/s", json.dumps(res.data["resync"]))


def check_mirror(vm, res: Result) -> None:
    """The mirror itself: the resync let run to the end, a `check` of both halves finds no mismatch."""
    # With the filesystem frozen. RAID1 without stable pages writes one page cache page to both
    # disks; a page the workload appends to while it is under writeback can reach the halves
    # different (md's documented benign mismatch) until its next writeback, which the freeze's
    # flush forces.
    vm.sh("tee", f"{MD}/sync_speed_max", input="200000")
    wait_for(vm, "the resync finishing", lambda: md_attr(vm, "sync_action") == "idle", 600)
    vm.sh("fsfreeze", "--freeze", MNT)
    try:
        vm.sh("tee", f"{MD}/sync_action", input="check")
        wait_for(vm, "the check finishing", lambda: md_attr(vm, "sync_action") == "idle", 600)
    finally:
        vm.sh("fsfreeze", "--unfreeze", MNT)
    mismatch = md_attr(vm, "mismatch_cnt")
    res.data["mismatch_cnt"] = mismatch
    res.check(mismatch == "0", "md0 check after the resync: both halves of the mirror are equal", mismatch)


def run(vm, image, res: Result) -> None:
    booted(vm, res)
    mirror = make_mirror(vm, res)
    res.data["mirror_before"] = mirror
    wl, before = workload_running(vm, cgroup="/workload")
    check_listing(vm, res)
    write_config(vm, kupgrade_config(image.kernel_to, cgroups=["/workload"]))
    failing_quiesce(vm, res, wl)

    if upgrade(vm, res, to=image.kernel_to) is None:
        return
    last_before = heartbeats_back(vm, res, wl)
    (vm.workdir / "dmesg-md.txt").write_text("\n".join(
        l for l in vm.sh("dmesg")["stdout"].splitlines() if any(k in l for k in ("md", "raid", "EXT4"))))
    kept = workload_kept(res, wl, before, "workload (files on md0)")

    mine = hook_record(vm, res, "block", "block_hook")
    frozen, restored, v = check_hook_replies(res, mine)
    check_resync_resumed(vm, res, frozen, restored, v)
    blob = vm.sh("sha256sum", f"{MNT}/blob")["stdout"].split()[0]
    res.check(blob == mirror["blob_sha256"], "the 16 MiB blob on md0 is intact", blob)
    # The workload's state: its memory and heartbeat, and its files on the mirror (the blob).
    res.data.update(pids_preserved=kept["pids_preserved"],
                    state_preserved=kept["state_preserved"] and blob == mirror["blob_sha256"])
    heartbeat_downtime(vm, res, image.kernel_to, wl, last_before, since=last_before - 1)

    check_mirror(vm, res)
    last = wl.beats[-1].counter
    wl.wait_beats(3, after=last, timeout=120)
    res.check(wl.consecutive(), "the workload is still running", wl.span())
