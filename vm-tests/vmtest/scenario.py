"""What every scenario shares: the result record and its checks."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .timeline import breakdown, marks

# What every result carries, so that all of them read the same way.
COMMON = ("kernel_before", "kernel_after", "pids_preserved", "state_preserved", "downtime_s", "stages")


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
        """The result; the fields every scenario has come first, null where it did not get to
        measure them (it failed before, or has no switch: downtime_source says what it measured)."""
        common = {k: self.data.get(k) for k in COMMON}
        return {"scenario": self.scenario, "passed": self.passed, **common, **self.data, "checks": self.checks,
                "duration_s": round(time.time() - self.started, 1)}

    def write(self, results_dir: Path) -> Path:
        results_dir.mkdir(parents=True, exist_ok=True)
        path = results_dir / f"{self.scenario}.json"
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def kupgrade_config(kernel: str, pids=(), cgroups=(), units=()) -> str:
    lines = ["[workloads]"]
    if pids:
        lines.append(f"pids = [{', '.join(str(p) for p in pids)}]")
    if cgroups:
        lines.append("cgroups = [" + ", ".join(f'"{c}"' for c in cgroups) + "]")
    if units:
        lines.append("units = [" + ", ".join(f'"{u}"' for u in units) + "]")
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


def heartbeats_back(vm, res: Result, wl, timeout: float = 180) -> int:
    """After the switch: the workload's heartbeats relayed again, until five new ones (the
    restore's log kept however that ends); returns the last one the old kernel delivered."""
    last_before = wl.beats[-1].counter     # everything the old kernel's agent relayed came first
    wl.follow()
    try:
        wl.wait_beats(5, after=last_before, timeout=timeout)
    finally:
        res.data["restore_log"] = restore_log(vm)[-4000:]
    return last_before


def restore_log(vm) -> str:
    """The new kernel's restore log: the test init's file, or kupgrade-restore.service's journal."""
    return vm.sh("sh", "-c", "cat /var/log/kupgrade-restore.log 2>/dev/null || "
                 "journalctl -b -u kupgrade-restore.service --no-pager", check=False)["stdout"]


def workload_kept(res: Result, wl, before: dict, what: str = "workload") -> dict:
    """The test workload as itself: same PIDs (parent, child, the heartbeat's), every heartbeat
    once, its buffer intact, its counter gone on; `before` is its state before. Returns
    pids_preserved and state_preserved, for the results."""
    after = wl.state()
    beat_pids = {(b.pid, b.ppid) for b in wl.beats}
    pids = (after["pid"], after["child"]) == (before["pid"], before["child"]) and \
        beat_pids == {(before["child"], before["pid"])}
    res.check(pids, f"{what}: same PIDs (parent and child)", f"before {before['pid']}/{before['child']}, after "
              f"{after['pid']}/{after['child']}, heartbeat pids {sorted(beat_pids)}")
    consecutive = wl.consecutive()
    res.check(consecutive, f"{what}: counter continued, every heartbeat once, in order, no restart", wl.span())
    intact = after["sha256"] == before["sha256_start"] == after["sha256_start"]
    res.check(intact, f"{what}: buffer checksum intact", after["sha256"])
    res.check(after["counter"] > before["counter"], f"{what}: counter went on",
              f"{before['counter']} -> {after['counter']}")
    return {"pids_preserved": pids, "state_preserved": consecutive and intact}


def all_kept(res: Result, *parts: dict) -> None:
    """The results' pids_preserved and state_preserved: every part's (each as workload_kept
    returns them)."""
    res.data.update({k: all(p[k] for p in parts) for k in ("pids_preserved", "state_preserved")})


def stopped_tasks(vm, *pids: int) -> list[str]:
    """The `ps` states of these tasks that are stopped (T), or ["gone"] if none of them exists."""
    states = vm.sh("ps", "-o", "stat=", "-p", ",".join(map(str, pids)), check=False)["stdout"].split()
    return [s for s in states if s.startswith("T")] if states else ["gone"]


