"""services: the servers a Debian admin runs, as Debian installs them, carried with --all-services.

The guest boots systemd with openssh-server, cron, nginx, memcached, redis-server and
postgresql started at boot by their own units (boot-time PIDs; memcached's and redis's units sandboxed as shipped), and
logind with the system bus (Debian's default: ssh logins in session scopes). No workload is
named: `workloads.all_services = true`.

1. `kupgrade check --all-services` passes and gives every running service its fate: carried,
   started fresh (why: the unit's own user namespace, a file on tmpfs, ...) or left to
   the boot (journald, udevd, the agent kupgrade runs in).
2. `kupgrade run` to 6.12 does what check said: every carried service is active with the same
   main PID and the same PIDs in its cgroup, its state continued (redis's and memcached's keys,
   when carried); every service that starts fresh was stopped cleanly and is active again
   (a new main PID, its state as a fresh start has it); none is missing; the record lists the
   fresh ones with their reasons.
3. The admin runs `kupgrade run` over ssh from the host (a pty, through QEMU's port forwarding),
   with a counter after it in the same shell: kupgrade steps out of the session (carried with
   ssh.service, its logind scope frozen with it), the session freezes at the switch and goes on
   in 6.12, same connection, same PIDs, every tick once.
4. Our own vmtest-sandboxed.service (DynamicUser, PrivateTmp, ProtectSystem=strict: a note server,
   guest/notes.py) takes a write every 100 ms from the host on one connection during the upgrade:
   carried (same process, same dynamic UID), every acknowledged write kept, no error, no
   reconnect. `units` in the result: per unit what it went through and what its client saw.
5. PostgreSQL takes an INSERT in a transaction of its own every 100 ms from the host (pg8000).
   As Debian installs it, its System V segments are in the host's IPC namespace, which criu does
   not carry (check says so, with the hint PrivateIPC=yes; the faults scenario proves that
   blocker); the image adds that one drop-in, so PostgreSQL is carried: same main PID, every task
   dumped back with its PID, every committed row there, the client's connection never failed
   (errors and reconnects in `units`).
7. vmtest-shmclash.service (guest/shmclash.py, PrivateIPC=yes): when the run's preflight has
   looked at the workloads, a device hook has it attach a SysV segment numbered like its shared
   memory, next to it (what PostgreSQL's dynamic shared memory did in a CI run: criu's dump
   failed; carry.shm_clashes), and at quiesce (frozen) tells it to let it go, which it can only
   once it runs. kupgrade thaws it until the clash is gone, freezes it again and carries it: same
   PID, its shared memory's counter went on; the record says how long it waited (clash_wait_s).
6. memcached (listening for the host: `-l 0.0.0.0`, the rest as shipped) takes a set every 100 ms
   from the host on one connection: carried, every set it stored is there, no error, no reconnect.
Downtime: the largest gap in nginx's answers to the host (asked every 100 ms on one keep-alive
connection through QEMU's port forwarding: it never failed), whatever nginx's fate."""

from __future__ import annotations

import json
import subprocess
import threading
import time

from ..clients import Http, Memcached, Notes, Sql, Writer, largest_gap
from ..image import (CLASH_UNIT, POSTGRES_PASSWORD, POSTGRES_UNIT as POSTGRES, SANDBOXED_UNIT, SERVICE_UNITS,
                     SERVICES_GATE)
from ..qemu import Machine
from ..scenario import (HOOKS_D, Result, booted, final_record, keep_journal, kupgrade_config, stage_of,
                        stage_durations, systemd_up, unit_props, write_config)
from .tcp import configure_nic

