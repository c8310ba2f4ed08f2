"""Which PIDs a kernel's own threads hold before userspace runs, so that preflight can say which
of the workloads' PIDs the target kernel's boot will have taken before the restore.

Every boot through kupgrade's initrd writes contract.EARLY_PIDS at init-top, the first thing
userspace does: the PIDs in use then (kernel threads, /init). Every PID handed out after that is
above the snapshot's highest (init-top moves ns_last_pid; the allocator goes upwards, kernel
threads included), so only those can collide with a restored process. kupgrade keeps each
kernel's latest list per CPU count in STATE/boot-pids/RELEASE.json (`remember`: preflight stores
the running boot's, the restore the new kernel's) and predicts from the target's when it has
one; with none, from this boot's own, twice as high for another release, and says so.
Runs on the new kernel's boot path too: stdlib only.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from kupgrade.switch import contract

# Another release on the same machine: measured in the QEMU guest (2 CPUs), 6.1.0-47's threads
# held PIDs up to 107 before userspace, 6.12.117's up to 163 (x1.52): twice this boot's, until
# a boot of the target itself was seen here.
MARGIN = 2.0


@dataclass(frozen=True)
class EarlyPids:
    release: str
    cpus: int
    pids: tuple[int, ...]

    @property
    def highest(self) -> int:
        return max(self.pids, default=0)

    def to_json(self) -> dict:
        return {"release": self.release, "cpus": self.cpus, "pids": list(self.pids)}


@dataclass(frozen=True)
class Prediction:
    upto: int               # PIDs up to this one are (or may be) taken in the target's boot
    basis: str              # where the figure comes from, for the blocker and the record
    measured: bool          # from an earlier boot of the target release with this CPU count

    def to_json(self) -> dict:
        return {"upto": self.upto, "basis": self.basis, "measured": self.measured}


def read(path: Path = Path(contract.EARLY_PIDS)) -> EarlyPids | None:
    """This boot's list (None when the initrd did not write one or it is unreadable)."""
    try:
        fields = dict(line.split(" ", 1) if " " in line else (line, "")
                      for line in path.read_text().splitlines() if line)
        return EarlyPids(fields["release"].strip(), int(fields["cpus"]),
                         tuple(sorted(int(p) for p in fields["pids"].split())))
    except (OSError, KeyError, ValueError):
        return None


def _store(state_dir: Path, release: str) -> Path:
    return state_dir / "boot-pids" / f"{release}.json"


def remember(state_dir: Path, path: Path = Path(contract.EARLY_PIDS)) -> EarlyPids | None:
    """Keep this boot's list for the next upgrade into this kernel. Never raises."""
    here = read(path)
    if here is None or "/" in here.release or here.release.startswith("."):
        return here
    f = _store(state_dir, here.release)
    try:
        known = json.loads(f.read_text()) if f.exists() else {}
        known[str(here.cpus)] = here.to_json()
        f.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1) + "\n")
        os.replace(tmp, f)
    except (OSError, ValueError):
        pass
    return here


def known(state_dir: Path, release: str, cpus: int) -> EarlyPids | None:
    try:
        d = json.loads(_store(state_dir, release).read_text())[str(cpus)]
        return EarlyPids(d["release"], int(d["cpus"]), tuple(int(p) for p in d["pids"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def predict(state_dir: Path, release: str, cpus: int, here: EarlyPids | None) -> Prediction | None:
    """The highest PID the target's boot takes before userspace: measured in an earlier boot of
    that release with these CPUs, else this boot's (another release) plus MARGIN."""
    if (seen := known(state_dir, release, cpus)) is not None:
        return Prediction(seen.highest, f"an earlier boot of {release} on this machine ({cpus} CPUs): its own "
                          f"threads held PIDs up to {seen.highest} before userspace ran", True)
    if here is None:
        return None
    upto = math.ceil(here.highest * (1 if here.release == release else MARGIN))
    return Prediction(upto, f"estimated from this boot of {here.release} ({here.cpus} CPUs), whose threads held "
                      f"PIDs up to {here.highest} before userspace ran" + (f", +{round((MARGIN - 1) * 100)} % for "
                                                                          "another release" if here.release != release
                                                                          else ""), False)
