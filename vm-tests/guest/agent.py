#!/usr/bin/python3
"""The guest side of the test harness: JSON lines over the second serial port (/dev/ttyS1).

Requests {"id", "op", ...} -> replies {"id", ...}; events {"ev", ...} unprompted.
ops: run (argv, timeout, input) | spawn (argv, log, cgroup, last_pid) | tail (path, offset) | read (path)
Each request runs in its own thread: `kupgrade run` never returns (the kernel switches)."""
import json
import os
import subprocess
import sys
import termios
import threading
import time
import tty

PORT = "/dev/ttyS1"
fd = os.open(PORT, os.O_RDWR | os.O_NOCTTY)
tty.setraw(fd)
attrs = termios.tcgetattr(fd)
attrs[4] = attrs[5] = termios.B115200
termios.tcsetattr(fd, termios.TCSANOW, attrs)
lock = threading.Lock()


def send(obj: dict) -> None:
    data = (json.dumps(obj) + "\n").encode()
    with lock:
        while data:
            n = os.write(fd, data)
            data = data[n:]


def op_run(req):
    try:
        if req.get("output"):       # e.g. /dev/console: the host sees it even if the kernel switches
            with open(req["output"], "wb") as out:
                p = subprocess.run(req["argv"], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                   timeout=req.get("timeout_s", 300))
            return {"rc": p.returncode, "stdout": "", "stderr": ""}
        p = subprocess.run(req["argv"], input=req.get("input", "").encode(), capture_output=True,
                           timeout=req.get("timeout_s", 300))
        return {"rc": p.returncode, "stdout": p.stdout.decode(errors="replace"),
                "stderr": p.stderr.decode(errors="replace")}
    except subprocess.TimeoutExpired:
        return {"rc": None, "stdout": "", "stderr": "timeout"}
    except FileNotFoundError as e:
        return {"rc": 127, "stdout": "", "stderr": str(e)}


def op_spawn(req):
    cgroup = req.get("cgroup")
    if cgroup:
        os.makedirs("/sys/fs/cgroup" + cgroup, exist_ok=True)

    def prep():
        if cgroup:
            with open(f"/sys/fs/cgroup{cgroup}/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

    if req.get("last_pid"):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(req["last_pid"]))
    log = open(req.get("log", "/dev/null"), "ab")
    # Like a daemon (or a service under systemd): a session of its own, its parent is PID 1,
    # which reaps it; the launcher prints the daemon's PID and exits.
    p = subprocess.Popen([sys.executable, "-c", DAEMONIZE, *req["argv"]], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=log, preexec_fn=prep, env={**os.environ, **req.get("env", {})})
    out, _ = p.communicate(timeout=60)
    # the daemon's stdout/stderr: the log file
    return {"pid": int(out.decode().split()[0])}


DAEMONIZE = """
import os, sys
pid = os.fork()
if pid:
    print(pid, flush=True)
    os._exit(0)
os.setsid()
os.dup2(2, 1)
os.execvp(sys.argv[1], sys.argv[1:])
"""


def op_tail(req):
    path, offset = req["path"], req.get("offset", 0)

    def relay():
        nonlocal offset
        buf = b""
        while True:
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                offset += len(chunk)
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    send({"ev": "line", "path": path, "line": line.decode(errors="replace"), "offset": offset - len(buf)})
            else:
                time.sleep(0.01)

    threading.Thread(target=relay, daemon=True).start()
    return {"ok": True}


def op_read(req):
    try:
        with open(req["path"], errors="replace") as f:
            return {"data": f.read()}
    except OSError as e:
        return {"error": str(e)}


OPS = {"run": op_run, "spawn": op_spawn, "tail": op_tail, "read": op_read}


def handle(req):
    try:
        reply = OPS[req["op"]](req)
    except Exception as e:  # noqa: BLE001 - report everything to the host
        reply = {"error": f"{type(e).__name__}: {e}"}
    reply["id"] = req["id"]
    send(reply)


send({"ev": "ready", "kernel": os.uname().release, "pid": os.getpid(),
      "uptime": float(open("/proc/uptime").read().split()[0])})
pending = b""
while True:
    data = os.read(fd, 4096)
    if not data:
        time.sleep(0.05)
        continue
    pending += data
    *lines, pending = pending.split(b"\n")
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
        except ValueError:
            send({"ev": "bad-request", "line": line.decode(errors="replace")})
            continue
        threading.Thread(target=handle, args=(req,), daemon=True).start()
