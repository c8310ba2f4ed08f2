"""Configuration: one table of settings drives TOML parsing, validation and docs/config.md.

A new setting is one entry in SETTINGS. Unknown keys, wrong types and impossible values are
ConfigErrors that name the key and the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

from kupgrade import configchecks as checks
from kupgrade.errors import ConfigError
from kupgrade.switch import contract
from kupgrade.system.run import use_programs

DEFAULT_PATH = Path("/etc/kupgrade/kupgrade.toml")


@dataclass(frozen=True)
class Config:
    pids: tuple[int, ...] = ()
    cgroups: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    all_services: bool = False
    start_fresh: tuple[str, ...] = ()
    on_blocked: str = "auto"
    kernel: str = ""
    vmlinuz: str = ""
    initrd: str = ""
    snapshot_dir: str = contract.SNAPSHOT_TMPFS
    snapshot_size: str = "auto"
    transport: str = "auto"
    pre_dump: int | str = "auto"
    kexec_method: str = "auto"
    append: str = ""
    state_dir: str = contract.STATE_DIR
    hooks_dir: str = "/etc/kupgrade/hooks.d"
    hooks_allow: tuple[str, ...] = ()
    answer_timeout: int = 300
    on_restore_failure: str = "rollback"
    health_check: str = ""
    prewarm: bool = True
    criu: str = "criu"
    kexec: str = "kexec"
    source: str = ""          # the file this came from ("" = defaults only)

    @property
    def programs(self) -> dict[str, str]:
        """The programs kupgrade runs by these names in code (paths.criu, paths.kexec)."""
        return {"criu": self.criu, "kexec": self.kexec}

    def to_json(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in fields(self)}

    @classmethod
    def from_json(cls, d: dict) -> "Config":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    attr: str
    type: type | tuple       # a tuple: one of these (pre_dump: a number or "auto")
    doc: str
    item: type | None = None
    check: Callable[[Any], str | None] | None = None
    example: str = ""
    cli: str = ""            # the command-line option that overrides it, with an example value

    def __post_init__(self) -> None:      # the docs are prose in triple quotes: one line each
        object.__setattr__(self, "doc", " ".join(self.doc.split()))


SETTINGS: tuple[Setting, ...] = (
    Setting("workloads", "pids", "pids", list, "Process trees to keep, by the PID of their root.",
            item=int, check=checks.positive_pids, example="[1234]", cli="--pid 1234"),
    Setting("workloads", "cgroups", "cgroups", list,
            """Workloads to keep, by cgroup v2 path (relative to /sys/fs/cgroup). The cgroup is frozen with the
            cgroup freezer; every process in it must belong to one process tree.""",
            item=str, check=checks.abs_cgroups, example='["/workload"]', cli="--cgroup /workload"),
    Setting("workloads", "units", "units", list,
            """systemd services to keep. Each is frozen through its cgroup and restored as itself: in the new boot
            the unit's start restores its main process (same PID) instead of starting it fresh.""",
            item=str, check=checks.services('units are systemd service names like "nginx.service"'),
            example='["memcached.service"]', cli="--unit memcached.service"),
    Setting("workloads", "all_services", "all_services", bool,
            """Every running service unit is a candidate: each one is carried, started fresh (it cannot be
            carried: the reason is reported; see `on_blocked`) or left to the boot (a unit that starts fresh in
            every boot: PID 1's helpers journald, udevd, logind, dbus, gettys, user managers, network managers,
            and `start_fresh`; or the unit kupgrade runs in). `kupgrade check` lists each unit's fate.""",
            example="true", cli="--all-services"),
    Setting("workloads", "start_fresh", "start_fresh", list,
            """With `all_services`: more units (names or shell patterns) that are never carried; they run until
            the switch and the new boot starts them as it always does.""",
            item=str, check=checks.services('entries are service names or patterns like "backup-*.service"'),
            example='["backup-*.service"]'),
    Setting("workloads", "on_blocked", "on_blocked", str,
            """A unit that cannot be carried (a blocker about it alone): "abort" blocks the upgrade; "fresh" stops
            the unit cleanly before the freeze and the new boot starts it (on a rollback before the switch it is
            started again here), reported as such; "auto": fresh for units `all_services` found, abort for the
            units named in `units`. PIDs and cgroups cannot start fresh: their blockers always block.""",
            check=checks.one_of(checks.BLOCKED_POLICIES), example='"auto"'),
    Setting("target", "kernel", "kernel", str,
            "Target kernel version, found as /boot/vmlinuz-VERSION and /boot/initrd.img-VERSION.",
            check=checks.kernel, example='"6.12.117+deb12-amd64"', cli="--kernel 6.12.117+deb12-amd64"),
    Setting("target", "vmlinuz", "vmlinuz", str, "Target kernel image path (instead of `kernel`).",
            check=checks.abs_path, example='"/srv/kernels/vmlinuz"'),
    Setting("target", "initrd", "initrd", str, "Target initrd path (with `vmlinuz`).",
            check=checks.abs_path, example='"/srv/kernels/initrd.img"'),
    Setting("target", "append", "append", str,
            "Extra kernel command-line words for the target (added to the current command line).",
            example='"quiet"'),
    Setting("snapshot", "dir", "snapshot_dir", str,
            f"""Where kupgrade mounts its private tmpfs (mode 0700) for the snapshot: a directory of its own under
            /run or /dev/shm (the tmpfs hides whatever is there; preflight blocks if it is not empty), not in
            {contract.RESTORE_DIR} (where the new kernel finds the snapshot). Never under /boot.""",
            check=checks.snapshot_dir, example=f'"{contract.SNAPSHOT_TMPFS}"'),
    Setting("snapshot", "size", "snapshot_size", str,
            "Size limit of that tmpfs: \"auto\" (estimate x 2.5, at least 256M) or a size like \"4G\".",
            check=checks.size, example='"auto"'),
    Setting("snapshot", "transport", "transport", str,
            f"""How the snapshot crosses the kernel switch: "initrd" (appended to the target initrd: the kernel
            unpacks it, the initramfs moves it onto a tmpfs; works everywhere), "pmem" (written into the memory
            region the command line reserves for kupgrade with memmap=SIZE!START {contract.CMDLINE_PMEM}=START,
            which both kernels leave alone: no packing, unpacking or moving; `kupgrade install-boot --reserve
            SIZE` sets it up, one reboot activates it), or "auto" (pmem when that region is active and the
            snapshot fits in it, else initrd).""",
            check=checks.one_of(checks.TRANSPORTS), example='"auto"'),
    Setting("snapshot", "pre_dump", "pre_dump", (int, str),
            """criu pre-dump iterations while the workloads still run (prepare): the first copies their memory,
            each next one what they dirtied since (soft-dirty tracking); the final dump in the pause then copies
            only the pages dirtied after the last. The snapshot then holds those pages twice (preflight counts 1.5
            x the estimate). 0: one dump, in the pause. "auto": one iteration when the snapshot crosses in
            kupgrade's memory region and fits there 1.5 times, else none (with the initrd the pre-dumped pages are
            packed and loaded inside the pause all the same).""",
            check=checks.pre_dump, example="\"auto\""),
    Setting("kexec", "method", "kexec_method", str,
            """"file" (kexec_file_load: the kernel verifies the image; required under lockdown/Secure Boot),
            "classic" (kexec_load without purgatory hashing: faster with large snapshots), or "auto" (file when
            the kernel is locked down or kexec_load is unavailable, else classic).""",
            check=checks.one_of(checks.KEXEC_METHODS), example='"auto"'),
    Setting("restore", "on_failure", "on_restore_failure", str,
            """When the new kernel cannot restore the workloads: "rollback" kexecs back into the old kernel with
            the same snapshot and restores them there (preflight checks that the running kernel's image and
            initrd, with the boot scripts, are there to go back to). With "rollback" no workload runs in the new
            kernel until all are restored (the first wait, stopped, for the last), so that a failure can still go
            back with all of them. "keep" stays in the new kernel, each workload running as soon as it is
            restored, the snapshot of the others kept for `kupgrade restore --retry`.""",
            check=checks.one_of(checks.RESTORE_POLICIES), example='"rollback"'),
    Setting("restore", "health_check", "health_check", str,
            """A command that says whether the new kernel is fit for the workloads (exit 0: yes), run there before
            any workload runs: with on_failure = "rollback" once every workload is restored (stopped; for systemd
            units, in kupgrade-commit.service after their starts), and when it fails kupgrade goes back to the old
            kernel with the same snapshot; with "keep" after the device hooks' restore and before the first
            workload is restored, and when it fails the snapshot is kept. Not run on the way back (the old kernel
            is the fallback) nor in a rehearsal. 60 s at most.""",
            check=checks.command, example='"/usr/local/sbin/uplink-ok eth0"'),
    Setting("restore", "prewarm", "prewarm", bool,
            """As the restore begins in the new kernel (its page cache starts empty), look up the files the
            workloads had open or mapped and read the parts of them they had mapped in (not whole files), in the
            background, a small chunk at a time: the reads overlap the snapshot's verification and criu's restore
            instead of following them.""",
            example="true"),
    Setting("run", "answer_timeout", "answer_timeout", int,
            """Seconds the go/no-go question (and each question of `--step`) waits for an answer. No answer is the
            safe one: no, abort (the workloads resume as they were).""",
            check=checks.timeout, example="300"),
    Setting("paths", "state", "state_dir", str, "Where upgrade records are kept.", check=checks.abs_path,
            example=f'"{contract.STATE_DIR}"'),
    Setting("paths", "criu", "criu", str, """The criu program: a name looked up in PATH or an absolute path, e.g. a newer criu in /opt. It runs
            every criu of an upgrade: preflight's `criu check`, the dump, the restore in the new kernel and on the
            way back (kupgrade-restore reads this file there), and `kupgrade recover` waits for the interrupted
            run's own.""",
            check=checks.program, example='"/opt/criu/sbin/criu"'),
    Setting("paths", "kexec", "kexec", str, """The kexec program (kexec-tools): a name looked up in PATH or an absolute path. It loads, unloads
            and executes the target kernel (and the old one on the way back).""",
            check=checks.program, example='"/usr/sbin/kexec"'),
    Setting("hooks", "dir", "hooks_dir", str,
            """Directory of executable device hooks (run-parts names, root-owned, not group/world-writable; see
            docs/hooks.md).""",
            check=checks.abs_path, example='"/etc/kupgrade/hooks.d"'),
    Setting("hooks", "allow", "hooks_allow", list,
            """Devices of the classes unsafe without a hook (GPUs, accelerators, vfio-pci, InfiniBand) that may be
            reset by the new kernel even while programs hold them open: udev subsystems or sys paths. Preflight
            blocks on the other ones in use.""",
            item=str, check=checks.allow, example='["/sys/devices/pci0000:00/0000:00:02.0"]'),
)


