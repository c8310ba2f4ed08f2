"""What one upgrade carries from stage to stage: the plan preflight resolved (frozen, the later
stages' input) and the state that really changes during a run (the Context). The stages'
results are frozen too (kupgrade/output/results.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kupgrade.errors import ConfigError
from kupgrade.switch import contract

if TYPE_CHECKING:       # annotations only: the new kernel's restore imports this module inside the pause
    from kupgrade.config import Config
    from kupgrade.output.progress import Report
    from kupgrade.output.record import UpgradeRecord, Workload
    from kupgrade.switch.pmem import Region
    from kupgrade.system.kexec import Method


@dataclass(frozen=True)
class Target:
    version: str
    vmlinuz: Path
    initrd: Path


def resolve_target(cfg: Config, boot: Path = Path("/boot")) -> Target:
    """The target kernel's files; a ConfigError (a usage error, exit 2) when none is configured."""
    if cfg.kernel:
        return Target(cfg.kernel, boot / f"vmlinuz-{cfg.kernel}", boot / f"initrd.img-{cfg.kernel}")
    if cfg.vmlinuz:     # the release comes from the image's header (preflight), never from its name
        return Target("", Path(cfg.vmlinuz), Path(cfg.initrd))
    raise ConfigError("no target kernel configured",
                      "set `target.kernel` in the config or pass --kernel VERSION (see `ls /boot/vmlinuz-*`)")


@dataclass(frozen=True)
class Plan:
    """What preflight resolved, set once (`Context.plan`) and read by every later stage: the
    target kernel and how it is loaded, how the snapshot crosses (region: kupgrade's memory
    region; None: the initrd), how many pre-dump iterations, how large the snapshot should be
    and how long the pause, the way back to this kernel ({}: none), the criu that runs. `kupgrade
    recover` rebuilds what its rollback needs (the method) from the journal; the new kernel's
    restore knows only its own criu."""
    target: Target | None = None
    method: Method | None = None
    region: Region | None = None
    pre_dumps: int = 0
    estimate_bytes: int = 0
    downtime_estimate_s: float | None = None
    back: dict = field(default_factory=dict)
    criu: dict = field(default_factory=dict)        # program, version


@dataclass(slots=True)      # a misspelt or retired field is an error, not a new attribute
class Context:
    """The state of one run: what changes while it goes (frozen cgroups, stopped trees, what is
    mounted and loaded, the hooks' results) and what the rollback must undo (`note`)."""
    config: Config
    record: UpgradeRecord
    plan: Plan = field(default_factory=Plan)
    workloads: list[Workload] = field(default_factory=list)      # resolved by preflight, read again as dumped
    frozen_cgroups: list[str] = field(default_factory=list)
    stopped: list[Workload] = field(default_factory=list)     # trees criu left stopped
    tcp: dict = field(default_factory=dict)                    # tree key -> its TCP sockets (tcp.Sock), dumped
    locks: dict = field(default_factory=dict)                  # tree key -> names criu's lock may have (criu.lock_tables)
    snapshot_mounted: bool = False
    pre_dumped: dict = field(default_factory=dict)            # tree key -> its last pre-dump iteration
    prehashed: dict = field(default_factory=dict)             # image path -> size, checksum (summed in prepare)
    clash_waits: dict = field(default_factory=dict)           # tree key -> s waited for a SysV clash (carry.py)
    kexec_loaded: bool = False
    progress: Report | None = None       # the live view's progress callback, if any
    rehearsal: bool = False              # restore on this kernel instead of switching
    step_out_ok: bool = False            # `kupgrade run` without --step: may step out of a carried tree
    unpacked: bool = False               # rehearsal: the snapshot was unpacked into restore_dir
    replaced: bool = False               # rehearsal: the original tasks were ended (no rollback)
    hooks: list | None = None            # the loaded device hooks (None: not loaded yet; see hookpoints.py)
    hooks_skipped: list[dict] = field(default_factory=list)   # hooks that will not run, and why
    devices: list = field(default_factory=list)               # devices.Device records, for the hooks
    devices_error: str = ""              # why the devices could not be enumerated
    hooks_load_s: float = 0.0            # loading the hooks + enumerating the devices took
    hook_results: list = field(default_factory=list)          # every HookResult so far (rollback: resume)
    restore_dir: Path = Path(contract.RESTORE_DIR)            # fixed by the contract (the initramfs reads no config)
    dumping: list[Workload] = field(default_factory=list)    # trees criu is dumping now (stopped, or resumed by criu)
    oom: dict = field(default_factory=dict)                   # PID -> its oom_score_adj before we protected it
    journal: Path | None = None          # run/rehearse: where the undo state is kept (kupgrade/inflight.py)
    stopped_units: list[str] = field(default_factory=list)    # services stopped to start fresh (rollback: start)
    started: dict = field(default_factory=dict)               # kupgrade-restore's own start (restorecmd.py)

    def note(self) -> None:
        """Something the rollback would undo changed: rewrite the journal (`kupgrade recover`
        reads it when this process could not roll back itself)."""
        if self.journal is not None:
            from kupgrade import inflight
            from kupgrade.journal import state
            inflight.write(state(self), self.journal)

    @property
    def snapshot_dir(self) -> Path:
        return Path(self.config.snapshot_dir)

    @property
    def state_dir(self) -> Path:
        return Path(self.config.state_dir)

    @property
    def kernel_from(self) -> str:
        return os.uname().release
