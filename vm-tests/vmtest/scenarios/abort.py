"""abort: failures before the switch leave the workload running, untouched.

1. A truncated target kernel (its header intact, so kexec itself would load it and jump into
   garbage) is refused by preflight: exit 3, one line, nothing changed.
2. The kexec load fails after the snapshot (KUPGRADE_FAULT=kexec-load): the tasks criu left
   stopped are resumed, the tmpfs is gone, nothing is loaded, the record says aborted.
3. The same with the workload selected by cgroup: the cgroup freezer is thawed as well."""

from __future__ import annotations

import json

from ..scenario import Result, started, kupgrade_config, last_record, write_config

NAME = "abort"
DESCRIPTION = "a truncated kernel, then failed kexec loads (PID and cgroup workloads): the workload stays unharmed"

BAD_KERNEL = "/root/vmlinuz-truncated"


def last_error_line(r: dict) -> str:
    lines = [l for l in r["stderr"].splitlines() if l.startswith("kupgrade:")]
    return lines[-1] if lines else r["stderr"][-300:]


def run(vm, image, res: Result) -> None:
    wl, before = started(vm, res)
    pid = wl.pid

    # 1. truncated kernel: blocked by preflight.
    vm.sh("dd", f"if=/boot/vmlinuz-{image.kernel_to}", f"of={BAD_KERNEL}", "bs=1M", "count=4")
    write_config(vm, kupgrade_config(image.kernel_to, pids=[pid]).replace(
        f'kernel = "{image.kernel_to}"',
        f'vmlinuz = "{BAD_KERNEL}"\ninitrd = "/boot/initrd.img-{image.kernel_to}"'))
    r = vm.sh("kupgrade", "run", "--yes", check=False, timeout=600)
    res.data["truncated_kernel"] = {"rc": r["rc"], "error": last_error_line(r)}
    res.check(r["rc"] == 3, "truncated kernel: kupgrade run exits 3 (blocked)", str(r["rc"]))
    res.check("truncated" in last_error_line(r), "truncated kernel: the line says so", last_error_line(r))

    # 2. kexec load fails after freeze + snapshot.
    write_config(vm, kupgrade_config(image.kernel_to, pids=[pid]))
    r = vm.sh("env", "KUPGRADE_FAULT=kexec-load", "kupgrade", "run", "--yes", check=False, timeout=600)
    res.data["kexec_load_fault"] = {"rc": r["rc"], "error": last_error_line(r), "output": (r["stdout"] + r["stderr"])[-3000:]}
    res.check(r["rc"] not in (0, None), "failed kexec load: kupgrade run exits non-zero", str(r["rc"]))
    res.check("kexec load failed" in last_error_line(r), "failed kexec load: one line says kexec failed",
              last_error_line(r))

    wl.wait_beats(5, after=wl.beats[-1].counter, timeout=120)

    # 3. the same through the cgroup freezer: move both tasks into their own cgroup first.
    vm.sh("mkdir", "-p", "/sys/fs/cgroup/workload")
    for p in (before["pid"], before["child"]):
        vm.sh("tee", "/sys/fs/cgroup/workload/cgroup.procs", input=str(p))
    write_config(vm, kupgrade_config(image.kernel_to, cgroups=["/workload"]))
    r = vm.sh("env", "KUPGRADE_FAULT=kexec-load", "kupgrade", "run", "--yes", check=False, timeout=600)
    res.data["kexec_load_fault_cgroup"] = {"rc": r["rc"], "error": last_error_line(r),
                                           "output": (r["stdout"] + r["stderr"])[-3000:]}
    res.check(r["rc"] not in (0, None) and "kexec load failed" in last_error_line(r),
              "cgroup workload, failed kexec load: one line says kexec failed", last_error_line(r))
    res.check("froze 1 cgroup" in r["stdout"], "cgroup workload: the freeze stage used the cgroup freezer",
              r["stdout"][-1500:])
    res.check("frozen 0" in vm.read("/sys/fs/cgroup/workload/cgroup.events").split("\n"),
              "cgroup workload: thawed again", vm.read("/sys/fs/cgroup/workload/cgroup.events"))

    wl.wait_beats(5, after=wl.beats[-1].counter, timeout=120)
    after = wl.state()
    res.data["kernel_after"] = vm.sh("uname", "-r")["stdout"].strip()
    res.check(res.data["kernel_after"] == image.kernel_from, "still on the old kernel", res.data["kernel_after"])
    res.data["pids_preserved"] = after["pid"] == before["pid"] and after["child"] == before["child"]
    res.check(res.data["pids_preserved"], "same PIDs, still running", f"{before['pid']} -> {after['pid']}")
    consecutive = wl.consecutive()
    res.data["state_preserved"] = consecutive and after["sha256"] == before["sha256_start"]
    res.check(consecutive, "counter continued without a restart", wl.span())
    res.check(after["sha256"] == before["sha256_start"], "buffer checksum intact", after["sha256"])
    states = vm.sh("ps", "-o", "stat=", "-p", f"{after['pid']},{after['child']}")["stdout"].split()
    res.check(bool(states) and not any(s.startswith("T") for s in states), "no task left stopped", " ".join(states))
    res.check("kupgrade-snapshot" not in vm.read("/proc/mounts"), "snapshot tmpfs unmounted")
    res.check(vm.read("/sys/kernel/kexec_loaded").strip() == "0", "no kexec kernel left loaded")
    tables = vm.sh("nft", "list", "tables")["stdout"]
    res.check("CRIU" not in tables, "no criu network lock table left", tables)
    rec = last_record(vm)
    res.check(rec["outcome"] == "aborted", "record says aborted", rec["outcome"])
    rollback = rec["stages"][-1]
    res.check(rollback["name"] == "rollback" and rollback["status"] == "ok", "record: rollback complete",
              json.dumps(rollback)[:600])
    res.data["stages"] = {s["name"]: s["duration_s"] for s in rec["stages"]}
    res.data["record"] = rec
