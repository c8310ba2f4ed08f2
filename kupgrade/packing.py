"""What a snapshot archive holds, packed the same way for both directions: the old kernel's
snapshot stage (forward) and the new kernel's way back (kupgrade/switchback.py). Lean: the new
kernel's boot path uses it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import contract, initrd, manifest


def restore_tmpfs_kib(snapshot_bytes: int) -> int:
    """The size of the tmpfs that holds the snapshot on the restoring side (the new kernel's
    initramfs, the rehearsal's handover): the files, criu's logs and PID files beside them."""
    return (snapshot_bytes + snapshot_bytes // 10 + (64 << 20)) >> 10


def fill(w: initrd.CpioWriter, images: Path, hooks: Path, workloads, make: Callable[[dict], manifest.Manifest],
         record_text: str, only: Callable[[str], bool] | None = None) -> manifest.Manifest:
    """Write the images and the hooks' state (hashed while written), then what the restoring side
    reads first: the highest PID (new PIDs start above it), the tmpfs size, the manifest (`make`
    turns the hashed files into it), the record. only: which files to carry (the way back: what
    the old kernel packed, not what the new kernel's attempt wrote beside it)."""
    files = w.tree(images, prefix=contract.IMAGES, only=only)
    if hooks.is_dir():
        files |= w.tree(hooks, prefix=contract.HOOKS, only=only)
    m = make(files)
    w.data(contract.MAX_PID, f"{max(p for wl in workloads for p in wl.pids)}\n".encode())
    w.data(contract.SIZE_KIB, f"{restore_tmpfs_kib(m.total_bytes)}\n".encode())
    w.data(manifest.NAME, manifest.dumps(m))
    w.data(contract.RECORD, record_text.encode())
    return m
