"""The upgrade record: the single source for the CLI output, --json, reports and benchmarks.

An UpgradeRecord is an append-only list of StageResults plus identity (kernels, workloads).
It is written to STATE/records/ID.json and, before kexec, into the snapshot so the new
kernel's restore can continue it.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from kupgrade.output import results
from kupgrade.system.run import CommandLog

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
# outcomes
PLANNED, ABORTED, KEXECED, RESTORED, RESTORE_FAILED, CHECKED = (
    "planned", "aborted", "kexec", "restored", "restore-failed", "checked")
REHEARSED, REHEARSAL_FAILED = "rehearsed", "rehearsal-failed"
RESTORING = "restoring"         # some systemd units have not been restored (started) yet
DUMP_FAILED = "its dump failed: "   # the reason of a unit that started fresh after its dump failed
ROLLING_BACK, ROLLED_BACK = "rolling-back", "rolled-back"   # the restore failed: back to the old kernel
ID_RE = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9a-f]{6}")      # what new_id() makes
NUMBER = (int, float)


class CorruptRecord(ValueError):
    """A record file that is not what kupgrade writes: not JSON, or not the record's shape."""


class BadShape(ValueError):
    """JSON read back (a record, a manifest) that is not the shape kupgrade writes."""


def shape(d: object, types: dict, what: str) -> dict:
    """d, if it is a JSON object whose keys (those present) have these types; else BadShape."""
    if not isinstance(d, dict):
        raise BadShape(f"{what} is a {type(d).__name__}, not a JSON object")
    for key, t in types.items():
        if key in d and not isinstance(d[key], t):
            raise BadShape(f"{what}: `{key}` is a {type(d[key]).__name__}")
    return d


@dataclass(frozen=True)
class StageResult:
    name: str
    status: str                     # ok | failed | skipped
    started: float                  # wall clock (time.time()), comparable across kernels roughly
    duration_s: float
    summary: str = ""               # one line for humans
    details: results.Details = field(default_factory=results.Details)    # the stage's own type (results.py)
    error: str = ""
    hint: str = ""

    def __post_init__(self) -> None:      # given as JSON (a failed stage's error carries a dict): typed
        object.__setattr__(self, "details", results.of(self.name, self.details))

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status, "started": self.started,
                "duration_s": round(self.duration_s, 4), "summary": self.summary,
                "details": self.details.to_json(), "error": self.error, "hint": self.hint}

    @classmethod
    def from_json(cls, d: dict) -> "StageResult":
        return cls(**shape(d, {"name": str, "status": str, "started": NUMBER, "duration_s": NUMBER, "summary": str,
                                "details": dict, "error": str, "hint": str}, "a stage"))


@dataclass(frozen=True)
class Blocker:
    """Something that stops the upgrade before anything changes, with the fix; `workload`: the
    selector of the one workload it is about (a unit's may start fresh instead: selection.py)."""
    message: str
    hint: str = ""
    workload: str = ""

    def to_json(self) -> dict:
        return {"message": self.message, "hint": self.hint} | ({"workload": self.workload} if self.workload else {})

    @classmethod
    def from_json(cls, d: dict) -> "Blocker":
        return cls(d["message"], d.get("hint", ""), d.get("workload", ""))


@dataclass(frozen=True)
class Fresh:
    """A running service that is not carried (kupgrade/userspace/selection.py): `stop`: it cannot be
    carried (why: `reason`), so it is stopped cleanly before the freeze and started again by the
    next boot; else it is left to the boot, which starts it as it always does."""
    unit: str
    reason: str
    stop: bool = False

    def to_json(self) -> dict:
        return {"unit": self.unit, "reason": self.reason, "stop": self.stop}

    @classmethod
    def from_json(cls, d: dict) -> "Fresh":
        shape(d, {"unit": str, "reason": str, "stop": bool}, "a service started fresh")
        return cls(d["unit"], d.get("reason", ""), d.get("stop", False))


