"""faults: whatever fails or is killed before the switch, every workload keeps running with its
state; then a switch that needs what the fault fixes did (a kernel given by a path with another
file name, a snapshot larger than the initramfs' /run, memory too tight for the classic load).

Each case ends with the same check: the workload has its PIDs, its buffer's checksum, its
heartbeat continuing exactly once per tick, no task left stopped, nothing of the run left
(tmpfs, kexec kernel, journal, criu's lock table). `cases` in the result JSON: name, lost (the
number of workloads lost: 0), and what was seen."""

from __future__ import annotations

import json

from ..scenario import (Result, kupgrade_config, last_record, leftovers, run_failing, stage_durations, started,
                        wait_outcome, write_config)
from ..workload import Workload

NAME = "faults"
DESCRIPTION = ("kupgrade killed during the dump and the packing (+ recover), SIGTERM at the go/no-go, "
               "ENOSPC, a child forked during prepare; then 6.1 -> 6.12 with a kernel by path and a "
               "snapshot beyond the initramfs /run limit")
# With the 64 MiB workload: 224 MiB > 10 % of the 2 GiB guest (the initramfs' /run, 204.8 MiB).
# Not larger: the load's three copies fill the guest's memory and then take minutes under TCG.
BIG_MIB = 160
FAULT_MARKER = "/run/kupgrade-fault.{}"


def background(vm, env: str = "", log: str = "/root/run.log") -> None:
    """`kupgrade run --yes` in the background (its PID in /root/run.pid)."""
    vm.sh("sh", "-c", f"{env} setsid kupgrade run --yes > {log} 2>&1 & echo $! > /root/run.pid")


def wait_marker(vm, name: str) -> None:
    vm.sh("sh", "-c", f"while [ ! -e {FAULT_MARKER.format(name)} ]; do sleep 0.05; done", timeout=300)


def wait_gone(vm) -> None:
    """Wait for the background run to end."""
    vm.sh("sh", "-c", "while kill -0 $(cat /root/run.pid) 2>/dev/null; do sleep 0.05; done", timeout=300)


def alive(vm, res: Result, wl: Workload, before: dict, case: dict) -> None:
    """The common end of every case: the workload goes on as before, nothing is left."""
    wl.wait_beats(3, after=wl.beats[-1].counter, timeout=180)
    now = wl.state()
    pids = [now["pid"], now["child"], *now.get("late", [])]
    states = vm.sh("ps", "-o", "stat=", "-p", ",".join(map(str, pids)), check=False)["stdout"].split()
    ok = (now["pid"] == before["pid"] and now["child"] == before["child"] and now["sha256"] == before["sha256_start"]
          and wl.consecutive() and len(states) == len(pids) and not any(s.startswith("T") for s in states))
    case["lost"] = 0 if ok else 1
    case["left_behind"] = leftovers(vm)
    res.check(ok, f"{case['name']}: the workload runs on with its PIDs, buffer and heartbeat, no task stopped",
              f"{before['pid']}/{before['child']} -> {json.dumps(now)[:300]}; states {states}; {wl.span()}")
    res.check(not case["left_behind"], f"{case['name']}: nothing of the run left behind", ", ".join(case["left_behind"]))


def recover(vm, res: Result, case: dict) -> None:
    """After a kill -9: run refuses (naming recover), recover undoes, run is possible again."""
    r = vm.sh("kupgrade", "check", check=False, timeout=300)
    case["check_after_kill"] = (r["stdout"] + r["stderr"])[-600:]
    res.check(r["rc"] == 3 and "kupgrade recover" in r["stdout"] + r["stderr"],
              f"{case['name']}: check blocks and names `kupgrade recover`", case["check_after_kill"])
    r = vm.sh("kupgrade", "recover", check=False, timeout=600)
    case["recover"] = {"rc": r["rc"], "output": (r["stdout"] + r["stderr"])[-800:]}
    res.check(r["rc"] == 0 and "recovered run" in r["stdout"], f"{case['name']}: kupgrade recover succeeds",
              case["recover"]["output"])
    rec = last_record(vm)
    res.check(rec["outcome"] == "aborted" and rec["stages"][-1]["name"] == "rollback",
              f"{case['name']}: the record ends with the rollback", json.dumps(rec["stages"][-1])[:500])


