"""The snapshot manifest: what was dumped, from which kernel to which, and a checksum per file.

The new kernel verifies it before any restore: a snapshot that does not match is never fed
to criu.

The checksum is CRC-32 (zlib), one per CHUNK bytes of a file (`crc32s`: so that all CPUs share
one large file, criu's pages of a big process, on both sides of the pause). What it guards
against is damage on the snapshot's way through memory and the kernel switch (a truncated or
corrupted unpack, a region overwritten, bad RAM): accidental errors, which an error-detecting
code is made for (as btrfs and ext4 checksum their blocks). It is not a defence against someone who can write the snapshot: that is root, who needs
none. Both kernels hash every byte of the snapshot inside the pause, and under QEMU TCG (qemu64)
CRC-32 runs at 495 MB/s where sha256 (this manifest's checksum until 0.1) ran at 84 MB/s, measured
in the guest. A manifest with whole-file `crc32` or `sha256` entries (0.1) is still verified as such.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from kupgrade.output.record import NUMBER, BadShape, Workload, shape
from kupgrade.switch import contract

NAME = contract.MANIFEST
FORMAT = 1
CHECKED_DIRS = contract.DIRS     # every file under these must be listed


CHECKSUM = "crc32s"                     # the manifest field of every file's checksum (module docstring)
CHUNK = 8 << 20                         # crc32s: the CRC-32 of each CHUNK bytes, dot-joined ("00000000": empty)
CHECKSUMS = (CHECKSUM, "crc32", "sha256")   # what verify reads: whole-file crc32 or sha256 in older manifests
_READ = 1 << 20


class Crc32:
    """hashlib's interface over zlib.crc32 (which lets go of the GIL for large buffers): the whole
    file's ("crc32", older manifests)."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data) -> None:
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


class Crc32s:
    """The same interface for CHECKSUM, when the bytes come in order (the archive's copy): a new
    CRC-32 at every CHUNK boundary."""

    def __init__(self) -> None:
        self.done: list[int] = []
        self.value = 0
        self.filled = 0

    def update(self, data) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), CHUNK - self.filled)
            self.value = zlib.crc32(view[:take], self.value)
            self.filled += take
            view = view[take:]
            if self.filled == CHUNK:
                self.done.append(self.value)
                self.value, self.filled = 0, 0

    def hexdigest(self) -> str:
        last = [self.value] if self.filled or not self.done else []
        return ".".join(f"{v:08x}" for v in self.done + last)


def crc32_range(path: Path, offset: int, length: int) -> int:
    """CRC-32 of `length` bytes of the file from `offset` (fewer at its end)."""
    value, end = 0, offset + length
    with path.open("rb", buffering=0) as f:
        while offset < end and (data := os.pread(f.fileno(), min(_READ, end - offset), offset)):
            value = zlib.crc32(data, value)
            offset += len(data)
    return value


def threads() -> int:
    """How many threads sum a snapshot (one per CPU this process may run on, at most 16)."""
    return min(len(os.sched_getaffinity(0)), 16)


def checksums(paths: list[Path], kinds: list[str] | None = None) -> list[str]:
    """Each file's checksum of its kind (CHECKSUM by default), summed by a thread per CPU: a
    CHECKSUM file in CHUNK pieces, so that one large file is shared too (zlib and hashlib let go
    of the GIL). The files must not change meanwhile (the snapshot is at rest on both sides)."""
    kinds = kinds or [CHECKSUM] * len(paths)
    tasks: list[tuple[int, int]] = []       # (file's index, offset; -1: the whole file, its kind's SUMS)
    for i, (path, kind) in enumerate(zip(paths, kinds)):
        if kind == CHECKSUM:
            tasks += [(i, off) for off in range(0, max(path.stat().st_size, 1), CHUNK)]
        else:
            tasks.append((i, -1))

    def run(task: tuple[int, int]):
        i, off = task
        return SUMS[kinds[i]](paths[i]) if off < 0 else crc32_range(paths[i], off, CHUNK)

    workers = max(1, min(len(tasks), threads()))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(run, tasks))
    out: list[list] = [[] for _ in paths]
    for (i, _), r in zip(tasks, results):
        out[i].append(r)
    return [".".join(f"{v:08x}" for v in parts) if kind == CHECKSUM else parts[0] for kind, parts in zip(kinds, out)]


