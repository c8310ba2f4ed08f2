"""Progress of the long stages, measured from the outside while the work runs: bytes criu has
written so far, bytes of the packed initrd, dirty page cache left to write back. A background
thread polls a measure function and reports to the stage's progress callback (the live view);
the work itself (criu, sync) is never slowed down or wrapped."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

Report = Callable[[str, int, int], None]      # (label, done, total) in bytes
INTERVAL_S = 0.25


def tree_bytes(root: Path) -> int:
    """Bytes in regular files below root (criu writes its images there)."""
    total = 0
    stack = [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
                    elif e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            pass
    return total


def file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@contextmanager
def watch(report: Report | None, label: str, total: int, measure: Callable[[], int],
          interval: float = INTERVAL_S) -> Iterator[None]:
    """Poll measure() every interval while the body runs; report (label, done, total), and a
    final report when the body ends. No thread at all when nobody listens."""
    if report is None:
        yield
        return
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(interval):
            try:
                report(label, measure(), total)
            except Exception:   # noqa: BLE001 - progress must never break the stage
                pass

    t = threading.Thread(target=poll, name=f"progress-{label}", daemon=True)
    report(label, 0, total)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        try:
            report(label, measure(), total)
        except Exception:   # noqa: BLE001
            pass
