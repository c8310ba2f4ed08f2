"""Carry the snapshot into the new kernel: target initrd + padding + an uncompressed newc cpio.

The kernel unpacks every archive it finds in the initrd into the early rootfs, so the
snapshot appears as /kupgrade-snapshot/ next to the target initrd's own files. Zero bytes
between archives are skipped by the kernel's unpacker; we pad to 512 bytes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Callable

from kupgrade.switch import contract, manifest

ARCHIVE_ROOT = contract.ARCHIVE_ROOT
ALIGN = 512
_CHUNK = 1 << 20


def _header(name: str, ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int, size: int) -> bytes:
    namesize = len(name.encode()) + 1
    fields = (ino, mode, uid, gid, nlink, mtime, size, 0, 0, 0, 0, namesize, 0)
    hdr = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
    return hdr + b"\0" * (-len(hdr) % 4)


class CpioWriter:
    """Streams a newc archive rooted at ARCHIVE_ROOT. Entries are made private (no group/other
    bits, uid/gid 0): the snapshot holds process memory."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.ino = 0
        self.written = 0

    def _entry(self, name: str, mode: int, nlink: int, mtime: int, size: int) -> None:
        self.ino += 1
        hdr = _header(f"{ARCHIVE_ROOT}/{name}" if name else ARCHIVE_ROOT, self.ino, mode, 0, 0, nlink, mtime, size)
        self.out.write(hdr)
        self.written += len(hdr)

    def _pad(self, size: int) -> None:
        pad = -size % 4
        self.out.write(b"\0" * pad)
        self.written += size + pad

    def directory(self, name: str, perm: int = 0o700, mtime: int = 0) -> None:
        self._entry(name, stat.S_IFDIR | (perm & 0o700), 2, mtime, 0)

    def file(self, name: str, path: Path) -> str:
        """Copy a file into the archive; return its checksum (manifest.CHECKSUM, in the same pass)."""
        st = path.stat()
        self._entry(name, stat.S_IFREG | (st.st_mode & 0o700), 1, int(st.st_mtime), st.st_size)
        h = manifest.Crc32s()
        copied = 0
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                self.out.write(chunk)
                copied += len(chunk)
        if copied != st.st_size:
            raise ValueError(f"{path} changed size while being archived")
        self._pad(copied)
        return h.hexdigest()

    def link(self, name: str, path: Path) -> str:
        """A symlink, as it is (a relative target inside the snapshot); returns the target."""
        target = os.readlink(path)
        self._entry(name, stat.S_IFLNK | 0o777, 1, 0, len(target.encode()))
        self.out.write(target.encode())
        self._pad(len(target.encode()))
        return target

    def data(self, name: str, data: bytes, mtime: int = 0) -> None:
        self._entry(name, stat.S_IFREG | 0o600, 1, mtime, len(data))
        self.out.write(data)
        self._pad(len(data))

    def tree(self, src: Path, prefix: str = "", only: Callable[[str], bool] | None = None) -> dict[str, dict]:
        """Add every directory and regular file under src (sorted, directories first), as
        prefix/...; return {archive path: {"size", manifest.CHECKSUM}} for the files. only: which files
        (by archive path) to take; the rest are left out."""
        files: dict[str, dict] = {}
        if prefix:
            self.directory(prefix)
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            rel = Path(dirpath).relative_to(src)
            for name in sorted(dirnames) + sorted(filenames):     # a link to a directory is among dirnames
                path = Path(dirpath) / name
                arc = str(Path(prefix, rel, name))      # pathlib drops the "." of the top level
                st = path.lstat()
                if stat.S_ISDIR(st.st_mode):
                    self.directory(arc, st.st_mode, int(st.st_mtime))
                elif stat.S_ISREG(st.st_mode):
                    if only is None or only(arc):
                        files[arc] = {"size": st.st_size, manifest.CHECKSUM: self.file(arc, path)}
                elif stat.S_ISLNK(st.st_mode):      # criu's `parent` link to a pre-dump
                    if only is None or only(arc):
                        files[arc] = {"size": 0, "link": self.link(arc, path)}
                else:
                    raise ValueError(f"{path}: only directories, regular files and links belong in a snapshot")
        return files

    def close(self) -> int:
        trailer = _header("TRAILER!!!", 0, 0, 0, 0, 1, 0, 0)
        self.out.write(trailer)
        self.written += len(trailer)
        return self.written


def write_cpio(src: Path, out: BinaryIO) -> int:
    """src as a complete archive rooted at ARCHIVE_ROOT; returns bytes written."""
    w = CpioWriter(out)
    w.directory("", src.stat().st_mode, int(src.stat().st_mtime))
    w.tree(src)
    return w.close()


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


def extract(path: Path, offset: int, dest: Path) -> int:
    """Unpack the snapshot archive that starts at `offset` of a combined initrd into dest, as the
    kernel does at boot (dest/ARCHIVE_ROOT/... -> dest/...): used by the rehearsal. Streams; files
    are created private. Returns the number of files."""
    count = 0
    with path.open("rb") as f:
        f.seek(offset)
        pos = offset
        while True:
            hdr = f.read(110)
            if len(hdr) < 110 or hdr[:6] != b"070701":
                raise ValueError(f"{path}: bad cpio header at offset {pos}")
            fields = [int(hdr[6 + 8 * i: 14 + 8 * i], 16) for i in range(13)]
            mode, size, namesize = fields[1], fields[6], fields[11]
            name = f.read(namesize)[:-1].decode()
            f.read(-(110 + namesize) % 4)
            pos += 110 + namesize + (-(110 + namesize) % 4)
            if name == "TRAILER!!!":
                return count
            rel = name.removeprefix(ARCHIVE_ROOT).lstrip("/")
            if ".." in Path(rel).parts or rel.startswith("/"):
                raise ValueError(f"{path}: unsafe name {name!r} in the snapshot archive")
            target = dest / rel if rel else dest
            if stat.S_ISDIR(mode):
                target.mkdir(mode=0o700, parents=True, exist_ok=True)
            elif stat.S_ISLNK(mode):
                link = f.read(size).decode()
                if link.startswith("/") or not (target.parent / link).resolve().is_relative_to(dest.resolve()):
                    raise ValueError(f"{path}: link {name!r} points outside the snapshot")
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.symlink(link, target)
            else:
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    left = size
                    while left:
                        chunk = f.read(min(left, _CHUNK))
                        if not chunk:
                            raise ValueError(f"{path}: truncated entry {name}")
                        out.write(chunk)
                        left -= len(chunk)
                os.chmod(target, mode & 0o700)
                count += 1
            f.read(-size % 4)
            pos += size + (-size % 4)


def assemble(target_initrd: Path, out_path: Path, fill: Callable[[CpioWriter], None]) -> dict:
    """out = target initrd, zero-padded to ALIGN, + a newc archive that fill() writes."""
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, target_initrd.open("rb") as base:
        base_size = 0
        while chunk := base.read(_CHUNK):
            out.write(chunk)
            base_size += len(chunk)
        pad = -base_size % ALIGN
        out.write(b"\0" * pad)
        w = CpioWriter(out)
        w.directory("")
        fill(w)
        archive = w.close()
    return {"target_initrd_bytes": base_size, "padding_bytes": pad, "snapshot_cpio_bytes": archive,
            "total_bytes": base_size + pad + archive}
