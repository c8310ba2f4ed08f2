"""TCP connections carried across the kernel switch (criu --tcp-established).

What criu does and what it leaves to us (criu 3.17, host network namespace):
- dump: each established connection is locked in the *old* kernel (DROP, input and output,
  per 4-tuple) and its socket put in repair mode; with --leave-stopped both stay.
  The old kernel never sends a FIN or RST afterwards: `kexec -e` simply stops it.
- restore: the socket is recreated in repair mode (bind to the old local address: it must be
  on an interface again, the network hook's job), then released; criu installs no lock in the
  new kernel. Until then the new kernel would answer the peer's retransmits with an RST, and
  the connection would die.

So kupgrade:
0. dumps with --network-lock nftables: criu's lock is a table inet CRIU-ROOTPID (criu 3) or CRIU-RUNID (criu 4);
1. after each dump lists the tree's TCP sockets from /proc (the tasks are stopped: exactly what
   was dumped) into images/TREE/kupgrade-tcp.json;
2. in the new kernel, before the network hook configures any address, installs an nftables
   table `inet kupgrade` that drops inbound packets of exactly those connections (prerouting,
   ahead of conntrack) -- nothing else is filtered;
3. after each tree's restore (success or failure) deletes that tree's elements, and the table
   once it is empty, logging how many packets it dropped;
4. works around a restore defect for connections without window scaling (QEMU's user
   networking, some embedded stacks): see tcpfix.py;
5. on a rollback in the old kernel (a failure before `kexec -e`) deletes criu's lock table
   and takes the sockets out of repair mode (pidfd_getfd + TCP_REPAIR off) before the tasks
   are resumed: the connections go on as if nothing happened.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import socket
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from kupgrade.errors import CommandError
from kupgrade.system import procfs
from kupgrade.system.run import run
from kupgrade.userspace import tcpfix
from kupgrade.userspace.tcpfix import TCP_REPAIR, TCPI_OPT_WSCALE
from kupgrade.userspace.tcpfix import tcp_info as _tcp_info

log = logging.getLogger("kupgrade.userspace.tcp")

FILE = "kupgrade-tcp.json"          # next to a tree's images
TABLE = "kupgrade"                  # nft table inet kupgrade
NFT = "nft"
ACTION = "criu-action"               # in the state dir: criu's --action-script
STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
          6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}
NO_PEER = ("LISTEN", "CLOSE", "TIME_WAIT")   # TIME_WAIT: no process holds it


@dataclass(frozen=True)
class Sock:
    """One TCP socket of a tree, from /proc/PID/net/tcp{,6}. IPv4-mapped IPv6 addresses are
    given as IPv4 (that is what goes on the wire, and how criu locks them)."""
    local: str
    lport: int
    peer: str
    pport: int
    state: str
    inode: int
    wscale: bool = True                 # window scaling was negotiated (tcp_info, after the dump)

    @property
    def v6(self) -> bool:
        return ":" in self.local

    @property
    def connected(self) -> bool:
        return self.state not in NO_PEER

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.peer).is_loopback

    def __str__(self) -> str:
        fmt = (lambda a, p: f"[{a}]:{p}") if self.v6 else (lambda a, p: f"{a}:{p}")
        return f"{fmt(self.local, self.lport)} <-> {fmt(self.peer, self.pport)}" if self.connected \
            else f"{fmt(self.local, self.lport)} {self.state.lower()}"

    def to_json(self) -> dict:
        return {"local": self.local, "lport": self.lport, "peer": self.peer, "pport": self.pport,
                "state": self.state, "inode": self.inode, "wscale": self.wscale}

    @classmethod
    def from_json(cls, d: dict) -> Sock:
        return cls(d["local"], d["lport"], d["peer"], d["pport"], d["state"], d["inode"], d.get("wscale", True))


def _addr(hexaddr: str) -> str:
    """/proc/net/tcp's address: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hexaddr)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


