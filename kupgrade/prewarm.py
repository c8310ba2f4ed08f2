"""Pre-warm: the new kernel starts with an empty page cache, so every executable, library and
data file a restored process touches first comes from the disk, inside the pause. The old
kernel lists the regular files the workloads have open or mapped (`list_files`, into the
snapshot as contract.PREWARM); the new kernel asks for all of them to be read ahead
(`start`: posix_fadvise WILLNEED, which the kernel does in the background) the moment the
restore begins, so that the reads overlap the snapshot's verification and criu's work instead
of following them. Runs on the new kernel's boot path too: stdlib only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from . import contract, procfs

SKIP = ("/proc/", "/sys/", "/dev/", "/run/")       # not on a disk


def list_files(pids, proc: Path = procfs.PROC) -> list[str]:
    """The regular files these tasks have open or mapped, outside the pseudo and volatile file systems."""
    found: set[str] = set()
    for pid in pids:
        found |= procfs.used_files(pid, proc)
    out = []
    for p in sorted(found):
        if p.startswith(SKIP) or p.endswith(" (deleted)") or "\n" in p:
            continue
        try:
            if stat.S_ISREG(os.stat(p).st_mode):
                out.append(p)
        except OSError:
            continue
    return out


def text(paths: list[str]) -> bytes:
    return "".join(p + "\n" for p in paths).encode()


def start(snapshot: Path) -> dict:
    """Ask the kernel to read the listed files ahead, in the background. Never raises."""
    try:
        paths = (snapshot / contract.PREWARM).read_text().splitlines()
    except OSError:
        return {}
    asked, size = 0, 0
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                asked, size = asked + 1, size + st.st_size
        except OSError:
            pass
        finally:
            os.close(fd)
    return {"files": asked, "bytes": size}
