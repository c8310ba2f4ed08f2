"""Pre-warm: the new kernel starts with an empty page cache, so every executable, library and
data file a restored process touches first comes from the disk, inside the pause. The old
kernel lists the regular files the workloads have open or mapped and, of the mapped ones, the
ranges whose pages the workloads had in their page tables (`list_files`, read from
/proc/PID/pagemap while the tasks are stopped; into the snapshot as contract.PREWARM); the new
kernel looks each file up and reads those ranges (`start`: a thread) as the restore stage
begins, so that the reads overlap the snapshot's verification and criu's work instead of
following them.

A small chunk at a time, each read waiting for the disk, the kernel's own read-ahead off for
the file (POSIX_FADV_RANDOM): the restore's own reads (its modules, criu, the hooks' tools)
queue behind one small read of it at most. Asking for all ranges at once (posix_fadvise
WILLNEED, what this did before) queued them all ahead of those: on a disk throttled to 4 MiB/s
(vm-tests/bench, a workload reading a 16 MiB mapped file) the restore stage took 2.2-4.1 s with
it against 2.4-2.6 s without, its first import 0.7-1.1 s instead of 0.06-0.09 s. Started before
kupgrade-restore's imports (256 KiB reads), the imports took 6.8 s instead of 2.4. As it is, on
a disk throttled to 16 MiB/s with a 64 MiB mapped file: restore to the workload's first beat
5.8-5.9 s against 7.5-8.6 s without (two pairs).

Only those ranges: reading whole files ahead (what this did first) made the pause longer on a
slow disk (vm-tests/bench, root disk throttled to 4 MiB/s: 1.5-1.9 s longer than without), as the
read-ahead of pages nobody touches queued before the pages criu and the workload needed; and a
database's data files are gigabytes. A file only open is looked up (its dentry and inode), not read.
Runs on the new kernel's boot path too: stdlib only."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

from kupgrade.switch import contract
from kupgrade.system import procfs

SKIP = ("/proc/", "/sys/", "/dev/", "/run/")       # not on a disk


PAGE = os.sysconf("SC_PAGE_SIZE")
PRESENT = 1 << 63           # a pagemap entry: the page is in the task's page tables
CHUNK = 1 << 16             # pagemap entries read at once
READ_CHUNK = 64 << 10       # bytes read ahead at once (one read in the disk's queue at a time)


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


def read_list(snapshot: Path) -> dict[str, list[tuple[int, int]]] | None:
    """The snapshot's list (`text`): {path: ranges}; None when it has none."""
    try:
        lines = (snapshot / contract.PREWARM).read_text().splitlines()
    except OSError:
        return None
    files: dict[str, list[tuple[int, int]]] = {}
    for line in lines:
        off, n, path = (line.split(" ", 2) + ["", ""])[:3]
        if off.isdigit() and n.isdigit() and path:
            files.setdefault(path, []).append((int(off), int(n)))
    return files


class Reader(threading.Thread):
    """Looks each listed file up and reads its ranges, in the list's order, READ_CHUNK at a
    time. `summary` says how far it got."""

    def __init__(self, files: dict[str, list[tuple[int, int]]]):
        super().__init__(name="kupgrade-prewarm", daemon=True)
        self.files = files
        self.asked = sum(n for ranges in files.values() for _, n in ranges)
        self.looked = self.done = 0
        self.took: float | None = None
        self.t0 = time.monotonic()

    def run(self) -> None:
        buf = memoryview(bytearray(READ_CHUNK))
        for path, ranges in self.files.items():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                self.looked += 1
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)    # exactly our reads, no more
                for off, n in ranges:
                    end = off + n
                    while off < end and (got := os.preadv(fd, [buf[:min(READ_CHUNK, end - off)]], off)) > 0:
                        off += got
                        self.done += got
            except OSError:
                pass
            finally:
                os.close(fd)
        self.took = round(time.monotonic() - self.t0, 3)

    def summary(self) -> dict:
        """Files looked up, bytes listed and read so far, seconds it took (None: still reading)."""
        return {"files": self.looked, "bytes": self.asked, "read_bytes": self.done, "read_s": self.took}


def start(snapshot: Path) -> Reader | None:
    """Start reading ahead what the snapshot lists, in the background. None when it lists
    nothing. Never raises."""
    files = read_list(snapshot)
    if files is None:
        return None
    reader = Reader(files)
    try:
        reader.start()
    except RuntimeError:        # no thread: the workloads read what they need themselves
        return None
    return reader
