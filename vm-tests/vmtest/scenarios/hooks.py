"""hooks: the device hooks' steps with a NIC, which the `tcp` scenario runs on its guest (one
guest, one upgrade: the hooks' checks and the TCP connection's share the switch). Not a scenario.

1. The guest's virtio NIC (found by MAC: names change) gets 10.0.2.15/24, an extra 192.0.2.7/32,
   a default route and one extra route. `kupgrade hooks list` (text, --json, --json --all)
   shows every device of the VM with its coverage, the NIC covered by the network hook.
2. A hooks.d executable whose `save` fails: `kupgrade run` exits 7 with one line naming the
   hook and its stderr; the rollback leaves the workload running unharmed, nothing loaded,
   the tmpfs unmounted.
3. Without it, `kupgrade run` to 6.12: the workload survives, the network hook puts the
   addresses and routes back on the NIC (by MAC) before the restore, the record's restore
   stage has its restore and verify results, `kupgrade report` shows them.

ALL_DEVICES (every device pyudev can enumerate) is shared with the md and watchdog scenarios."""

from __future__ import annotations

import json

from ..scenario import Result, hook_calls, rolled_back, run_with_hook, stage_of, workload_kept
from ..workload import Workload

MAC = "52:54:00:12:34:56"
ADDRS = ("10.0.2.15/24", "192.0.2.7/32")
GATEWAY = "10.0.2.2"
EXTRA_ROUTE = "198.51.100.0/24"
BUILTIN_HOOKS = ["block", "network", "watchdog"]
FAILING = "50-failsave"
FAILING_HOOK = """#!/bin/sh
# vm-tests: a hook whose save fails (machine-wide: no match)
if [ "$1" = describe ]; then echo '{"points": ["save"], "description": "fails at save"}'; exit 0; fi
cat > /dev/null
echo "injected failure: device refuses to save" >&2
exit 1
"""
# Every device pyudev can enumerate: what libudev scans (bus devices and class devices).
ALL_DEVICES = ("import glob, json, os\n"
               "found = {os.path.realpath(p) for p in glob.glob('/sys/bus/*/devices/*') + glob.glob('/sys/class/*/*')\n"
               "         if os.path.isdir(p) and os.path.exists(os.path.join(p, 'uevent'))}\n"
               "print(json.dumps(sorted(found)))\n")


def nic(vm) -> str:
    """The NIC's current name, found by its MAC."""
    links = json.loads(vm.sh("ip", "-j", "link", "show")["stdout"])
    return next(l["ifname"] for l in links if l.get("address") == MAC)


def net_state(vm) -> dict:
    """The NIC's name, addresses (IPv4, "a.b.c.d/len") and IPv4 routes through it."""
    dev = nic(vm)
    addrs = json.loads(vm.sh("ip", "-j", "-4", "addr", "show", "dev", dev)["stdout"])
    routes = json.loads(vm.sh("ip", "-j", "-4", "route", "show")["stdout"])
    return {"dev": dev,
            "addrs": sorted(f"{a['local']}/{a['prefixlen']}" for l in addrs for a in l.get("addr_info", [])),
            "routes": sorted(f"{r['dst']} via {r['gateway']}" for r in routes
                             if r.get("dev") == dev and r.get("gateway"))}


def configure_nic(vm) -> dict:
    dev = nic(vm)
    vm.sh("ip", "link", "set", "dev", dev, "up")
    for a in ADDRS:
        vm.sh("ip", "addr", "add", a, "dev", dev)
    vm.sh("ip", "route", "add", "default", "via", GATEWAY, "dev", dev)
    vm.sh("ip", "route", "add", EXTRA_ROUTE, "via", GATEWAY, "dev", dev)
    return net_state(vm)


def check_listing(vm, res: Result, dev: str) -> None:
    text = vm.sh("kupgrade", "hooks", "list", timeout=300)
    doc = json.loads(vm.sh("kupgrade", "hooks", "list", "--json", timeout=300)["stdout"])
    full = json.loads(vm.sh("kupgrade", "hooks", "list", "--json", "--all", timeout=300)["stdout"])
    (vm.workdir / "hooks-list.txt").write_text(text["stdout"] + text["stderr"])
    (vm.workdir / "hooks-list.json").write_text(json.dumps(doc, indent=2) + "\n")
    (vm.workdir / "hooks-list-all.json").write_text(json.dumps(full, indent=2) + "\n")
    res.say(text["stdout"])
    sysfs = set(json.loads(vm.sh("python3", "-c", ALL_DEVICES)["stdout"]))
    listed = {c["device"]["sys_path"]: c for c in full["devices"]}
    missing = sorted(sysfs - set(listed))
    res.data["devices"] = {"sysfs": len(sysfs), "listed_all": len(listed), "listed": len(doc["devices"]),
                           "hidden": doc["hidden_devices"]}
    res.check(not missing and full["hidden_devices"] == 0,
              "hooks list --json --all: every device of the VM (sysfs bus + class devices) is listed",
              f"missing {missing[:20]}")
    res.check(len(doc["devices"]) + doc["hidden_devices"] == len(full["devices"]),
              "hooks list --json: shown + hidden = every device", json.dumps(res.data["devices"]))
    bound = sorted(p for p, c in listed.items() if c["device"]["driver"] and not p.startswith("/sys/devices/virtual/"))
    shown = {c["device"]["sys_path"] for c in doc["devices"]}
    res.check(set(bound) <= shown, "hooks list --json: every device bound to a driver is shown with its coverage",
              f"not shown: {sorted(set(bound) - shown)}")
    net = [c for c in doc["devices"] if c["device"]["subsystem"] == "net"]
    mine = [c for c in net if c["device"]["attributes"].get("address") == MAC]
    res.check(len(mine) == 1 and mine[0]["hooks"] == ["network"] and all(c["hooks"] == ["network"] for c in net),
              f"hooks list --json: the NIC ({dev}) and lo are covered by network", json.dumps(net)[:1500])
    res.check(not doc["blockers"] and [h["name"] for h in doc["hooks"]] == BUILTIN_HOOKS,
              "hooks list --json: the built-in hooks, no blockers", json.dumps(doc["hooks"])[:800])
    rows = [l for l in text["stdout"].splitlines() if l.startswith("│ ")]
    res.check(any(dev in l and "network" in l for l in rows) and
              all(c["device"]["sys_name"] in text["stdout"] for c in doc["devices"]),
              "hooks list: every device of --json is in the table, the NIC's row says network", text["stdout"][-2500:])


