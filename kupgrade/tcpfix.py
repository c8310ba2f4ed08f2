"""Restored TCP connections that never negotiated window scaling: criu's post-restore action.

A restored socket is created by connect() in repair mode, which picks a receive window scale
for the new socket; TCP_REPAIR_OPTIONS replaces it only when the dumped connection had
negotiated scaling. Otherwise the socket keeps that scale (e.g. 7) while its peer reads the
advertised window unscaled: it sees a window of a few bytes and the connection crawls
(measured with QEMU's user networking, which never offers scaling: 4-byte segments, slower
than a 20-lines-per-second stream). While the restored sockets are still in repair mode
(criu's post-restore action runs before it releases them), scale 0 both ways is set, which
is exactly "no scaling" on the wire.

Run as `python3 -I -S tcpfix.py ROOT_PID` by the action script kupgrade/tcp.py writes:
standard library only (the interpreter's start is inside the downtime). Never fails criu's
restore: a connection left unfixed is slow, not lost. Also the /proc and pidfd helpers that
kupgrade/tcp.py and the watchdog hook share (`getfd`: borrow another process's open file).
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
from pathlib import Path

TCP_REPAIR = 19
TCP_INFO = 11
TCP_REPAIR_OPTIONS = 22
TCPOPT_WINDOW = 3
TCPI_OPT_WSCALE = 4
SYS_PIDFD_GETFD = 438       # the same number on x86_64 and aarch64
_libc = None


def owned(pids, proc: Path = Path("/proc")) -> dict[int, tuple[int, int]]:
    """Socket inode -> (pid, fd) of the first task of `pids` holding it."""
    found: dict[int, tuple[int, int]] = {}
    for pid in pids:
        try:
            fds = os.listdir(proc / str(pid) / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(proc / str(pid) / "fd" / fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                found.setdefault(int(link[8:-1]), (pid, int(fd)))
    return found


def getfd(pid: int, fd: int) -> int:
    """A duplicate of another process's fd (pidfd_open + pidfd_getfd, Linux >= 5.6)."""
    global _libc
    _libc = _libc or ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        new = _libc.syscall(ctypes.c_long(SYS_PIDFD_GETFD), ctypes.c_long(pidfd), ctypes.c_long(fd), ctypes.c_long(0))
        if new < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd(PID {pid}, fd {fd}): {os.strerror(err)}")
        return new
    finally:
        os.close(pidfd)


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
    for inode, (pid, fd) in owned(tree_pids(root)).items():
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
