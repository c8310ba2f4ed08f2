"""watchdog: an armed hardware watchdog neither resets the machine during the switch nor is left
disarmed after it.

QEMU's i6300ESB (`-action watchdog=reset`; with `-no-reboot` a reset ends QEMU, and QMP says it
was the watchdog). The guest boots systemd; vmtest-petter.service (guest/petter.py) arms it with
a 10 s timeout and pets it every second, as watchdog(8) or systemd's RuntimeWatchdogSec would.
The kernel runs with watchdog.stop_on_reboot=0: the hardware keeps counting across `kexec -e`
(without it the old driver stops it at the switch; measured, docs/hooks.md), so the switch is
covered only by the timeout the hook raised. The workload is the usual heartbeat tree.

1. `kupgrade hooks list` lists every device of the VM, watchdog0 covered by the watchdog hook.
2. A hooks.d hook failing at quiesce (after the watchdog's): exit 7, the rollback's resume puts
   the 10 s timeout back on the daemon's open watchdog, the daemon and the workload go on.
3. The upgrade 6.1 -> 6.12: no watchdog reset; the daemon saw the raised timeout while it
   petted; in the new kernel the hook re-armed the watchdog before the workloads, the daemon's
   service opened it again with its 10 s; it does not fire for three timeouts; the workload is
   intact; the record has every watchdog hook call, ok.
4. Control: the daemon is killed (no magic close): the watchdog resets the guest.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ..qemu import LostVMError, Machine
from ..scenario import (Result, booted, heartbeat_downtime, hook_calls, hook_record, kupgrade_config, last_record,
                        run_with_hook, stage_of, systemd_up, units_installed, upgrade, workload_kept, workload_running,
                        write_config)
from ..workload import Workload
from .hooks import ALL_DEVICES

NAME = "watchdog"
DESCRIPTION = "armed i6300ESB watchdog (10 s, counting across kexec): no reset during the switch, re-armed after"
INIT = "systemd"
MACHINE = Machine(args=("-device", "i6300esb", "-action", "watchdog=reset"), append="watchdog.stop_on_reboot=0")
TIMEOUT = 10
PETTER = "vmtest-petter.service"
PETTER_LOG = "/dev/kmsg"            # the console: timestamped by the host in both boots
UNIT = (f"[Unit]\nDescription=watchdog petting daemon (vm-tests)\n"
        f"[Service]\nExecStart=/usr/local/lib/vmtest/petter.py /dev/watchdog0 {TIMEOUT} 1 {PETTER_LOG}\n"
        "[Install]\nWantedBy=multi-user.target\n")
SYSFS = "/sys/class/watchdog/watchdog0"
FAILING = "zz-failquiesce"          # after "watchdog" in name order: the watchdog's quiesce has run
FAILING_HOOK = """#!/bin/sh
# vm-tests: a hook whose quiesce fails (machine-wide: no match)
if [ "$1" = describe ]; then echo '{"points": ["quiesce"], "description": "fails at quiesce"}'; exit 0; fi
cat > /dev/null
echo "injected failure: device refuses to quiesce" >&2
exit 1
"""


@dataclass
class Pet:
    t: float            # host receipt time of the console line
    n: int
    pid: int
    timeout: int        # as the driver reported it at that ping


def pets(vm, where=lambda p: True) -> list[Pet]:
    """The daemon's pings so far, from the console (guest/petter.py writes them to /dev/kmsg)."""
    out = []
    for line in list(vm.console):
        _, sep, rest = line.text.partition("vmtest-petter: pet ")
        parts = rest.split()
        if sep and len(parts) == 3 and all(x.isdigit() for x in parts):
            p = Pet(line.t, *map(int, parts))
            if where(p):
                out.append(p)
    return out


def wait_pets(vm, n: int, where=lambda p: True, timeout: float = 120) -> list[Pet]:
    """Until n pings matching `where` have come; those pings."""
    deadline = time.monotonic() + timeout
    while len(found := pets(vm, where)) < n:
        vm._alive()
        if time.monotonic() > deadline:
            raise LostVMError(f"{len(found)} of {n} watchdog pings within {timeout:.0f} s", vm.console_tail())
        time.sleep(0.5)
    return found


def sysfs(vm) -> dict:
    return {k: vm.read(f"{SYSFS}/{k}").strip() for k in ("state", "timeout", "identity")}


