"""abort: a failure injected at the last step before the switch (the kexec load is refused:
the target kernel image is corrupt). The workload keeps running, untouched; the message says
what failed; nothing is left behind."""

from __future__ import annotations

import json

from ..scenario import Result, kupgrade_config, write_config
from ..workload import Workload

NAME = "abort"
DESCRIPTION = "kexec load fails after the snapshot: the workload (selected by PID) resumes unharmed"

BAD_KERNEL = "/root/vmlinuz-corrupt"


def run(vm, image, res: Result) -> None:
    ready = vm.event("ready", 240)
    res.data["kernel_before"] = ready["kernel"]
    wl = Workload(vm)
    pid = wl.start()
    wl.wait_beats(5)
    before = wl.state()
    # A target that passes preflight (files exist, the initrd carries the boot script) but that
    # kexec refuses to load: the first 64 KiB of the real bzImage.
    vm.sh("dd", f"if=/boot/vmlinuz-{image.kernel_to}", f"of={BAD_KERNEL}", "bs=64k", "count=1")
    write_config(vm, kupgrade_config(image.kernel_to, pids=[pid]).replace(
        f'kernel = "{image.kernel_to}"',
        f'vmlinuz = "{BAD_KERNEL}"\ninitrd = "/boot/initrd.img-{image.kernel_to}"'))
    last_before = wl.wait_beats(1).counter
    r = vm.sh("kupgrade", "run", "--yes", check=False, timeout=600)
    out = r["stdout"] + r["stderr"]
    res.data["kupgrade_rc"] = r["rc"]
    res.data["kupgrade_output"] = out[-3000:]
    res.check(r["rc"] not in (0, None), "kupgrade run failed (exit code non-zero)", str(r["rc"]))
    last_line = [l for l in r["stderr"].splitlines() if l.startswith("kupgrade:")]
    res.check(bool(last_line) and "kexec" in last_line[-1], "one line says kexec failed",
              last_line[-1] if last_line else r["stderr"][-500:])

    wl.wait_beats(5, after=last_before, timeout=120)
    after = wl.state()
    res.data["kernel_after"] = vm.sh("uname", "-r")["stdout"].strip()
    res.check(res.data["kernel_after"] == image.kernel_from, "still on the old kernel", res.data["kernel_after"])
    res.data["pids_preserved"] = after["pid"] == before["pid"] and after["child"] == before["child"]
    res.check(res.data["pids_preserved"], "same PIDs, still running", f"{before['pid']} -> {after['pid']}")
    counters = [b.counter for b in wl.beats]
    consecutive = counters == list(range(counters[0], counters[0] + len(counters)))
    res.data["state_preserved"] = consecutive and after["sha256"] == before["sha256_start"]
    res.check(consecutive, "counter continued without a restart", f"{counters[0]}..{counters[-1]}")
    res.check(after["sha256"] == before["sha256_start"], "buffer checksum intact", after["sha256"])
    states = vm.sh("ps", "-o", "stat=", "-p", f"{after['pid']},{after['child']}")["stdout"].split()
    res.check(states and not any(s.startswith("T") for s in states), "no task left stopped", " ".join(states))
    mounts = vm.read("/proc/mounts")
    res.check("kupgrade-snapshot" not in mounts, "snapshot tmpfs unmounted", "")
    res.check(vm.read("/sys/kernel/kexec_loaded").strip() == "0", "no kexec kernel left loaded", "")
    rec = json.loads(vm.read(f"/var/lib/kupgrade/records/{vm.read('/var/lib/kupgrade/records/last').strip()}.json"))
    res.check(rec["outcome"] == "aborted", "record says aborted", rec["outcome"])
    res.data["stages"] = {s["name"]: s["duration_s"] for s in rec["stages"]}
    res.data["record"] = rec
