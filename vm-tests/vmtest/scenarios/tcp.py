"""tcp: a TCP connection with a peer that keeps talking survives the kernel switch, and the
device hooks (network above all) do their part; one guest, one upgrade for both.

The guest boots systemd; its virtio NIC (found by MAC: names change) gets 10.0.2.15/24, an extra
192.0.2.7/32, a default route and one extra route. tcpserver.service (guest/tcpserver.py)
listens on port 7000 and is a selected workload (a unit); the heartbeat workload in cgroup
/workload is the other. The host connects through QEMU user networking and, on one connection,
both sides send a numbered line every 50 ms during the whole test.

1. `kupgrade hooks list` (text, --json, --json --all) shows every device of the VM with its
   coverage, the NIC and lo covered by the network hook; `kupgrade plan` lists the connection.
2. A hooks.d executable whose `save` fails: `kupgrade run` exits 7 with one line naming the hook
   and its stderr; the rollback leaves the heartbeat workload running unharmed (same PIDs, every
   beat once, buffer intact), nothing loaded, the tmpfs unmounted, the record aborted with the
   failed save; the conversation goes on.
3. A failure after the snapshot (KUPGRADE_FAULT=kexec-load): the rollback deletes criu's lock
   table and takes the socket out of repair mode; the conversation goes on.
4. `kupgrade run` to 6.12: the same connection (no reconnect, the server accepted one), no line
   lost, duplicated or reordered in either direction, the same server PID; the drop table held
   the peer's packets until the restore and is gone afterwards; a new connection works. The
   network hook put the addresses and routes back on the NIC (by MAC) before the restore; the
   record has its save, restore and verify, ok, and `kupgrade report` shows them. The heartbeat
   workload is back with its PIDs, every beat once, its buffer intact; its largest gap is the
   switch.
Downtime: the largest gap between the server's lines as the host received them (the heartbeat
workload's gap, with the console breakdown, is kept as heartbeat_downtime_s)."""

from __future__ import annotations

import json
import select
import socket
import threading
import time

from ..scenario import (Result, all_kept, booted, heartbeat_downtime, heartbeats_back, keep_journal, kupgrade_config,
                        last_record, restored_record, run_failing, stage_of, systemd_up, unit_props, units_installed,
                        units_started, upgrade, workload_kept, workload_running, write_config)
from . import hooks

NAME = "tcp"
DESCRIPTION = ("a TCP connection, both peers talking every 50 ms, survives a failing save hook (exit 7), a failed kexec "
               "load and 6.1 -> 6.12; hooks list, the network hook puts addresses and routes back (by MAC)")
INIT = "systemd"
HOST_PORT, GUEST_PORT = 5556, 7000
NIC = f"user:{HOST_PORT}-{GUEST_PORT}"
MAC = "52:54:00:12:34:56"
PERIOD = 0.05
UNIT = "tcpserver.service"
UNIT_TEXT = (f"[Unit]\nDescription=test workload: a TCP server that talks\n"
             f"[Service]\nExecStart=/usr/local/lib/vmtest/tcpserver.py {GUEST_PORT}\n")


