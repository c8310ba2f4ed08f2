"""fleet: the Ansible collection (ansible/) rolls 6.12 out over two guests, serial: 1, from the host.

Two guests boot at once, systemd, their sshd reachable through QEMU's port forwarding (root by a
key the host makes), their NIC set up at boot as a server's network configuration would.
`blocked`, first in the inventory, names as its workload a job an admin started with systemd-run
(a transient unit: `kupgrade check` blocks); `carrier` runs the test workload as heartbeat.service.
The host installs the collection with ansible-galaxy and runs the playbook kupgrade.fleet.upgrade
with serial 1, the health gate `systemctl is-active heartbeat.service` and the fleet_report callback:

1. blocked: reported as blocked with kupgrade's reason and skipped (the rollout goes on):
   the same boot and kernel, its job running with the same PID, no upgrade record.
2. carrier: upgraded 6.1 -> 6.12 across the switch by kupgrade.fleet.run, the health gate
   passed, the workload as itself (same PIDs, every heartbeat once, its buffer intact).
3. The playbook ends with 0; its fleet report (JSON and the table) says all of it.
4. node_exporter's textfile directory on each guest has the metrics: the check's on both
   (upgradable 0, 1 blocker / upgradable 1), the upgrade's on carrier (success, restored).
5. kupgrade.fleet.run on its own against blocked: kupgrade run stops at its preflight; the task
   fails with kupgrade's error (outcome aborted, no switch), the host left as kupgrade left it.
Downtime: the largest gap in carrier's heartbeats (host clock; they are followed again as soon as
the new kernel's agent is up, while the play goes on)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from kupgrade.system.run import run as run_cmd

from ..image import REPO
from ..qemu import Guest, LostVMError
from ..scenario import (
    Result,
    final_record,
    heartbeat_downtime,
    kupgrade_config,
    leftovers,
    restore_log,
    stage_durations,
    systemd_up,
    unit_props,
    units_installed,
    units_started,
    workload_kept,
    write_config,
)
from ..workload import GUEST_WORKLOAD, Workload

NAME = "fleet"
DESCRIPTION = "Ansible (serial 1) over two guests by ssh: one upgraded with its workload, one blocked and untouched"
INIT = "systemd"
PORTS = {"carrier": 5561, "blocked": 5562}
NIC = f"user:{PORTS['carrier']}-22"
MAC = "52:54:00:12:34:56"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
HEALTH = "systemctl is-active heartbeat.service"
HEARTBEAT = {"heartbeat.service": "[Unit]\nDescription=test workload (heartbeat)\n"
                                   f"[Service]\nExecStart={GUEST_WORKLOAD}\n"}
# A server's network configuration, in the old boot and the new one: the NIC found by its MAC.
NET_SCRIPT = f"""#!/bin/sh
for i in $(seq 100); do
    for d in /sys/class/net/*; do [ "$(cat $d/address)" = {MAC} ] && n=${{d##*/}}; done
    [ -n "$n" ] && break
    sleep 0.2
done
ip link set dev "$n" up && ip addr replace 10.0.2.15/24 dev "$n" && ip route replace default via 10.0.2.2 dev "$n"
"""
NET_UNIT = ("[Unit]\nDescription=the NIC, as a server's network configuration sets it up (vm-test fleet)\n"
            "Before=ssh.service\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/local/sbin/vmtest-net\n"
            "[Install]\nWantedBy=multi-user.target\n")
# The image starts ssh.service only in the services scenario (a condition in a drop-in): an empty
# condition resets the list, so sshd starts here, in this boot and the next.
SSH_DROPIN = "[Unit]\nConditionKernelCommandLine=\n"


def reachable(vm, pubkey: str) -> None:
    """sshd up and reachable through the forwarded port, root's key authorized (boots too)."""
    systemd_up(vm)
    vm.sh("tee", "/usr/local/sbin/vmtest-net", input=NET_SCRIPT)
    vm.sh("chmod", "0755", "/usr/local/sbin/vmtest-net")
    vm.sh("mkdir", "-p", "/etc/systemd/system/ssh.service.d")
    vm.sh("tee", "/etc/systemd/system/ssh.service.d/zz-fleet.conf", input=SSH_DROPIN)
    units_installed(vm, {"vmtest-net.service": NET_UNIT})
    vm.sh("systemctl", "enable", "--now", "vmtest-net.service", "ssh.service")
    vm.sh("sh", "-c", "mkdir -p -m 0700 /root/.ssh && cat >> /root/.ssh/authorized_keys", input=pubkey)