def failing_save(vm, res: Result, wl: Workload, before: dict) -> None:
    r = run_with_hook(vm, FAILING, FAILING_HOOK)
    errs = [l for l in r["stderr"].splitlines() if l.startswith("kupgrade:")]
    res.data["failing_save"] = {k: r[k] for k in ("rc", "error", "output")}
    res.check(r["rc"] == 7, "failing save hook: kupgrade run exits 7", str(r["rc"]))
    res.check(len(errs) == 1 and FAILING in errs[0] and "injected failure: device refuses to save" in errs[0],
              "failing save hook: one line names the hook and its stderr", "\n".join(errs) or r["stderr"][-800:])
    wl.wait_beats(5, after=wl.beats[-1].counter, timeout=120)
    workload_kept(res, wl, before, "failing save hook: the workload")
    rec = rolled_back(vm, res, wl, "failing save hook", cgroup="/workload")
    snap = stage_of(rec, "snapshot")
    failed = [h for h in snap.get("details", {}).get("hooks", []) if not h["ok"]]
    res.check(snap.get("status") == "failed" and [h["hook"] for h in failed] == [FAILING],
              "failing save hook: the snapshot stage records the failed save", json.dumps(snap)[:1200])


def configured(vm, res: Result) -> dict:
    """The NIC configured (addresses, default and extra route); its state."""
    before_net = configure_nic(vm)
    res.data["net_before"] = before_net
    res.check(all(a in before_net["addrs"] for a in ADDRS) and
              {f"default via {GATEWAY}", f"{EXTRA_ROUTE} via {GATEWAY}"} <= set(before_net["routes"]),
              "NIC configured (addresses, default and extra route)", json.dumps(before_net))
    return before_net


def net_back(vm, res: Result, before_net: dict) -> None:
    """New kernel: the NIC (by MAC) has its addresses and routes back."""
    after_net = net_state(vm)
    res.data["net_after"] = after_net
    res.check(after_net["addrs"] == before_net["addrs"], "new kernel: the NIC (by MAC) has its addresses back",
              f"before {before_net}, after {after_net}")
    res.check(after_net["routes"] == before_net["routes"], "new kernel: the default and the extra route are back",
              f"before {before_net['routes']}, after {after_net['routes']}")


def check_hook_calls(vm, res: Result, rec: dict) -> None:
    """The record has the network hook's save, restore and verify, ok; the report shows them."""
    calls = hook_calls(stage_of(rec, "restore"))
    res.data["restore_hooks"] = list(calls.values())
    res.check(calls.get(("network", "restore"), {}).get("ok") is True and
              calls.get(("network", "verify"), {}).get("ok") is True,
              "record: the restore stage has the network hook's restore and verify, ok",
              json.dumps(list(calls.values()))[:1500])
    applied = calls.get(("network", "restore"), {}).get("reply", {}).get("applied", [])
    res.check(any("192.0.2.7/32" in a for a in applied) and any(EXTRA_ROUTE in a for a in applied),
              "record: the network hook re-applied the extra address and route", json.dumps(applied)[:1500])
    snap = stage_of(rec, "snapshot")
    saves = [(h["hook"], h["ok"]) for h in snap.get("details", {}).get("hooks", [])]
    res.check(("network", True) in saves and all(ok for _, ok in saves),
              "record: the snapshot stage has the network hook's save (every save ok)",
              json.dumps(snap.get("details", {}).get("hooks"))[:800])
    report = vm.sh("kupgrade", "report", timeout=300)["stdout"]
    (vm.workdir / "report.txt").write_text(report)
    res.say(report)
    hook_lines = [l for l in report.splitlines() if "network" in l]
    res.check("device hooks" in report and any("restore" in l and " ok " in l for l in hook_lines)
              and any("verify" in l and " ok " in l for l in hook_lines),
              "kupgrade report shows the network hook's restore and verify, ok", report[-2500:])

