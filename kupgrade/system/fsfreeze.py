"""Bring the workloads' file systems to rest for the switch (the quiesce the design promises, as
far as userspace can): after the final sync, each file system a workload has a file open or
mapped on is frozen (FIFREEZE, util-linux `fsfreeze`), so no write-back or journal commit is in
flight when `kexec --exec` stops the old kernel; the new kernel mounts them clean.

The freeze and the exec happen in one small helper process (kupgrade/data/freeze-exec), not in
kupgrade itself: a frozen file system blocks every writer, kupgrade's own log file included; if
the kernel does not switch, the helper thaws them all before it returns, so the rollback (and
its logging) finds them writable.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from kupgrade.system import procfs

# file systems that implement freeze_fs (others answer FIFREEZE with EOPNOTSUPP)
FREEZABLE = ("ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "gfs2", "ocfs2", "nilfs2")


def mounts(mountinfo: Path = Path("/proc/self/mountinfo")) -> dict[int, tuple[str, str, bool]]:
    """st_dev -> (mount point, fs type, read-only) of every mounted file system."""
    return {m.st_dev: (m.point, m.fstype, m.ro) for m in procfs.mounts(mountinfo)}


def targets(pids, proc: Path = procfs.PROC, mountinfo: Path = Path("/proc/self/mountinfo")) -> list[str]:
    """The writable, freezable file systems the tasks have files open or mapped on (mount points,
    deepest first)."""
    by_dev = mounts(mountinfo)
    found = set()
    for pid in pids:
        for p in procfs.used_files(pid, proc):
            try:
                dev = os.stat(p.removesuffix(" (deleted)")).st_dev
            except OSError:
                continue
            point, fstype, ro = by_dev.get(dev, ("", "", True))
            if point and fstype in FREEZABLE and not ro:
                found.add(point)
    return sorted(found, key=lambda m: (-m.count("/"), m))


def exec_argv(kexec: str, points: list[str]) -> list[str]:
    """The helper: `sh freeze-exec KEXEC MOUNT...` (freeze, `KEXEC --exec --no-sync`, thaw if it returns)."""
    script = resources.files("kupgrade").joinpath("data", "freeze-exec")
    return ["sh", str(script), kexec, *points]
