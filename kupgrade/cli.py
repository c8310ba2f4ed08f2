"""The kupgrade command line (typer). One top-level handler turns every KupgradeError into
one line with a hint and a distinct exit code; tracebacks only with --debug."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import __version__, boot, cli_hooks, config as config_mod, logfile, pipeline, record
from .errors import KupgradeError, explain
from .newkernel import restore_pending
from .stages.context import Context, resolve_target
from .steps import new_record
from .ui import Ui, stdout_json

app = typer.Typer(add_completion=True, no_args_is_help=True,
                  help="Replace the running kernel without losing the running programs (CRIU + kexec).")

app.add_typer(cli_hooks.app, name="hooks")
_state = {"debug": False}

CONFIG_OPT = typer.Option(None, "--config", "-c", help="Config file (default /etc/kupgrade/kupgrade.toml).")
PID_OPT = typer.Option(None, "--pid", help="Add a process tree by the PID of its root (repeatable).")
CGROUP_OPT = typer.Option(None, "--cgroup", help="Add a workload by cgroup v2 path, e.g. /workload (repeatable).")
KERNEL_OPT = typer.Option(None, "--kernel", help="Target kernel version in /boot (overrides the config).")
JSON_OPT = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else.")


def _config(path: Optional[Path], pids, cgroups, kernel) -> config_mod.Config:
    cfg = config_mod.load(path)
    return config_mod.with_overrides(cfg, pids=tuple(pids or ()), cgroups=tuple(cgroups or ()), kernel=kernel or "")


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Log every command and show tracebacks."),
          version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit(0)
    _state["debug"] = debug
    logfile.stderr_handler(debug)


@app.command()
def plan(config: Optional[Path] = CONFIG_OPT, pid: Optional[List[int]] = PID_OPT,
         cgroup: Optional[List[str]] = CGROUP_OPT, kernel: Optional[str] = KERNEL_OPT,
         json: bool = JSON_OPT) -> None:
    """Show the ordered stages and what each will do on this machine. Changes nothing."""
    cfg = _config(config, pid, cgroup, kernel)
    ctx = Context(cfg, new_record("plan"))
    try:
        ctx.target = resolve_target(cfg)
    except KupgradeError:
        pass
    rows = [(s.NAME, s.plan(ctx)) for s in pipeline.ALL]
    if json:
        stdout_json({"stages": [{"name": n, "actions": a} for n, a in rows], "config": cfg.to_json()})
    else:
        Ui().plan(rows)


@app.command()
def check(config: Optional[Path] = CONFIG_OPT, pid: Optional[List[int]] = PID_OPT,
          cgroup: Optional[List[str]] = CGROUP_OPT, kernel: Optional[str] = KERNEL_OPT,
          json: bool = JSON_OPT) -> None:
    """Preflight only: list every blocker and estimate the downtime. Changes nothing.
    Exit 0: ready; 3: blockers found; 2: config or usage error."""
    cfg = _config(config, pid, cgroup, kernel)
    ctx = Context(cfg, new_record("check"))
    ui = Ui(json_mode=json, quiet=json)
    try:
        pipeline.check(ctx, ui)
        pre = ctx.record.stage("preflight")
        ui.print(f"downtime estimate {pre.details['downtime_estimate_s']} s: {pre.details['downtime_basis']}")
    finally:
        if json:
            stdout_json(ctx.record.to_json())


@app.command()
def run(config: Optional[Path] = CONFIG_OPT, pid: Optional[List[int]] = PID_OPT,
        cgroup: Optional[List[str]] = CGROUP_OPT, kernel: Optional[str] = KERNEL_OPT,
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before the kernel switch.")) -> None:
    """Do the upgrade: freeze, flush, snapshot the workloads, kexec into the target kernel.
    Changes: freezes the workloads, mounts a tmpfs, loads and executes the new kernel. Any failure
    before the switch resumes the workloads unharmed."""
    cfg = _config(config, pid, cgroup, kernel)
    if not yes and not sys.stdin.isatty():
        raise KupgradeError("no terminal to ask for confirmation before the kernel switch",
                            "run it from a terminal, or pass --yes to switch without asking")
    ctx = Context(cfg, new_record("run"))
    ui = Ui()
    if (path := logfile.start(ctx.record.id)):
        ui.print(f"log: {path}")

    def confirm(ctx: Context) -> bool:
        if yes:
            return True
        return typer.confirm(f"Workloads are frozen and snapshotted. Switch to {ctx.target.version} now?")

    pipeline.upgrade(ctx, ui, confirm)


@app.command()
def restore(config: Optional[Path] = CONFIG_OPT) -> None:
    """(New kernel.) Verify the snapshot in /run/kupgrade and restore its workloads; record the
    outcome. Does nothing when no snapshot is pending. The boot integration runs the leaner
    `kupgrade-restore`, which does the same."""
    cfg = config_mod.load(config)
    ctx = Context(cfg, new_record("restore"))
    ui = Ui()
    if not restore_pending(ctx, ui):
        ui.print("kupgrade: no snapshot pending in " + cfg.restore_dir)


@app.command()
def report(config: Optional[Path] = CONFIG_OPT,
           id: Optional[str] = typer.Option(None, "--id", help="Record id (default: the last one)."),
           json: bool = JSON_OPT,
           svg: Optional[Path] = typer.Option(None, "--svg", help="Also write the report as an SVG file.")) -> None:
    """Show the last (or --id) upgrade record: stages, timeline, downtime, each workload's outcome.
    Changes nothing (except writing --svg FILE)."""
    cfg = config_mod.load(config)
    rec = record.load(Path(cfg.state_dir), id)
    if rec is None:
        raise KupgradeError(f"no upgrade record {'with id ' + id if id else 'yet'} in {cfg.state_dir}/records",
                            "run `kupgrade run` first, or check --id")
    if json:
        stdout_json(rec.to_json())
        return
    ui = Ui(record_svg=bool(svg))
    ui.report(rec)
    if svg:
        ui.console.save_svg(str(svg), title=f"kupgrade {rec.id}")
        ui.print(f"wrote {svg}")


@app.command("install-boot")
def install_boot(config: Optional[Path] = CONFIG_OPT,
                 kernel: Optional[List[str]] = typer.Option(None, "--kernel", help="Rebuild the initrd of this kernel "
                                                            "version (repeatable; default: the configured target)."),
                 no_rebuild: bool = typer.Option(False, "--no-rebuild", help="Only write the files.")) -> None:
    """Install the initramfs-tools hook and script and the kupgrade-restore.service unit, then
    rebuild the target initrd(s). Changes: files in /etc/initramfs-tools and /etc/systemd/system,
    initrds in /boot."""
    cfg = config_mod.load(config)
    kernels = list(kernel or ([cfg.kernel] if cfg.kernel else []))
    if not kernels and not no_rebuild:
        raise KupgradeError("no kernel given to rebuild the initrd for", "pass --kernel VERSION or set target.kernel")
    ui = Ui()
    for line in boot.install(kernels, rebuild=not no_rebuild):
        ui.print(line)


def main(argv: Optional[List[str]] = None) -> int:
    try:
        rc = app(args=argv, prog_name="kupgrade", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except KupgradeError as e:
        if _state["debug"]:
            logging.getLogger("kupgrade").exception("error")
        print(explain(e), file=sys.stderr)
        return e.exit_code
    except Exception as e:
        # click's exceptions (typer vendors its own click in newer releases): duck-typed.
        if type(e).__name__ == "Abort":
            print("kupgrade: aborted", file=sys.stderr)
            return 130
        if hasattr(e, "show") and hasattr(e, "exit_code"):     # usage errors
            e.show()
            return e.exit_code
        if hasattr(e, "exit_code"):                            # Exit
            return e.exit_code
        raise


if __name__ == "__main__":
    sys.exit(main())