def _type_name(t, item: type | None) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(one, item) for one in t)
    if t is list:
        return f"list of {item.__name__ if item else 'values'}"
    return {str: "string", int: "integer", bool: "boolean"}[t]


def _check_type(value: Any, s: Setting) -> bool:
    if s.type is list:
        return isinstance(value, list) and all(isinstance(i, s.item) and not isinstance(i, bool) for i in value)
    return isinstance(value, s.type) and (s.type is bool or not isinstance(value, bool))


def parse(text: str, source: str = "<string>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}", "fix the syntax at the position shown")
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to parse", "kupgrade's settings are flat: see docs/config.md")
    by_key = {(s.section, s.key): s for s in SETTINGS}
    sections = {s.section for s in SETTINGS}
    values: dict[str, Any] = {}
    for section, table in data.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown section [{section}]",
                              f"known sections: {', '.join(sorted(sections))} (see docs/config.md)")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: `{section}` must be a table ([{section}])", "see docs/config.md")
        for key, value in table.items():
            s = by_key.get((section, key))
            if s is None:
                known = ", ".join(k for (sec, k) in by_key if sec == section)
                raise ConfigError(f"{source}: unknown key `{section}.{key}`", f"keys of [{section}]: {known}")
            if not _check_type(value, s):
                name = _type_name(s.type, s.item)
                raise ConfigError(f"{source}: `{section}.{key}` must be {'an' if name[0] in 'aeiou' else 'a'} {name}, "
                                  f"got {type(value).__name__} {checks.short.repr(value)}", f"for example: {key} = {s.example}")
            if s.check and (problem := s.check(value)):
                raise ConfigError(f"{source}: `{section}.{key}` {problem}", f"for example: {key} = {s.example}")
            values[s.attr] = tuple(value) if isinstance(value, list) else value
    cfg = Config(**values, source=source)
    _check_whole(cfg)
    return cfg


