"""Fault injection for tests, in the spirit of CRIU's CRIU_FAULT: KUPGRADE_FAULT=name[,name]
makes the named point fail as the real step would; the rollback that follows is the real one.
`name:hang` makes the point stop there instead (after writing /run/kupgrade-fault.NAME), so
that a test can kill kupgrade at exactly that moment, as an OOM killer or an admin's
`kill -9` would (then `kupgrade recover` must undo what was done); `name:wait` waits there
until the test removes that file (to change something at exactly that moment); `name:once`
fails the first time only in this boot (a cause the admin fixed before `restore --retry`);
`name:second` passes the first time and fails from the second on (one tree of several)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from kupgrade.errors import StageError

POINTS = ("prepare", "dump", "pack", "kexec-load", "go", "exec", "restore", "corrupt")     # where they act
MARKER = "/run/kupgrade-fault.{name}"


def _cmdline() -> list[str]:
    """The new kernel's faults come on its command line (kupgrade.fault=a,b; passed with the
    config's `target.append`): its boot path does not see the old kernel's environment."""
    try:
        words = Path("/proc/cmdline").read_text().split()
    except OSError:
        return []
    return [f for w in words if w.startswith("kupgrade.fault=") for f in w.split("=", 1)[1].split(",")]


def active(name: str) -> bool:
    return name in os.environ.get("KUPGRADE_FAULT", "").split(",") or name in _cmdline()


def point(name: str, message: str) -> None:
    if name not in POINTS:
        raise ValueError(f"no fault point {name!r}: one of {', '.join(POINTS)}")
    marker = Path(MARKER.format(name=name))
    if active(f"{name}:hang"):
        marker.write_text(f"{os.getpid()}\n")
        while True:             # until a signal ends the process (SIGKILL: nothing runs after it)
            signal.pause()
    if active(f"{name}:wait"):
        marker.write_text(f"{os.getpid()}\n")
        while marker.exists():
            time.sleep(0.05)
    if active(name) or _first(name) or _later(name):
        raise StageError(f"{message} (fault injected by KUPGRADE_FAULT={name})", "this is a test fault")


def _first(name: str) -> bool:
    """`name:once` is active, and this is the first time in this boot."""
    used = Path(MARKER.format(name=name) + ".used")
    if not active(f"{name}:once") or used.exists():
        return False
    used.write_text("")
    return True


def _later(name: str) -> bool:
    """`name:second` is active, and this is not the first time in this boot."""
    used = Path(MARKER.format(name=name) + ".passed")
    if not active(f"{name}:second"):
        return False
    if used.exists():
        return True
    used.write_text("")
    return False


def corrupt(tree: Path) -> bool:
    """The fault `corrupt`: one byte of the tree's largest image changed (a damaged copy, as
    the checksum must catch it). True if it did."""
    if not active("corrupt"):
        return False
    image = max((p for p in tree.glob("*.img")), key=lambda p: p.stat().st_size)
    with image.open("r+b") as f:
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 0xFF]))
    return True
