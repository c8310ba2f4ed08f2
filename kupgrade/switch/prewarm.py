"""Pre-warm: the new kernel starts with an empty page cache, so every executable, library and
data file a restored process touches first comes from the disk, inside the pause. The old
kernel lists the regular files the workloads have open or mapped and, of the mapped ones, the
ranges whose pages the workloads had in their page tables (`list_files`, read from
/proc/PID/pagemap while the tasks are stopped; into the snapshot as contract.PREWARM); the new
kernel looks each file up and asks for those ranges to be read ahead (`start`: posix_fadvise
WILLNEED, which the kernel does in the background) the moment the restore begins, so that the
reads overlap the snapshot's verification and criu's work instead of following them.

Only those ranges: reading whole files ahead (what this did first) made the pause longer on a
slow disk (vm-tests/bench, root disk throttled to 4 MiB/s: 1.5-1.9 s longer than without), as the
read-ahead of pages nobody touches queued before the pages criu and the workload needed; and a
database's data files are gigabytes. A file only open is looked up (its dentry and inode), not read.
Runs on the new kernel's boot path too: stdlib only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kupgrade.switch import contract
from kupgrade.system import procfs

SKIP = ("/proc/", "/sys/", "/dev/", "/run/")       # not on a disk


PAGE = os.sysconf("SC_PAGE_SIZE")
PRESENT = 1 << 63           # a pagemap entry: the page is in the task's page tables
CHUNK = 1 << 16             # pagemap entries read at once


def _disk_file(p: str) -> bool:
    if p.startswith(SKIP) or p.endswith(" (deleted)") or "\n" in p:
        return False
    try:
        return stat.S_ISREG(os.stat(p).st_mode)
    except OSError:
        return False


def _present(pagemap, start: int, end: int) -> list[int]:
    """Indexes of the pages of [start, end) that are in the task's page tables (none when
    pagemap cannot be read: then nothing of it is read ahead)."""
    found, first, n = [], start // PAGE, (end - start) // PAGE
    if pagemap is None:
        return found
    for at in range(0, n, CHUNK):
        try:
            pagemap.seek((first + at) * 8)
            data = pagemap.read(min(CHUNK, n - at) * 8)
        except OSError:
            return found
        found += [at + i for i in range(len(data) // 8)
                  if int.from_bytes(data[i * 8:i * 8 + 8], "little") & PRESENT]
    return found


def _ranges(pages: set[int]) -> list[tuple[int, int]]:
    """Page numbers -> (offset, length) byte ranges, adjacent pages merged."""
    out: list[list[int]] = []
    for p in sorted(pages):
        if out and out[-1][1] == p:
            out[-1][1] = p + 1
        else:
            out.append([p, p + 1])
    return [(a * PAGE, (b - a) * PAGE) for a, b in out]


def list_files(pids, proc: Path = procfs.PROC) -> dict[str, list[tuple[int, int]]]:
    """{path: byte ranges to read ahead} for the regular files these tasks have open or map,
    outside the pseudo and volatile file systems; an open, unmapped file has no range."""
    pages: dict[str, set[int]] = {}
    for pid in pids:
        for p in procfs.open_files(pid, proc):
            pages.setdefault(p, set())
        try:
            pagemap = open(proc / str(pid) / "pagemap", "rb", buffering=0)
        except OSError:
            pagemap = None
        try:
            for start, end, offset, path in procfs.maps(pid, proc):
                first = offset // PAGE
                pages.setdefault(path, set()).update(first + i for i in _present(pagemap, start, end))
        finally:
            if pagemap is not None:
                pagemap.close()
    return {p: _ranges(pages[p]) for p in sorted(pages) if _disk_file(p)}


def text(files: dict[str, list[tuple[int, int]]]) -> bytes:
    """One line per range, OFFSET LENGTH PATH (a file with no range: 0 0 PATH)."""
    return "".join(f"{o} {n} {p}\n" for p, ranges in files.items() for o, n in (ranges or [(0, 0)])).encode()


def start(snapshot: Path) -> dict:
    """Look each listed file up and ask the kernel to read its ranges ahead, in the
    background. Never raises."""
    try:
        lines = (snapshot / contract.PREWARM).read_text().splitlines()
    except OSError:
        return {}
    files: dict[str, list[tuple[int, int]]] = {}
    for line in lines:
        off, n, path = (line.split(" ", 2) + ["", ""])[:3]
        if off.isdigit() and n.isdigit() and path:
            files.setdefault(path, []).append((int(off), int(n)))
    looked, asked = 0, 0
    for path, ranges in files.items():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                looked += 1
                for off, n in ranges:
                    if n:
                        os.posix_fadvise(fd, off, n, os.POSIX_FADV_WILLNEED)
                        asked += n
        except OSError:
            pass
        finally:
            os.close(fd)
    return {"files": looked, "bytes": asked}
