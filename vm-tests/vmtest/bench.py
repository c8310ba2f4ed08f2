"""The benchmark's session (vm-tests/bench): one guest boot, then kernel switches only.

1. reboot baseline: the session's own boot — QEMU started, the agent ready in 6.1, the 64 MiB
   workload started fresh, its first heartbeat (host clock);
2. kupgrade run 6.1 -> 6.12 with that workload: the reference downtime (largest heartbeat gap),
   its first sample of REFERENCE_SAMPLES;
3. back to 6.1 by a plain kexec (the workload ended: every size starts a fresh one);
4. floor: a plain kexec 6.1 -> 6.12 with 6.12's own initrd (kupgrade's boot scripts, no
   snapshot), from `kexec --exec` to the first line of the target's init; then back to 6.1;
   FLOOR_SAMPLES times, the median is the floor;
5. the other reference samples, each other size: a fresh workload of that size, kupgrade run
   6.1 -> 6.12, back;
6. the reference samples and every size again with the snapshot in kupgrade's memory region (snapshot.transport = "pmem";
   the guest boots with the region reserved, REGION), 64 MiB first;
   right after the 64 MiB one, the same workload as kupgrade runs it by default on a machine with
   the region (snapshot.transport and snapshot.pre_dump "auto": the region, one pre-dump):
   defaults_runs;
7. the pre-dump series (pre_dump_runs) and the pre-warm pair on a throttled disk (prewarm_runs).

Every plain kexec back to 6.1 is a floor sample of the other direction (`floor_back`). Only the
6.1 -> 6.12 direction is measured for kupgrade. `out` fills as the measurements come, so a
failed step still leaves the earlier ones; `out["doing"]` names the step under way."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from kupgrade.system import kexec

from .benchreport import (DIRTY_MIB_S, PRE_DUMP_ITERATIONS, PREWARM_MAP_MIB, REFERENCE_MIB, REFERENCE_SAMPLES,
                          THROTTLE_BPS, size_entry)
from .scenario import Result, booted, final_record, kupgrade_config, upgrade, write_config
from .timeline import MARKS, breakdown, intervals, marks
from .workload import Workload

CGROUP = "/workload"
WORKLOAD_DIR = "/var/lib/workload"
EXEC_MARK = "vmtest-bench: kexec --exec"
FLOOR_MARKS = (
    ("kexec_exec_called", EXEC_MARK),
    ("kexec_exec", "Starting new kernel"),
    ("new_kernel_banner", "Linux version {to}"),
    ("initramfs_started", "Loading, please wait"),
    ("init_started", "vmtest-init: kernel {to} up"),
)
BOOT_MARKS = FLOOR_MARKS[2:]
SWITCH_MARKS = (*MARKS, FLOOR_MARKS[3])     # the basic scenario's, and where the initramfs starts as in the floor
REBOOT_HOW = ("this session's own boot, QEMU started (host clock) -> firmware, 6.1 kernel, "
              "initramfs, init, agent ready -> the 64 MiB workload started fresh (its state lost) -> its first "
              "heartbeat received; not a `reboot` inside a running QEMU (the harness runs QEMU with -no-reboot)")
FLOOR_HOW = ("no snapshot: `kexec --load` of /boot/vmlinuz-V with /boot/initrd.img-V (the target "
             "initrd with kupgrade's boot scripts) as kupgrade loads it, the running command line without "
             "an earlier switch's kupgrade.snapshot=/maxpid=/pidmax= words (`kexec.kept_words`: kupgrade.pmem= stays, as kupgrade keeps it); `sync`; from the console line echoed right before `kexec --exec` to the target "
             "init's first line (`vmtest-init: kernel V up`), host receipt times")
# The floor's own spread under TCG is wide (one sample: 16.9 s in one session, 31.2 s in the next,
# the kernel's early boot after the kexec 5.2 s against 21.5 s): the median of this many
FLOOR_SAMPLES = 3
TRANSPORTS = ("initrd", "pmem")     # the first is the default (no region reserved): the reference
# kupgrade's memory region for the pmem transport, as `kupgrade install-boot --reserve 2G` would
# reserve it: 2 GiB (the 1 GiB workload's snapshot, counted 1.5 x with a pre-dump, and its file
# system) in the guest's high RAM
REGION_START = 6 << 30
REGION = f"memmap=2048M!{REGION_START >> 20}M kupgrade.pmem={REGION_START:#x}"
BEAT_TIMEOUT = 900          # a 1 GiB workload makes its buffer and its checksum before the first beat


class BenchError(Exception):
    """A measurement was made but is not one: the switch did not happen as it must."""


def first_boot(vm, image, res: Result) -> tuple[Workload, dict]:
    """The reboot baseline from the session's boot; returns the running 64 MiB workload too."""
    ready = booted(vm, res)
    if ready["kernel"] != image.kernel_from:
        raise BenchError(f"the guest booted {ready['kernel']}, not {image.kernel_from}")
    wl = Workload(vm)
    wl.start(cgroup=CGROUP)
    wl.wait_beats(1, timeout=BEAT_TIMEOUT)
    points = {"qemu_started": vm.started_at, **marks(vm, image.kernel_from, vm.started_at, BOOT_MARKS),
              "agent_ready": ready["_t"], "first_heartbeat": wl.beats[0].t}
    return wl, {"seconds": round(wl.beats[0].t - vm.started_at, 3), "basis": "first-boot", "measured": REBOOT_HOW,
                "breakdown": intervals(points), "workload_mib": REFERENCE_MIB}