NAME = "services"
DESCRIPTION = "Debian's servers as installed (started at boot, sandboxed units) carried or started fresh, --all-services"
INIT = "systemd"
HOST_PORT = 5557
SSH_PORT = 5558
NOTES_PORT = 5559         # the note server of vmtest-sandboxed.service (guest/notes.py)
SQL_PORT = 5560           # PostgreSQL
CACHE_PORT = 5561         # memcached
# servers that fork on their own (PostgreSQL: a backend per connection, autovacuum workers): the
# PIDs compared are those the snapshot held (the record's), not those the test saw at boot
FORKING = {POSTGRES}
NIC = f"user:{HOST_PORT}-80,{SSH_PORT}-22,{NOTES_PORT}-7070,{SQL_PORT}-5432,{CACHE_PORT}-11211"
UNITS = [*SERVICE_UNITS, SANDBOXED_UNIT, CLASH_UNIT]
# the admin's session: kupgrade run in it, then a counter that must go on across the switch
SESSION = "kupgrade run --yes; i=0; while sleep 0.5; do i=$((i+1)); echo tick $i; done"
MACHINE = Machine(append=SERVICES_GATE)
MEMCACHED = ("import socket,sys\ns=socket.create_connection(('127.0.0.1',11211))\n"
             "s.sendall(sys.argv[1].encode().replace(b'|', b'\\r\\n'))\nprint(s.recv(4096).decode().strip())\n")


CLASH_DIR = "/var/lib/vmtest-shmclash"      # guest/shmclash.py's
CLASH_ARMED = "/run/vmtest-shmclash-armed"   # only `kupgrade run`'s preflight makes the clash, not check's
CLASH_HOOK = f"""#!/bin/sh
# vm-tests: when armed, the run's preflight (after kupgrade has looked at the workloads) has
# vmtest-shmclash make its clash; quiesce (it is frozen) tells it to end it, which it can only once thawed.
case "$1" in
describe) echo '{{"points": ["preflight", "quiesce"], "description": "vm-tests: a SysV clash made and ended"}}'; exit 0;;
esac
cat > /dev/null
main=$(systemctl show -P MainPID {CLASH_UNIT})
if [ -e {CLASH_ARMED} ]; then
    case "$1" in
    preflight) kill -USR2 "$main"; until [ -e {CLASH_DIR}/made.json ]; do sleep 0.05; done;;
    quiesce) kill -USR1 "$main";;
    esac
fi
[ "$1" = preflight ] && echo '{{"blockers": []}}' || echo '{{}}'
"""


def clash_at_the_switch(vm) -> None:
    """The hook (CLASH_HOOK) in hooks.d, armed for the run."""
    vm.sh("mkdir", "-p", HOOKS_D)
    vm.sh("tee", f"{HOOKS_D}/vmtest-shmclash", input=CLASH_HOOK)
    vm.sh("chmod", "0755", f"{HOOKS_D}/vmtest-shmclash")
    vm.sh("touch", CLASH_ARMED)


def clash_waited_out(vm, res: Result, rec: dict) -> None:
    """The run's preflight had the server attach a SysV segment numbered like its shared memory,
    next to it; kupgrade thawed it (the record's clash_wait_s) until it had let the segment go, and
    carried it: same PID, its shared memory's counter went on."""
    vm.sh("systemctl", "kill", "-s", "HUP", "--kill-who=main", CLASH_UNIT, check=False)
    vm.sh("sh", "-c", f"until [ -e {CLASH_DIR}/count.json ]; do sleep 0.05; done", check=False, timeout=60)
    made, ended, count = (json.loads(vm.sh("cat", f"{CLASH_DIR}/{name}.json", check=False)["stdout"] or "{}")
                          for name in ("made", "ended", "count"))
    dumps = (stage_of(rec, "snapshot").get("details") or {}).get("dumps") or {}
    dump = next((d for d in dumps.values() if d.get("selector") == f"unit:{CLASH_UNIT}"), {})
    res.data["clash"] = {"made": made, "ended": ended, "count_after": count, "dump": dump}
    res.check(made.get("shmid") == made.get("number") and made.get("next_to_it"),
              "the run's preflight had vmtest-shmclash attach a SysV segment numbered like its shared memory, "
              "next to it", json.dumps(res.data["clash"]))
    res.check(ended.get("rc") == [0, 0] and dump.get("clash_wait_s", 0) > 0,
              "kupgrade thawed it until it had let the segment go (the record's clash_wait_s), then dumped it",
              json.dumps(res.data["clash"]))
    res.check(count.get("pid") == made.get("pid") and count.get("count", 0) > made.get("count", 1 << 62),
              "carried: the same process, its shared memory's counter went on", json.dumps(res.data["clash"]))