def check_listing(vm, res: Result) -> None:
    text = vm.sh("kupgrade", "hooks", "list", timeout=300)
    full = json.loads(vm.sh("kupgrade", "hooks", "list", "--json", "--all", timeout=300)["stdout"])
    (vm.workdir / "hooks-list.txt").write_text(text["stdout"] + text["stderr"])
    (vm.workdir / "hooks-list-all.json").write_text(json.dumps(full, indent=2) + "\n")
    res.say(text["stdout"])
    sysfs_devices = set(json.loads(vm.sh("python3", "-c", ALL_DEVICES)["stdout"]))
    listed = {c["device"]["sys_path"]: c for c in full["devices"]}
    res.check(sysfs_devices <= set(listed), "hooks list --json --all: every device of the VM is listed",
              f"missing {sorted(sysfs_devices - set(listed))[:20]}")
    wdt = [c for c in full["devices"] if c["device"]["subsystem"] == "watchdog"]
    res.check(len(wdt) == 1 and wdt[0]["hooks"] == ["watchdog"] and not full["blockers"],
              "hooks list: watchdog0 is covered by the watchdog hook, no blockers", json.dumps(wdt)[:1500])
    rows = [l for l in text["stdout"].splitlines() if l.startswith("│ ")]
    res.check(any("watchdog0" in l and l.count("watchdog") >= 3 for l in rows),
              "hooks list: the table's watchdog0 row says watchdog", text["stdout"][-2500:])


def failing_quiesce(vm, res: Result, wl: Workload) -> None:
    last = pets(vm)[-1]
    r = run_with_hook(vm, FAILING, FAILING_HOOK)
    last_beat = wl.beats[-1].counter        # delivered before the command returned
    res.check(r["rc"] == 7, "failing quiesce hook: kupgrade run exits 7", f"{r['rc']}\n{r['stderr'][-1500:]}")
    rec = last_record(vm)
    freeze, rollback = stage_of(rec, "freeze"), stage_of(rec, "rollback")
    q = hook_calls(freeze).get(("watchdog", "quiesce"), {})
    raised = q.get("reply", {}).get("raised", [])
    res.data["rollback"] = {"quiesce": q, "resume": hook_calls(rollback).get(("watchdog", "resume"))}
    res.check(q.get("ok") is True and [(x["timeout"], x["bridge"] > TIMEOUT) for x in raised] == [(TIMEOUT, True)],
              "failing quiesce hook: the watchdog's quiesce ran first and raised the timeout", json.dumps(q)[:1200])
    resumed = hook_calls(rollback).get(("watchdog", "resume"), {})
    res.check(rec["outcome"] == "aborted" and resumed.get("ok") is True and
              resumed.get("reply", {}).get("restored") == [{"name": "watchdog0", "timeout": TIMEOUT}],
              "failing quiesce hook: the rollback's resume put the watchdog's timeout back", json.dumps(rollback)[:1500])
    after = wait_pets(vm, 3, where=lambda p: p.n > last.n and p.pid == last.pid and p.timeout == TIMEOUT)
    res.check(sysfs(vm)["timeout"] == str(TIMEOUT) and after[0].pid == last.pid,
              f"failing quiesce hook: the same daemon pets on, the driver says {TIMEOUT} s again",
              f"{sysfs(vm)}, pets {after[:3]}")
    wl.wait_beats(5, after=last_beat, timeout=120)
    res.check(wl.consecutive(), "failing quiesce hook: the workload went on without a restart", wl.span())


def start_petter(vm) -> None:
    """The daemon's unit installed and started once systemd is up; three of its pings seen."""
    systemd_up(vm)
    units_installed(vm, {PETTER: UNIT})
    vm.sh("systemctl", "enable", "--now", PETTER)
    wait_pets(vm, 3)


def switch_armed(vm, image, res: Result) -> tuple[float, float] | None:
    """`kupgrade run` with the watchdog armed; when it started and when the old kernel handed
    over (from the console), or None if it did not switch (a watchdog reset fails a check)."""
    t_run = time.time()
    try:
        switched = upgrade(vm, res, to=image.kernel_to)
    except LostVMError as e:
        res.data["qemu_events"] = vm.qmp_events
        res.check(False, "no watchdog reset during the upgrade", str(e)[-3000:])
        return None
    if switched is None:
        return None
    t_switch = next((l.t for l in vm.console if l.t >= t_run and "Starting new kernel" in l.text), switched["_t"])
    return t_run, t_switch


def in_new_kernel(vm, res: Result, wl: Workload, last_beat: int, t_run: float,
                  t_switch: float) -> tuple[list[Pet], list[Pet]]:
    """The journal kept, the workload and the daemon back. Until the switch the old daemon petted
    with the raised timeout, no reset; the new kernel's daemon armed it with its own. Returns the
    old daemon's pings during the upgrade and the new one's so far (three or more)."""
    def old(p: Pet) -> bool:
        return t_run <= p.t < t_switch

    def new(p: Pet) -> bool:
        return p.t > t_switch
    wl.follow()
    systemd_up(vm)
    journal = vm.sh("journalctl", "-b", "--no-pager", "-o", "short-monotonic", check=False)["stdout"]
    (vm.workdir / "journal.txt").write_text("\n".join(
        l for l in journal.splitlines() if any(k in l for k in ("watchdog", "i6300", "petter", "kupgrade"))))
    wl.wait_beats(5, after=last_beat, timeout=180)
    first_new = wait_pets(vm, 3, where=new)
    during = pets(vm, where=old)
    res.data["pets_during_upgrade"] = sorted({p.timeout for p in during})
    res.check(any(p.timeout > TIMEOUT for p in during),
              "the old daemon petted with the raised (bridge) timeout until the switch",
              f"timeouts seen: {res.data['pets_during_upgrade']}")
    res.check(not vm.events_of("WATCHDOG"), "no watchdog reset during the upgrade", vm.qemu_events_summary())
    after = sysfs(vm)
    res.data["watchdog_after"] = after
    res.check(after["state"] == "active" and after["timeout"] == str(TIMEOUT) and first_new[-1].timeout == TIMEOUT,
              f"new kernel: armed again, with its {TIMEOUT} s, by the daemon's service", json.dumps(after))
    return during, first_new