SHM_USER = ("import ctypes, time\nlibc = ctypes.CDLL(None)\nlibc.shmat.restype = ctypes.c_void_p\n"
            "shmid = libc.shmget(0, 1 << 20, 0o1600)\nlibc.shmat(shmid, None, 0)\n"
            "open('/run/shm-user.id', 'w').write(str(shmid))\nwhile True: time.sleep(1)\n")


def not_carried(vm, res, image) -> dict:
    """What a snapshot would not carry is named by check, with the PID and the object: host
    System V shared memory, a session whose leader is outside the selected tree, a PID the new
    kernel's own threads take before userspace (estimated from this boot's, see bootpids.py), a
    file open on a tmpfs that is too large to carry (volatile.py; small ones are carried)."""
    case = {"name": "check-names-what-is-not-carried", "lost": 0}
    early = vm.read("/run/kupgrade-early-pids")
    pids_line = next(line for line in early.splitlines() if line.startswith("pids"))
    highest = max(int(p) for p in pids_line.split()[1:])
    low = vm.call("spawn", argv=["sleep", "100000"], log="/run/low.log", last_pid=highest)["pid"]
    # 17 MiB (sparse) on /run: beyond what kupgrade carries of a tmpfs (volatile.MAX_FILE)
    keeper = vm.call("spawn", argv=["python3", "-c", "import time; f = open('/run/vmtest-keeper', 'w'); "
                                    "f.truncate(17 << 20); time.sleep(100000)"], log="/var/log/keeper.log")["pid"]
    case["early_pids"] = {"kernel": image.kernel_from, "highest": highest, "low_workload_pid": low}
    shm = vm.call("spawn", argv=["python3", "-c", SHM_USER], log="/run/shm-user.log")["pid"]
    vm.sh("sh", "-c", "setsid sh -c 'sleep 100000 & echo $! > /run/inner.pid; wait' > /dev/null 2>&1 &")
    vm.sh("sh", "-c", "until [ -s /run/inner.pid ] && [ -s /run/shm-user.id ]; do sleep 0.05; done")
    inner = int(vm.read("/run/inner.pid"))
    shmid = vm.read("/run/shm-user.id").strip()
    vm.sh("sh", "-c", f"until ls -l /proc/{keeper}/fd | grep -q vmtest-keeper; do sleep 0.05; done")
    r = vm.sh("kupgrade", "check", "--pid", str(shm), "--pid", str(inner), "--pid", str(low), "--pid", str(keeper),
              "--kernel", image.kernel_to, check=False, timeout=300)
    out = " ".join((r["stdout"] + r["stderr"]).split())
    case["check"] = out[-1500:]
    res.check(r["rc"] == 3, f"{case['name']}: check exits 3", out[-800:])
    res.check(f"PID {shm}" in out and f"shmid {shmid}" in out and "SysV" in out,
              f"{case['name']}: names the PID using host System V shared memory and the segment", out[-1500:])
    res.check(f"PID {inner}" in out and "session" in out,
              f"{case['name']}: names the PID whose session leader is outside the tree", out[-1500:])
    res.check(f"PID(s) [{low}] would be taken in {image.kernel_to}'s boot" in out,
              f"{case['name']}: names PID {low}, which {image.kernel_to}'s own threads take before userspace "
              f"(this boot's held up to {highest})", out[-1500:])
    res.check(f"PID {keeper} (python3) has /run/vmtest-keeper open (fd" in out
              and "it is on a tmpfs (/run) and larger than kupgrade carries" in out,
              f"{case['name']}: names the file on a tmpfs too large to carry, which the new boot will not have",
              out[-1500:])
    vm.sh("kill", str(shm), str(inner), str(low), str(keeper))
    return case


def killed_during_dump(vm, res, wl, before) -> dict:
    case = {"name": "sigkill-during-dump"}
    vm.sh("sh", "-c", "setsid kupgrade run --yes > /root/run.log 2>&1 & k=$!; "
                      "while ! pgrep -f '^criu dump' > /dev/null; do sleep 0.01; done; kill -9 $k; "
                      "pgrep -f '^criu dump' > /root/criu-at-kill || true", timeout=300)
    case["criu_running_at_kill"] = bool(vm.read("/root/criu-at-kill").strip())
    recover(vm, res, case)
    alive(vm, res, wl, before, case)
    return case