def parse_table(text: str) -> list[Sock]:
    """Every socket of one /proc/net/tcp or tcp6 file."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        (la, lp), (ra, rp) = f[1].split(":"), f[2].split(":")
        out.append(Sock(_addr(la), int(lp, 16), _addr(ra), int(rp, 16), STATES.get(int(f[3], 16), f[3]), int(f[9])))
    return out


def owned(pids, proc: Path = Path("/proc")) -> dict[int, tuple[int, int]]:
    """Socket inode -> (pid, fd) of the first task holding it."""
    return {ino: holders[0] for ino, holders in procfs.sockets(pids, proc).items()}


def sockets(pids, proc: Path = Path("/proc")) -> list[Sock]:
    """The TCP sockets (listening and connected) the tree holds, in its network namespace."""
    mine = owned(pids, proc)
    if not mine:
        return []
    first = next(iter(pids))
    out, seen = [], set()
    for name in ("tcp", "tcp6"):
        try:
            text = (proc / str(first) / "net" / name).read_text()
        except OSError:
            continue
        for s in parse_table(text):
            if s.inode in mine and s.inode not in seen:
                seen.add(s.inode)
                out.append(s)
    return out


def with_options(socks: list[Sock], pids) -> list[Sock]:
    """The connected sockets' negotiated options (read through pidfd_getfd; the tasks are
    stopped after the dump). A socket that cannot be read keeps the default (scaling on)."""
    where = owned(pids)
    out = []
    for s in socks:
        if s.connected and s.inode in where:
            try:
                fd = procfs.getfd(*where[s.inode])
                with socket.socket(fileno=fd) as sk:
                    s = replace(s, wscale=bool(_tcp_info(sk)[1] & TCPI_OPT_WSCALE))
            except OSError as e:
                log.warning("cannot read the options of %s: %s", s, e)
        out.append(s)
    return out


def write(images: Path, socks: list[Sock]) -> None:
    (images / FILE).write_text(json.dumps([s.to_json() for s in socks], indent=1) + "\n")


def read(images: Path) -> list[Sock]:
    try:
        return [Sock.from_json(d) for d in json.loads((images / FILE).read_text())]
    except FileNotFoundError:
        return []


# --- new kernel: drop the peers' packets until the connections are restored ---

def _element(s: Sock) -> str:
    # matched on the inbound packet: source = the peer, destination = us
    return f"{s.peer} . {s.pport} . {s.local} . {s.lport}"


def _elements(socks: list[Sock], v6: bool) -> list[str]:
    return sorted({_element(s) for s in socks if s.connected and s.v6 == v6})


def ruleset(socks: list[Sock]) -> str:
    """The nft script creating (or replacing) table inet kupgrade with these connections."""
    lines = [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}", f"table inet {TABLE} {{",
             "  set conns4 { type ipv4_addr . inet_service . ipv4_addr . inet_service; }",
             "  set conns6 { type ipv6_addr . inet_service . ipv6_addr . inet_service; }",
             "  chain pre {",
             "    # ahead of conntrack (-200) and of the TCP stack that would answer with an RST",
             "    type filter hook prerouting priority raw - 10; policy accept;",
             "    ip saddr . tcp sport . ip daddr . tcp dport @conns4 counter drop",
             "    ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 counter drop",
             "  }", "}"]
    for name, v6 in (("conns4", False), ("conns6", True)):
        if (els := _elements(socks, v6)):
            lines.append(f"add element inet {TABLE} {name} {{ {', '.join(els)} }}")
    return "\n".join(lines) + "\n"


def _nft(script: str, check: bool = True):
    return run([NFT, "-f", "-"], input=script.encode(), timeout=30, check=check,
               hint="nftables is needed to protect TCP connections during the restore (apt-get install nftables)")


def load_module(loaded: Path = Path("/sys/module/nf_tables")) -> None:
    """nf_tables, which the protection's table needs (a new boot has not loaded it: 1.4 s under
    TCG); nothing to run once it is there (the restore's warm-up loads it ahead)."""
    if not loaded.exists():
        run(["modprobe", "nf_tables"], timeout=30, check=False)


def install(socks: list[Sock]) -> int:
    """Drop inbound packets of these connections from now on; returns how many are protected."""
    if not any(s.connected for s in socks):
        return 0
    load_module()
    _nft(ruleset(socks))
    n = len(_elements(socks, False)) + len(_elements(socks, True))
    log.info("dropping inbound packets of %d TCP connection(s) until they are restored", n)
    return n


def state() -> dict | None:
    """The table's elements and drop counters, or None when it does not exist."""
    proc = run([NFT, "-j", "list", "table", "inet", TABLE], timeout=30, check=False)
    if proc.returncode != 0:
        return None
    out = {"elements": 0, "dropped_packets": 0}
    for obj in json.loads(proc.stdout.decode() or "{}").get("nftables", []):
        if "set" in obj:
            out["elements"] += len(obj["set"].get("elem", []))
        for expr in obj.get("rule", {}).get("expr", []):
            if "counter" in expr:
                out["dropped_packets"] += expr["counter"].get("packets", 0)
    return out


def release(socks: list[Sock]) -> dict:
    """A tree is restored (or failed): let its peers' packets in again. The table goes once no
    connection is left in it. Never raises: a stale table only delays the peers' packets."""
    done: dict = {"released": 0}
    try:
        sets = {name: els for name, v6 in (("conns4", False), ("conns6", True)) if (els := _elements(socks, v6))}
        if not sets:
            return done
        script = "".join(f"delete element inet {TABLE} {name} {{ {', '.join(els)} }}\n" for name, els in sets.items())
        if _nft(script, check=False).returncode == 0:
            done["released"] = sum(len(els) for els in sets.values())
        left = state()
        if left is not None:
            done["dropped_packets"] = left["dropped_packets"]
            if left["elements"] == 0:
                _nft(f"delete table inet {TABLE}\n", check=False)
                done["table"] = "deleted"
                log.info("TCP drop table deleted; it dropped %d packet(s)", left["dropped_packets"])
    except (CommandError, OSError, ValueError) as e:
        done["error"] = str(e)
        log.warning("releasing the TCP drop rules failed: %s", e)
    return done


# --- restore: connections without window scaling (the fix itself: tcpfix.py) ---

def action_script(state_dir: Path) -> str:
    """criu --action-script (criu execs it: a file, not a command line): runs tcpfix.py at
    post-restore and nothing at criu's other actions. Written (again) into the state
    directory: /run is mounted noexec by initramfs-tools. `python -I -S`: no site-packages,
    the interpreter's start is inside the downtime; tcpfix puts the one folder kupgrade is
    installed in on its sys.path itself, to import kupgrade.system.procfs (standard library only)."""
    path = state_dir / ACTION
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = ("#!/bin/sh\n# kupgrade: criu's action script for restored TCP connections (kupgrade/userspace/tcpfix.py)\n"
            '[ "$CRTOOLS_SCRIPT_ACTION" = post-restore ] || exit 0\n'
            f'exec {sys.executable} -I -S {tcpfix.__file__} "$CRTOOLS_INIT_PID"\n')
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")    # units restore at once: one each
        tmp.write_text(text)
        tmp.chmod(0o700)
        os.replace(tmp, path)
    return str(path)


# --- old kernel: undo criu's lock when the upgrade is rolled back ---

def unlock(socks: list[Sock], pids, tables: list[str]) -> list[str]:
    """Rollback: delete the lock criu left (table inet NAME, one of `tables`: criu.lock_tables)
    and take the sockets out of repair mode (the kernel then sends a window probe; the peers'
    retransmits are answered). Raises OSError or CommandError on the first socket that cannot
    be released."""
    connected = [s for s in socks if s.connected]
    # criu may create its (empty) table for a tree without connections too: delete it quietly
    have = bool(shutil.which(NFT))
    deleted = [t for t in tables if have and _nft(f"delete table inet {t}\n", check=False).returncode == 0]
    table = deleted[0] if deleted else " or ".join(tables)
    if not connected:
        return []
    where = owned(pids)
    repaired = 0
    for s in connected:
        if s.inode not in where:
            continue
        fd = procfs.getfd(*where[s.inode])
        with socket.socket(fileno=fd) as sk:
            if sk.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR):
                sk.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 0)
                repaired += 1
    return [f"TCP: {repaired} of {len(connected)} connection(s) taken out of repair mode, criu's lock "
            + (f"(table inet {table}) deleted" if deleted else f"table inet {table} not found")]
