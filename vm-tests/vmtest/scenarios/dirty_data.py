"""Dirty data (steps, not a scenario: systemd-service runs them on its guest): no acknowledged
write is lost. A writer appends numbered records to a file on the guest's ext4 disk (write(),
never fsync) and dirties pages of a MAP_SHARED mapping, with page cache dirty at every moment.

First a rehearsal with the prepare stage skipped (all dirty data is written back inside the
pause), then an upgrade 6.1 -> 6.12 with it (the bulk is written back while the writer runs):
the results keep both flush measurements. After the upgrade every record write() accepted is in
the file, the file offset is where the writer left it, every page of the mapping holds its
last update."""

from __future__ import annotations

import json

from ..scenario import Result, stage_of

CGROUP = "/writer"
WRITER = "/usr/local/lib/vmtest/writer.py"


def writer(vm, op: str, pid: int) -> dict:
    return json.loads(vm.sh("python3", WRITER, op, str(pid), timeout=120)["stdout"])


def writeback(st: dict) -> dict:
    d = st.get("details", {})
    return {"status": st.get("status"), "dirty_before_bytes": d.get("before", {}).get("dirty_bytes"),
            "writeback_before_bytes": d.get("before", {}).get("writeback_bytes"),
            "dirty_after_bytes": d.get("after", {}).get("dirty_bytes"), "sync_s": d.get("sync_s")}


def start_writer(vm) -> tuple[int, dict]:
    """The writer in cgroup /writer, until ~8 MiB are written and mostly still dirty; its PID and state."""
    pid = vm.call("spawn", argv=[WRITER], log="/var/log/writer.log", cgroup=CGROUP, last_pid=40000)["pid"]
    first = writer(vm, "--query", pid)
    while first["records"] < 2000:
        first = writer(vm, "--query", pid)
    return pid, first


def rehearse_without_prepare(vm, res: Result, pid: int, first: dict) -> tuple[dict, dict]:
    """What the pause costs when all dirty data is in it: a rehearsal with --skip prepare. Returns
    its record and the writer's state after it."""
    r = vm.sh("kupgrade", "rehearse", "--yes", "--json", "--skip", "prepare", check=False, timeout=600)
    res.check(r["rc"] == 0, "rehearsal without prepare passes", r["stderr"][-2000:])
    try:
        reh = json.loads(r["stdout"])
    except ValueError:
        reh = {"stages": []}
    res.check(stage_of(reh, "prepare").get("status") == "skipped", "the rehearsal skipped prepare (--skip)")
    mid = writer(vm, "--query", pid)
    res.check(mid["records"] > first["records"] and mid["pid"] == pid, "the writer goes on after the rehearsal",
              f"{first['records']} -> {mid['records']}")
    return reh, mid


def writes_kept(vm, image, res: Result, pid: int, mid: dict) -> dict:
    """The same writer on the new kernel, going on; stopped, every accepted write is in the file
    and the mapping. Returns pids_preserved and state_preserved, for the results."""
    after = writer(vm, "--query", pid)
    res.check(after["pid"] == pid and after["kernel"] == image.kernel_to, "same writer process, on the new kernel",
              json.dumps(after))
    res.check(after["records"] > mid["records"], "the writer goes on writing after the upgrade",
              f"{mid['records']} -> {after['records']}")
    final = writer(vm, "--stop", pid)
    check = json.loads(vm.sh("python3", WRITER, "--verify", timeout=300)["stdout"])
    res.data["writer_verify"] = check
    res.check(not check["bad_records"], f"all {final['records']} records write() accepted are in the file, intact",
              json.dumps(check))
    res.check(check["size"] == check["offset"] == final["records"] * 4096,
              "file offset and size are where the writer left them", json.dumps(check))
    res.check(not check["bad_pages"], "every page of the MAP_SHARED mapping holds its last update", json.dumps(check))
    return {"pids_preserved": after["pid"] == pid, "state_preserved": check["ok"]}


def flushes(res: Result, reh: dict, rec: dict) -> None:
    """Both flush measurements; the upgrade pre-flushed while running and flushed in the pause."""
    res.data["flush"] = {
        "rehearsal_without_prepare": {"flush_in_pause": writeback(stage_of(reh, "flush"))},
        "upgrade_with_prepare": {"prepare_while_running": writeback(stage_of(rec, "prepare")),
                                 "flush_in_pause": writeback(stage_of(rec, "flush"))},
    }
    res.check(stage_of(rec, "prepare").get("status") == "ok" and stage_of(rec, "flush").get("status") == "ok",
              "the upgrade pre-flushed while running and flushed again in the pause", json.dumps(res.data["flush"]))