def leftovers(vm) -> list[str]:
    """What a run that failed before the switch may leave behind that it must not."""
    out = []
    if "kupgrade-snapshot" in vm.read("/proc/mounts"):
        out.append("snapshot tmpfs mounted")
    if vm.read("/sys/kernel/kexec_loaded").strip() != "0":
        out.append("kexec kernel loaded")
    if vm.sh("test", "-e", "/run/kupgrade.journal.json", check=False)["rc"] == 0:
        out.append("journal left")
    if "CRIU" in vm.sh("nft", "list", "tables")["stdout"]:
        out.append("criu lock table left")
    return out


def last_error_line(r: dict) -> str:
    """kupgrade's one-line error (the last `kupgrade:` line of a command's stderr)."""
    lines = [l for l in r["stderr"].splitlines() if l.startswith("kupgrade:")]
    return lines[-1] if lines else r["stderr"][-300:]


def run_failing(vm, fault: str = "") -> dict:
    """`kupgrade run --yes` that is to fail (KUPGRADE_FAULT=fault, if given): the command's reply
    with its one-line `error` and the `output`'s tail added."""
    r = vm.sh("env", *([f"KUPGRADE_FAULT={fault}"] if fault else []), "kupgrade", "run", "--yes", check=False,
              timeout=600)
    return {**r, "error": last_error_line(r), "output": (r["stdout"] + r["stderr"])[-3000:]}


HOOKS_D = "/etc/kupgrade/hooks.d"


def run_with_hook(vm, name: str, text: str) -> dict:
    """run_failing with the executable `name` (a device hook: `text`) in hooks.d, removed after."""
    vm.sh("mkdir", "-p", HOOKS_D)
    vm.sh("tee", f"{HOOKS_D}/{name}", input=text)
    vm.sh("chmod", "0755", f"{HOOKS_D}/{name}")
    try:
        return run_failing(vm)
    finally:
        vm.sh("rm", f"{HOOKS_D}/{name}")


def rolled_back(vm, res: Result, wl, what: str, cgroup: str = "") -> dict:
    """After a run that failed before the switch: no task of the workload stopped, its cgroup (if
    any) thawed, nothing of the run left behind, the record says aborted with the rollback
    complete. Returns the record."""
    now = wl.state()
    stopped = stopped_tasks(vm, now["pid"], now["child"])
    res.check(not stopped, f"{what}: no task left stopped", " ".join(stopped))
    if cgroup:
        events = vm.read(f"/sys/fs/cgroup{cgroup}/cgroup.events")
        res.check("frozen 0" in events.split("\n"), f"{what}: the cgroup is thawed", events)
    left = leftovers(vm)
    res.check(not left, f"{what}: nothing of the run left (tmpfs, kexec kernel, journal, criu's lock table)",
              ", ".join(left))
    rec = last_record(vm)
    rollback = rec["stages"][-1]
    res.check(rec["outcome"] == "aborted" and rollback["name"] == "rollback" and rollback["status"] == "ok",
              f"{what}: record says aborted, rollback complete", json.dumps(rollback)[:800])
    return rec


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


def stage_durations(rec: dict) -> dict:
    """Each stage's seconds, by name (the results' `stages`)."""
    return {s["name"]: s["duration_s"] for s in rec["stages"]}


def restored_record(vm, res: Result, what: str = "upgrade record says restored") -> dict:
    """The final record, kept with its stage durations; checks that it says restored."""
    rec = final_record(vm)
    res.data["record"] = rec
    res.data["stages"] = stage_durations(rec)
    res.check(rec["outcome"] == "restored", what, rec["outcome"])
    return rec


def hook_record(vm, res: Result, hook: str, key: str) -> dict:
    """The final record (restored_record); returns `hook`'s quiesce, save, restore and verify
    calls in it ({} for a missing one), kept as res.data[key]."""
    rec = restored_record(vm, res)
    calls = {**hook_calls(stage_of(rec, "freeze")), **hook_calls(stage_of(rec, "snapshot")),
             **hook_calls(stage_of(rec, "restore"))}
    mine = {p: calls.get((hook, p), {}) for p in ("quiesce", "save", "restore", "verify")}
    res.data[key] = mine
    return mine