def fresh_workload(vm, mib: int, dirty_mib_s: float = 0, map_mib: int = 0) -> Workload:
    """A new workload of `mib` MiB in the cgroup (dirtying memory at `dirty_mib_s`; reading a
    mapped data file of `map_mib` MiB every beat), relayed from its first heartbeat."""
    vm.sh("rm", "-rf", WORKLOAD_DIR)
    wl = Workload(vm, env={"KUPGRADE_WL_MIB": str(mib), "KUPGRADE_WL_DIRTY_MIBS": str(dirty_mib_s),
                           "KUPGRADE_WL_MAP_MIB": str(map_mib)})
    wl.start(cgroup=CGROUP)
    return wl


def measure(vm, image, wl: Workload, mib: int) -> dict:
    """`kupgrade run` 6.1 -> 6.12 with `wl` running: the largest heartbeat gap (it must be the
    switch: the beats on both sides consecutive, from the same PIDs), its breakdown, the record."""
    wl.wait_beats(5, timeout=BEAT_TIMEOUT)
    scratch = Result(f"bench-{mib}")
    if (switched := upgrade(vm, scratch)) is None or switched["kernel"] != image.kernel_to:
        raise BenchError(f"kupgrade run did not switch to {image.kernel_to}: "
                         f"{(scratch.checks[-1]['detail'] if scratch.checks else json.dumps(switched))[-300:]}")
    last_before = wl.beats[-1].counter      # all the old kernel's agent relayed came before its ready
    wl.follow()
    wl.wait_beats(5, after=last_before, timeout=300)
    rec = final_record(vm)
    gap, a, b = wl.largest_gap()
    pids = {(beat.pid, beat.ppid) for beat in wl.beats}
    if rec["outcome"] != "restored" or (a.counter, b.counter) != (last_before, last_before + 1) \
            or not wl.consecutive() or len(pids) != 1:
        raise BenchError(f"record {rec['id']} says {rec['outcome']}; largest gap between beats {a.counter} and "
                         f"{b.counter} (switch after {last_before}); {wl.span()}; heartbeat PIDs {sorted(pids)}")
    return size_entry(mib, gap, breakdown(a.t, b.t, marks(vm, image.kernel_to, a.t, SWITCH_MARKS)), rec)


