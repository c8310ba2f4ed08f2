"""Unix sockets a tree shares with processes outside it, as the kernel's sock_diag reports them
(what criu itself asks). criu dumps a tree's unix sockets with their peers; a peer outside the
tree is "external" and criu refuses it ("unix: External socket is used") unless told:

- a datagram socket connected to a named socket outside (syslog's /dev/log, i.e. journald's
  /run/systemd/journal/dev-log: cron, any daemon that logged through syslog()): carried with
  `--ext-unix-sk`, criu connects it to the same name again at restore. That name must exist by
  then: it does when a unit's start restores it (the boot's sockets are up), not in the
  initramfs, where trees that are not units are restored: a blocker for those;
- a unit's stdin/stdout/stderr stream to journald: handed over by criu.py (--external, then
  --inherit-fd of the unit's own stream in the new boot);
- any other stream or datagram connection to a process outside the tree: a blocker (the peer
  is not carried; the connection would be cut).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from kupgrade.output.record import Blocker
from kupgrade.system import procfs
from kupgrade.system.procfs import PROC, who

NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY = 4, 20
UDIAG_SHOW_NAME, UDIAG_SHOW_PEER = 0x01, 0x04
UNIX_DIAG_NAME, UNIX_DIAG_PEER = 0, 2
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
EXT_UNIX = "kupgrade-ext-unix-sk"   # next to the images: the dump used --ext-unix-sk, so must the restore


@dataclass(frozen=True)
class UnixSock:
    ino: int
    type: int           # socket.SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
    name: str           # the bound path ("" unnamed; "@..." abstract)
    peer: int           # the peer's inode (0: none)


def _attrs(data: bytes):
    while len(data) >= 4:
        length, kind = struct.unpack_from("=HH", data)
        if length < 4:
            return
        yield kind, data[4:length]
        data = data[(length + 3) & ~3:]


def table() -> dict[int, UnixSock]:
    """Every unix socket of this network namespace: inode -> UnixSock."""
    req = struct.pack("=BBHIII2I", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, UDIAG_SHOW_NAME | UDIAG_SHOW_PEER, 0, 0)
    out: dict[int, UnixSock] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as s:
        s.sendto(struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req,
                 (0, 0))
        while True:
            data = s.recv(1 << 16)
            while len(data) >= 16:
                length, kind = struct.unpack_from("=IH", data)
                if kind in (NLMSG_DONE, NLMSG_ERROR):
                    return out
                _, stype, _, _, ino = struct.unpack_from("=BBBBI", data, 16)
                name, peer = "", 0
                for akind, payload in _attrs(data[16 + 16:length]):
                    if akind == UNIX_DIAG_NAME:
                        name = "@" + payload[1:].decode(errors="replace") if payload[:1] == b"\0" else \
                            payload.split(b"\0", 1)[0].decode(errors="replace")
                    elif akind == UNIX_DIAG_PEER:
                        peer = struct.unpack_from("=I", payload)[0]
                out[ino] = UnixSock(ino, stype, name, peer)
                data = data[(length + 3) & ~3:]


def external(pids, proc: Path = PROC, socks: dict[int, UnixSock] | None = None):
    """(pid, fd, the tree's socket, its peer) for every connection to a socket outside the tree."""
    socks = table() if socks is None else socks
    mine = procfs.sockets(pids, proc)
    for ino, users in sorted(mine.items()):
        s = socks.get(ino)
        if s is None or not s.peer or s.peer in mine:
            continue
        pid, fd = users[0]
        yield pid, fd, s, socks.get(s.peer, UnixSock(s.peer, 0, "", 0))


def needs_ext_unix_sk(pids, proc: Path = PROC) -> bool:
    """The tree has a datagram socket connected to a named socket outside it."""
    return any(s.type == socket.SOCK_DGRAM and peer.name.startswith("/") for _, _, s, peer in external(pids, proc))


def blockers(pids, unit: str, proc: Path = PROC, socks: dict[int, UnixSock] | None = None) -> list[Blocker]:
    """The connections to processes outside the tree that the snapshot cannot carry (see above)."""
    out = []
    for pid, fd, s, peer in external(pids, proc, socks):
        if s.type == socket.SOCK_DGRAM and peer.name.startswith("/") and unit:
            continue                            # --ext-unix-sk: connected again by name
        if unit and fd in (0, 1, 2) and s.type == socket.SOCK_STREAM:
            continue                            # its journal stream: handed over (criu.py)
        what = f"to {peer.name}" if peer.name else f"to unix socket {peer.ino} of another process"
        kind = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "datagram"}.get(s.type, "seqpacket")
        why = ("it is restored in the initramfs, before that socket exists" if s.type == socket.SOCK_DGRAM
               and peer.name.startswith("/") else "the peer is not in the tree: the connection would be cut")
        out.append(Blocker(f"{who(pid, proc)} fd {fd}: a {kind} connection {what}: {why}",
                           "select it as a systemd unit (--unit), or have it reconnect, or leave it out"
                           if s.type == socket.SOCK_DGRAM else "select the peer's tree too, or leave it out"))
    return out