def _file_sum(path: Path, h) -> str:
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def checksum_file(path: Path) -> str:
    """CHECKSUM of one file, in order (checksums() shares the work among the CPUs)."""
    return _file_sum(path, Crc32s())


def crc32_file(path: Path) -> str:
    return _file_sum(path, Crc32())


def sha256_file(path: Path) -> str:
    import hashlib          # here: loading OpenSSL costs the new kernel's restore ~0.2 s under TCG
    return _file_sum(path, hashlib.sha256())


SUMS = {CHECKSUM: checksum_file, "crc32": crc32_file, "sha256": sha256_file}


@dataclass(frozen=True)
class Manifest:
    id: str
    kernel_from: str
    kernel_to: str
    created: float
    workloads: tuple[Workload, ...]
    files: dict          # relative path -> {"size": int, "sha256": str}
    back: dict = field(default_factory=dict)    # how to return to the old kernel ({} = keep: no rollback)
    rollback: bool = False                      # this snapshot goes back to the old kernel (no second one)
    start: tuple[str, ...] = ()                 # services stopped before the switch: the boot starts them
    criu: dict = field(default_factory=dict)    # the criu that dumped: {"program", "version"} (criu.restores)

    @property
    def total_bytes(self) -> int:
        return sum(f["size"] for f in self.files.values())

    def to_json(self) -> dict:
        return {"format": FORMAT, "id": self.id, "kernel_from": self.kernel_from,
                "kernel_to": self.kernel_to, "created": self.created,
                "workloads": [w.to_json() for w in self.workloads],
                "files": self.files, "total_bytes": self.total_bytes, "back": self.back, "rollback": self.rollback,
                "start": list(self.start), "criu": self.criu}

    @classmethod
    def from_json(cls, d: dict) -> "Manifest":
        """ValueError (BadShape) unless d is a manifest of this format, every key present and typed."""
        shape(d, {}, "the manifest")
        if d.get("format") != FORMAT:
            raise ValueError(f"manifest format {d.get('format')!r}, this kupgrade reads {FORMAT}")
        keys = {"id": str, "kernel_from": str, "kernel_to": str, "created": NUMBER, "workloads": list, "files": dict}
        if missing := [k for k in keys if k not in d]:
            raise BadShape(f"the manifest has no `{missing[0]}`")
        shape(d, keys, "the manifest")
        if not d["id"] or "/" in d["id"] or d["id"].startswith("."):     # it names files: records/ID.json
            raise BadShape(f"the manifest's id {d['id'][:60]!r} is not a record id")
        for rel, meta in d["files"].items():
            shape(meta, {"size": int, **{f: str for f in CHECKSUMS}, "link": str}, f"the manifest's entry {rel!r}")
            if "size" not in meta or (not _sum_field(meta)) == ("link" not in meta):
                raise BadShape(f"the manifest's entry {rel!r} needs `size` and `{CHECKSUM}` (a file) or `link` (a link)")
        try:
            workloads = tuple(Workload.from_json(w) for w in d["workloads"])
        except (KeyError, TypeError) as e:
            raise BadShape(f"a workload in the manifest: {type(e).__name__} {e}") from None
        start = d.get("start", [])
        if not isinstance(start, list) or not all(isinstance(u, str) and u.endswith(".service") and "/" not in u
                                                  for u in start):
            raise BadShape("the manifest's `start` is not a list of service names")
        return cls(d["id"], d["kernel_from"], d["kernel_to"], d["created"], workloads, d["files"],
                   shape(d.get("back", {}), {}, "the manifest's way back"), bool(d.get("rollback", False)),
                   tuple(start), shape(d.get("criu", {}), {"program": str, "version": str}, "the manifest's criu"))


def make(id: str, kernel_from: str, kernel_to: str, workloads: tuple[Workload, ...], files: dict,
         back: dict | None = None, rollback: bool = False, start: tuple[str, ...] = (),
         criu: dict | None = None) -> Manifest:
    """files: {relative path: {"size", CHECKSUM}}, as summed while the snapshot was packed."""
    return Manifest(id, kernel_from, kernel_to, time.time(), workloads, dict(sorted(files.items())),
                    dict(back or {}), rollback, tuple(start), dict(criu or {}))


def dumps(m: Manifest) -> bytes:
    return (json.dumps(m.to_json(), indent=1) + "\n").encode()


