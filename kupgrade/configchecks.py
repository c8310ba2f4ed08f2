"""What each setting's value must be: the checks the settings table (config.py) names. Each
takes the value and returns what is wrong with it, or None."""

from __future__ import annotations

import os
import re
import reprlib
from pathlib import Path, PurePosixPath

from kupgrade.switch import contract

TRANSPORTS = ("auto", "initrd", "pmem")
MAX_PRE_DUMP = 5
KEXEC_METHODS = ("auto", "file", "classic")
RESTORE_POLICIES = ("rollback", "keep")
BLOCKED_POLICIES = ("auto", "abort", "fresh")
SNAPSHOT_TOPS = ("/run", "/dev/shm")
KERNEL_RE = re.compile(r"[A-Za-z0-9._+~-]+")
PID_MAX_FILE = Path("/proc/sys/kernel/pid_max")
PID_MAX_LIMIT = 4194304          # the kernel's PID_MAX_LIMIT on 64-bit: the fallback
short = reprlib.Repr()
short.maxlevel, short.maxlist, short.maxstring, short.maxother = 3, 6, 60, 60


def pid_max(path: Path | None = None) -> int:
    """The highest PID this kernel hands out (kernel.pid_max)."""
    try:
        return int((path or PID_MAX_FILE).read_text())
    except (OSError, ValueError):
        return PID_MAX_LIMIT


def positive_pids(v: list) -> str | None:
    top = pid_max()
    bad = [p for p in v if not 1 < p <= top]
    return f"PIDs must be > 1 and at most {top} (kernel.pid_max) (got {short.repr(bad)})" if bad else None


def abs_cgroups(v: list) -> str | None:
    bad = [p for p in v if not p.startswith("/") or ".." in p.split("/")]
    return f"cgroup paths must be absolute within the cgroup2 hierarchy, like \"/workload\" (got {short.repr(bad)})" if bad else None


def services(what: str):
    """A check that every entry is a service name (or pattern): `what` says so when one is not."""
    def check(v: list) -> str | None:
        bad = [u for u in v if not u.endswith(".service") or "/" in u]
        return f"{what} (got {short.repr(bad)})" if bad else None
    return check


def allow(v: list) -> str | None:
    bad = [a for a in v if not a or ("/" in a and not a.startswith("/"))]
    return f"entries are udev subsystems like \"infiniband\" or absolute sys paths (got {short.repr(bad)})" if bad else None


def abs_path(v: str) -> str | None:
    return None if v == "" or v.startswith("/") else f"must be an absolute path (got {short.repr(v)})"


def snapshot_dir(v: str) -> str | None:
    """A tmpfs is mounted over it: only a directory of its own in a tmpfs for runtime files."""
    if not v.startswith("/"):
        return f"must be an absolute path (got {short.repr(v)})"
    p = PurePosixPath(os.path.normpath(v))
    if p.is_relative_to("/boot"):
        return "the snapshot holds process memory: never under /boot"
    if ".." in PurePosixPath(v).parts or not any(p.is_relative_to(top) and p != PurePosixPath(top)
                                                  for top in SNAPSHOT_TOPS):
        return (f"must be a directory of its own under {' or '.join(SNAPSHOT_TOPS)} (got {short.repr(v)}): "
                "a tmpfs is mounted over it, hiding what is there")
    if p.is_relative_to(contract.RESTORE_DIR):
        return f"must not be in {contract.RESTORE_DIR}, where the new kernel finds the snapshot"
    return None


def kernel(v: str) -> str | None:
    if v == "" or (KERNEL_RE.fullmatch(v) and not v.startswith(".")):
        return None
    return (f"must be a kernel version as in /boot/vmlinuz-VERSION: letters, digits and . _ + ~ -, "
            f"not starting with a dot (got {short.repr(v)})")


def size(v: str) -> str | None:
    return None if v == "auto" or re.fullmatch(r"[0-9]+[KMG]", v) else f"must be \"auto\" or a size like \"2G\" (got {short.repr(v)})"


def timeout(v: int) -> str | None:
    return None if 1 <= v <= 86400 else f"must be between 1 and 86400 seconds (got {v})"


def program(v: str) -> str | None:
    return None if v and (v.startswith("/") or "/" not in v) else \
        f"must be a program name found in PATH or an absolute path (got {short.repr(v)})"


def command(v: str) -> str | None:
    import shlex            # only when a health check is set: not on every start of the new kernel's restore
    try:
        argv = shlex.split(v)
    except ValueError as e:
        return f"is not a command line: {e} (got {short.repr(v)})"
    return None if not v or (argv and argv[0].startswith("/")) else \
        f"must name its program by an absolute path (the new kernel's early boot has no PATH to rely on; got {short.repr(v)})"


def one_of(choices: tuple[str, ...]):
    """A check that the value is one of these words."""
    def check(v: str) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)} (got {short.repr(v)})"
    return check


def pre_dump(v: int | str) -> str | None:
    if isinstance(v, str):
        return None if v == "auto" else f"must be \"auto\" or a number of iterations (got {short.repr(v)})"
    return None if 0 <= v <= MAX_PRE_DUMP else f"must be 0 to {MAX_PRE_DUMP} iterations (got {v})"
