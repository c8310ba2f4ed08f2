"""All or nothing in the new kernel. While there is a way back (restore.on_failure = "rollback",
see switchback.py), every tree is restored stopped (criu --leave-stopped) and none runs until
all the trees of the snapshot are back; then they continue together: the commit. If one fails,
nothing of the snapshot has run in this kernel (no instruction, no write, no packet: the stopped
copies vanish with the kexec), so the way back carries the same snapshot for all of them. With
no way back (keep, a rehearsal, the way back itself, or it failed) each tree continues as soon
as it is restored, as before.

The commit is the restore stage's last step when no systemd unit is in the snapshot. Units are
restored by their own start later in the boot; kupgrade-commit.service, ordered after them (the
generator writes it, see systemd.py), then runs `kupgrade-restore --commit`. A unit whose start
never ran its restore counts as failed there. Runs on the boot path: lean imports only.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from kupgrade.switch import manifest
from kupgrade.userspace import tcp

STAGE = "commit"


def results(attempts) -> dict[str, dict]:
    """This kernel's result per tree key (the last attempt's)."""
    out: dict[str, dict] = {}
    for s in attempts:
        out.update({k: r for k, r in s.details.tree_results.items() if r.get("ok") is not None})
    return out


def continued(attempts) -> set[str]:
    """Trees that run in this kernel: restored without holding, or continued by a commit."""
    done = {k for s in attempts for k in s.details.continued_trees}
    return done | {k for k, r in results(attempts).items() if r.get("ok") and not r.get("held")}


def held(attempts) -> list[str]:
    """Trees restored stopped that have not run in this kernel yet."""
    going = continued(attempts)
    return sorted(k for k, r in results(attempts).items() if r.get("ok") and r.get("held") and k not in going)


def missing(m: manifest.Manifest, attempts) -> list[str]:
    """Trees no attempt in this kernel has a result for (a unit whose start did not restore it)."""
    have = results(attempts)
    return [w.key for w in m.workloads if w.key not in have]


def resume(snap: Path, m: manifest.Manifest, keys) -> dict:
    """Continue these held trees (a task stopped by its own job control before kupgrade stays
    stopped), let their peers' packets in, free their images. Never raises: a task that is gone
    is counted; the record says what was done."""
    tasks, gone, released = 0, [], {}
    for w in m.workloads:
        if w.key not in keys:
            continue
        if (done := _release(snap, w.key)) is not None:
            released[w.key] = done
        for pid in w.pids:
            if pid in w.stopped_before:
                continue
            try:
                os.kill(pid, signal.SIGCONT)
                tasks += 1
            except ProcessLookupError:
                gone.append(pid)
        shutil.rmtree(snap / "images" / w.key, ignore_errors=True)     # free the RAM
    out: dict = {"continued": sorted(keys), "tasks": tasks, "tcp": released}
    if gone:
        out["gone"] = gone
    return out


def release_failed(snap: Path, m: manifest.Manifest, keys) -> None:
    """Trees that stay in the snapshot with no way back: their peers' packets may come in again
    (the connections are lost unless `kupgrade restore --retry` brings them back first)."""
    for key in keys:
        _release(snap, key)


def _release(snap: Path, key: str) -> dict | None:
    """Let the peers of a tree's connections in again (None: it has none)."""
    socks = tcp.read(snap / "images" / key)
    return tcp.release(socks) if socks else None
