#!/usr/bin/python3
"""Test helper for the boot after the switch: take a given PID before kupgrade restores the
process that had it (to prove the restore detects it). Usage: squat.py FILE-WITH-PID.
While another process holds that PID it waits (up to 20 s) and then takes it: the CI run of
2026-12-04 found a short-lived udevadm holding it at squat's start, squat gave up, and the PID
was free again when the restore came (a boot process below the snapshot's highest PID: to be
explained, see the stop 21 note).
Afterwards new PIDs start where they did before (above the snapshot's highest, as the init-top
script set them): left at the squatted PID, the boot's next processes would take the PIDs of the
other restored processes too."""
import os
import sys
import time

LAST = "/proc/sys/kernel/ns_last_pid"
want = int(open(sys.argv[1]).read())
before = int(open(LAST).read())


def cursor_back() -> None:
    with open(LAST, "w") as f:
        f.write(str(max(before, int(open(LAST).read()))))


def done(message: str, code: int = 0) -> None:
    cursor_back()
    print(message, flush=True)
    sys.exit(code)


seen = ""
for attempt in range(400):
    if os.path.exists(f"/proc/{want}"):     # a short-lived process of the boot may hold it: wait
        try:
            seen = open(f"/proc/{want}/comm").read().strip()
        except OSError:
            pass
        time.sleep(0.05)
        continue
    with open(LAST, "w") as f:
        f.write(str(want - 1))
    pid = os.fork()
    if pid == 0:
        os.setsid()
        os.execv("/bin/sleep", ["sleep", "infinity"])
    if pid == want:
        done(f"squat: took PID {want}" + (f" (held a while before by {seen})" if seen else ""))
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    cursor_back()                           # not left in the snapshot's range while it waits
    time.sleep(0.01)
if os.path.exists(f"/proc/{want}"):         # held all along (20 s): it stays taken
    done(f"squat: PID {want} is taken already ({seen})")
done(f"squat: could not take PID {want}", 1)