def _check_whole(cfg: Config) -> None:
    if cfg.kernel and (cfg.vmlinuz or cfg.initrd):
        raise ConfigError(f"{cfg.source}: set either `target.kernel` or `target.vmlinuz`+`target.initrd`, not both",
                          "remove one of them")
    if bool(cfg.vmlinuz) != bool(cfg.initrd):
        raise ConfigError(f"{cfg.source}: `target.vmlinuz` and `target.initrd` go together", "set both paths")


def load(path: Path | None) -> Config:
    """Load the config; a missing default file means defaults, a missing given file is an error.
    The programs it names (criu, kexec) are what the command wrapper runs from then on."""
    cfg = _load(path)
    use_programs(cfg.programs)
    return cfg


def _load(path: Path | None) -> Config:
    p = path or DEFAULT_PATH
    if not p.exists():
        if path is None:
            return Config(source="")
        raise ConfigError(f"config file {p} does not exist", "check the --config path")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {p}: {e.strerror}", "check its permissions")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}): not a TOML config file",
                          "TOML files are UTF-8: check --config names the right file, or re-save it as UTF-8")
    return parse(text, str(p))


def with_overrides(cfg: Config, **over: Any) -> Config:
    """Command-line values (only those given) replace the file's; then the whole is checked."""
    given = {k: v for k, v in over.items() if v not in (None, (), [], "")}
    for attr, v in given.items():
        check_option(attr, v)
    new = replace(cfg, **given)
    _check_whole(new)
    return new


def check_option(attr: str, value: Any) -> None:
    """A command-line value for the setting `attr`: a ConfigError naming the option if it is wrong."""
    s = next(s for s in SETTINGS if s.attr == attr)
    if s.check and (problem := s.check(list(value) if isinstance(value, tuple) else value)):
        flag = s.cli.split()[0] if s.cli else f"`{s.section}.{s.key}`"
        raise ConfigError(f"{flag}: {problem}", f"for example: {s.cli or f'{s.key} = {s.example}'}")


if __name__ == "__main__":      # python -m kupgrade.config > docs/config.md
    from kupgrade.configdoc import docs_markdown
    print(docs_markdown(), end="")
