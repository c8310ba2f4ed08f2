"""explore-sandbox: what criu 3.17, called as kupgrade calls it, does with each systemd sandbox
option, alone and combined (kupgrade/userspace/sandbox.py is built on these measurements).

For each option a unit running a small python loop is started, its main process dumped with
criu.dump_argv's options into a tmpfs on /run/kupgrade-snapshot (as the snapshot stage mounts
it), killed, and restored in the same kernel: detached from a root shell, and for the options
that dump, by the unit's own start through a drop-in shaped like kupgrade's with ExecStart "+"
(and without, to show why "+"). The lines (DUMP/RESTORE/UNIT-RESTORE/RUNS, with criu's first
error) are kept in the result; the checks pin what kupgrade/userspace/sandbox.py assumes, so a criu that
behaves differently fails here first.

With EXPLORE_DIR set, the scenario instead serves shell scripts dropped there (NAME.sh ->
NAME.out, JSON of rc/stdout/stderr, each in its own thread) until EXPLORE_DIR/stop appears: one
guest for interactive exploration."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from ..scenario import Result, booted, systemd_up

NAME = "explore-sandbox"
DESCRIPTION = "systemd sandbox options against criu 3.17 as kupgrade calls it: dump, restore, restore by the unit"
INIT = "systemd"
LIB = (Path(__file__).with_suffix(".sh")).read_text()

ALONE = ["PrivateUsers=yes", "PrivateTmp=yes", "ProtectSystem=strict", "ProtectHome=yes", "ProtectHostname=yes",
         "PrivateDevices=yes", "DynamicUser=yes", "NoNewPrivileges=yes", "RestrictNamespaces=yes",
         "MemoryDenyWriteExecute=yes", "SystemCallFilter=@system-service"]
ALL = "\\n".join(ALONE)
CARRIED = "\\n".join(["ProtectHostname=yes", "NoNewPrivileges=yes", "RestrictNamespaces=yes",
                      "MemoryDenyWriteExecute=yes", "SystemCallFilter=@system-service"])
# (name, shell commands) run in the guest with the helpers; each prints its DUMP/RESTORE lines
CASES = [(o.split("=")[0], f'trial sb-{o.split("=")[0].lower()} "{o}" "" ""') for o in ALONE] + [
    ("PrivateTmp+external-masters", 'trial sb-em "PrivateTmp=yes" "--enable-external-masters --enable-external-sharing" ""'),
    ("PrivateTmp+mnt[]:sm", 'trial sb-ms "PrivateTmp=yes" "--external mnt[]:sm" "--ext-mount-map auto"'),
    ("PrivateTmp+every-mount-external", "trial_ext sb-ext PrivateTmp=yes"),
    ("combined", f'trial sb-all "{ALL}" "" ""'),
    ("carried-unit-start-sandboxed", f'trial2 sb-in "{CARRIED}" "" "" ""'),
    ("carried-unit-start-plus", f'trial2 sb-plus "{CARRIED}" "" "" "+"'),
    ("carried-unit-start-plus-setpriv", f'WRAP="setpriv --no-new-privs" trial2 sb-nnp "{CARRIED}" "" "" "+"'),
]
# what kupgrade/userspace/sandbox.py assumes: case -> (dump ok, restored running)
EXPECT = {"PrivateUsers": (True, False), "PrivateTmp": (False, False), "ProtectSystem": (False, False),
          "ProtectHome": (False, False), "ProtectHostname": (True, True), "PrivateDevices": (False, False),
          "DynamicUser": (False, False), "NoNewPrivileges": (True, True), "RestrictNamespaces": (True, True),
          "MemoryDenyWriteExecute": (True, True), "SystemCallFilter": (True, True),
          "PrivateTmp+external-masters": (False, False), "PrivateTmp+mnt[]:sm": (False, False),
          "PrivateTmp+every-mount-external": (False, False), "combined": (False, False),
          "carried-unit-start-sandboxed": (True, False), "carried-unit-start-plus": (True, True),
          "carried-unit-start-plus-setpriv": (True, True)}


def _one(vm, script: Path) -> None:
    out = script.with_suffix(".out")
    try:
        r = vm.sh("bash", "-c", script.read_text(), timeout=900, check=False)
        r = {k: r.get(k) for k in ("rc", "stdout", "stderr")}
    except Exception as e:  # noqa: BLE001
        r = {"rc": -1, "stdout": "", "stderr": f"{type(e).__name__}: {e}"}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(r))
    tmp.rename(out)


def serve(vm, d: Path) -> None:
    """Each script in its own thread: a hung one does not hold the others."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "ready").write_text("1")
    started: set[Path] = set()
    while not (d / "stop").exists():
        for script in sorted(d.glob("*.sh")):
            if script not in started and not script.with_suffix(".out").exists():
                started.add(script)
                threading.Thread(target=_one, args=(vm, script), daemon=True).start()
        time.sleep(0.5)