def interrupt_at(vm, point: str, signal: str) -> None:
    """`kupgrade run` stopped at a fault point (`POINT:hang`), then sent a signal there."""
    background(vm, f"KUPGRADE_FAULT={point}:hang")
    wait_marker(vm, point)
    vm.sh("sh", "-c", f"kill -{signal} $(cat /root/run.pid)")
    wait_gone(vm)
    vm.sh("rm", "-f", FAULT_MARKER.format(point))


def killed_while_packing(vm, res, wl, before) -> dict:
    case = {"name": "sigkill-while-packing"}
    interrupt_at(vm, "pack", "KILL")
    recover(vm, res, case)
    alive(vm, res, wl, before, case)
    return case


def sigterm_at_go(vm, res, wl, before) -> dict:
    case = {"name": "sigterm-at-go-no-go"}
    interrupt_at(vm, "go", "TERM")
    log = vm.read("/root/run.log")
    case["output"] = log[-600:]
    res.check("interrupted by SIGTERM" in log, f"{case['name']}: one line says it was interrupted", log[-600:])
    rec = last_record(vm)
    res.check(rec["outcome"] == "aborted" and any(s["name"] == "kexec" for s in rec["stages"]),
              f"{case['name']}: rolled back after the kexec load", rec["outcome"])
    alive(vm, res, wl, before, case)
    return case


def exec_fails_frozen(vm, res, wl, before) -> dict:
    """`kexec --exec` returns (the kernel did not switch) after the file systems were frozen:
    they are thawed, the rollback runs."""
    case = {"name": "exec-fails-after-the-freeze"}
    r = run_failing(vm, "exec")
    case["rc"], case["error"] = r["rc"], r["stderr"][-400:]
    rec = last_record(vm)
    case["frozen"] = next((s["details"].get("freeze") for s in rec["stages"] if s["name"] == "kexec"), None)
    res.check(r["rc"] not in (0, None) and "/" in (case["frozen"] or []) and rec["outcome"] == "aborted",
              f"{case['name']}: the root file system was frozen, the run failed and rolled back",
              json.dumps(case)[:800])
    w = vm.sh("sh", "-c", "echo ok > /root/writable && cat /root/writable", check=False, timeout=60)
    res.check(w["stdout"].strip() == "ok", f"{case['name']}: the file systems are writable again", json.dumps(w))
    alive(vm, res, wl, before, case)
    return case


def enospc(vm, res, wl, before, image) -> dict:
    case = {"name": "enospc-in-snapshot-tmpfs"}
    write_config(vm, kupgrade_config(image.kernel_to, pids=[before["pid"]]) + '[snapshot]\nsize = "24M"\n')
    r = run_failing(vm)
    case["rc"], case["error"] = r["rc"], r["stderr"][-400:]
    res.check(r["rc"] == 5 and "criu dump" in r["stderr"], f"{case['name']}: the dump fails, exit 5, one line",
              r["stderr"][-600:])
    write_config(vm, kupgrade_config(image.kernel_to, pids=[before["pid"]]))
    alive(vm, res, wl, before, case)
    return case


def child_during_prepare(vm, res, wl, before) -> dict:
    """A child forked after preflight: in the dump, and resumed by the rollback."""
    case = {"name": "child-forked-during-prepare"}
    background(vm, "KUPGRADE_FAULT=prepare:wait,kexec-load")
    wait_marker(vm, "prepare")
    vm.sh("kill", "-USR2", str(before["pid"]))
    wl.wait_beats(2, after=wl.beats[-1].counter)
    late = wl.state()["late"]
    vm.sh("rm", "-f", FAULT_MARKER.format("prepare"))
    wait_gone(vm)
    rec = last_record(vm)
    dumped = [p for w in rec["workloads"] for p in w["pids"]]
    case["late_child"], case["dumped_pids"] = late, dumped
    res.check(bool(late) and late[0] in dumped, f"{case['name']}: the late child was in the dump", f"{late} {dumped}")
    alive(vm, res, wl, before, case)
    return case


