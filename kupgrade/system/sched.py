"""The restore's share of the CPU in the boot after the switch.

The restore is the pause's critical path, and it runs while the boot starts everything else at
once: in the systemd-service guest (2 vCPUs, TCG) kupgrade-restore.service's Python took 5.0 s
to start and 2.7 s to import kupgrade, and a unit's `kupgrade-restore --unit` logged its first
line 7.8 s after systemd started it (in basic, with nothing else running: 1.5 s and 0.6 s).
Every systemd service runs in a session of its own, and with CONFIG_SCHED_AUTOGROUP (Debian's
kernels) each session is one scheduling group: a service's Nice= only ranks its own processes.
So the restore's command lines (kupgrade-restore.service, each unit's restore drop-in) give
their session's autogroup a nice of BOOST before Python starts (`boosted`), and the restore puts
it back to 0 before criu restores a workload (`unboost`): a restored task that stays in the
restorer's session (one that was not a session leader) must not keep it. Where autogroups are
off or absent, writing fails and nothing changes.
Runs on the new kernel's boot path: stdlib only.
"""

from __future__ import annotations

from pathlib import Path

AUTOGROUP = Path("/proc/self/autogroup")
BOOST = -10


def boosted(command: str, systemd: bool = True) -> str:
    """`command` (a systemd ExecStart, `$$` for a dollar when systemd) run from a shell that
    first gives its session's autogroup nice BOOST; the command's own words follow as $0, $1..."""
    dollar = "$$" if systemd else "$"
    return (f"/bin/sh -c '{{ echo {BOOST} > {AUTOGROUP}; }} 2>/dev/null; exec \"{dollar}0\" \"{dollar}@\"' "
            f"{command}")


def nice(path: Path = AUTOGROUP) -> int | None:
    """This session's autogroup nice (None: no autogroup)."""
    try:
        return int(path.read_text().split("nice")[-1])
    except (OSError, ValueError):
        return None


def unboost(path: Path = AUTOGROUP) -> bool:
    """This session's autogroup back to nice 0 (False: no autogroup here, or it could not be set)."""
    if (now := nice(path)) is None or now == 0:
        return now == 0
    try:
        path.write_text("0\n")
        return True
    except OSError:
        return False
