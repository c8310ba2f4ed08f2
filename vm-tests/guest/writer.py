#!/usr/bin/python3
"""The dirty-data workload: writes numbered 4 KiB records to data.log (plain write(), never
fsync) and dirties pages of a 16 MiB MAP_SHARED mapping of data.map, ~3 MB/s in total, so that
page cache is dirty at every moment. Nothing here makes data durable: kupgrade must.

SIGUSR1: write state.json (records accepted by write(), the fd offset, mapping updates).
SIGUSR2: stop writing (after the current record), write state.json, wait.
`writer.py --query PID` / `--stop PID`: signal and print the state. `--verify`: read both files
(after --stop) and check every record and every page against the state."""
import hashlib
import json
import mmap
import os
import signal
import sys
import time

DIR = "/var/lib/writer"
DATA, MAP, STATE = f"{DIR}/data.log", f"{DIR}/data.map", f"{DIR}/state.json"
REC, PAGES = 4096, 4096          # 4 KiB records; 16 MiB mapping
BURST, PERIOD = 16, 0.02         # 16 records + 4 pages every 20 ms


def record(n: int) -> bytes:
    head = b"rec %012d\n" % n
    body = hashlib.sha256(head).digest() * (REC // 32)
    return head + body[: REC - len(head)]


def page(n: int) -> bytes:
    head = b"map %012d\n" % n
    return head + bytes([n % 251]) * (mmap.PAGESIZE - len(head))


def write_state(seq: int, fd: int, map_seq: int, stopped: bool, n: list) -> None:
    n[0] += 1
    state = {"n": n[0], "pid": os.getpid(), "records": seq, "offset": os.lseek(fd, 0, os.SEEK_CUR),
             "map_updates": map_seq, "stopped": stopped, "kernel": os.uname().release}
    with open(STATE + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(STATE + ".tmp", STATE)


def main() -> None:
    os.makedirs(DIR, exist_ok=True)
    fd = os.open(DATA, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    mfd = os.open(MAP, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(mfd, PAGES * mmap.PAGESIZE)
    m = mmap.mmap(mfd, PAGES * mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    flags = {"ask": True, "stop": False}
    signal.signal(signal.SIGUSR1, lambda *_: flags.update(ask=True))
    signal.signal(signal.SIGUSR2, lambda *_: flags.update(stop=True))
    seq = map_seq = 0
    n = [0]
    while not flags["stop"]:
        for _ in range(BURST):
            seq += 1
            os.write(fd, record(seq))              # accepted by write(): must survive
        for _ in range(4):
            map_seq += 1
            off = (map_seq % PAGES) * mmap.PAGESIZE
            m[off: off + mmap.PAGESIZE] = page(map_seq)
        if flags["ask"]:
            flags["ask"] = False
            write_state(seq, fd, map_seq, False, n)
        time.sleep(PERIOD)
    write_state(seq, fd, map_seq, True, n)
    while True:
        signal.pause()


def signal_and_read(pid: int, sig: int) -> dict:
    def n():
        try:
            with open(STATE) as f:
                return json.load(f)["n"]
        except (OSError, ValueError):
            return 0
    deadline = time.monotonic() + 60
    while n() == 0:             # its first state.json: the signal handlers are in place
        if time.monotonic() > deadline:
            sys.exit("writer did not start within 60 s")
        time.sleep(0.02)
    before = n()
    os.kill(pid, sig)
    while n() == before:
        if time.monotonic() > deadline:
            sys.exit("writer did not answer within 60 s")
        time.sleep(0.02)
    with open(STATE) as f:
        return json.load(f)


def verify() -> dict:
    with open(STATE) as f:
        st = json.load(f)
    out = {"records": st["records"], "offset": st["offset"], "size": os.path.getsize(DATA), "bad_records": [],
           "bad_pages": []}
    with open(DATA, "rb") as f:
        for i in range(1, st["records"] + 1):
            if f.read(REC) != record(i):
                out["bad_records"].append(i)
                if len(out["bad_records"]) > 10:
                    break
    with open(MAP, "rb") as f:
        for p in range(PAGES):
            # the last update of page p: the largest k <= map_updates with k % PAGES == p
            last = st["map_updates"] - ((st["map_updates"] - p) % PAGES)
            want = page(last) if last > 0 else bytes(mmap.PAGESIZE)
            if f.read(mmap.PAGESIZE) != want:
                out["bad_pages"].append(p)
                if len(out["bad_pages"]) > 10:
                    break
    out["ok"] = (not out["bad_records"] and not out["bad_pages"]
                 and out["size"] == out["offset"] == st["records"] * REC)
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--query", "--stop"):
        sig = signal.SIGUSR1 if sys.argv[1] == "--query" else signal.SIGUSR2
        print(json.dumps(signal_and_read(int(sys.argv[2]), sig)))
    elif sys.argv[1:] == ["--verify"]:
        print(json.dumps(verify()))
    else:
        main()
