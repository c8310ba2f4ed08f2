"""The one wrapper through which every external command runs.

argv lists only, never a shell string. Each call is logged (argv, duration, exit code,
the tail of stderr) and appended to ``COMMAND_LOG`` so the upgrade record can carry it.
A failure raises CommandError with argv, exit code and the useful tail of stderr. With
``keep=N`` (programs we do not control, like device hooks) only the first N+1 bytes of stdout
and the last STDERR_KEEP bytes of stderr are kept in memory; the rest is read and dropped.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass

from kupgrade.errors import CommandError

log = logging.getLogger("kupgrade.system.run")

STDERR_TAIL = 2000
STDERR_KEEP = 16 << 10


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
PROGRAMS: dict[str, str] = {}       # a program's name in code -> what runs (paths.criu, paths.kexec)


def use_programs(programs: dict[str, str]) -> None:
    """The config's choice of programs (config.load; `kupgrade recover`: the interrupted run's)."""
    PROGRAMS.clear()
    PROGRAMS.update({name: path for name, path in programs.items() if path and path != name})


def program(name: str) -> str:
    """What runs for `name` ("criu", "kexec"): the command lines of criu.py and kexec.py name it,
    wherever in the argv it stands (after choom, setpriv, freeze-exec)."""
    return PROGRAMS.get(name, name)


def _tail(data: bytes | str | None) -> str:
    if not data:
        return ""
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    return data[-STDERR_TAIL:]


def run(argv: list[str], *, check: bool = True, timeout: float | None = None,
        input: bytes | None = None, capture: bool = True, hint: str = "",
        env: dict | None = None, cwd: str | None = None, pass_fds: tuple[int, ...] = (),
        keep: int | None = None, new_session: bool = False) -> subprocess.CompletedProcess:
    """Run argv; return the CompletedProcess (stdout/stderr as bytes when captured; bounded with
    `keep`, see the module docstring). new_session: in a session of its own (a Ctrl-C on our
    terminal does not reach it)."""
    argv = [os.fspath(a) for a in argv]
    start = time.monotonic()
    try:
        if keep is not None:
            proc = _bounded(argv, input, timeout, keep, env=env, cwd=cwd, pass_fds=pass_fds,
                            start_new_session=new_session)
        else:
            proc = subprocess.run(
                argv, input=input, timeout=timeout, env=env, cwd=cwd, pass_fds=pass_fds,
                start_new_session=new_session,
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


def _bounded(argv: list[str], input: bytes | None, timeout: float | None, keep: int,
             **popen) -> subprocess.CompletedProcess:
    """subprocess.run with both pipes captured, keeping the first keep+1 bytes of stdout and the
    last STDERR_KEEP bytes of stderr. Raises TimeoutExpired as subprocess.run does (also when a
    child left behind holds the pipes open past the timeout)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    out, err = bytearray(), bytearray()
    threads = [threading.Thread(target=_drain, args=(proc.stdout, out, keep + 1, True), daemon=True),
               threading.Thread(target=_drain, args=(proc.stderr, err, STDERR_KEEP, False), daemon=True)]
    if input is not None:
        threads.append(threading.Thread(target=_feed, args=(proc.stdin, input), daemon=True))
    for t in threads:
        t.start()
    try:
        proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for t in threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            raise subprocess.TimeoutExpired(argv, timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise subprocess.TimeoutExpired(argv, timeout, output=bytes(out), stderr=bytes(err)) from None
    return subprocess.CompletedProcess(argv, proc.returncode, bytes(out), bytes(err))


def _drain(stream, buf: bytearray, limit: int, head: bool) -> None:
    """Read the stream to its end, keeping its first (head) or its last `limit` bytes in buf."""
    with stream:
        while chunk := stream.read1(1 << 16):
            if head:
                buf += chunk[:max(0, limit - len(buf))]
            else:
                buf += chunk
                del buf[:-limit]


def _feed(stream, data: bytes) -> None:
    try:
        with stream:
            stream.write(data)
    except BrokenPipeError:         # it stopped reading: its exit status tells the rest
        pass


def _record(argv: list[str], rc: int | None, duration: float, tail: str) -> None:
    COMMAND_LOG.append(CommandLog(tuple(argv), rc, duration, tail))
    log.info("ran: %s -> rc=%s in %.3f s", " ".join(argv), rc, duration)