def controller(workdir: Path, key: Path) -> dict[str, str]:
    """The host as Ansible's controller: the collection installed from ansible/ with ansible-galaxy,
    an inventory of the two guests (blocked first), ansible.cfg with the fleet_report callback.
    Returns the environment for ansible-playbook."""
    venv = Path(sys.executable).parent
    (workdir / "inventory.ini").write_text(
        "[kupgrade]\n"
        f"blocked ansible_port={PORTS['blocked']}\n"
        f"carrier ansible_port={PORTS['carrier']} kupgrade_health_command='{HEALTH}'\n"
        "[kupgrade:vars]\nansible_host=127.0.0.1\nansible_user=root\n"
        f"ansible_ssh_private_key_file={key}\nansible_python_interpreter=/usr/bin/python3\n"
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n")
    (workdir / "ansible.cfg").write_text(
        f"[defaults]\ncollections_path = {workdir / 'collections'}\ncallbacks_enabled = kupgrade.fleet.fleet_report\n"
        f"[ssh_connection]\npipelining = True\ncontrol_path_dir = {workdir / 'cp'}\n"
        f"[callback_fleet_report]\nreport_path = {workdir / 'fleet.json'}\n")
    env = {"PATH": f"{venv}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8",
           "ANSIBLE_CONFIG": str(workdir / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    run_cmd([venv / "ansible-galaxy", "collection", "install", "--force", REPO / "ansible",
             "-p", workdir / "collections"], env=env, timeout=120,
            hint="scripts/setup installs ansible-core into .venv")
    return env


def play(vm, image, env: dict[str, str], wl: Workload) -> tuple[subprocess.CompletedProcess, int]:
    """The rollout, serial 1 (the playbook's default), as an admin starts it; output kept. While it
    runs, carrier's heartbeats are followed again as soon as its new kernel's agent is up (the old
    one died with the switch), so that their gap measures the pause. Returns the playbook's result
    and the last heartbeat the old kernel delivered."""
    workdir = vm.workdir
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-v", "-i", str(workdir / "inventory.ini"),
            "kupgrade.fleet.upgrade", "-e", "kupgrade_serial=1"]
    out = workdir / "ansible-playbook.txt"
    with out.open("w") as log:
        proc = subprocess.Popen(argv, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, text=True)
        last_before = switched = None
        while proc.poll() is None and switched is None:
            try:
                switched = vm.event("ready", 1, where=lambda e: e.get("kernel") == image.kernel_to)
            except LostVMError:
                if vm.proc.poll() is not None:
                    proc.kill()
                    raise
        if switched is not None:
            last_before = wl.beats[-1].counter      # all the old kernel's agent relayed came first
            wl.follow()
        proc.wait(timeout=1800)
    return subprocess.CompletedProcess(argv, proc.returncode, out.read_text(), ""), last_before


def carrier_ready(vm, image) -> tuple[Workload, dict]:
    """heartbeat.service running (PIDs above 30000), followed; kupgrade configured for it."""
    units_installed(vm, HEARTBEAT)
    units_started(vm, "heartbeat.service")
    wl = Workload(vm, pid=int(unit_props(vm, "heartbeat.service")["MainPID"]))
    write_config(vm, kupgrade_config(image.kernel_to, units=["heartbeat.service"]))
    return wl, wl.attach()


def blocked_ready(other, image) -> dict:
    """A job started by hand with systemd-run, named as the workload. Returns the guest's state."""
    other.sh("systemd-run", "--unit=batch-job", "--description=a job an admin started by hand", "/bin/sleep",
             "infinity")
    write_config(other, kupgrade_config(image.kernel_to, units=["batch-job.service"]))
    return untouched_state(other)


def untouched_state(vm) -> dict:
    """Its boot, kernel and job; whether kupgrade left an upgrade record or the upgrade's metrics."""
    exists = lambda path: vm.sh("test", "-e", path, check=False)["rc"] == 0      # noqa: E731
    return {"boot_id": vm.read("/proc/sys/kernel/random/boot_id").strip(),
            "kernel": vm.sh("uname", "-r")["stdout"].strip(), "job": unit_props(vm, "batch-job.service"),
            "record": exists("/var/lib/kupgrade/records/last"),
            "upgrade_metrics": exists(f"{TEXTFILE_DIR}/kupgrade.prom")}


def fleet_report(res: Result, workdir: Path, r: subprocess.CompletedProcess, image) -> dict:
    """The playbook's end and its fleet report: carrier upgraded, blocked blocked, both in the table."""
    res.check(r.returncode == 0, "ansible-playbook kupgrade.fleet.upgrade (serial 1) ran to the end: exit 0",
              (r.stdout + r.stderr)[-3000:])
    path = workdir / "fleet.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    res.data["fleet_report"] = doc
    hosts = {h["host"]: h for h in doc.get("hosts", [])}
    c, b = hosts.get("carrier", {}), hosts.get("blocked", {})
    res.check([h["host"] for h in doc.get("hosts", [])] == ["blocked", "carrier"] and
              doc.get("counts") == {"upgraded": 1, "blocked": 1},
              "the fleet report lists both hosts: 1 upgraded, 1 blocked", json.dumps(doc)[:2000])
    res.check(c.get("status") == "upgraded" and c.get("kernel_before") == image.kernel_from and
              c.get("kernel_after") == image.kernel_to and c.get("outcome") == "restored" and
              c.get("carried") == ["unit:heartbeat.service"] and isinstance(c.get("downtime_s"), (int, float)),
              "fleet report, carrier: upgraded 6.1 -> 6.12, restored, heartbeat.service carried, a downtime",
              json.dumps(c))
    res.check(str(c.get("health", "")).startswith(HEALTH) and "exit 0" in str(c.get("health")),
              "fleet report, carrier: the health gate passed", json.dumps(c))
    res.check(b.get("status") == "blocked" and "batch-job.service is a transient unit" in b.get("reason", "") and
              b.get("kernel_before") == b.get("kernel_after") == image.kernel_from and b.get("outcome") is None,
              "fleet report, blocked: blocked, kupgrade's reason, kernel unchanged, no upgrade", json.dumps(b))
    table = r.stdout[r.stdout.find("KUPGRADE FLEET REPORT"):]
    res.check("KUPGRADE FLEET REPORT" in r.stdout and all(f"{h} " in table for h in ("carrier", "blocked")) and
              "2 host(s): 1 upgraded, 1 blocked" in table, "the play's output ends with the fleet report's table",
              table[:2000])
    return doc


def metrics(vm, res: Result, host: str, want: dict[str, tuple[str, ...]]) -> None:
    """The textfile collector's files on the guest hold these lines (a missing file: empty)."""
    found = {f: vm.sh("cat", f"{TEXTFILE_DIR}/{f}", check=False)["stdout"] for f in want}
    res.data.setdefault("metrics", {})[host] = found
    missing = [f"{f}: {line}" for f, lines in want.items() for line in lines if line not in found[f]]
    res.check(not missing, f"{host}: node_exporter's textfile directory has the metrics ({', '.join(want)})",
              "missing " + "; ".join(missing) + "\n" + json.dumps(found)[:1500])


def carrier_after(vm, image, res: Result, wl: Workload, before: dict, last_before: int | None) -> None:
    """In 6.12, the workload as itself, the record restored; the metrics of both."""
    res.check(vm.sh("uname", "-r")["stdout"].strip() == image.kernel_to, "carrier runs 6.12")
    if last_before is None:
        res.check(False, "carrier's agent came back in 6.12 during the play")
        return
    try:
        wl.wait_beats(5, after=last_before, timeout=180)
    finally:
        res.data["restore_log"] = restore_log(vm)[-4000:]
    res.data.update(workload_kept(res, wl, before, "carrier's heartbeat.service"))
    heartbeat_downtime(vm, res, image.kernel_to, wl, last_before)
    rec = final_record(vm)
    res.data.update(record=rec, stages=stage_durations(rec), kernel_after=image.kernel_to)
    res.check(rec["outcome"] == "restored", "carrier's upgrade record says restored", rec["outcome"])
    metrics(vm, res, "carrier", {"kupgrade-check.prom": ("kupgrade_upgradable 1",),
                                 "kupgrade.prom": ("kupgrade_last_upgrade_success 1", 'outcome="restored"',
                                                   f'kernel_to="{image.kernel_to}"')})


def blocked_after(other, res: Result, before: dict) -> None:
    now = untouched_state(other)
    res.data["blocked_guest"] = {"before": before, "after": now}
    res.check(now == before and not now["record"] and not now["upgrade_metrics"] and
              now["job"]["ActiveState"] == "active", "blocked: untouched (same boot, same kernel, its job running "
              "with the same PID, no upgrade record, no upgrade metrics)", json.dumps(res.data["blocked_guest"]))
    metrics(other, res, "blocked", {"kupgrade-check.prom": ("kupgrade_upgradable 0", "kupgrade_check_blockers 1")})


def run_refused(other, res: Result, env: dict[str, str], before: dict) -> None:
    """kupgrade.fleet.run on its own (ad hoc) against the blocked guest: kupgrade run stops at its
    preflight, in the same boot; the action says so with kupgrade's error and the record, and
    leaves the host as kupgrade left it (the job running, nothing of the run left, its unit gone)."""
    workdir = other.workdir.parent
    argv = [str(Path(sys.executable).parent / "ansible"), "-o", "-i", str(workdir / "inventory.ini"), "blocked",
            "-m", "kupgrade.fleet.run", "-a", "poll_interval=1"]
    r = run_cmd(argv, env=env, cwd=workdir, check=False, timeout=600)
    out = r.stdout.decode(errors="replace")
    (workdir / "ansible-run-blocked.txt").write_text(out + r.stderr.decode(errors="replace"))
    try:
        got = json.loads(out.split("=> ", 1)[1])
    except (IndexError, ValueError):
        got = {}
    res.data["run_refused"] = {"rc": r.returncode, **{k: got.get(k) for k in ("switched", "outcome", "msg", "unit")}}
    res.check(r.returncode != 0 and "| FAILED! =>" in out and got.get("switched") is False and
              got.get("outcome") == "aborted" and "kupgrade: blocked: batch-job.service is a transient unit"
              in got.get("msg", ""), "kupgrade.fleet.run on the blocked guest fails with kupgrade's own error, "
              "no switch, outcome aborted", out[-2000:])
    now = untouched_state(other)
    units = other.sh("systemctl", "list-units", "--all", "--no-legend", "kupgrade-ansible-*")["stdout"].strip()
    left = leftovers(other)
    res.check(now["boot_id"] == before["boot_id"] and now["job"] == before["job"] and not units and not left,
              "... and leaves it as kupgrade left it: same boot, the job running, nothing of the run left, its "
              "unit gone", json.dumps({"now": now, "units": units, "leftovers": left}))


def run(vm, image, res: Result) -> None:
    other = Guest(image, vm.workdir / "blocked", init="systemd", nic=f"user:{PORTS['blocked']}-22")
    with other:                       # both boot at once
        key = vm.workdir / "admin-key"
        key.unlink(missing_ok=True)
        run_cmd(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], hint="apt-get install openssh-client")
        env = controller(vm.workdir, key)
        res.data["kernel_before"] = vm.event("ready", 300)["kernel"]
        other.event("ready", 300)
        for guest in (vm, other):
            reachable(guest, key.with_suffix(".pub").read_text())
        wl, wl_before = carrier_ready(vm, image)
        untouched = blocked_ready(other, image)
        t0 = time.monotonic()
        r, last_before = play(vm, image, env, wl)
        res.data["play_s"] = round(time.monotonic() - t0, 1)
        fleet_report(res, vm.workdir, r, image)
        carrier_after(vm, image, res, wl, wl_before, last_before)
        blocked_after(other, res, untouched)
        run_refused(other, res, env, untouched)
