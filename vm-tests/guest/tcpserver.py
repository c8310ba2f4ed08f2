#!/usr/bin/python3
"""Test workload for the tcp scenario: a TCP server that talks. Usage: tcpserver.py PORT.

Every accepted connection gets a numbered line every 50 ms ("g 1", "g 2", ...) and must send
numbered lines itself ("h 1", "h 2", ...). Each number that is not the previous plus one is a
problem (lost, duplicated, reordered). "stat" is answered in-stream with a JSON line: how many
connections were accepted, the peer, the last number received, the problems. One thread, one
select loop: what criu carries across the kernel switch is exactly this process's state."""
import json
import os
import select
import socket
import sys
import time

PERIOD = 0.05
port = int(sys.argv[1])
lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsock.bind(("0.0.0.0", port))
lsock.listen(8)
print(f"tcpserver: pid {os.getpid()} listening on {port}", flush=True)
accepted = 0
conns = {}      # socket -> {"peer", "sent", "last", "problems", "buf"}
due = time.monotonic()
while True:
    ready, _, _ = select.select([lsock, *conns], [], [], max(0.0, due - time.monotonic()))
    for s in ready:
        if s is lsock:
            c, peer = lsock.accept()
            accepted += 1
            conns[c] = {"peer": f"{peer[0]}:{peer[1]}", "sent": 0, "last": 0, "problems": [], "buf": b""}
            print(f"tcpserver: connection {accepted} from {peer[0]}:{peer[1]}", flush=True)
            continue
        st = conns[s]
        try:
            data = s.recv(65536)
        except OSError as e:        # a peer that resets its connection ends that connection only
            print(f"tcpserver: {st['peer']}: {e}", flush=True)
            data = b""
        if not data:
            print(f"tcpserver: {st['peer']} closed; last h {st['last']}, problems {st['problems']}", flush=True)
            del conns[s]
            s.close()
            continue
        st["buf"] += data
        *lines, st["buf"] = st["buf"].split(b"\n")
        for line in lines:
            word, _, arg = line.decode().partition(" ")
            if word == "h":
                n = int(arg)
                if n != st["last"] + 1:
                    st["problems"].append(f"got h {n} after h {st['last']}")
                    print(f"tcpserver: {st['peer']}: got h {n} after h {st['last']}", flush=True)
                st["last"] = n
            elif word == "stat":
                info = {"accepted": accepted, "peer": st["peer"], "last": st["last"], "sent": st["sent"],
                        "problems": st["problems"], "pid": os.getpid()}
                s.sendall(b"stat " + json.dumps(info).encode() + b"\n")
    if time.monotonic() >= due:
        for s, st in list(conns.items()):
            st["sent"] += 1
            try:
                s.sendall(f"g {st['sent']}\n".encode())
            except OSError as e:
                print(f"tcpserver: {st['peer']}: send failed: {e}", flush=True)
                del conns[s]
                s.close()
        due += PERIOD
        if due < time.monotonic():      # never a burst to catch up: the next line in PERIOD
            due = time.monotonic() + PERIOD
