"""`kupgrade hooks new`: a working no-op hook plus the test that checks it keeps the contract.

Three flavours: an executable Python script (default; the easiest to write and to test), a
/bin/sh script (the only kind that can run at early-restore, in the initramfs), and a Python
module for the `kupgrade.hooks` entry point group. The templates are files in kupgrade/data/.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from kupgrade.errors import ConfigError, KupgradeError
from kupgrade.hooks import NAME_RE

KINDS = ("executable", "sh", "python")


def _template(name: str) -> str:
    return resources.files("kupgrade").joinpath("data", name).read_text()


def files_for(name: str, kind: str) -> list[tuple[str, str, str, int]]:
    """(file name, template, module name, mode) for each file to write."""
    module = name.replace("-", "_")
    if kind == "python":
        return [(f"{module}.py", "hook-module.py.in", module, 0o644),
                (f"test_{module}.py", "test_hook_module.py.in", module, 0o644)]
    return [(name, "hook.sh.in" if kind == "sh" else "hook.py.in", module, 0o755),
            (f"test_{module}.py", "test_hook.py.in", module, 0o644)]


def new(name: str, directory: Path, kind: str = "executable") -> list[Path]:
    """Write the hook and its test into `directory`; refuse to overwrite anything."""
    if kind not in KINDS:
        raise ConfigError(f"unknown hook kind {kind!r}", f"one of {', '.join(KINDS)}")
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"hook name {name!r} may only contain A-Z a-z 0-9 _ - (run-parts rules)",
                          "choose a name like `50-mydevice` or `mydevice`")
    if kind == "python" and not name.replace("-", "_").isidentifier():
        raise ConfigError(f"hook name {name!r} does not make a Python module name",
                          "start it with a letter, e.g. `mydevice`")
    files = files_for(name, kind)
    existing = [directory / f for f, *_ in files if (directory / f).exists()]
    if existing:
        raise KupgradeError(f"{existing[0]} already exists; nothing was written",
                            "choose another name or --dir, or remove the old files")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, template, module, mode in files:
        path = directory / fname
        path.write_text(_template(template).replace("@NAME@", name).replace("@MODULE@", module))
        path.chmod(mode)
        written.append(path)
    return written
