"""Restored TCP connections that never negotiated window scaling: criu's post-restore action.

A restored socket is created by connect() in repair mode, which picks a receive window scale
for the new socket; TCP_REPAIR_OPTIONS replaces it only when the dumped connection had
negotiated scaling. Otherwise the socket keeps that scale (e.g. 7) while its peer reads the
advertised window unscaled: it sees a window of a few bytes and the connection crawls
(measured with QEMU's user networking, which never offers scaling: 4-byte segments, slower
than a 20-lines-per-second stream). While the restored sockets are still in repair mode
(criu's post-restore action runs before it releases them), scale 0 both ways is set, which
is exactly "no scaling" on the wire.

Run as `python3 -I -S tcpfix.py ROOT_PID` by the action script kupgrade/userspace/tcp.py writes:
the standard library and kupgrade's /proc reader only (the interpreter's start is inside the
downtime). Never fails criu's restore: a connection left unfixed is slow, not lost.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

if __name__ == "__main__":      # run as a file with -I -S: only the folder kupgrade is installed in
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kupgrade.system.procfs import getfd, sockets  # noqa: E402

TCP_REPAIR = 19
TCP_INFO = 11
TCP_REPAIR_OPTIONS = 22
TCPOPT_WINDOW = 3
TCPI_OPT_WSCALE = 4


def tcp_info(sk: socket.socket) -> tuple[int, int]:
    """(state, options) of a TCP socket: the first and sixth byte of struct tcp_info."""
    info = sk.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 8)
    return info[0], info[5]


def tree_pids(root: int, proc: Path = Path("/proc")) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        for task in (proc / str(pid) / "task").glob("*/children"):
            todo += [int(c) for c in task.read_text().split()]
    return out


def fix_windows(root: int) -> list[str]:
    """Scale 0/0 on the tree's restored connections (still in repair mode) that did not
    negotiate window scaling. Returns one line per socket fixed."""
    done = []
    for inode, ((pid, fd), *_) in sockets(tree_pids(root)).items():
        try:
            dup = getfd(pid, fd)
        except OSError:
            continue
        with socket.socket(fileno=dup) as sk:
            if sk.type != socket.SOCK_STREAM or sk.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if not sk.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR):
                continue
            state, options = tcp_info(sk)
            if state != 1 or options & TCPI_OPT_WSCALE:
                continue
            sk.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_OPTIONS, TCPOPT_WINDOW.to_bytes(4, sys.byteorder) + bytes(4))
            done.append(f"socket:[{inode}] of PID {pid}: window scale set to 0 (the connection never negotiated one)")
    return done


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: tcpfix.py ROOT_PID", file=sys.stderr)
        return 2
    try:
        for line in fix_windows(int(argv[0])):
            print(f"kupgrade: {line}", file=sys.stderr)
    except (OSError, ValueError) as e:
        print(f"kupgrade: cannot fix the restored sockets' window scale: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
