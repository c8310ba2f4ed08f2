"""What a snapshot holds, laid out the same way for both directions (the old kernel's snapshot
stage, the new kernel's way back, kupgrade/switch/switchback.py) and both transports: packed into an
archive appended to the initrd (fill), or sealed in place in kupgrade's memory region (seal).
Lean: the new kernel's boot path uses it."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable

from kupgrade.switch import contract, initrd, manifest


def restore_tmpfs_kib(snapshot_bytes: int) -> int:
    """The size of the tmpfs that holds the snapshot on the restoring side (the new kernel's
    initramfs, the rehearsal's handover): the files, criu's logs and PID files beside them."""
    return (snapshot_bytes + snapshot_bytes // 10 + (64 << 20)) >> 10


def fill(w: initrd.CpioWriter, images: Path, hooks: Path, workloads, make: Callable[[dict], manifest.Manifest],
         record_text: str, only: Callable[[str], bool] | None = None, prewarm: bytes = b"",
         generated: Path | None = None) -> manifest.Manifest:
    """Write the images and the hooks' state (hashed while written), then what the restoring side
    reads first (read_first; `make` turns the hashed files into the manifest). only: which files to
    carry (the way back: what the old kernel packed, not what the new kernel's attempt wrote beside it).
    generated: the systemd generator's output for the restoring boot (snapshot.generate)."""
    files = w.tree(images, prefix=contract.IMAGES, only=only)
    for top, prefix in ((hooks, contract.HOOKS), (generated, contract.GENERATED)):
        if top is not None and top.is_dir():
            files |= w.tree(top, prefix=prefix, only=only)
    m = make(files)
    for name, data in read_first(m, workloads, record_text, prewarm,
                                 size_kib=f"{restore_tmpfs_kib(m.total_bytes)}\n".encode()):
        w.data(name, data)
    return m


def read_first(m: manifest.Manifest, workloads, record_text: str, prewarm: bytes,
               size_kib: bytes = b"") -> list[tuple[str, bytes]]:
    """The small files the restoring side reads first, in the order they are written: the highest
    PID (threads' IDs included), the tmpfs size (the initrd transport), the files to read ahead, the manifest, the record."""
    out = [(contract.MAX_PID, f"{max(p for wl in workloads for p in wl.ids)}\n".encode())]
    out += [(contract.SIZE_KIB, size_kib)] if size_kib else []
    out += [(contract.PREWARM, prewarm)] if prewarm else []
    return out + [(manifest.NAME, manifest.dumps(m)), (contract.RECORD, record_text.encode())]


def hashed(root: Path, only: Callable[[str], bool] | None = None, known: dict | None = None) -> dict[str, dict]:
    """{path under root: {"size", manifest.CHECKSUM}} of every file under root/images, root/hooks and root/generated,
    summed by all CPUs (manifest.checksums); a symlink (criu's `parent` of a pre-dump) as
    {"size": 0, "link": target}. only: which files to take; known: hashes taken earlier of files
    that have not changed since (the pre-dumps), used when the size still matches."""
    paths, out = [], {}
    for top in contract.DIRS:
        for dirpath, dirnames, filenames in os.walk(root / top):
            for name in filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
                p = Path(dirpath, name)
                rel = p.relative_to(root).as_posix()
                st = p.lstat()
                if only is not None and not only(rel):
                    continue
                if stat.S_ISLNK(st.st_mode):
                    out[rel] = {"size": 0, "link": os.readlink(p)}
                elif not stat.S_ISREG(st.st_mode):
                    raise ValueError(f"{p}: only directories, regular files and links belong in a snapshot")
                elif known and rel in known and known[rel]["size"] == st.st_size:
                    out[rel] = known[rel]
                else:
                    paths.append(p)
    sums = manifest.checksums(paths)
    out.update({p.relative_to(root).as_posix(): {"size": p.stat().st_size, manifest.CHECKSUM: h} for p, h in zip(paths, sums)})
    return out


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def seal(root: Path, workloads, make: Callable[[dict], manifest.Manifest], record_text: str,
         only: Callable[[str], bool] | None = None, known: dict | None = None, prewarm: bytes = b"") -> manifest.Manifest:
    """The snapshot in place (the memory-region transport): hash the images and the hooks' state,
    then write what the restoring side reads first, as fill() does into the archive."""
    m = make(hashed(root, only, known))
    for name, data in read_first(m, workloads, record_text, prewarm):
        _write(root / name, data)
    return m
