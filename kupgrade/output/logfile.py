"""A log of every upgrade in /var/log/kupgrade/ID.log: argv, exit code, duration and the output
tails of every external command (from the run() wrapper), stage starts and ends. The old
kernel's `run` and the new kernel's restore write to the same file. Also sent to syslog
(journald) when /dev/log exists."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

LOG_DIR = Path("/var/log/kupgrade")
FORMAT = "%(asctime)s %(name)s: %(message)s"


class _Stderr(logging.StreamHandler):
    pass


def stderr_handler(debug: bool) -> None:
    """Human stderr: warnings only, everything with --debug (the file gets everything)."""
    lg = _kupgrade()
    for old in [h for h in lg.handlers if isinstance(h, _Stderr)]:
        lg.removeHandler(old)
    h = _Stderr(sys.stderr)
    h.setLevel(logging.DEBUG if debug else logging.WARNING)
    h.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    lg.addHandler(h)


def _kupgrade() -> logging.Logger:
    lg = logging.getLogger("kupgrade")
    lg.setLevel(logging.DEBUG)
    lg.propagate = False
    return lg


def start(record_id: str, log_dir: Path = LOG_DIR) -> Path | None:
    """Append this process's log to log_dir/ID.log (root-only). None if it cannot be written."""
    lg = _kupgrade()
    path = log_dir / f"{record_id}.log"
    try:
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.close(fd)
        h = logging.FileHandler(path)
    except OSError:
        return None
    h.setFormatter(logging.Formatter(FORMAT))
    lg.addHandler(h)
    if Path("/dev/log").exists():
        try:
            from logging.handlers import SysLogHandler     # only here: it imports socket, pickle, ...
            s = SysLogHandler(address="/dev/log")
            s.setLevel(logging.INFO)
            s.setFormatter(logging.Formatter("kupgrade[%(process)d]: %(message)s"))
            lg.addHandler(s)
        except OSError:
            pass
    lg.info("kupgrade %s (pid %d, kernel %s)", " ".join(sys.argv[1:]) or "-", os.getpid(), os.uname().release)
    return path