@dataclass(frozen=True)
class Workload:
    """One process tree: how it was selected and what it is."""
    selector: str                   # "pid:1234" or "cgroup:/workload"
    root_pid: int
    pids: tuple[int, ...]
    cgroup: str = ""                # cgroup v2 path when selected by cgroup (or the unit's)
    name: str = ""                  # comm of the root
    unit: str = ""                  # systemd service when selected by unit
    stopped_before: tuple[int, ...] = ()   # tasks stopped by job control before kupgrade: left stopped
    pidfile: str = ""               # the unit's own PIDFile= (in /run: the new boot lacks it; written back)
    other_cgroups: tuple[str, ...] = ()  # its tasks' cgroups outside its own (an ssh session's scope)
    tids: tuple[int, ...] = ()      # its threads' IDs other than the processes' (PIDs too: criu restores them)
    ident: str = ""                 # the unit's name in the journal (systemd.identifier): kept by the restore

    @property
    def ids(self) -> tuple[int, ...]:
        """Every PID the tree needs back: its processes' and its threads'."""
        return tuple(sorted(set(self.pids) | set(self.tids)))

    @property
    def frozen(self) -> bool:
        """Its cgroup is frozen with the cgroup freezer; else criu seizes the tree task by task
        (selected by PID, or its tasks are in other cgroups too: workloads.other_cgroups)."""
        return bool(self.cgroup) and not self.other_cgroups

    @property
    def key(self) -> str:
        return f"tree-{self.root_pid}"

    def to_json(self) -> dict:
        return {"selector": self.selector, "root_pid": self.root_pid, "pids": list(self.pids),
                "cgroup": self.cgroup, "name": self.name, "unit": self.unit,
                "stopped_before": list(self.stopped_before)} | ({"pidfile": self.pidfile} if self.pidfile else {}) \
            | ({"other_cgroups": list(self.other_cgroups)} if self.other_cgroups else {}) \
            | ({"tids": list(self.tids)} if self.tids else {}) | ({"ident": self.ident} if self.ident else {})

    @classmethod
    def from_json(cls, d: dict) -> "Workload":
        shape(d, {"selector": str, "root_pid": int, "pids": list, "cgroup": str, "name": str, "unit": str},
               "a workload")
        return cls(d["selector"], d["root_pid"], tuple(d["pids"]), d.get("cgroup", ""), d.get("name", ""),
                   d.get("unit", ""), tuple(d.get("stopped_before", ())), str(d.get("pidfile", "")),
                   tuple(str(c) for c in d.get("other_cgroups", ())), tuple(int(t) for t in d.get("tids", ())),
                   str(d.get("ident", "")))


def valid_id(record_id: str) -> bool:
    return bool(ID_RE.fullmatch(record_id))


def new_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + os.urandom(3).hex()


@dataclass(frozen=True)
class UpgradeRecord:
    id: str
    command: str
    kernel_from: str
    kernel_to: str = ""
    outcome: str = PLANNED
    workloads: tuple[Workload, ...] = ()
    stages: tuple[StageResult, ...] = ()
    commands: tuple[CommandLog, ...] = ()
    created: float = 0.0
    fresh: tuple[Fresh, ...] = ()       # running services not carried: started fresh (selection.py)

    def with_stage(self, stage: StageResult) -> "UpgradeRecord":
        return replace(self, stages=self.stages + (stage,))

    def stage(self, name: str) -> StageResult | None:
        for s in reversed(self.stages):
            if s.name == name:
                return s
        return None

    def warnings(self, boot_id: str = "", pending: bool = True) -> list[str]:
        """What an admin reading the report must not miss, derived from the stages. boot_id and
        pending: this boot's id and whether a snapshot waits in it (a reset after the switch)."""
        out = []
        for s in self.stages:
            if s.status == FAILED:
                out.append(f"{s.name} failed: {s.error}" + (f" ({s.hint})" if s.hint else ""))
            for problem in s.details.problem_list:     # the rollback's
                out.append(f"{s.name}: {problem}")
            for r in s.details.hook_calls:      # a failing hook the stage went on after
                if not r["ok"] and not (s.status == FAILED and r["error"] in s.error):
                    out.append(f"hook {r['hook']} failed at {r['point']}: {r['error']}")
        for f in self.fresh:
            if f.reason.startswith(DUMP_FAILED):
                out.append(f"{f.unit} started fresh because {f.reason}: `kupgrade check` did not predict it (a bug "
                           "in check: please report it with the criu log)")
        results = {k: r for s in self.stages if s.name in ("restore", "restore-unit")
                   for k, r in s.details.tree_results.items()}
        for key, r in results.items():
            if r.get("ok") and not r.get("same_pid"):
                out.append(f"{r.get('selector', key)} was restored as PID {r.get('root_pid')}, not its old PID")
        switched = next((s.details.switched_boot for s in reversed(self.stages) if s.details.switched_boot), "")
        if self.outcome in (KEXECED, ROLLING_BACK) and not pending and switched and boot_id and boot_id != switched:
            out.append("no restore was recorded for this switch and this boot has no snapshot: the machine was "
                       "reset after the switch (power loss, a crash, a watchdog) before the restore, or the boot "
                       "integration is missing. The snapshot was in RAM: the workloads in it are lost; this boot "
                       "is a normal one")
        elif self.outcome == KEXECED:
            out.append("the new kernel has not recorded a restore (yet): is the boot integration installed?")
        elif self.outcome == ROLLING_BACK:
            out.append("the old kernel has not recorded the restore after the way back (yet)")
        if self.outcome == ROLLED_BACK:
            out.append(f"the restore failed in {self.kernel_to}: the workloads were restored on {self.kernel_from} "
                       "again (see the switch-back stage)")
        return out

    def to_json(self) -> dict:
        return {"id": self.id, "command": self.command, "kernel_from": self.kernel_from,
                "kernel_to": self.kernel_to, "outcome": self.outcome, "created": self.created,
                "workloads": [w.to_json() for w in self.workloads],
                "fresh": [f.to_json() for f in self.fresh],
                "stages": [s.to_json() for s in self.stages],
                "commands": [c.to_json() for c in self.commands]}

    @classmethod
    def from_json(cls, d: dict) -> "UpgradeRecord":
        shape(d, {"id": str, "command": str, "kernel_from": str, "kernel_to": str, "outcome": str,
                   "created": NUMBER, "workloads": list, "fresh": list, "stages": list, "commands": list}, "the record")
        for c in d.get("commands", []):
            shape(c, {"argv": list, "returncode": (int, type(None)), "duration_s": NUMBER, "stderr_tail": str},
                   "a command")
        return cls(id=d["id"], command=d["command"], kernel_from=d["kernel_from"],
                   kernel_to=d.get("kernel_to", ""), outcome=d["outcome"], created=d.get("created", 0.0),
                   workloads=tuple(Workload.from_json(w) for w in d.get("workloads", [])),
                   fresh=tuple(Fresh.from_json(f) for f in d.get("fresh", [])),
                   stages=tuple(StageResult.from_json(s) for s in d.get("stages", [])),
                   commands=tuple(CommandLog.from_json(c) for c in d.get("commands", [])))

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n"


