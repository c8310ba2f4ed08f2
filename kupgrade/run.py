"""The one wrapper through which every external command runs.

argv lists only, never a shell string. Each call is logged (argv, duration, exit code,
the tail of stderr) and appended to ``COMMAND_LOG`` so the upgrade record can carry it.
A failure raises CommandError with argv, exit code and the useful tail of stderr.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass

from .errors import CommandError

log = logging.getLogger("kupgrade.run")

STDERR_TAIL = 2000


@dataclass(frozen=True)
class CommandLog:
    argv: tuple[str, ...]
    returncode: int | None
    duration_s: float
    stderr_tail: str

    def to_json(self) -> dict:
        return {"argv": list(self.argv), "returncode": self.returncode,
                "duration_s": round(self.duration_s, 4), "stderr_tail": self.stderr_tail}

    @classmethod
    def from_json(cls, d: dict) -> "CommandLog":
        return cls(tuple(d["argv"]), d["returncode"], d["duration_s"], d["stderr_tail"])


COMMAND_LOG: list[CommandLog] = []


def _tail(data: bytes | str | None) -> str:
    if not data:
        return ""
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    return data[-STDERR_TAIL:]


def run(argv: list[str], *, check: bool = True, timeout: float | None = None,
        input: bytes | None = None, capture: bool = True, hint: str = "",
        env: dict | None = None, cwd: str | None = None, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
    """Run argv; return the CompletedProcess (stdout/stderr as bytes when captured)."""
    argv = [os.fspath(a) for a in argv]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            argv, input=input, timeout=timeout, env=env, cwd=cwd, pass_fds=pass_fds,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        _record(argv, None, time.monotonic() - start, "")
        raise CommandError(argv, None, "", hint or f"install the package that provides `{argv[0]}`")
    except subprocess.TimeoutExpired as e:
        tail = _tail(e.stderr) or f"timed out after {timeout} s"
        _record(argv, None, time.monotonic() - start, tail)
        raise CommandError(argv, None, tail, hint)
    duration = time.monotonic() - start
    tail = _tail(proc.stderr)
    _record(argv, proc.returncode, duration, tail)
    if capture and proc.stdout:
        log.debug("stdout of %s:\n%s", argv[0], _tail(proc.stdout))
    if tail:
        log.debug("stderr of %s:\n%s", argv[0], tail)
    if check and proc.returncode != 0:
        log.error("command failed (exit %s, %.2f s): %s\n%s", proc.returncode, duration, " ".join(argv), tail)
        raise CommandError(argv, proc.returncode, tail, hint)
    return proc


def _record(argv: list[str], rc: int | None, duration: float, tail: str) -> None:
    COMMAND_LOG.append(CommandLog(tuple(argv), rc, duration, tail))
    log.info("ran: %s -> rc=%s in %.3f s", " ".join(argv), rc, duration)
