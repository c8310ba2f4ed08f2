"""Fault injection for tests, in the spirit of CRIU's CRIU_FAULT: KUPGRADE_FAULT=name[,name]
makes the named point fail as the real step would; the rollback that follows is the real one.
`name:hang` makes the point stop there instead (after writing /run/kupgrade-fault.NAME), so
that a test can kill kupgrade at exactly that moment, as an OOM killer or an admin's
`kill -9` would (then `kupgrade recover` must undo what was done); `name:wait` waits there
until the test removes that file (to change something at exactly that moment)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from .errors import StageError

POINTS = ("prepare", "dump", "pack", "kexec-load", "go", "exec", "restore")     # where they act
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
    marker = Path(MARKER.format(name=name))
    if active(f"{name}:hang"):
        marker.write_text(f"{os.getpid()}\n")
        while True:             # until a signal ends the process (SIGKILL: nothing runs after it)
            signal.pause()
    if active(f"{name}:wait"):
        marker.write_text(f"{os.getpid()}\n")
        while marker.exists():
            time.sleep(0.05)
    if active(name):
        raise StageError(f"{message} (fault injected by KUPGRADE_FAULT={name})", "this is a test fault")