class AdminSession:
    """An admin on the host runs `kupgrade run` over ssh (a pty: ssh -tt) through QEMU's port
    forwarding, then a counter in the same shell; the host keeps every line with its time."""

    def __init__(self, vm) -> None:
        key = vm.workdir / "admin-key"
        key.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        vm.sh("sh", "-c", "mkdir -p -m 0700 /root/.ssh && cat >> /root/.ssh/authorized_keys",
              input=(key.with_suffix(".pub")).read_text())
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(
            ["ssh", "-tt", "-i", str(key), "-p", str(SSH_PORT), "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "ServerAliveInterval=0", "root@127.0.0.1", SESSION],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.lines.append((time.time(), raw.decode(errors="replace").rstrip()))

    def ticks(self, since: float = 0.0) -> list[int]:
        return [int(t.split()[1]) for at, t in self.lines if at >= since and t.startswith("tick ")]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def admin_session_went_on(vm, res: Result, admin: AdminSession, t_up: float) -> None:
    """The admin's terminal: the same ssh connection (its client never ended), kupgrade stepped
    out of it, and the counter went on in the new kernel with every tick once."""
    deadline = time.time() + 60
    while len(admin.ticks(t_up)) < 5 and time.time() < deadline:
        time.sleep(0.2)
    ticks = admin.ticks()
    res.data["admin_session"] = {"lines": [t for _, t in admin.lines][-40:], "client_alive": admin.proc.poll() is None,
                                 "ticks": len(ticks), "ticks_in_new_kernel": len(admin.ticks(t_up))}
    (vm.workdir / "admin-session.txt").write_text("\n".join(f"{at:.3f} {t}" for at, t in admin.lines) + "\n")
    res.check(admin.proc.poll() is None and len(admin.ticks(t_up)) >= 5 and ticks == list(range(1, len(ticks) + 1)),
              "the admin's ssh session went on in 6.12: same connection, the counter continued with every tick once",
              json.dumps(res.data["admin_session"])[-2000:])
    res.check(any("steps out of this terminal" in t for _, t in admin.lines),
              "kupgrade said on the admin's terminal that it steps out and goes on in the background",
              json.dumps(res.data["admin_session"])[-1500:])


def show(vm, unit: str) -> dict:
    props = unit_props(vm, unit, "MainPID,ActiveState,ControlGroup,NRestarts,ExecMainStartTimestamp")
    cg = props.get("ControlGroup", "")
    procs = vm.sh("cat", f"/sys/fs/cgroup{cg}/cgroup.procs", check=False)["stdout"].split() if cg else []
    return {**props, "pids": sorted(int(p) for p in procs)}


def put_state(vm) -> None:
    vm.sh("runuser", "-u", "postgres", "--", "psql", "-q", "-c", f"ALTER USER postgres PASSWORD '{POSTGRES_PASSWORD}'",
          "-c", "CREATE TABLE vmtest (n integer PRIMARY KEY)")
    vm.sh("redis-cli", "SET", "vmtest", "kept-across-the-upgrade")
    vm.sh("python3", "-c", MEMCACHED, "set vmtest 0 0 23|kept-across-the-upgrade|")


def get_state(vm) -> dict:
    redis = vm.sh("redis-cli", "GET", "vmtest", check=False)["stdout"].strip()
    mc = vm.sh("python3", "-c", MEMCACHED, "get vmtest|", check=False)["stdout"]
    return {"redis-server.service": redis == "kept-across-the-upgrade",
            "memcached.service": "kept-across-the-upgrade" in mc}


def check_fates(vm, res: Result) -> dict[str, str]:
    """`kupgrade check --all-services`: no blocker, a fate for every running service."""
    r = vm.sh("kupgrade", "check", "--all-services", "--json", check=False, timeout=300)
    rec = json.loads(r["stdout"] or "{}")
    pre = next((s for s in rec.get("stages", []) if s["name"] == "preflight"), {})
    services = pre.get("details", {}).get("services", [])
    res.data["check"] = {"rc": r["rc"], "services": services, "blockers": pre.get("details", {}).get("blockers")}
    (vm.workdir / "check.txt").write_text(vm.sh("kupgrade", "check", "--all-services", check=False,
                                                timeout=300)["stdout"])
    fates = {s["unit"]: s["fate"] for s in services}
    res.check(r["rc"] == 0, "kupgrade check --all-services: no blocker", json.dumps(res.data["check"])[:3000])
    res.check(all(u in fates for u in UNITS) and fates.get("vmtest-agent.service") == "boot"
              and fates.get("systemd-journald.service") == "boot",
              "check gives every running service its fate (the test's agent and journald: the boot)",
              json.dumps(fates))
    res.check(any(f == "carried" for f in fates.values()), "at least one of Debian's servers is carried",
              json.dumps(fates))
    return fates


def compare(res: Result, fates: dict[str, str], before: dict, after: dict, state: dict, rec: dict) -> None:
    carried = [u for u in UNITS if fates.get(u) == "carried"]
    fresh = [u for u in UNITS if fates.get(u) == "fresh"]
    res.check(all(after[u]["ActiveState"] == "active" for u in UNITS),
              "nothing lost: every one of Debian's servers is active in 6.12", json.dumps(after))
    dumped = {w["unit"]: w["pids"] for w in rec["workloads"] if w.get("unit")}
    was = {u: dumped.get(u, []) if u in FORKING else before[u]["pids"] for u in carried}
    same = all(after[u]["MainPID"] == before[u]["MainPID"] and set(was[u]) <= set(after[u]["pids"]) for u in carried)
    extra = {u: sorted(set(after[u]["pids"]) - set(was[u])) for u in carried if u not in FORKING}
    res.data["pids_preserved"] = same and not any(extra.values())
    res.check(res.data["pids_preserved"], f"carried ({', '.join(carried)}): same main PID, the same PIDs in the "
              "unit's cgroup (the admin's ssh session is in a scope of its own: logind; PostgreSQL: every task "
              "the snapshot held, and the workers it forked since)",
              json.dumps({u: (before[u], was[u], after[u]) for u in carried}))
    res.check(all(after[u]["MainPID"] != before[u]["MainPID"] for u in fresh),
              f"started fresh ({', '.join(fresh) or 'none'}): active again, with a new main PID",
              json.dumps({u: (before[u], after[u]) for u in fresh}))
    kept = {u: state[u] for u in state if fates.get(u) == "carried"}
    res.data["state_preserved"] = all(kept.values())
    res.check(all(kept.values()), "the carried key-value stores kept their keys", json.dumps(state))


def session_carried(vm, res: Result, rec: dict) -> None:
    """logind (pam_systemd) had put the admin's ssh session into a scope of its own: kupgrade
    carried it with ssh.service, whose tree the session is (criu seized it task by task). In 6.12
    the session's processes (sshd, the shell; a `sleep` of the counter may have ended) are back
    with their PIDs, outside ssh.service's cgroup, in a scope systemd adopted for them."""
    ssh = next((w for w in rec.get("workloads", []) if w.get("unit") == "ssh.service"), {})
    scopes = ssh.get("other_cgroups", [])
    res.check(any("/session-" in s for s in scopes), "logind had the admin's session in a scope of its own, and "
              "kupgrade carried that scope's tasks with ssh.service", json.dumps(ssh))
    pids = [p for p in ssh.get("pids", []) if p != ssh.get("root_pid")]
    now = {p: (vm.sh("cat", f"/proc/{p}/comm", check=False)["stdout"].strip(),
               vm.sh("cat", f"/proc/{p}/cgroup", check=False)["stdout"].strip()) for p in pids}
    alive = {p: c for p, c in now.items() if c[0]}
    res.data["session"] = {"other_cgroups": scopes, "pids": {str(p): c for p, c in now.items()},
                           "units": vm.sh("sh", "-c", "systemctl list-units --no-legend --plain 'kupgrade-session*' "
                                                "'session-*'", check=False)["stdout"][-1000:]}
    res.check(len(alive) >= len(pids) - 1 and alive and {c for c, _ in alive.values()} <= {"sshd", "bash", "sleep"}
              and all("/kupgrade-session-" in cg for _, cg in alive.values()) and "kupgrade-session-" in res.data[
                  "session"]["units"] and " active " in res.data["session"]["units"],
              "the session's processes are in 6.12 with their PIDs (sshd, the shell), in a scope systemd adopted "
              "for them (kupgrade-session-N.scope, active), not in ssh.service's cgroup", json.dumps(res.data["session"]))


def sshd_logs(vm, res: Result) -> None:
    """The carried sshd accepts a connection (its child answers with the host key) and says so
    through syslog, to the new boot's journald."""
    scan = vm.sh("ssh-keyscan", "-T", "20", "127.0.0.1", check=False, timeout=60)
    res.check(scan["rc"] == 0 and "ssh-" in scan["stdout"], "the carried sshd answers a new connection",
              scan["stdout"] + scan["stderr"])
    logged = vm.sh("sh", "-c", "until journalctl -b -u ssh.service -o cat | grep -q '127.0.0.1'; do sleep 0.1; done",
                   check=False, timeout=60)["rc"] == 0
    res.check(logged, "its log (syslog) reaches the new boot's journal",
              vm.sh("journalctl", "-b", "-u", "ssh.service", "-o", "cat", "--no-pager", check=False)["stdout"][-1500:])


def nginx_reloads(vm, res: Result, fates: dict[str, str], before: dict) -> None:
    """`systemctl reload nginx` works on the carried master: its PID file was written back. (After
    the host's client is done: the old workers end their idle keep-alive connections.)"""
    if fates.get("nginx.service") == "carried":
        r = vm.sh("systemctl", "reload", "nginx.service", check=False, timeout=120)
        res.check(r["rc"] == 0 and show(vm, "nginx.service")["MainPID"] == before["nginx.service"]["MainPID"],
                  "`systemctl reload nginx` works on the carried master (its PID file written back)",
                  r["stdout"] + r["stderr"])


def in_new_kernel(vm, res: Result, fates: dict[str, str], before: dict, rec: dict) -> None:
    """Every service where check said it would be, working."""
    after = {u: show(vm, u) for u in UNITS}
    res.data.update(after=after, state=get_state(vm), record=rec)
    keep_journal(vm, tail=30000)
    compare(res, fates, before, after, res.data["state"], rec)
    if fates.get("ssh.service") == "carried":
        session_carried(vm, res, rec)
        sshd_logs(vm, res)
    fresh = sorted(f["unit"] for f in rec.get("fresh", []) if f["stop"])
    res.check(fresh == sorted(u for u, f in fates.items() if f == "fresh") and rec["outcome"] == "restored",
              "the run did what check said (the record's fresh services), outcome restored",
              json.dumps({"fresh": rec.get("fresh"), "outcome": rec["outcome"]}))
    res.data["stages"] = stage_durations(rec)


def servers_up(vm, res: Result) -> dict:
    """Booted, systemd up, the NIC configured, Debian's servers active (their properties,
    returned), the state the test reads back afterwards put in."""
    booted(vm, res)
    systemd_up(vm)
    configure_nic(vm)
    before = {u: show(vm, u) for u in UNITS}
    res.data["before"] = before
    res.check(all(b["ActiveState"] == "active" for b in before.values()), "Debian's servers started at boot",
              json.dumps(before))
    put_state(vm)
    return before


def clients_kept(res: Result, fates: dict[str, str], before: dict, clients: tuple, notes_before: dict,
                 t_switch: float, t_up: float) -> None:
    """What the host's clients saw: nginx's keep-alive connection never failed (its answers'
    largest gap is the downtime), every acknowledged note, INSERT and set kept."""
    poller, notes, sql, cache = clients
    res.check(poller.ok and poller.ok[-1] > t_up, "nginx answers the host after the upgrade")
    res.check(poller.errors == 0 and poller.reconnects == 0, "nginx's client: its keep-alive connection never "
              "failed", json.dumps({"errors": poller.errors, "reconnects": poller.reconnects, "t_switch": t_switch,
                                    "t_up": t_up, "failures": poller.failures[:10],
                                    "server_closes": poller.server_closes}))
    res.data["downtime_s"] = round(largest_gap(poller.ok, t_switch), 3)
    lost = sandboxed(res, fates, notes, notes_before, t_switch)
    res.data["units"] = units(fates, before, res.data["after"], poller, notes, lost, t_switch)
    # PostgreSQL with PrivateIPC=yes (check's hint for its System V segments); memcached as shipped
    res.data["units"][POSTGRES].update(writes_kept(res, fates, POSTGRES, sql, lambda acked: sql.rows(), t_switch,
                                                   "INSERT"))
    res.data["units"]["memcached.service"].update(writes_kept(res, fates, "memcached.service", cache, cache.kept,
                                                              t_switch, "set"))


def run(vm, image, res: Result) -> None:
    before = servers_up(vm, res)
    # the agent that drives the test starts fresh, like an admin's monitoring agent would be told to
    config = kupgrade_config(image.kernel_to).replace("[workloads]", '[workloads]\nstart_fresh = ["vmtest-agent.service"]')
    write_config(vm, config)      # the target; --all-services on the command line
    fates = check_fates(vm, res)
    write_config(vm, config.replace("[workloads]", "[workloads]\nall_services = true"))
    poller, notes, sql = Http(HOST_PORT), Notes(NOTES_PORT), Sql(SQL_PORT, POSTGRES_PASSWORD)
    cache = Memcached(CACHE_PORT)
    cache.wait_acks(0, 5, 120)
    notes.wait_acks(0, 5, 120)
    sql.wait_acks(0, 5, 120)
    notes_before = notes.stat()
    clash_at_the_switch(vm)
    admin = AdminSession(vm)      # the admin runs kupgrade over ssh
    try:
        t_switch = time.time()
        there = vm.event("ready", 900, where=lambda e: e.get("kernel") == image.kernel_to)
        res.data["kernel_after"] = there["kernel"]
        t_up = there["_t"]          # the new kernel's first word: what comes after it came from there
        systemd_up(vm)
        rec = final_record(vm)
        in_new_kernel(vm, res, fates, before, rec)
        clash_waited_out(vm, res, rec)
        res.check(any(s["name"] == "step-out" for s in rec["stages"]), "the record has kupgrade's step out of the "
                  "session", json.dumps([s["name"] for s in rec["stages"]]))
        admin_session_went_on(vm, res, admin, t_up)
        clients_kept(res, fates, before, (poller, notes, sql, cache), notes_before, t_switch, t_up)
        poller.close()
        nginx_reloads(vm, res, fates, before)
    finally:
        poller.close()
        notes.close()
        cache.close()
        sql.close()
        admin.close()


def sandboxed(res: Result, fates: dict[str, str], notes: Notes, before: dict, t_switch: float) -> int:
    """Our own server with DynamicUser, PrivateTmp and ProtectSystem=strict: carried, the same
    process (its start token), the same dynamic UID, every acknowledged note kept, its private
    /tmp and its StateDirectory written on, the host's connection never lost."""
    notes.wait_acks(t_switch, 5, 120)
    after = notes.stat()
    acked = sorted(notes.acked)
    held = set(after.get("notes", []))
    lost = [n for n in acked if n not in held]
    res.data["notes"] = {"before": {k: v for k, v in before.items() if k != "notes"},
                         "after": {k: v for k, v in after.items() if k != "notes"}, "acked": len(acked),
                         "held": len(held), "lost": lost[:20], "errors": notes.errors, "reconnects": notes.reconnects}
    res.check(fates.get(SANDBOXED_UNIT) == "carried", f"check: {SANDBOXED_UNIT} (DynamicUser, PrivateTmp, "
              "ProtectSystem=strict) is carried", json.dumps(fates))
    res.check(after.get("token") == before.get("token") and after.get("pid") == before.get("pid")
              and after.get("uid") == before.get("uid"),
              "the sandboxed server is the same process (start token, PID, dynamic UID)", json.dumps(res.data["notes"]))
    res.check(not lost and acked and len(held) == after.get("tmp_lines") == after.get("state_lines"),
              "every note it acknowledged is kept, in memory, in its private /tmp and its StateDirectory",
              json.dumps(res.data["notes"]))
    res.check(notes.errors == 0 and notes.reconnects == 0, "the host's connection to it never failed",
              json.dumps(res.data["notes"]))
    return len(lost)


def writes_kept(res: Result, fates: dict[str, str], unit: str, client: Writer, kept, t_switch: float,
                what: str) -> dict:
    """A server the host wrote to during the upgrade, each write acknowledged (`what`: an INSERT
    committed, a set stored): carried, every acknowledged write still there (kept: the
    acknowledged numbers -> those the server has), new ones taken, the client's one connection
    never failed. Puts what the client saw in the result; returns what `units` promises of it."""
    client.wait_acks(t_switch, 5, 180)
    acked = sorted(client.acked)
    lost = sorted(set(acked) - kept(acked))
    seen = {"acked": len(acked), "lost": lost[:20], "errors": client.errors, "reconnects": client.reconnects,
            "fate": fates.get(unit), "failures": client.failures[:10]}
    res.data.setdefault("clients", {})[unit] = seen
    res.check(fates.get(unit) == "carried", f"check: {unit} is carried", json.dumps(res.data["check"]["services"]))
    res.check(acked and not lost and any(t > t_switch for t in client.acked.values()),
              f"every {what} {unit} acknowledged is there after the upgrade, and it takes new ones", json.dumps(seen))
    res.check(client.errors == 0 and client.reconnects == 0, f"{unit}'s client: its connection never failed",
              json.dumps(seen))
    return {"lost_writes": len(lost), "errors": client.errors, "reconnects": client.reconnects,
            "downtime_s": round(largest_gap(sorted(client.acked.values()), t_switch), 3)}


def units(fates: dict[str, str], before: dict, after: dict, poller: Http, notes: Notes, lost: int,
          t_switch: float) -> dict:
    """Per unit, what the result JSON promises: same main PID, restarted, and what its client saw.
    systemd's own view is there too: NRestarts (the new boot's systemd counts from its own start)
    and ExecMainStartTimestamp, which for a carried unit is when the new boot's systemd took it
    back (the restore is its start job), not when the process began; the same main PID, its
    tasks and its clients' unbroken connections say that it was not restarted."""
    out = {}
    for u in UNITS:
        same = after[u]["MainPID"] == before[u]["MainPID"]
        out[u] = {"fate": fates.get(u), "same_main_pid": same, "restarted": not same or after[u].get("NRestarts") != "0",
                  "n_restarts": after[u].get("NRestarts"),
                  "start_timestamp": [before[u].get("ExecMainStartTimestamp"), after[u].get("ExecMainStartTimestamp")]}
    out["nginx.service"].update(errors=poller.errors, reconnects=poller.reconnects, server_closes=poller.server_closes,
                                downtime_s=round(largest_gap(poller.ok, t_switch), 3))
    out[SANDBOXED_UNIT].update(lost_writes=lost, errors=notes.errors, reconnects=notes.reconnects,
                               downtime_s=round(largest_gap(sorted(notes.acked.values()), t_switch), 3))
    return out
