"""`kupgrade hooks ...`: which hook covers which device, and scaffolding for hook authors.

A typer sub-app of its own, registered in cli.py with one add_typer line; errors go through
kupgrade.errors like every other command (cli.main is the one handler).
typing.Optional in the command signatures: Debian bookworm's typer 0.7 does not understand `X | None`.
"""
# ruff: noqa: UP045

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from kupgrade import config as config_mod
from kupgrade.errors import StageError
from kupgrade.hooks import Hook
from kupgrade.hooks.coverage import (
    Coverage,
    coverage,
    format_holders,
    interesting,
    open_devnodes,
    unsafe_blockers,
)
from kupgrade.hooks.devices import Device, enumerate_devices
from kupgrade.hooks.early import cannot_run_early
from kupgrade.hooks.hookload import Skipped, load_hooks
from kupgrade.hooks.scaffold import new as scaffold_new
from kupgrade.output.ui import stdout_json

app = typer.Typer(no_args_is_help=True, help="Device hooks: what saves and restores which device across "
                  "the kernel switch (docs/hooks.md).")

CONFIG_OPT = typer.Option(None, "--config", "-c", help="Config file (default /etc/kupgrade/kupgrade.toml).")
DIR_OPT = typer.Option(Path("."), "--dir", help="Where to write the hook and its test.")


def list_devices() -> list[Device]:
    """The machine's devices (tests replace this function)."""
    try:
        return enumerate_devices()
    except (ImportError, OSError) as e:
        raise StageError(f"cannot enumerate the devices with pyudev: {e}",
                         "install python3-pyudev and check that /sys is mounted")


def _hook_json(h: Hook) -> dict:
    early = cannot_run_early(h) if "early-restore" in h.spec.points else None
    return {**h.spec.to_json(), "kind": h.kind, "source": h.source, "early_restore_skipped": early or ""}


def _status(c: Coverage) -> str:
    if c.hooks:
        return "[green]" + ", ".join(c.hooks) + "[/]"
    if c.blocking:
        return "[bold red]UNSAFE, in use: blocks[/]"
    if c.unsafe and c.holders:
        return "[yellow]unsafe, in use, allowed[/]"
    if c.unsafe:
        return "[yellow]unsafe class, not in use[/]"
    return "[dim]none: reset[/]"


def _print(hooks: list[Hook], skipped: list[Skipped], rows: list[Coverage], hidden: int) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    t = Table(title="hooks", title_justify="left")
    for col in ("hook", "kind", "points", "devices (udev match)", "critical", "timeout"):
        t.add_column(col)
    for h in hooks:
        match = "; ".join(", ".join(f"{k}={v}" for k, v in m.items()) for m in h.spec.match) or "(machine-wide)"
        t.add_row(h.name, h.kind, " ".join(h.spec.points), escape(match), "yes" if h.spec.critical else "",
                  f"{h.spec.timeout:g} s")
    console.print(t)
    d = Table(title="devices", title_justify="left")
    for col in ("device", "subsystem", "driver", "covered by", "held open by"):
        d.add_column(col)
    for c in rows:
        dev = c.device
        d.add_row(escape(dev.sys_name or dev.sys_path), escape(dev.subsystem), escape(dev.effective_driver), _status(c),
                  escape(format_holders(c.holders)) if c.holders else "")
    console.print(d)
    console.print("[dim]none: reset = no hook; the new kernel's driver starts this device from scratch[/]")
    for c in rows:
        if c.unsafe and c.holders and not c.hooks:
            what = "allowed by hooks.allow" if c.allowed else "[bold red]blocks the upgrade[/]"
            console.print(f"{escape(c.device.sys_path)}: {what}: in use by {escape(format_holders(c.holders))}: "
                          f"{escape(c.unsafe)}")
    if any(c.unsafe and not c.holders and not c.hooks for c in rows):
        console.print("[dim]unsafe class, not in use = no process holds its device nodes open now; preflight "
                      "blocks if one does then[/]")
    if os.geteuid() != 0:
        console.print("[yellow]not root: device nodes held by other users' processes are not seen[/]")
    if hidden:
        console.print(f"[dim]{hidden} more device(s) without a driver of their own, no hook and nothing "
                      "known unsafe: --all shows them[/]")
    for h in hooks:
        if "early-restore" in h.spec.points and (why := cannot_run_early(h)):
            console.print(f"[yellow]{h.name}: early-restore will be skipped[/]: {escape(why)}")
    for s in skipped:
        console.print(f"[yellow]skipped {escape(s.name)}[/] ({escape(s.source)}): {escape(s.reason)}")
    blocking = sum(c.blocking for c in rows)
    console.print(f"{len(hooks)} hook(s), {sum(bool(c.hooks) for c in rows)} device(s) covered, "
                  + (f"[bold red]{blocking} unsafe device(s) in use block the upgrade[/]" if blocking else "nothing blocks"))


@app.command("list")
def list_(config: Optional[Path] = CONFIG_OPT,
          json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else."),
          all: bool = typer.Option(False, "--all", help="Show every device and every ignored file.")) -> None:
    """Devices x hooks: which hook covers which device, which devices no hook covers (the new
    kernel's driver resets their state), which unsafe ones block the upgrade, and which hooks
    are skipped and why. Runs each executable hook's `describe`; changes nothing."""
    cfg = config_mod.load(config)
    hooks, skipped = load_hooks(Path(cfg.hooks_dir))
    if not all:
        skipped = [s for s in skipped if "run-parts" not in s.reason]      # run-parts ignores those silently
    devices = list_devices()
    open_nodes = open_devnodes()
    rows = coverage(devices, hooks, cfg.hooks_allow, open_nodes)
    shown = rows if all else [c for c in rows if interesting(c)]
    if json:
        stdout_json({"hooks": [_hook_json(h) for h in hooks], "skipped": [s.to_json() for s in skipped],
                     "devices": [c.to_json() for c in shown], "hidden_devices": len(rows) - len(shown),
                     "blockers": [b.to_json() for b in unsafe_blockers(devices, hooks, cfg.hooks_allow, open_nodes)]})
        return
    _print(hooks, skipped, shown, len(rows) - len(shown))


@app.command("new")
def new(name: str = typer.Argument(..., help="Hook name: A-Z a-z 0-9 _ - (run-parts rules)."),
        dir: Path = DIR_OPT,
        python: bool = typer.Option(False, "--python", help="A Python module for the `kupgrade.hooks` "
                                    "entry point group instead of an executable."),
        sh: bool = typer.Option(False, "--sh", help="A /bin/sh script (the only kind that can also run "
                                "at early-restore, in the initramfs).")) -> None:
    """Scaffold a hook that does nothing yet, and a pytest file checking it keeps the contract.
    Writes two files; refuses to overwrite."""
    if python and sh:
        raise typer.BadParameter("choose one of --python and --sh")
    for path in scaffold_new(name, dir, "python" if python else "sh" if sh else "executable"):
        typer.echo(f"wrote {path}")
    typer.echo("next: edit the match and the points, run pytest on the test file, then see docs/hooks.md "
               "for installing it")
