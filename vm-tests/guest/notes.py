#!/usr/bin/python3
"""A server as locked down as systemd allows (vmtest-sandboxed.service: DynamicUser, PrivateTmp,
ProtectSystem=strict): a note store for the services scenario. Usage: notes.py PORT.

A client sends "put N" lines and gets "ok N" back once note N is kept: in memory, in a file in
its private /tmp, and in its StateDirectory. "stat" is answered with a JSON line: the notes
held, the lines in both files, the token drawn at start (a restarted server has another one),
its UID. One thread, one select loop."""
import json
import os
import secrets
import select
import socket
import sys

port = int(sys.argv[1])
token = secrets.token_hex(8)
state = os.environ.get("STATE_DIRECTORY", "/tmp")
tmp = open("/tmp/notes", "a", buffering=1)
kept = open(os.path.join(state, "notes"), "a", buffering=1)
notes: list[int] = []
lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsock.bind(("0.0.0.0", port))
lsock.listen(8)
print(f"notes: pid {os.getpid()} uid {os.getuid()} token {token} on {port}", flush=True)
bufs: dict[socket.socket, bytes] = {}


def lines(path: str) -> int:
    with open(path) as f:
        return sum(1 for _ in f)


def answer(line: str) -> str:
    if line.startswith("put "):
        n = int(line.split()[1])
        notes.append(n)
        tmp.write(f"{n}\n")
        kept.write(f"{n}\n")
        return f"ok {n}"
    if line == "stat":
        return json.dumps({"notes": notes, "tmp_lines": lines("/tmp/notes"),
                           "state_lines": lines(os.path.join(state, "notes")), "token": token, "uid": os.getuid(),
                           "pid": os.getpid()})
    return "?"


while True:
    ready, _, _ = select.select([lsock, *bufs], [], [])
    for s in ready:
        if s is lsock:
            c, _ = lsock.accept()
            bufs[c] = b""
            continue
        data = s.recv(65536)
        if not data:
            bufs.pop(s).close()
            continue
        bufs[s] += data
        while b"\n" in bufs[s]:
            raw, bufs[s] = bufs[s].split(b"\n", 1)
            s.sendall((answer(raw.decode().strip()) + "\n").encode())
