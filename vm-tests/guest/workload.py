#!/usr/bin/python3
"""The test workload: a parent and a child joined by a pipe.

The parent holds a 64 MiB buffer of known content and a counter; every 100 ms it sends the
next counter value down the pipe; the child appends one heartbeat line per value to
heartbeat.log. On SIGUSR1 the parent writes state.json: PIDs, counter, sha256 of the buffer.
`workload.py --query PID` triggers that and prints the state. On SIGUSR2 the parent forks a
late child (it sleeps; its PID is in the state as "late"): a tree that grew after preflight.
KUPGRADE_WL_DIR and KUPGRADE_WL_MIB (environment) give a second instance its own directory
and buffer size; KUPGRADE_WL_DIRTY_MIBS makes it dirty that many MiB per second of a second,
32 MiB buffer (one byte per page, round and round: what criu's pre-dumps chase).
KUPGRADE_WL_MAP_MIB maps a data file of that many MiB (data.bin, written and synced at the
start) and reads a byte of each of its pages before every heartbeat, as a database reads its
mapped files: after the switch the first beat waits for those pages to come from the disk (what
kupgrade's pre-warm reads ahead).
KUPGRADE_WL_SAY=1: each state written is also a line on stdout (a unit's: the journal)."""
import hashlib
import json
import mmap
import os
import random
import signal
import sys
import time

DIR = os.environ.get("KUPGRADE_WL_DIR", "/var/lib/workload")
STATE = f"{DIR}/state.json"
HEARTBEAT = f"{DIR}/heartbeat.log"
SIZE = int(os.environ.get("KUPGRADE_WL_MIB", "64")) << 20
DIRTY_PAGES_PER_TICK = int(float(os.environ.get("KUPGRADE_WL_DIRTY_MIBS", "0")) * 256 / 10)
DIRTY_MIB = 32
MAP_BYTES = int(os.environ.get("KUPGRADE_WL_MAP_MIB", "0")) << 20
SAY = bool(os.environ.get("KUPGRADE_WL_SAY"))


def child(r: int) -> None:
    out = os.open(HEARTBEAT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pending = b""
    while True:
        data = os.read(r, 4096)
        if not data:
            sys.exit(0)
        pending += data
        *values, pending = pending.split(b"\n")
        for v in values:
            os.write(out, b"hb %s %d %d\n" % (v, os.getpid(), os.getppid()))


def known_content(size: int) -> bytearray:
    """size bytes of known content, quick to make under TCG (randbytes of 400 MiB takes minutes
    there): a random MiB repeated, every 4 KiB page stamped with its number (no two pages alike)."""
    block = random.Random(20261123).randbytes(1 << 20)
    buf = bytearray(block * (size >> 20))
    for page in range(0, size, 4096):
        buf[page:page + 8] = page.to_bytes(8, "little")
    return buf


def mapped_data(size: int) -> memoryview:
    """A byte of each page of a data file of `size` bytes, mapped read-only (written and synced
    first, so that no writeback of it falls into the switch)."""
    path = f"{DIR}/data.bin"
    with open(path, "wb") as f:
        f.write(known_content(size))
        f.flush()
        os.fsync(f.fileno())
    with open(path, "rb") as f:
        return memoryview(mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ))[::4096]


def parent() -> None:
    os.makedirs(DIR, exist_ok=True)
    r, w = os.pipe()
    kid = os.fork()             # before the buffer exists: the child must not share it copy-on-write
    if kid == 0:                # (criu would dump those shared pages twice)
        os.close(w)
        child(r)
    os.close(r)
    asked, late = [], []        # before the buffer: a query while it is made must not kill us
    signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))
    signal.signal(signal.SIGUSR2, lambda *_: late.append(0))
    buf = known_content(SIZE)
    sha_start = hashlib.sha256(buf).hexdigest()
    counter, seq = 0, 0
    dirty, page = bytearray(DIRTY_MIB << 20) if DIRTY_PAGES_PER_TICK else bytearray(), 0
    pages = mapped_data(MAP_BYTES) if MAP_BYTES else None
    asked.append(1)
    while True:
        counter += 1
        for _ in range(DIRTY_PAGES_PER_TICK):
            dirty[page * 4096] = counter & 0xFF
            page = (page + 1) % (DIRTY_MIB * 256)
        if pages is not None:
            pages.tobytes()         # touches every page of the mapped file
        os.write(w, b"%d\n" % counter)
        if late and late[-1] == 0:
            late[-1] = os.fork()
            if late[-1] == 0:
                os.close(w)
                while True:
                    time.sleep(1)
            asked.append(1)
        if asked:
            asked.clear()
            seq += 1
            state = {"seq": seq, "pid": os.getpid(), "child": kid, "late": late, "counter": counter,
                     "sha256": hashlib.sha256(buf).hexdigest(), "sha256_start": sha_start,
                     "kernel": os.uname().release}
            with open(STATE + ".tmp", "w") as f:
                json.dump(state, f)
            os.replace(STATE + ".tmp", STATE)
            if SAY:
                try:
                    print(f"workload: state {seq}, counter {counter}, kernel {state['kernel']}", flush=True)
                except OSError:         # no reader: the state file is what counts
                    pass
        time.sleep(0.1)


def query(pid: int) -> None:
    def seq():
        try:
            with open(STATE) as f:
                d = json.load(f)
            return d["seq"] if d["pid"] == pid else 0
        except (OSError, ValueError, KeyError):
            return 0
    deadline = time.monotonic() + 300       # a large buffer is made and hashed slowly under TCG
    while seq() == 0:                       # its first state: the buffer is ready
        if time.monotonic() > deadline:
            sys.exit("workload never wrote its first state within 300 s")
        time.sleep(0.05)
    before = seq()
    os.kill(pid, signal.SIGUSR1)
    while seq() == before:
        if time.monotonic() > deadline:
            sys.exit("workload did not answer SIGUSR1 within 300 s")
        time.sleep(0.05)
    with open(STATE) as f:
        print(f.read())


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--query":
        query(int(sys.argv[2]))
    else:
        parent()
