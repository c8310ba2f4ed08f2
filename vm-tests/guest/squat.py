#!/usr/bin/python3
"""Test helper for the boot after the switch: take a given PID before kupgrade restores the
process that had it (to prove the restore detects it). Usage: squat.py FILE-WITH-PID."""
import os
import sys
import time

want = int(open(sys.argv[1]).read())
for attempt in range(200):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(want - 1))
    pid = os.fork()
    if pid == 0:
        os.setsid()
        os.execv("/bin/sleep", ["sleep", "infinity"])
    if pid == want:
        print(f"squat: took PID {want}", flush=True)
        sys.exit(0)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    time.sleep(0.01)
sys.exit(f"squat: could not take PID {want}")
