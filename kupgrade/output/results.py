"""What each stage reports: one frozen dataclass per stage (and per step the pipeline records
beside the stages: exec, rollback, the new kernel's restore-unit, commit, switch-back, ...).

A stage returns its summary and one of these; the record stores it (`StageResult.details`) as a
JSON object with the same keys, and every reader (the next stage, the TUI, `--json`, the report,
the estimate, the benchmark) reads it by attribute. A field left None is not in the JSON: the
record's JSON is the one earlier versions wrote, and an earlier record reads back.

Keys a class does not name (a failed stage's error may carry others, a newer kupgrade may write
more) are kept in `extra` and written back, so that reading and saving a record loses nothing.
Nested values stay JSON (dicts and lists): they are written and read in one module each.

They are made without dataclasses' generated __eq__ and __repr__ (the base's compare and print
the JSON): the new kernel's restore imports this module inside the pause, and generating them
for every class doubled its import time."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

result = dataclass(frozen=True, eq=False, repr=False)


@result
class Details:
    """The base, and the type of a step no class below names: everything in `extra`."""
    extra: dict = field(default_factory=dict)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.to_json() == self.to_json()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_json()!r})"

    def to_json(self) -> dict:
        named = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**{k: v for k, v in named.items() if v is not None}, **self.extra}

    @classmethod
    def from_json(cls, d: dict) -> "Details":
        names = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in names}, extra={k: v for k, v in d.items() if k not in names})

    # What the readers that go over every stage (record.warnings, the TUI, commit) ask of any step;
    # a class without such a field answers empty.
    @property
    def hook_calls(self) -> list:
        """The device hook calls this step made (HookResult JSON), in order."""
        return getattr(self, "hooks", None) or []

    @property
    def tree_results(self) -> dict:
        """Tree key -> its restore, for the steps that restore trees."""
        return getattr(self, "workloads", None) or {}

    @property
    def continued_trees(self) -> tuple:
        """The tree keys a commit let run."""
        return tuple((getattr(self, "commit", None) or {}).get("continued", ()))

    @property
    def problem_list(self) -> list:
        """What went wrong on the way, the step going on (a rollback's)."""
        return getattr(self, "problems", None) or []

    @property
    def switched_boot(self) -> str:
        """The boot id of the kernel this step switched into, "" if it did not switch."""
        return getattr(self, "boot_id", None) or ""

    def plus(self, **more) -> "Details":
        """A copy with these keys set (a key the class does not name goes to `extra`)."""
        names = {f.name for f in fields(self)} - {"extra"}
        return replace(self, **{k: v for k, v in more.items() if k in names},
                       extra={**self.extra, **{k: v for k, v in more.items() if k not in names}})


@result
class Preflight(Details):
    target: dict | None = None                  # version, vmlinuz, initrd
    kexec_method: str | None = None
    kexec_method_why: str | None = None
    lockdown: str | None = None
    transport: dict | None = None               # name, why
    pre_dump_iterations: int | None = None
    snapshot_estimate_bytes: int | None = None
    workload_bytes: dict | None = None          # tree key -> bytes
    mem_available_bytes: int | None = None
    downtime_estimate_s: float | None = None
    downtime_basis: str | None = None
    machine: dict | None = None                 # what the machine measured of itself (no record yet)
    blockers: list | None = None                # Blocker.to_json()
    hooks: list | None = None                   # HookResult.to_json()
    hooks_loaded: list | None = None
    hooks_skipped: list | None = None
    devices: int | None = None
    tcp: dict | None = None                     # tree key -> its connections
    criu: dict | None = None                    # program, version
    way_back: dict | None = None                # the old kernel's files and command line ({}: none)
    boot_pids: dict | None = None               # bootpids.py
    services: list | None = None                # each service's fate (selection.py)
    notes: list | None = None


@result
class Writeback(Details):
    """flush, and the first part of prepare: sync(2) with the dirty bytes before and after."""
    before: dict | None = None
    after: dict | None = None
    sync_s: float | None = None


@result
class Prepare(Writeback):
    kexec_load: dict | None = None              # the target loaded before the freeze (KexecLoad's keys)
    pre_dump: dict | None = None                # trees -> iterations


@result
class Flush(Writeback):
    pass


@result
class Freeze(Details):
    frozen_cgroups: dict | None = None          # cgroup -> seconds to freeze
    criu_seizes: list | None = None
    stopped_services: list | None = None        # stopped to start fresh
    stop_s: float | None = None
    hooks: list | None = None


@result
class Snapshot(Details):
    tmpfs_size: str | None = None
    dumps: dict | None = None                   # tree key -> selector, bytes, files, dump_s, tcp
    snapshot_bytes: int | None = None
    files: int | None = None
    early_restore: list | None = None
    hooks: list | None = None
    dump_s: float | None = None
    pack_s: float | None = None
    transport: str | None = None                # initrd | pmem
    total_bytes: int | None = None
    target_initrd_bytes: int | None = None      # initrd: initrd.assemble's sizes
    padding_bytes: int | None = None
    snapshot_cpio_bytes: int | None = None
    device: str | None = None                   # pmem: the region (pmem.Region.to_json())
    start: str | None = None
    size: int | None = None


@result
class Kexec(Details):
    method: str | None = None
    method_why: str | None = None
    cmdline: str | None = None
    initrd_bytes: int | None = None
    load_s: float | None = None
    loaded_before_freeze: bool | None = None
    reloaded: str | None = None
    freeze: list | None = None                  # the file systems frozen for `kexec --exec`


@result
class Exec(Details):
    boot_id: str | None = None


@result
class Handover(Details):
    unpacked_files: int | None = None
    unpack_s: float | None = None
    ended_pids: list | None = None
    done: list | None = None


@result
class Restore(Details):
    snapshot_id: str | None = None
    verified_files: int | None = None
    verified_bytes: int | None = None
    workloads: dict | None = None               # tree key -> its restore (ok, root_pid, same_pid, held, ...)
    criu_logs: list | None = None
    hooks: list | None = None
    hooks_load_s: float | None = None
    tcp_protected: dict | None = None
    health_check: dict | None = None
    hold: bool | None = None
    prewarm: dict | None = None
    criu: dict | None = None                    # dumped_by, restored_by
    seconds: dict | None = None                 # timeline.Laps: each step's seconds
    start: dict | None = None                   # kupgrade-restore's own start: python_s, warm_up_started_s, loaded_s
    commit: dict | None = None                  # continued together (commit.py)
    no_rollback: str | None = None              # why the way back was not taken


@result
class RestoreUnit(Details):
    unit: str | None = None
    workloads: dict | None = None
    criu_logs: list | None = None
    no_rollback: str | None = None


@result
class Commit(Details):
    commit: dict | None = None                  # continued, ...
    health_check: dict | None = None
    failed: list | None = None
    held: list | None = None
    no_rollback: str | None = None


@result
class SwitchBack(Details):
    cause: str | None = None
    kernel: str | None = None
    boot_id: str | None = None
    snapshot_bytes: int | None = None
    cmdline: str | None = None
    transport: str | None = None
    no_rollback: str | None = None


@result
class Rollback(Details):
    done: list | None = None
    problems: list | None = None
    cause: str | None = None
    hooks: list | None = None


@result
class StepOut(Details):
    from_pid: int | None = None
    pid: int | None = None
    trees: list | None = None


@result
class Discard(Details):
    discarded: list | None = None
    restored: list | None = None


BY_STAGE: dict[str, type[Details]] = {
    "preflight": Preflight, "prepare": Prepare, "freeze": Freeze, "flush": Flush, "snapshot": Snapshot,
    "kexec": Kexec, "exec": Exec, "handover": Handover, "restore": Restore, "restore-unit": RestoreUnit,
    "commit": Commit, "switch-back": SwitchBack, "rollback": Rollback, "step-out": StepOut, "discard": Discard,
}


def of(stage: str, d: "dict | Details | None") -> Details:
    """The typed result of `stage` (JSON or a result already)."""
    cls = BY_STAGE.get(stage, Details)
    if isinstance(d, cls):
        return d
    return cls.from_json(d.to_json() if isinstance(d, Details) else d or {})