def check_record(vm, res: Result) -> int:
    """The record: restored, the watchdog hook's four calls ok, the new kernel's watchdog re-armed
    with the bridge before the workloads and found armed by verify. Returns the bridge."""
    mine = hook_record(vm, res, "watchdog", "watchdog_hook")
    res.check(all(c.get("ok") is True for c in mine.values()), "record: the watchdog's quiesce, save, restore, "
              "verify all ok", json.dumps(mine)[:2500])
    bridge = mine["quiesce"].get("reply", {}).get("raised", [{}])[0].get("bridge", 0)
    rearmed = mine["restore"].get("reply", {}).get("rearmed", [{}])[0]
    res.check(rearmed.get("armed_with") == bridge and bridge > TIMEOUT,
              "record: before the workloads, the hook re-armed the new kernel's watchdog with the bridge",
              json.dumps(rearmed))
    res.check(mine["verify"].get("reply", {}).get("watchdogs", [{}])[0].get("armed") is True,
              "record: verify found it armed", json.dumps(mine["verify"])[:800])
    return bridge


def watchdog_timeline(vm, t_run: float, bridge: int, during: list[Pet], first_new: list[Pet]) -> dict:
    """The bridge, and the seconds from the old daemon's last ping to the hook's re-arming, from
    there to the new daemon's first ping, and unpetted in all."""
    old_last = max(p.t for p in during)
    re_armed = next((l.t for l in vm.console if l.t >= t_run and "watchdog did not stop" in l.text), None)
    return {
        "bridge": bridge,
        "last_old_pet->hook_rearmed": round(re_armed - old_last, 3) if re_armed else None,
        "hook_rearmed->first_new_pet": round(first_new[0].t - re_armed, 3) if re_armed else None,
        "unpetted": round(first_new[0].t - old_last, 3)}


def control(vm, res: Result) -> None:
    """Control: the daemon dies without the magic close; the armed watchdog must reset the guest."""
    t_kill = time.time()
    vm.send("run", argv=["systemctl", "kill", "-s", "KILL", PETTER])
    deadline = time.monotonic() + 20 * TIMEOUT
    while vm.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    fired = vm.events_of("WATCHDOG")
    res.data["control"] = {"qemu_exit": vm.proc.poll(), "events": vm.qemu_events_summary(),
                           "kill->reset_s": round(fired[0]["_t"] - t_kill, 1) if fired else None}
    res.check(bool(fired) and fired[0]["data"].get("action") == "reset" and vm.proc.poll() is not None,
              "control: the daemon killed, the armed watchdog reset the guest", json.dumps(res.data["control"]))


def run(vm, image, res: Result) -> None:
    booted(vm, res)
    start_petter(vm)
    wl, before = workload_running(vm, cgroup="/workload")
    armed = sysfs(vm)
    res.data["watchdog_before"] = armed
    res.check(armed == {"state": "active", "timeout": str(TIMEOUT), "identity": "i6300ESB timer"},
              f"the daemon armed the i6300ESB with {TIMEOUT} s", json.dumps(armed))
    check_listing(vm, res)
    write_config(vm, kupgrade_config(image.kernel_to, cgroups=["/workload"]))
    failing_quiesce(vm, res, wl)

    if (times := switch_armed(vm, image, res)) is None:
        return
    t_run, t_switch = times
    last_beat = wl.beats[-1].counter       # the last one the old kernel's relay delivered
    during, first_new = in_new_kernel(vm, res, wl, last_beat, t_run, t_switch)
    bridge = check_record(vm, res)
    res.data.update(workload_kept(res, wl, before))
    heartbeat_downtime(vm, res, image.kernel_to, wl, last_beat, since=last_beat - 1)
    res.data["watchdog_timeline_s"] = watchdog_timeline(vm, t_run, bridge, during, first_new)

    # Petted, not just armed: three timeouts' worth of pings and QEMU still running.
    wait_pets(vm, 3 * TIMEOUT + 1, where=lambda p: p.t > t_switch, timeout=300)
    res.check(vm.proc.poll() is None and not vm.events_of("WATCHDOG"),
              f"new kernel: no reset for {3 * TIMEOUT} pings ({3 * TIMEOUT} s of guest time)", vm.qemu_events_summary())
    control(vm, res)
