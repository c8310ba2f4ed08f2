"""The mutable state one upgrade carries from stage to stage (results themselves are frozen)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kupgrade import inflight
from kupgrade.config import Config
from kupgrade.errors import ConfigError
from kupgrade.output.progress import Report
from kupgrade.output.record import UpgradeRecord, Workload
from kupgrade.switch import contract
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


@dataclass
class Context:
    config: Config
    record: UpgradeRecord
    target: Target | None = None
    workloads: list[Workload] = field(default_factory=list)
    estimate_bytes: int = 0
    frozen_cgroups: list[str] = field(default_factory=list)
    stopped: list[Workload] = field(default_factory=list)     # trees criu left stopped
    tcp: dict = field(default_factory=dict)                    # tree key -> its TCP sockets (tcp.Sock), dumped
    locks: dict = field(default_factory=dict)                  # tree key -> names criu's lock may have (criu.lock_tables)
    snapshot_mounted: bool = False
    region: Region | None = None         # the snapshot crosses in kupgrade's memory region (None: in the initrd)
    pre_dumps: int = 0                   # pre-dump iterations per tree: snapshot.pre_dump, "auto" resolved (preflight)
    pre_dumped: dict = field(default_factory=dict)            # tree key -> its last pre-dump iteration
    prehashed: dict = field(default_factory=dict)             # image path -> size, checksum (summed in prepare)
    method: Method | None = None
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
    downtime_estimate_s: float | None = None                  # preflight's estimate, for the hooks' requests
    restore_dir: Path = Path(contract.RESTORE_DIR)            # fixed by the contract (the initramfs reads no config)
    dumping: list[Workload] = field(default_factory=list)    # trees criu is dumping now (stopped, or resumed by criu)
    oom: dict = field(default_factory=dict)                   # PID -> its oom_score_adj before we protected it
    criu: dict = field(default_factory=dict)                  # the criu that runs: program, version (preflight)
    back: dict = field(default_factory=dict)                  # the way back to this kernel (preflight; {}: none)
    journal: Path | None = None          # run/rehearse: where the undo state is kept (kupgrade/inflight.py)
    stopped_units: list[str] = field(default_factory=list)    # services stopped to start fresh (rollback: start)

    def note(self) -> None:
        """Something the rollback would undo changed: rewrite the journal (`kupgrade recover`
        reads it when this process could not roll back itself)."""
        if self.journal is not None:
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
