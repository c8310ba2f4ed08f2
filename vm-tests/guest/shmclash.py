#!/usr/bin/python3
"""vm-tests (services scenario): a server with shared anonymous memory that, when told, attaches a
SysV segment numbered like that memory right next to it, what PostgreSQL's dynamic shared memory
did in a CI run (criu's dump failed: kupgrade/userspace/carry.py shm_clashes), and lets it go when
told again. Runs in an IPC namespace of its own (PrivateIPC=yes: its unit).

SIGUSR2: make the clash (shm_next_id = the memory's number, shmget, shmat just below it, else
just above), then write /var/lib/vmtest-shmclash/made.json. SIGUSR1: detach and remove the
segment, then write /var/lib/vmtest-shmclash/ended.json (synced: read after the switch). The
memory holds a counter that goes on every 0.1 s, written to /var/lib/vmtest-shmclash/count.json
on SIGHUP."""

import ctypes
import json
import mmap
import os
import signal
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]
STATE = "/var/lib/vmtest-shmclash"
PAGE = mmap.PAGESIZE
memory = mmap.mmap(-1, 1 << 20)          # MAP_SHARED | MAP_ANONYMOUS: "/dev/zero (deleted)" in maps
line = next(f for f in map(str.split, open("/proc/self/maps")) if f[5:6] == ["/dev/zero"])
start, number = int(line[0].split("-")[0], 16), int(line[4])
held = {}


def maps_near() -> list[str]:
    return [ln.rstrip() for ln in open("/proc/self/maps") if " 00:01 " in ln]


def write(path: str, data: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(path + ".tmp", path)


def clash(*_) -> None:
    with open("/proc/sys/kernel/shm_next_id", "w") as f:
        f.write(str(number))
    shmid = libc.shmget(0, PAGE, 0o1600)        # IPC_PRIVATE, IPC_CREAT | 0600
    for where in (start - PAGE, start + len(memory)):      # right below it, else right above
        addr = libc.shmat(shmid, where, 0)
        if addr == where:
            break
        if addr not in (None, ctypes.c_void_p(-1).value):
            libc.shmdt(ctypes.c_void_p(addr))
    held.update(shmid=shmid, addr=addr)
    write(f"{STATE}/made.json", {"pid": os.getpid(), "number": number, "shmid": shmid, "next_to_it": addr == where,
                                 "count": int.from_bytes(memory[:8], "little"), "maps": maps_near()})


def end(*_) -> None:
    rc = libc.shmdt(ctypes.c_void_p(held["addr"])), libc.shmctl(held["shmid"], 0, None)    # IPC_RMID
    write(f"{STATE}/ended.json", {"pid": os.getpid(), "shmid": held["shmid"], "rc": list(rc), "maps": maps_near()})


def save(*_) -> None:
    write(f"{STATE}/count.json", {"pid": os.getpid(), "count": int.from_bytes(memory[:8], "little")})


os.makedirs(STATE, exist_ok=True)
for name in ("made.json", "ended.json", "count.json"):
    if os.path.exists(f"{STATE}/{name}"):
        os.unlink(f"{STATE}/{name}")
signal.signal(signal.SIGUSR2, clash)
signal.signal(signal.SIGUSR1, end)
signal.signal(signal.SIGHUP, save)
while True:
    memory[:8] = (int.from_bytes(memory[:8], "little") + 1).to_bytes(8, "little")
    time.sleep(0.1)