def plain_kexec(vm, kernel: str, method: str = "classic") -> dict:
    """kexec into `kernel` with its own initrd, no snapshot (see FLOOR_HOW): the floor."""
    words = kexec.kept_words(vm.read("/proc/cmdline"))
    how = kexec.choose_method(method, "none")
    vm.sh(*kexec.load_argv(how, Path(f"/boot/vmlinuz-{kernel}"), Path(f"/boot/initrd.img-{kernel}"), " ".join(words)))
    vm.sh("sync")
    sent = time.time()
    rid = vm.send("run", argv=["sh", "-c", f"echo '{EXEC_MARK}' > /dev/console && exec {' '.join(kexec.exec_argv())}"],
                  timeout_s=120)
    came = vm.wait_switch(rid, 600)
    m = marks(vm, kernel, sent, FLOOR_MARKS)
    if came.get("kernel") != kernel or "init_started" not in m:
        raise BenchError(f"plain kexec into {kernel}: {json.dumps(came)[:300]}; console marks {sorted(m)}")
    start = m.get("kexec_exec_called", sent)
    return {"kernel": kernel, "seconds": round(m["init_started"] - start, 3), "basis": "plain-kexec",
            "measured": FLOOR_HOW, "to_agent_ready_s": round(came["_t"] - start, 3), "kexec_method": how.name,
            "breakdown": intervals({"exec_requested": sent, **m, "agent_ready": came["_t"]})}