class Peer:
    """The host side of one connection: sends "h N" every PERIOD, checks the "g N" it gets."""

    def __init__(self) -> None:
        self.sock = self._connect()
        self.local_port = self.sock.getsockname()[1]
        self.sent = 0
        self.got: list[tuple[float, int]] = []        # (host time, N) of every "g N"
        self.problems: list[str] = []
        self.stats: list[dict] = []
        self.error = ""
        self.closed_at = 0.0
        self._stat_wanted = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="tcp-peer", daemon=True)
        self.thread.start()

    @staticmethod
    def _connect(timeout: float = 60) -> socket.socket:
        """slirp accepts the host's connect before the guest does: wait for the first line."""
        deadline = time.monotonic() + timeout
        while True:
            s = socket.create_connection(("127.0.0.1", HOST_PORT), timeout=5)
            s.settimeout(None)
            r, _, _ = select.select([s], [], [], 5)
            if r and s.recv(1, socket.MSG_PEEK):
                return s
            s.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no TCP server answering on host port {HOST_PORT}")
            time.sleep(0.5)

    def _run(self) -> None:
        buf, due = b"", time.monotonic()
        try:
            while not self._stop.is_set():
                r, _, _ = select.select([self.sock], [], [], max(0.0, due - time.monotonic()))
                if r:
                    data = self.sock.recv(65536)
                    if not data:
                        self.error = "the server closed the connection"
                        break
                    buf += data
                    *lines, buf = buf.split(b"\n")
                    self._lines(lines)
                if time.monotonic() >= due:
                    with self._lock:
                        self.sent += 1
                        msg = f"h {self.sent}\n" + ("stat\n" if self._stat_wanted else "")
                        self._stat_wanted = False
                    self.sock.sendall(msg.encode())
                    due = max(due + PERIOD, time.monotonic())
        except OSError as e:
            self.error = f"{type(e).__name__}: {e}"
        self.closed_at = time.time()

    def _lines(self, lines: list[bytes]) -> None:
        now = time.time()
        for line in lines:
            word, _, arg = line.decode().partition(" ")
            if word == "g":
                n = int(arg)
                last = self.got[-1][1] if self.got else 0
                if n != last + 1:
                    self.problems.append(f"got g {n} after g {last}")
                self.got.append((now, n))
            elif word == "stat":
                self.stats.append(json.loads(arg))

    def wait(self, what: str, cond, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if self.error or not self.thread.is_alive():
                raise AssertionError(f"the connection broke while waiting for {what}: {self.error}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:g} s for {what}")
            time.sleep(0.05)

    def lines(self, n: int, timeout: float = 120) -> None:
        want = (self.got[-1][1] if self.got else 0) + n
        self.wait(f"{n} more lines from the server", lambda: bool(self.got) and self.got[-1][1] >= want, timeout)

    def stat(self, timeout: float = 120) -> dict:
        """The server's view, asked in-stream after "h N": it has read every line up to N."""
        have = len(self.stats)
        with self._lock:
            self._stat_wanted = True
            asked_after = self.sent + 1
        self.wait("the server's stat reply", lambda: len(self.stats) > have, timeout)
        return {**self.stats[have], "asked_after": asked_after}

    def largest_gap(self, since: float = 0.0) -> tuple[float, int]:
        pts = [p for p in self.got if p[0] >= since]
        gaps = [(b[0] - a[0], a[1]) for a, b in zip(pts, pts[1:])]
        return max(gaps) if gaps else (0.0, 0)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


def configure_nic(vm) -> str:
    """10.0.2.15/24 and the default route on the NIC (found by MAC); its name (the services
    scenario's; this one configures the hooks' addresses and routes, hooks.configured)."""
    links = json.loads(vm.sh("ip", "-j", "link", "show")["stdout"])
    dev = next(l["ifname"] for l in links if l.get("address") == MAC)
    vm.sh("ip", "link", "set", "dev", dev, "up")
    vm.sh("ip", "addr", "add", "10.0.2.15/24", "dev", dev)
    vm.sh("ip", "route", "add", "default", "via", "10.0.2.2", "dev", dev)
    return dev


def evidence(vm, label: str) -> None:
    """The guest's view of its sockets and TCP counters, appended to net-evidence.txt."""
    out = [f"===== {label} ({time.strftime('%H:%M:%S')})"]
    for argv in (("ss", "-tinoem"), ("nstat", "-az"), ("nft", "list", "ruleset")):
        r = vm.sh(*argv, check=False, timeout=120)
        out += [f"--- {' '.join(argv)}", r["stdout"] + r["stderr"]]
    with (vm.workdir / "net-evidence.txt").open("a") as f:
        f.write("\n".join(out) + "\n")


# After the switch the host's TCP resends what the guest missed only when its retransmission
# timer fires, backed off while the guest was away (RTO doubling up to 120 s, Linux's
# TCP_RTO_MAX): the "stat" asked behind that data can take two minutes past the restore to arrive.
STAT_AFTER_SWITCH_S = 360


def check_conversation(res: Result, peer: Peer, what: str, first: dict, timeout: float = 120) -> dict:
    """Both directions complete and in order, on the same connection as `first` (a stat)."""
    st = peer.stat(timeout)
    res.check(not peer.error, f"{what}: the connection is alive (no reset, no reconnect)", peer.error)
    res.check(not peer.problems, f"{what}: every server line arrived once, in order ({peer.got[-1][1]} lines)",
              "; ".join(peer.problems[:10]))
    res.check(st["last"] == st["asked_after"] and not st["problems"],
              f"{what}: every host line arrived once, in order ({st['last']} lines)", json.dumps(st))
    res.check(st["accepted"] == first["accepted"] and st["peer"] == first["peer"],
              f"{what}: the server accepted no other connection, the peer is the same", json.dumps([first, st]))
    return st


def start_server(vm, res: Result) -> tuple[dict, dict]:
    """Once systemd is up: the NIC configured (both addresses, the default and an extra route),
    tcpserver.service started (PIDs above 30000); returns its MainPID and ActiveState, and the
    NIC's state."""
    systemd_up(vm)
    net = hooks.configured(vm, res)
    res.data["nic"] = net["dev"]
    units_installed(vm, {UNIT: UNIT_TEXT})
    units_started(vm, UNIT)
    return unit_props(vm, UNIT), net


def check_plan(vm, res: Result) -> None:
    """`kupgrade plan` lists the connection."""
    plan = vm.sh("kupgrade", "plan", check=False, timeout=300)["stdout"]
    (vm.workdir / "plan.txt").write_text(plan)
    res.check("--tcp-established" in plan and f":{GUEST_PORT} <-> 10.0.2.2:" in plan,
              "kupgrade plan lists the connection the dump will carry", plan[-2000:])


def failed_attempt(vm, res: Result, peer: Peer, first: dict) -> None:
    """A failure after the snapshot: rolled back (criu's lock deleted, the socket out of repair
    mode), the conversation goes on."""
    r = run_failing(vm, "kexec-load")
    res.data["fault"] = {"rc": r["rc"], "error": r["error"]}
    res.check(r["rc"] not in (0, None) and "kexec load failed" in r["error"],
              "failed kexec load: kupgrade run exits non-zero with one line", r["error"])
    rollback = last_record(vm)["stages"][-1]
    res.data["rollback"] = rollback
    res.check(rollback["name"] == "rollback" and rollback["status"] == "ok"
              and "1 of 1 connection(s) taken out of repair mode, criu's lock (table inet CRIU-" in
              rollback["summary"], "rollback: criu's lock deleted, the socket out of repair mode",
              json.dumps(rollback)[:1500])
    tables = vm.sh("nft", "list", "tables")["stdout"]
    res.check("CRIU" not in tables, "no criu lock table left", tables)
    peer.lines(40)
    check_conversation(res, peer, "after the rollback", first)
    res.data["rollback_gap_s"] = round(peer.largest_gap()[0], 3)


def conversation_goes_on(vm, res: Result, peer: Peer, first: dict) -> dict:
    """In the new kernel, once systemd is up (the journal kept): forty more lines, the same
    conversation (the guest's network state noted around the check); returns the server's stat."""
    systemd_up(vm)
    keep_journal(vm, UNIT, "kupgrade-restore.service")
    peer.lines(40, timeout=240)
    evidence(vm, "after the switch")
    t_ask = time.time()
    try:
        st = check_conversation(res, peer, "after the switch", first, timeout=STAT_AFTER_SWITCH_S)
        # how long the host's side of the conversation stalled behind its retransmission timer
        res.data["stat_after_switch_s"] = round(time.time() - t_ask, 3)
    finally:
        evidence(vm, "after the conversation check")
    res.data["server_stat"] = st
    return st


def server_kept(vm, res: Result, peer: Peer, first: dict, before: dict, st: dict) -> dict:
    """The same server process, active, and its state, the conversation, intact; returns
    pids_preserved and state_preserved (the server's)."""
    after = unit_props(vm, UNIT)
    res.check(after["MainPID"] == before["MainPID"] and after["ActiveState"] == "active",
              f"{UNIT} is active with the same main PID", json.dumps(after))
    # the server's state is the conversation: every line both ways once, in order, same connection
    return {"pids_preserved": after["MainPID"] == before["MainPID"],
            "state_preserved": (not peer.error and not peer.problems and st["last"] == st["asked_after"]
                                and not st["problems"] and st["accepted"] == first["accepted"])}


def released(vm, res: Result) -> dict:
    """The drop table gone; the record: one connection protected before the network came up,
    released after its restore, outcome restored. Returns the record."""
    tables = vm.sh("nft", "list", "tables")["stdout"]
    res.check("kupgrade" not in tables, "the drop table is gone after the restore", tables)
    rec = restored_record(vm, res, "the outcome is restored")
    logs = vm.sh("sh", "-c", f"cat /var/lib/kupgrade/logs/{rec['id']}/*/restore.log", check=False)["stdout"]
    (vm.workdir / "criu-restore.log").write_text(logs)
    unit_stage = stage_of(rec, "restore-unit")
    tcp_info = next(iter(unit_stage.get("details", {}).get("workloads", {}).values()), {}).get("tcp", {})
    commit = stage_of(rec, "commit").get("details", {}).get("commit", {})
    tcp_info = {**tcp_info, **next(iter(commit.get("tcp", {}).values()), {})}   # released there when held
    restore_stage = stage_of(rec, "restore")
    res.data["tcp_restore"] = {"protected": restore_stage.get("details", {}).get("tcp_protected"), **tcp_info}
    res.check(restore_stage.get("details", {}).get("tcp_protected") == 1 and tcp_info.get("released") == 1
              and tcp_info.get("table") == "deleted",
              "the record: 1 connection protected before the network came up, released after its restore",
              json.dumps(res.data["tcp_restore"]))
    return rec


def new_connection(vm, res: Result, peer: Peer, first: dict) -> None:
    """Other traffic: a new connection to the restored listener works, the server counts it and
    its line about it reaches the new boot's journal."""
    second = Peer()
    second.lines(5)
    res.check(not second.problems and not second.error, "a new connection to the restored server works",
              "; ".join(second.problems) + second.error)
    second.close()
    res.check(peer.stat()["accepted"] == first["accepted"] + 1, "the server saw it as one more connection")
    line = f"connection {first['accepted'] + 1} from"
    logged = vm.sh("sh", "-c", f"until journalctl -b -u {UNIT} -o cat | grep -q '{line}'; do sleep 0.1; done",
                   check=False, timeout=60)["rc"] == 0
    res.check(logged, "the restored server's stdout reaches the new boot's journal (its own line about it)",
              vm.sh("journalctl", "-b", "-u", UNIT, "-o", "cat", "--no-pager", check=False)["stdout"][-1500:])


def downtime(vm, res: Result, to: str, wl, last_before: int, peer: Peer, t_switch: float) -> None:
    """The heartbeat's gap checked as the switch's (heartbeat_downtime_s, with the breakdown); the
    downtime is the largest gap in the server's lines since the switch began."""
    heartbeat_downtime(vm, res, to, wl, last_before, since=last_before - 1)
    gap, at = peer.largest_gap(since=t_switch)
    res.data.update(heartbeat_downtime_s=res.data["downtime_s"], downtime_s=round(gap, 3), gap_after_line=at,
                    downtime_source="largest gap in tcpserver's lines as the host received them "
                                    "(downtime_breakdown: the heartbeat gap's)",
                    lines={"from_server": peer.got[-1][1], "from_host": peer.sent})


def switched(vm, image, res: Result, peer: Peer, first: dict, heartbeat: tuple, server: tuple):
    """`kupgrade run` to image.kernel_to, and what it carried checked: the heartbeat workload
    (heartbeat: it and its state), the server (server: its unit's properties and the NIC's state),
    the conversation, the network hook's addresses and routes, the drop table released. Returns
    the record, when the switch began and the heartbeat's last beat before it (None: no switch)."""
    (wl, wl_before), (before, net) = heartbeat, server
    t_switch = time.time()
    if upgrade(vm, res, show=True, to=image.kernel_to) is None:
        return None
    last_before = heartbeats_back(vm, res, wl)
    kept = workload_kept(res, wl, wl_before)
    hooks.net_back(vm, res, net)
    st = conversation_goes_on(vm, res, peer, first)
    all_kept(res, server_kept(vm, res, peer, first, before, st), kept)     # the server's and the heartbeat's
    return released(vm, res), t_switch, last_before


def run(vm, image, res: Result) -> None:
    booted(vm, res)
    before, net = start_server(vm, res)
    hooks.check_listing(vm, res, net["dev"])
    wl, wl_before = workload_running(vm, cgroup="/workload")
    write_config(vm, kupgrade_config(image.kernel_to, cgroups=["/workload"], units=[UNIT]))
    peer = Peer()
    try:
        peer.lines(20)
        first = peer.stat()
        res.data["server_pid"] = before["MainPID"]
        check_plan(vm, res)

        # 1. failures before the switch: rolled back, the workload and the conversation go on
        hooks.failing_save(vm, res, wl, wl_before)
        check_conversation(res, peer, "after the failing save hook", first)
        failed_attempt(vm, res, peer, first)

        # 2. the real upgrade
        evidence(vm, "before the switch")
        if (done := switched(vm, image, res, peer, first, (wl, wl_before), (before, net))) is None:
            return
        rec, t_switch, last_before = done
        hooks.check_hook_calls(vm, res, rec)
        new_connection(vm, res, peer, first)
        downtime(vm, res, image.kernel_to, wl, last_before, peer, t_switch)
    finally:
        peer.close()
