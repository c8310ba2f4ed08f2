"""Keep the OOM killer away from the workloads while their snapshot is packed and loaded.

Packing and `kexec --load` need the most memory of the whole upgrade (the snapshot exists two
or three times at once); if memory runs out then, the OOM killer must pick kupgrade or kexec
(the upgrade is rolled back) and never a stopped workload (it would be lost). Their
oom_score_adj is set to -1000 after the dump (criu records the value the workload had) and put
back by the rollback; in the new kernel criu restores the recorded one.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger("kupgrade.system.oom")
PROTECTED = -1000


def _path(pid: int, proc: Path) -> Path:
    return proc / str(pid) / "oom_score_adj"


def protect(pids, proc: Path = Path("/proc"), adj: int = PROTECTED) -> dict[int, int]:
    """Set each task's oom_score_adj to adj (-1000: never chosen); return the values it had
    (tasks gone are skipped)."""
    saved = {}
    for pid in pids:
        try:
            old = int(_path(pid, proc).read_text())
            _path(pid, proc).write_text(f"{adj}\n")
        except (FileNotFoundError, ProcessLookupError):
            continue
        except PermissionError:     # no CAP_SYS_RESOURCE (a container): unprotected, as before
            log.warning("cannot protect PID %d from the OOM killer (no CAP_SYS_RESOURCE)", pid)
            continue
        saved[pid] = old
    return saved


def first_victim(argv: list[str]) -> list[str]:
    """argv run with oom_score_adj 1000 (util-linux choom), when choom is there."""
    return ["choom", "-n", "1000", "--", *argv] if shutil.which("choom") else argv


def restore(saved: dict[int, int], proc: Path = Path("/proc")) -> list[str]:
    """Put the values back (rollback); returns one line for the rollback's summary."""
    back = 0
    for pid, adj in saved.items():
        try:
            _path(pid, proc).write_text(f"{adj}\n")
            back += 1
        except (FileNotFoundError, ProcessLookupError):
            continue
    saved.clear()
    return [f"put back the OOM scores of {back} task(s)"] if back else []
