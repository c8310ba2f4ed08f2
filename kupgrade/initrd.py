"""Carry the snapshot into the new kernel: target initrd + padding + an uncompressed newc cpio.

The kernel unpacks every archive it finds in the initrd into the early rootfs, so the
snapshot appears as /kupgrade-snapshot/ next to the target initrd's own files. Zero bytes
between archives are skipped by the kernel's unpacker; we pad to 512 bytes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

ARCHIVE_ROOT = "kupgrade-snapshot"
ALIGN = 512
_CHUNK = 1 << 20


def _header(name: str, ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int, size: int) -> bytes:
    namesize = len(name.encode()) + 1
    fields = (ino, mode, uid, gid, nlink, mtime, size, 0, 0, 0, 0, namesize, 0)
    hdr = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
    return hdr + b"\0" * (-len(hdr) % 4)


def _entries(src: Path) -> Iterator[tuple[str, Path]]:
    """Directory first, then its contents, sorted: deterministic archives."""
    yield ARCHIVE_ROOT, src
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = Path(dirpath).relative_to(src)
        for name in sorted(dirnames) + sorted(filenames):
            yield str(Path(ARCHIVE_ROOT) / rel / name), Path(dirpath) / name


def write_cpio(src: Path, out: BinaryIO) -> int:
    """Write src (a directory) as a newc archive rooted at ARCHIVE_ROOT; return bytes written.

    Only directories and regular files are allowed (that is all a snapshot holds); modes are
    kept but made private (no group/other bits): the snapshot holds process memory.
    """
    written = 0
    for ino, (name, path) in enumerate(_entries(src), start=1):
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode):
            mode, size, nlink = stat.S_IFDIR | (st.st_mode & 0o700), 0, 2
        elif stat.S_ISREG(st.st_mode):
            mode, size, nlink = stat.S_IFREG | (st.st_mode & 0o700), st.st_size, 1
        else:
            raise ValueError(f"{path}: only directories and regular files belong in a snapshot")
        hdr = _header(name, ino, mode, 0, 0, nlink, int(st.st_mtime), size)
        out.write(hdr)
        written += len(hdr)
        if size:
            copied = 0
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    out.write(chunk)
                    copied += len(chunk)
            if copied != size:
                raise ValueError(f"{path} changed size while being archived")
            pad = -size % 4
            out.write(b"\0" * pad)
            written += size + pad
    trailer = _header("TRAILER!!!", 0, 0, 0, 0, 1, 0, 0)
    out.write(trailer)
    return written + len(trailer)


def read_cpio(data: bytes) -> dict[str, bytes | None]:
    """Parse a newc archive: name -> content (None for directories). For tests and checks."""
    out: dict[str, bytes | None] = {}
    pos = 0
    while pos < len(data):
        if data[pos:pos + 6] != b"070701":
            if data[pos] == 0:
                pos += 1
                continue
            raise ValueError(f"bad cpio magic at offset {pos}")
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        pos = name_start + namesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            break
        out[name] = None if stat.S_ISDIR(mode) else data[pos:pos + size]
        pos += size
        pos += -pos % 4
    return out


def assemble(target_initrd: Path, snapshot: Path, out_path: Path) -> dict:
    """out = target initrd, zero-padded to ALIGN, + cpio(snapshot). Returns sizes."""
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, target_initrd.open("rb") as base:
        base_size = 0
        while chunk := base.read(_CHUNK):
            out.write(chunk)
            base_size += len(chunk)
        pad = -base_size % ALIGN
        out.write(b"\0" * pad)
        archive = write_cpio(snapshot, out)
    return {"target_initrd_bytes": base_size, "padding_bytes": pad, "snapshot_cpio_bytes": archive,
            "total_bytes": base_size + pad + archive}