def worth_showing(line: str) -> bool:
    """In the demo: kupgrade's own output and the milestones, not every kernel message."""
    return not line.startswith("[") or any(k in line for k in ("Starting new kernel", "Linux version", "kupgrade"))


def upgrade(vm, res: Result, show: bool = False, to: str = "") -> dict | None:
    """`kupgrade run --yes` with its output on the console (the host keeps it although the kernel
    switches under it). Returns the new kernel's 'ready' event, or None after recording why not;
    with `to`, checks that the new kernel is that one."""
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
    if to:
        res.check(switched["kernel"] == to, f"now running {to}", switched["kernel"])
    return switched


def heartbeat_downtime(vm, res: Result, to: str, wl, last_before: int, since: int = -1) -> None:
    """The downtime: the largest gap between heartbeats numbered above `since` (host clock), with
    its breakdown from the console lines; checks that it is the switch's (after `last_before`,
    the old kernel's last beat)."""
    gap, a, b = wl.largest_gap_after(since)
    res.data["downtime_s"] = round(gap, 3)
    res.data["downtime_breakdown"] = breakdown(a.t, b.t, marks(vm, to, a.t))
    res.say(f"downtime (host-measured heartbeat gap): {gap:.2f} s\n" +
            "\n".join(f"  {k:45s} {v:7.2f} s" for k, v in res.data["downtime_breakdown"].items()))
    res.check(a.counter == last_before and b.counter == last_before + 1, "the largest heartbeat gap is the upgrade",
              f"gap between beats {a.counter} and {b.counter}")


def systemd_up(vm) -> None:
    """Until systemd has finished starting the boot (running or degraded)."""
    vm.sh("systemctl", "is-system-running", "--wait", check=False, timeout=300)


def units_installed(vm, units: dict[str, str]) -> None:
    """Unit files written to /etc/systemd/system (name: text), systemd told."""
    for unit, text in units.items():
        vm.sh("tee", f"/etc/systemd/system/{unit}", input=text)
    vm.sh("systemctl", "daemon-reload")


def units_started(vm, *units: str) -> None:
    """Started with PIDs above 30000. Services started a few seconds into a boot have PIDs in the
    low hundreds, which the next kernel's own early kernel threads take (measured: heartbeat's PID
    298 was a kworker's in the new boot); these start where a long-running server's would be."""
    vm.sh("tee", "/proc/sys/kernel/ns_last_pid", input="30000")
    for unit in units:
        vm.sh("systemctl", "start", unit)


def unit_props(vm, unit: str, props: str = "MainPID,ActiveState") -> dict:
    """`systemctl show -p PROPS UNIT` as a dict."""
    out = vm.sh("systemctl", "show", "-p", props, unit)["stdout"]
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def keep_journal(vm, *units: str, tail: int = 12000) -> None:
    """This boot's journal (of these units, or all) as the artifact journal.txt: evidence first,
    whatever happens next."""
    argv = ["journalctl", "-b", "--no-pager", "-o", "short-monotonic", *(a for u in units for a in ("-u", u))]
    (vm.workdir / "journal.txt").write_text(vm.sh(*argv, check=False)["stdout"][-tail:])


def next_estimate(vm, res: Result, *args: str) -> dict:
    """The downtime estimate `kupgrade check --json ARGS` gives now (kept in the results)."""
    r = vm.sh("kupgrade", "check", "--json", *args, check=False, timeout=300)
    try:
        pre = json.loads(r["stdout"])["stages"][0]["details"]
    except (ValueError, KeyError, IndexError):
        pre = {"downtime_basis": r["stdout"][-500:] + r["stderr"][-500:]}
    res.data["next_estimate"] = {k: pre.get(k) for k in ("downtime_estimate_s", "downtime_basis")}
    return pre
