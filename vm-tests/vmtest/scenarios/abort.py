"""abort: failures before the switch leave the workload running, untouched.

1. A truncated target kernel (its header intact, so kexec itself would load it and jump into
   garbage) is refused by preflight: exit 3, one line, nothing changed.
2. The kexec load fails after the snapshot (KUPGRADE_FAULT=kexec-load): the tasks criu left
   stopped are resumed, the tmpfs is gone, nothing is loaded, the record says aborted.
3. The same with the workload selected by cgroup: the cgroup freezer is thawed as well."""

from __future__ import annotations

from ..scenario import (Result, kupgrade_config, rolled_back, run_failing, stage_durations, started, workload_kept,
                        write_config)

NAME = "abort"
DESCRIPTION = "a truncated kernel, then failed kexec loads (PID and cgroup workloads): the workload stays unharmed"

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


def run(vm, image, res: Result) -> None:
    wl, before = started(vm, res)
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

    res.data["kernel_after"] = vm.sh("uname", "-r")["stdout"].strip()
    res.check(res.data["kernel_after"] == image.kernel_from, "still on the old kernel", res.data["kernel_after"])
    res.data.update(workload_kept(res, wl, before, "still running"))
    rec = rolled_back(vm, res, wl, "after the failed loads")
    res.data["stages"] = stage_durations(rec)
    res.data["record"] = rec
    # No switch: the longest the workload was paused (by a failed attempt, until its rollback).
    res.data["downtime_s"] = round(wl.largest_gap()[0], 3)
    res.data["downtime_source"] = "largest heartbeat gap: a failed attempt's pause until its rollback"
