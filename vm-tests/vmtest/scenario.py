"""What every scenario shares: the result record and its checks."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Result:
    scenario: str
    checks: list[dict] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    echo: bool = False          # the demo shows what the admin would see

    def say(self, text: str) -> None:
        if self.echo:
            print(text, flush=True)

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        self.checks.append({"check": what, "ok": bool(ok), "detail": detail})
        return bool(ok)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c["ok"] for c in self.checks) and "error" not in self.data

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "passed": self.passed, **self.data, "checks": self.checks,
                "duration_s": round(time.time() - self.started, 1)}

    def write(self, results_dir: Path) -> Path:
        results_dir.mkdir(parents=True, exist_ok=True)
        path = results_dir / f"{self.scenario}.json"
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def kupgrade_config(kernel: str, pids=(), cgroups=()) -> str:
    lines = ["[workloads]"]
    if pids:
        lines.append(f"pids = [{', '.join(str(p) for p in pids)}]")
    if cgroups:
        lines.append("cgroups = [" + ", ".join(f'"{c}"' for c in cgroups) + "]")
    lines += ["", "[target]", f'kernel = "{kernel}"', ""]
    return "\n".join(lines)


def write_config(vm, text: str) -> None:
    vm.sh("mkdir", "-p", "/etc/kupgrade")
    vm.sh("tee", "/etc/kupgrade/kupgrade.toml", input=text)


def booted(vm, res: Result, timeout: float = 240) -> dict:
    """Wait for the guest agent's first 'ready'; note the kernel it booted."""
    ready = vm.event("ready", timeout)
    res.data["kernel_before"] = ready["kernel"]
    return ready


def started(vm, res: Result, cgroup: str = ""):
    """The usual opening: the guest booted, the test workload running (in `cgroup`, if given)
    with five heartbeats relayed; returns the workload and its state."""
    booted(vm, res)
    return workload_running(vm, cgroup)


def workload_running(vm, cgroup: str = ""):
    """The test workload started (in `cgroup`, if given), five heartbeats relayed; returns the
    workload and its state."""
    from .workload import Workload
    wl = Workload(vm)
    wl.start(cgroup=cgroup)
    wl.wait_beats(5)
    return wl, wl.state()


def heartbeats_back(vm, res: Result, wl) -> int:
    """After the switch: the workload's heartbeats relayed again, until five new ones (the
    restore's log kept however that ends); returns the last one the old kernel delivered."""
    last_before = wl.beats[-1].counter
    wl.follow()
    try:
        wl.wait_beats(5, after=last_before, timeout=180)
    finally:
        res.data["restore_log"] = vm.read("/var/log/kupgrade-restore.log")[-4000:]
    return last_before


def workload_intact(res: Result, wl, before: dict, what: str = "workload") -> None:
    """The test workload after the upgrade: same PIDs, every heartbeat once, its buffer intact
    (pids_preserved, state_preserved); `before` is its state before."""
    after = wl.state()
    res.data["pids_preserved"] = after["pid"] == before["pid"] and after["child"] == before["child"]
    res.data["state_preserved"] = wl.consecutive() and after["sha256"] == before["sha256_start"]
    res.check(res.data["pids_preserved"] and res.data["state_preserved"],
              f"{what}: same PIDs, every heartbeat once, buffer intact", f"{wl.span()}; {after}")


def wait_outcome(vm, *outcomes: str, timeout: float = 600) -> dict:
    """Until the last upgrade record has one of these outcomes (the restore wrote it); returns it."""
    vm.sh("sh", "-c", "r=/var/lib/kupgrade/records; until grep -qE '\"outcome\": \"(" + "|".join(outcomes)
          + ")\"' $r/$(cat $r/last).json; do sleep 0.1; done", timeout=timeout)
    return last_record(vm)


def final_record(vm, timeout: float = 600) -> dict:
    """The last upgrade record once the new kernel's restore has finished writing it (the
    workloads run again before it does: the device hooks' verify comes after the commit)."""
    return wait_outcome(vm, "restored", "restore-failed", "rolled-back", timeout=timeout)


def last_record(vm) -> dict:
    """The upgrade record kupgrade wrote last, as JSON."""
    rid = vm.read("/var/lib/kupgrade/records/last").strip()
    return json.loads(vm.read(f"/var/lib/kupgrade/records/{rid}.json"))


def stage_of(rec: dict, name: str) -> dict:
    """The record's stage of that name ({} if there is none)."""
    return next((s for s in rec["stages"] if s["name"] == name), {})


def hook_calls(stage: dict) -> dict:
    """A stage's device hook calls, by (hook, point)."""
    return {(h["hook"], h["point"]): h for h in stage.get("details", {}).get("hooks", [])}


def hook_record(vm, res: Result, hook: str, key: str) -> dict:
    """The final record, kept with its stage durations, its outcome checked; returns `hook`'s
    quiesce, save, restore and verify calls in it ({} for a missing one), kept as res.data[key]."""
    rec = final_record(vm)
    res.data["record"] = rec
    res.data["stages"] = {s["name"]: s["duration_s"] for s in rec["stages"]}
    res.check(rec["outcome"] == "restored", "upgrade record says restored", rec["outcome"])
    calls = {**hook_calls(stage_of(rec, "freeze")), **hook_calls(stage_of(rec, "snapshot")),
             **hook_calls(stage_of(rec, "restore"))}
    mine = {p: calls.get((hook, p), {}) for p in ("quiesce", "save", "restore", "verify")}
    res.data[key] = mine
    return mine


def worth_showing(line: str) -> bool:
    """In the demo: kupgrade's own output and the milestones, not every kernel message."""
    return not line.startswith("[") or any(k in line for k in ("Starting new kernel", "Linux version", "kupgrade"))


def upgrade(vm, res: Result, show: bool = False) -> dict | None:
    """`kupgrade run --yes` with its output on the console (the host keeps it although the kernel
    switches under it). Returns the new kernel's 'ready' event, or None after recording why not."""
    t_run = time.time()
    rid = vm.send("run", argv=["kupgrade", "run", "--yes"], timeout_s=600, output="/dev/console")
    switched = vm.wait_switch(rid, 600)
    if show:
        res.say("\n".join(l.text for l in vm.console if l.t >= t_run and worth_showing(l.text)))
    if "ev" not in switched:
        res.check(False, "kupgrade run switched kernels",
                  (switched.get("stdout", "") + switched.get("stderr", ""))[-3000:])
        return None
    res.data["kernel_after"] = switched["kernel"]
    return switched


def next_estimate(vm, res: Result, *args: str) -> dict:
    """The downtime estimate `kupgrade check --json ARGS` gives now (kept in the results)."""
    r = vm.sh("kupgrade", "check", "--json", *args, check=False, timeout=300)
    try:
        pre = json.loads(r["stdout"])["stages"][0]["details"]
    except (ValueError, KeyError, IndexError):
        pre = {"downtime_basis": r["stdout"][-500:] + r["stderr"][-500:]}
    res.data["next_estimate"] = {k: pre.get(k) for k in ("downtime_estimate_s", "downtime_basis")}
    return pre