def switch(vm, res, wl, before, image) -> dict:
    """The target by a path whose file name says nothing; a big second workload: the snapshot
    exceeds the initramfs' /run (10 % of RAM); the load's three copies of it still fit (check
    says so, and nothing is OOM-killed)."""
    case = {"name": "switch-kernel-by-path-big-snapshot"}
    vm.sh("cp", f"/boot/vmlinuz-{image.kernel_to}", "/root/next-kernel")
    vm.sh("cp", f"/boot/initrd.img-{image.kernel_to}", "/root/next-initrd")
    big = Workload(vm, env={"KUPGRADE_WL_DIR": "/var/lib/big", "KUPGRADE_WL_MIB": str(BIG_MIB)})
    big.start(last_pid=31000)
    big_before = big.state()
    write_config(vm, f'[workloads]\npids = [{before["pid"]}, {big.pid}]\n'
                     '[target]\nvmlinuz = "/root/next-kernel"\ninitrd = "/root/next-initrd"\n')
    r = vm.sh("kupgrade", "check", "--json", check=False, timeout=300)
    pre = json.loads(r["stdout"])["stages"][0]["details"]
    case["check"] = {k: pre.get(k) for k in ("target", "kexec_method", "kexec_method_why", "snapshot_estimate_bytes",
                                             "mem_available_bytes", "blockers")}
    res.check(r["rc"] == 0 and pre["target"]["version"] == image.kernel_to,
              f"{case['name']}: check names the kernel by its header ({image.kernel_to}), no blocker",
              json.dumps(case["check"])[:800])
    last_before = wl.beats[-1].counter
    rid = vm.send("run", argv=["kupgrade", "run", "--yes"], timeout_s=900, output="/dev/console")
    switched = vm.wait_switch(rid, 900)
    res.data["kernel_after"] = switched.get("kernel")
    res.check(switched.get("kernel") == image.kernel_to, f"{case['name']}: switched to {image.kernel_to}",
              json.dumps(switched)[:800])
    wl.follow()
    wl.wait_beats(5, after=last_before, timeout=300)
    rec = wait_outcome(vm, "restored", "restore-failed")
    case["outcome"], case["kexec_method"] = rec["outcome"], next(
        (s["details"].get("method") for s in rec["stages"] if s["name"] == "kexec"), None)
    res.data["record"] = rec
    big_after = big.state()
    big_ok = big_after["pid"] == big_before["pid"] and big_after["sha256"] == big_before["sha256_start"]
    res.check(big_ok, f"{case['name']}: the {BIG_MIB} MiB workload came back whole",
              f"{big_before['pid']} -> {json.dumps(big_after)[:300]}")
    res.check(rec["outcome"] == "restored", f"{case['name']}: the record says restored", rec["outcome"])
    killed = [line.text for line in vm.console if "Out of memory" in line.text]
    res.check(not killed, f"{case['name']}: the memory check held: nothing was OOM-killed", "\n".join(killed))
    alive(vm, res, wl, before, case)
    case["lost"] += 0 if big_ok else 1
    seen = json.loads(vm.read(f"/var/lib/kupgrade/boot-pids/{image.kernel_to}.json"))
    res.data["boot_pids"] = {k: {"cpus": v["cpus"], "highest": max(v["pids"]), "count": len(v["pids"])}
                             for k, v in seen.items()}
    res.check(bool(seen), f"{case['name']}: the new kernel remembered the PIDs its threads took before userspace",
              json.dumps(res.data["boot_pids"]))
    return case


def run(vm, image, res: Result) -> None:
    wl, before = started(vm, res)
    pid = wl.pid
    write_config(vm, kupgrade_config(image.kernel_to, pids=[pid]))
    cases = res.data["cases"] = [not_carried(vm, res, image)]
    for step in (killed_during_dump, killed_while_packing, sigterm_at_go, child_during_prepare, exec_fails_frozen):
        cases.append(step(vm, res, wl, before))
    cases.append(enospc(vm, res, wl, before, image))
    cases.append(switch(vm, res, wl, before, image))
    res.data["pids_preserved"] = all(c["lost"] == 0 for c in cases)
    res.data["state_preserved"] = res.data["pids_preserved"]
    gap, _, _ = wl.largest_gap()
    res.data["downtime_s"] = round(gap, 3)
    res.data["stages"] = stage_durations(res.data["record"])
