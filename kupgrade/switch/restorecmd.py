"""`kupgrade-restore`, the command the boot integration runs in the new kernel: its arguments,
and what it starts before it loads the rest of itself.

Under QEMU TCG, importing the restore's modules (newkernel.py and what it needs) takes about a
second of the pause. The first thing a snapshot's restore needs from the kernel is criu's probe
of its features (criu.warm): started here, in a thread, as soon as the settings say which criu,
it runs on the other CPU while this process imports the rest. (Not the read-ahead of the
workloads' files, prewarm.py: on a slow disk the imports' many small reads each waited behind
one of its reads; on a disk throttled to 4 MiB/s they took 6.8 s instead of 2.4.) A unit's
restore (`--unit`, after the first restore probed) starts nothing and imports only what one
tree needs (unitrestore.py): the units of a snapshot start at once, each one such a process.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from kupgrade import config as config_mod
from kupgrade.errors import KupgradeError, explain
from kupgrade.output import logfile
from kupgrade.switch import contract
from kupgrade.system import sched

LOADED = time.clock_gettime(time.CLOCK_BOOTTIME)      # this module, the first of kupgrade's: Python has started


def _python_s(stat: Path = Path("/proc/self/stat")) -> float | None:
    """How long the interpreter took to start, up to this module (the process's start time, in
    clock ticks since boot, is field 22 of its stat)."""
    try:
        ticks = int(stat.read_text().rsplit(")", 1)[1].split()[19])
        return round(LOADED - ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return None


def mark_restore_point(path: Path = Path(contract.RESTORE_POINT), uptime: Path = Path("/proc/uptime")) -> None:
    """Every time kupgrade-restore runs, once it has loaded what a restore needs: how long after
    the kernel started this boot got there, the first time (the next estimate's kernel switch:
    estimate.restore_point, which a switch measures up to its restore stage's start, after the
    same imports: under QEMU TCG they are 1-2 s). Never raises."""
    try:
        if not path.exists():
            path.write_text(uptime.read_text().split()[0] + "\n")
    except (OSError, IndexError):
        pass


def arguments() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kupgrade-restore", description="Restore the workloads carried across "
                                 "a kexec by `kupgrade run` (run early by the boot integration). Does nothing "
                                 f"when no snapshot is pending in {contract.RESTORE_DIR}.")
    ap.add_argument("--config", "-c", type=Path, help="config file (default /etc/kupgrade/kupgrade.toml)")
    ap.add_argument("--unit", help="restore this systemd unit's processes (its ExecStart in this boot)")
    ap.add_argument("--commit", action="store_true", help="continue the trees held until all units were "
                    "restored, or go back to the old kernel when one was not (kupgrade-commit.service)")
    ap.add_argument("--generator", nargs="*", metavar="DIR", help="run as a systemd generator")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    logfile.stderr_handler(debug=False)
    try:
        cfg = config_mod.load(args.config)
        if args.unit:                               # one tree: not the whole restore's modules
            mark_restore_point()
            from kupgrade.switch import unitrestore
            return unitrestore.main(cfg, args.unit)
        restore = args.generator is None and not args.commit
        started = {"python_s": _python_s(), "autogroup_nice": sched.nice()}
        if restore and (Path(contract.RESTORE_DIR) / contract.MANIFEST).exists():
            from kupgrade.system import criu
            criu.start_warm(Path(contract.RESTORE_DIR) / criu.WARM_LOG)
            started["warm_up_started_s"] = round(time.clock_gettime(time.CLOCK_BOOTTIME) - LOADED, 3)
        from kupgrade.switch import newkernel       # the rest, while criu probes
        started["loaded_s"] = round(time.clock_gettime(time.CLOCK_BOOTTIME) - LOADED, 3)
        if args.generator is None:
            mark_restore_point()                    # where a switch's restore stage would start
        return newkernel.dispatch(args, cfg, started)
    except KupgradeError as e:
        print(explain(e), file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