def read(snapshot: Path) -> Manifest:
    """The snapshot's manifest. Raises OSError, or ValueError saying what is wrong with it."""
    try:
        return Manifest.from_json(json.loads((snapshot / NAME).read_text()))
    except RecursionError:
        raise BadShape(f"{NAME} is nested too deeply") from None


def outside(rel: str) -> bool:
    """A manifest path that could name something outside the snapshot (never opened)."""
    p = PurePosixPath(rel)
    return not rel or "\0" in rel or p.is_absolute() or ".." in p.parts


def verify(snapshot: Path, kernel_now: str, added: Callable[[str], bool] = lambda rel: False,
           skip: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> tuple[Manifest, list[str]]:
    """Return the manifest and the problems found (empty list = verified): a wrong kernel, a
    listed file missing, of another size or checksum or outside the snapshot, a file under
    images/, hooks/ or generated/ that is not listed, unless `added(rel)` (written in this boot on purpose).
    Listed files whose path starts with one of `skip` are not looked at (a retry: the images of
    trees restored already were freed). With `only`, just the listed files under those prefixes
    are (a first pass over the small ones: the unlisted files are the full pass's)."""
    try:
        m = read(snapshot)
    except FileNotFoundError:
        return None, [f"no {NAME} in {snapshot}"]  # type: ignore[return-value]
    except (OSError, ValueError) as e:
        return None, [f"{snapshot / NAME} is unreadable: {e}"]  # type: ignore[return-value]
    problems = []
    if m.kernel_to != kernel_now:
        problems.append(f"snapshot was made for kernel {m.kernel_to}, this is {kernel_now}")
    top = snapshot.resolve()
    listed = {rel: meta for rel, meta in m.files.items()
              if not (skip and rel.startswith(skip)) and (not only or rel.startswith(only))}
    found = {rel: _problem(snapshot / rel, rel, meta, top) for rel, meta in listed.items()}
    problems += [problem for problem in found.values() if problem]
    sums = _hash_all(snapshot, {rel: f for rel, meta in listed.items() if (f := _sum_field(meta)) and not found[rel]})
    problems += [f"{rel}: {f} mismatch" for rel, (f, digest) in sums.items() if digest != listed[rel][f]]
    if not only:
        problems += [f"{rel}: not in the manifest" for rel in unlisted(snapshot, m.files) if not added(rel)]
    return m, problems


def _problem(p: Path, rel: str, meta: dict, top: Path) -> str:
    """What is wrong with one listed file, its hash aside ("" when nothing)."""
    if "link" in meta:      # criu's `parent` link to a pre-dump, inside the tree
        if outside(rel) or not p.is_symlink() or os.readlink(p) != meta["link"] or not p.resolve().is_relative_to(top):
            return f"{rel}: not the link the manifest names"
        return ""
    if outside(rel) or not p.resolve().is_relative_to(top):
        return f"{rel!r}: not a path inside the snapshot (not opened)"
    if not p.is_file():
        return f"{rel}: missing"
    if p.stat().st_size != meta["size"]:
        return f"{rel}: size {p.stat().st_size}, manifest says {meta['size']}"
    return ""


def matches(snapshot: Path, rel: str, meta: dict) -> bool:
    """The file is what this entry says (its size and checksum, or the same link)."""
    found = _problem(snapshot / rel, rel, meta, snapshot.resolve())
    return not found and (not (f := _sum_field(meta)) or SUMS[f](snapshot / rel) == meta[f])


def _sum_field(meta: dict) -> str:
    """The entry's checksum field ("" for a link)."""
    return next((f for f in CHECKSUMS if f in meta), "")


def _hash_all(snapshot: Path, todo: dict[str, str]) -> dict[str, tuple[str, str]]:
    """{rel: (field, checksum)} of these files ({rel: field}), the CPUs sharing the snapshot's bytes."""
    sums = checksums([snapshot / rel for rel in todo], list(todo.values()))
    return {rel: (f, digest) for (rel, f), digest in zip(todo.items(), sums)}


def unlisted(snapshot: Path, files: dict) -> list[str]:
    """Files (anything but directories) under CHECKED_DIRS that the manifest does not list."""
    out = []
    for top in CHECKED_DIRS:
        for dirpath, dirnames, filenames in os.walk(snapshot / top):
            dirnames.sort()
            for name in dirnames + sorted(filenames):
                path = Path(dirpath, name)
                rel = path.relative_to(snapshot).as_posix()
                if (name in filenames or path.is_symlink()) and rel not in files:
                    out.append(rel)
    return out