def outcome(lines: list[str]) -> tuple[bool, bool]:
    """(dump ok, restored and running) from the helpers' lines."""
    dumped = any(l.startswith("DUMP") and " rc=0 " in l for l in lines)
    ran = any(l.startswith("RUNS") for l in lines) or any(
        l.startswith("UNIT-RESTORE") and " rc=0 " in l and "(want" in l and l.split("MainPID=")[1].split()[0]
        == l.split("(want ")[1].split(")")[0] for l in lines)
    return dumped, ran


def run(vm, image, res: Result) -> None:
    booted(vm, res)
    systemd_up(vm)
    if os.environ.get("EXPLORE_DIR"):
        vm.sh("tee", "/root/sblib.sh", input=LIB)
        serve(vm, Path(os.environ["EXPLORE_DIR"]))
        res.check(True, "served")
        return
    vm.sh("tee", "/proc/sys/kernel/ns_last_pid", input="30000")
    res.data["cases"] = {}
    for name, cmd in CASES:
        r = vm.sh("bash", "-c", LIB + "\n" + cmd + " 2>&1", timeout=300, check=False)
        lines = [l for l in r["stdout"].splitlines() if l.split(" ", 1)[0] in ("pid", "DUMP", "RESTORE", "UNIT-RESTORE", "RUNS")
                 or l.startswith("pid=") or l.startswith("   ns:")]
        got = outcome(lines)
        res.data["cases"][name] = {"dump_ok": got[0], "restored": got[1], "lines": lines}
        res.say(f"{name}: dump {'ok' if got[0] else 'FAILS'}, restore {'ok' if got[1] else 'FAILS'}\n  "
                + "\n  ".join(lines))
        res.check(got == EXPECT[name], f"{name}: dump {'ok' if EXPECT[name][0] else 'fails'}, "
                  f"restore {'ok' if EXPECT[name][1] else 'fails'} (as kupgrade/userspace/sandbox.py assumes)", "\n".join(lines))
    nnp = {n: [l for l in res.data["cases"][n]["lines"] if l.startswith("   ns:")]
           for n in ("carried-unit-start-plus", "carried-unit-start-plus-setpriv")}
    res.check(all("NoNewPrivs: 0" in l for l in nnp["carried-unit-start-plus"]) and nnp["carried-unit-start-plus"],
              "criu 3.17 does not restore no_new_privs (restored by the unit's start with \"+\": NoNewPrivs 0)",
              json.dumps(nnp))
    res.check(all("NoNewPrivs: 1" in l and "Seccomp: 2" in l for l in nnp["carried-unit-start-plus-setpriv"])
              and nnp["carried-unit-start-plus-setpriv"],
              "with `setpriv --no-new-privs criu restore` the restored process has NoNewPrivs 1 and its seccomp filters",
              json.dumps(nnp))
    show = vm.sh("bash", "-c", LIB + '\nmkunit sb-show "DynamicUser=yes"; systemctl show -p $PROPS sb-show', check=False)
    res.data["systemctl_show_dynamicuser"] = show["stdout"]
