"""Finding the hooks: built-ins (package kupgrade_hooks), entry points (group kupgrade.hooks),
executables in the hooks directory.

Built-ins are imported as modules, not through entry points, because the guest image (and a
Debian-style install) copies the packages into dist-packages without any dist-info.

Executables follow run-parts: names of [A-Za-z0-9_-] only (others, like foo.dpkg-old, are
ignored), sorted order. A hook runs as root, so it and its directory must be root-owned and not
group/world-writable; anything else is skipped with the reason, which `kupgrade hooks list`
shows. Name clashes: an executable overrides an entry point, which overrides a built-in (the
admin's /etc wins, as with systemd units); the shadowed one is listed as skipped.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

from kupgrade.hooks import NAME_RE, BadSpec, Hook, HookFailed, call_executable, parse_spec

log = logging.getLogger("kupgrade.hooks")

DEFAULT_DIR = Path("/etc/kupgrade/hooks.d")
GROUP = "kupgrade.hooks"
BUILTIN_PACKAGE = "kupgrade_hooks"
DESCRIBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Skipped:
    """A hook that will not run, and why (shown by `kupgrade hooks list`)."""
    name: str
    source: str
    reason: str

    def to_json(self) -> dict:
        return {"name": self.name, "source": self.source, "reason": self.reason}

    @classmethod
    def from_json(cls, d: dict) -> Skipped:
        return cls(d["name"], d["source"], d["reason"])


def root_owned(st: os.stat_result) -> bool:
    return st.st_uid == 0


def unsafe_reason(path: Path, owner_ok: Callable[[os.stat_result], bool] = root_owned) -> str | None:
    """Why `path` must not be run as root (None: it may)."""
    try:
        st = path.stat()
    except OSError as e:
        return f"cannot stat: {e.strerror}"
    if not owner_ok(st):
        return f"owned by uid {st.st_uid}, not root"
    if st.st_mode & 0o022:
        return f"group/world-writable (mode {stat.S_IMODE(st.st_mode):04o}); chmod go-w it"
    return None


def python_hook(obj: object, name: str, kind: str, source: str) -> Hook:
    """A Python hook: an object (module, instance, or class taking no arguments) with describe()
    and one function per point. early-restore is dropped: no Python in the initramfs."""
    if isinstance(obj, type):
        obj = obj()
    describe = getattr(obj, "describe", None)
    if not callable(describe):
        raise BadSpec("has no describe()")
    spec = parse_spec(describe(), name)
    if "early-restore" in spec.points:
        log.warning("hook %s: early-restore ignored (Python hooks cannot run in the initramfs)", name)
        spec = replace(spec, points=tuple(p for p in spec.points if p != "early-restore"))
    return Hook(spec, kind, source, obj)


def load_builtins(package: str = BUILTIN_PACKAGE) -> tuple[list[Hook], list[Skipped]]:
    hooks, skipped = [], []
    try:
        pkg = importlib.import_module(package)
    except ImportError as e:
        return [], [Skipped("*", package, f"built-in hooks not installed: {e}")]
    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        name, source = mod.name.replace("_", "-"), f"{package}.{mod.name}"
        try:
            hooks.append(python_hook(importlib.import_module(source), name, "builtin", source))
        except Exception as e:  # noqa: BLE001 -- a broken built-in is reported, not fatal
            skipped.append(Skipped(name, source, f"cannot load: {type(e).__name__}: {e}"))
    return hooks, skipped


def load_entry_points(group: str = GROUP) -> tuple[list[Hook], list[Skipped]]:
    hooks, skipped = [], []
    for ep in sorted(metadata.entry_points(group=group), key=lambda e: e.name):
        source = f"entry point {ep.name} = {ep.value}"
        try:
            hooks.append(python_hook(ep.load(), ep.name, "entry-point", source))
        except Exception as e:  # noqa: BLE001 -- a broken plug-in is reported, not fatal
            skipped.append(Skipped(ep.name, source, f"cannot load: {type(e).__name__}: {e}"))
    return hooks, skipped


def load_executables(directory: Path = DEFAULT_DIR, owner_ok: Callable[[os.stat_result], bool] = root_owned,
                     ) -> tuple[list[Hook], list[Skipped]]:
    """Each valid executable is asked `describe` (with a short timeout) once, here."""
    if not directory.is_dir():
        return [], []
    if (why := unsafe_reason(directory, owner_ok)):
        return [], [Skipped("*", str(directory), f"directory {why}: no hook in it runs")]
    hooks, skipped = [], []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        if not NAME_RE.fullmatch(path.name):
            skipped.append(Skipped(path.name, str(path), "name is not run-parts style ([A-Za-z0-9_-]): ignored"))
            continue
        if not path.is_file() or not os.access(path, os.X_OK):
            skipped.append(Skipped(path.name, str(path), "not an executable file"))
            continue
        if (why := unsafe_reason(path, owner_ok)):
            log.warning("hook %s skipped: %s", path, why)
            skipped.append(Skipped(path.name, str(path), why))
            continue
        try:
            spec = parse_spec(call_executable(path, "describe", None, DESCRIBE_TIMEOUT), path.name)
        except (HookFailed, BadSpec) as e:
            log.warning("hook %s skipped: describe: %s", path, e)
            skipped.append(Skipped(path.name, str(path), f"describe: {e}"))
            continue
        hooks.append(Hook(spec, "executable", str(path)))
    return hooks, skipped


def load_hooks(directory: Path = DEFAULT_DIR, owner_ok: Callable[[os.stat_result], bool] = root_owned,
               builtins: str = BUILTIN_PACKAGE, group: str = GROUP) -> tuple[list[Hook], list[Skipped]]:
    """Every hook that will run, in name order, plus the skipped ones with their reasons."""
    by_name: dict[str, Hook] = {}
    skipped: list[Skipped] = []
    for hooks, skip in (load_builtins(builtins), load_entry_points(group), load_executables(directory, owner_ok)):
        skipped += skip
        for h in hooks:
            if h.name in by_name:
                old = by_name[h.name]
                skipped.append(Skipped(old.name, old.source, f"overridden by {h.kind} {h.source}"))
            by_name[h.name] = h
    return sorted(by_name.values(), key=lambda h: h.name), skipped