def write_private(path: Path, text: str) -> None:
    """Write atomically, root-only (records name processes and command lines)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")    # one per writer: several may write at once
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(record: UpgradeRecord, state_dir: Path) -> Path:
    path = state_dir / "records" / f"{record.id}.json"
    write_private(path, record.dumps())
    write_private(state_dir / "records" / "last", record.id + "\n")
    return path


def load(state_dir: Path, record_id: str | None = None) -> UpgradeRecord | None:
    """The record with this id (default: the one records/last names); None if there is none.
    CorruptRecord if the file is not a record, or records/last names no record."""
    records = state_dir / "records"
    if record_id is None:
        try:
            record_id = (records / "last").read_text(errors="replace").strip()
        except FileNotFoundError:
            return None
        if "/" in record_id or record_id.startswith(".") or not (records / f"{record_id}.json").is_file():
            raise CorruptRecord(f"{records / 'last'} names {record_id[:60]!r}, which is no record in {records}")
    path = records / f"{record_id}.json"
    if not path.exists():
        return None
    return load_file(path)


def latest(state_dir: Path, outcome: str, where=lambda rec: True) -> UpgradeRecord | None:
    """The newest record with this outcome (ids sort by time) for which where(record) holds."""
    return next(iter(recent(state_dir, (outcome,), where, 1)), None)


def recent(state_dir: Path, outcomes: tuple[str, ...], where=lambda rec: True, n: int = 6) -> list[UpgradeRecord]:
    """Up to n records, newest first (ids sort by time), with one of these outcomes and for
    which where(record) holds; unreadable files are skipped."""
    out: list[UpgradeRecord] = []
    for path in sorted((state_dir / "records").glob("*.json"), reverse=True):
        if len(out) >= n:
            break
        try:
            rec = load_file(path)
        except (OSError, ValueError, KeyError):
            continue
        if rec.outcome in outcomes and where(rec):
            out.append(rec)
    return out


def load_file(path: Path) -> UpgradeRecord:
    """Raises OSError, or CorruptRecord naming the file and what is wrong."""
    try:
        return UpgradeRecord.from_json(json.loads(path.read_text()))
    except UnicodeDecodeError:
        raise CorruptRecord(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise CorruptRecord(f"{path}: not JSON ({e})") from None
    except RecursionError:
        raise CorruptRecord(f"{path}: nested too deeply") from None
    except KeyError as e:
        raise CorruptRecord(f"{path}: a required key is missing: {e}") from None
    except (TypeError, ValueError) as e:       # BadShape among them
        raise CorruptRecord(f"{path}: not a record: {e}") from None