def median_sample(samples: list[dict]) -> dict:
    """The floor: the median of the plain kexecs into the target (every sample's seconds beside it)."""
    mid = sorted(samples, key=lambda x: x["seconds"])[len(samples) // 2]
    return {**mid, "samples_s": [x["seconds"] for x in samples],
            "measured": f"the median of {len(samples)}: " + mid["measured"]}


def back(vm, image, wl: Workload, method: str) -> dict:
    """End the workload, plain kexec back to the old kernel: a floor sample of that direction."""
    vm.sh("kill", str(wl.pid), check=False)
    return plain_kexec(vm, image.kernel_from, method)


@dataclass(frozen=True)
class Run:
    """One measured switch after the reference: which transport and workload, how kupgrade is
    configured, whether the root disk is throttled (QMP) from before the switch to the first beat."""
    transport: str
    mib: int
    pre_dump: int | str = 0         # "auto": kupgrade's default
    dirty_mib_s: float = 0
    prewarm: bool = True
    throttle_bps: int = 0
    map_mib: int = 0                # a data file the workload maps and reads every beat
    series: str = "sizes"           # which list of bench.json it goes to

    @property
    def label(self) -> str:
        if self.transport == self.pre_dump == "auto":
            return f"{self.mib} MiB (kupgrade's defaults: transport and pre-dump auto)"
        extra = [f"{self.pre_dump} pre-dump(s)"] if self.pre_dump else []
        extra += [f"dirtying {self.dirty_mib_s:g} MiB/s"] if self.dirty_mib_s else []
        extra += [f"{self.map_mib} MiB mapped file"] if self.map_mib else []
        extra += [f"disk at {self.throttle_bps >> 20} MiB/s, prewarm {'on' if self.prewarm else 'off'}"] \
            if self.throttle_bps else []
        return f"{self.mib} MiB ({', '.join([self.transport, *extra])})"


def configure(vm, image, run: Run) -> None:
    write_config(vm, kupgrade_config(image.kernel_to, cgroups=[CGROUP])
                 + f'\n[snapshot]\ntransport = "{run.transport}"\npre_dump = {json.dumps(run.pre_dump)}\n'
                 + f'\n[restore]\nprewarm = {"true" if run.prewarm else "false"}\n')


def throttle(vm, bps: int) -> None:
    """The root disk's bandwidth limit (0: none), as QEMU's block layer enforces it."""
    device = next(b["device"] for b in vm.qmp("query-block") if b.get("inserted", {}).get("file", "").endswith(
        "overlay.qcow2"))
    vm.qmp("block_set_io_throttle", device=device, bps=bps, bps_rd=0, bps_wr=0, iops=0, iops_rd=0, iops_wr=0)


def session(vm, image, sizes: list[int], out: dict, transports: tuple[str, ...] = TRANSPORTS) -> None:
    """The whole session (module docstring); fills out["reboot"], ["sizes"], ["floor"], ["floor_back"],
    ["defaults_runs"], ["pre_dump_runs"], ["prewarm_runs"]."""
    res = Result("bench")
    out["doing"] = "reboot baseline (first boot + 64 MiB workload)"
    wl, out["reboot"] = first_boot(vm, image, res)
    configure(vm, image, Run(transports[0], REFERENCE_MIB))
    out["doing"] = f"downtime at {REFERENCE_MIB} MiB ({transports[0]})"
    out["sizes"].append(measure(vm, image, wl, REFERENCE_MIB))
    method = out["sizes"][0]["kexec_method"] or "classic"
    out["doing"] = f"plain kexec back to {image.kernel_from}"
    out["floor_back"].append(back(vm, image, wl, method))
    samples = []
    for i in range(FLOOR_SAMPLES):
        out["doing"] = f"floor {i + 1}/{FLOOR_SAMPLES} (plain kexec into {image.kernel_to})"
        samples.append(plain_kexec(vm, image.kernel_to, method))
        out["doing"] = f"plain kexec back to {image.kernel_from}"
        out["floor_back"].append(plain_kexec(vm, image.kernel_from, method))
    out["floor"] = median_sample(samples)
    runs = switch_runs(sizes, transports)
    for i, run in enumerate(runs):
        out["doing"] = f"downtime at {run.label}"
        configure(vm, image, run)
        wl = fresh_workload(vm, run.mib, run.dirty_mib_s, run.map_mib)
        if run.throttle_bps:
            throttle(vm, run.throttle_bps)
        try:
            entry = measure(vm, image, wl, run.mib)
        finally:
            if run.throttle_bps:
                throttle(vm, 0)
        out[run.series].append({**entry, **({"pre_dump": run.pre_dump, "dirty_mib_s": run.dirty_mib_s}
                                            if run.series == "pre_dump_runs" else {}),
                                **({"prewarm": run.prewarm, "throttle_bps": run.throttle_bps, "map_mib": run.map_mib}
                                   if run.series == "prewarm_runs" else {})})
        if i < len(runs) - 1:
            out["doing"] = f"plain kexec back to {image.kernel_from}"
            out["floor_back"].append(back(vm, image, wl, method))
    out["doing"] = ""


def switch_runs(sizes: list[int], transports: tuple[str, ...]) -> list[Run]:
    """Every switch after the session's first (the first transport's reference), in order: the
    first transport's other reference samples and sizes, then each other transport's reference
    samples, kupgrade's defaults with the same workload, its other sizes; the pre-dump series and
    the pre-warm pair."""
    runs = []
    for t in transports:
        refs = [Run(t, REFERENCE_MIB)] * (REFERENCE_SAMPLES - (t == transports[0]))
        runs += refs + ([Run("auto", REFERENCE_MIB, "auto", series="defaults_runs")] if t != transports[0] else [])
        runs += [Run(t, m) for m in sizes if m != REFERENCE_MIB]
    return runs + pre_dump_runs(sizes, transports[-1]) + prewarm_runs(transports[-1])


def pre_dump_runs(sizes: list[int], transport: str) -> list[Run]:
    """The reference workload dirtying memory steadily with 0, 1 and 3 pre-dump iterations; the
    mostly idle reference and largest size with 1."""
    out = [Run(transport, REFERENCE_MIB, n, DIRTY_MIB_S, series="pre_dump_runs") for n in PRE_DUMP_ITERATIONS]
    return out + [Run(transport, m, 1, series="pre_dump_runs") for m in sorted({REFERENCE_MIB, max(sizes)})]


def prewarm_runs(transport: str) -> list[Run]:
    """The reference workload reading a mapped data file of PREWARM_MAP_MIB every beat, the root
    disk throttled to THROTTLE_BPS across the switch, restore.prewarm off, then on. The data file
    is what shows pre-warm: the workload's own executable and libraries are Python's, which
    kupgrade-restore reads itself before criu runs."""
    return [Run(transport, REFERENCE_MIB, prewarm=p, throttle_bps=THROTTLE_BPS, map_mib=PREWARM_MAP_MIB,
                series="prewarm_runs") for p in (False, True)]
