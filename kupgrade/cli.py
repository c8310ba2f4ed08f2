"""The kupgrade command line (typer). One top-level handler turns every KupgradeError into
one line with a hint and a distinct exit code; tracebacks only with --debug."""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path
from typing import List, Optional


class _StandIn(types.ModuleType):
    """In sys.modules for a module not imported yet: the first look-up of one of its names
    imports it (the import system's own look-ups, `__spec__` and the like, do not)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        real = sys.modules.get(self.__name__)
        if real is self:
            spec = importlib.util.spec_from_file_location(self.__name__, self.__file__)
            real = importlib.util.module_from_spec(spec)
            sys.modules[self.__name__] = real
            try:
                spec.loader.exec_module(real)
            except BaseException:
                sys.modules[self.__name__] = self
                raise
        return getattr(real, name)


def _load_when_used(module: str) -> None:
    """Import `module` (a submodule of a package not imported yet) only when one of its names is
    first used. typer (0.7, Debian bookworm's) imports its rich help formatter, and with it rich's
    markdown parser, at its own import: 1.3 s of every command's start in a QEMU TCG guest, for
    what only --help and a usage error use. (importlib.util.LazyLoader does not do here: Python
    3.11's import looks at the module's `__spec__` when typer imports it, which loads it.)"""
    package, _, name = module.rpartition(".")
    found = importlib.util.find_spec(package)      # a top-level package's spec: not imported
    if module in sys.modules or found is None or not found.submodule_search_locations:
        return
    path = Path(found.submodule_search_locations[0], f"{name}.py")
    if path.is_file():
        stand_in = _StandIn(module)
        stand_in.__file__ = str(path)
        sys.modules[module] = stand_in


_load_when_used("typer.rich_utils")
import typer  # noqa: E402 -- after the line above

from kupgrade import __version__, cli_hooks, inflight, pipeline
from kupgrade import config as config_mod
from kupgrade.context import Context, resolve_target
from kupgrade.errors import ConfigError, KupgradeError, explain
from kupgrade.output import logfile, metrics, record, timeline
from kupgrade.output.ui import LiveUi, PlainUi, Ui, stdout_json
from kupgrade.steps import new_record
from kupgrade.switch import boot, contract, pmem
from kupgrade.switch.newkernel import discard as discard_pending
from kupgrade.switch.newkernel import restore_pending

app = typer.Typer(add_completion=True, no_args_is_help=True,
                  help="Replace the running kernel without losing the running programs (CRIU + kexec).")

app.add_typer(cli_hooks.app, name="hooks")
_state = {"debug": False}

CONFIG_OPT = typer.Option(None, "--config", "-c", help="Config file (default /etc/kupgrade/kupgrade.toml).")
PID_OPT = typer.Option(None, "--pid", help="Add a process tree by the PID of its root (repeatable).")
CGROUP_OPT = typer.Option(None, "--cgroup", help="Add a workload by cgroup v2 path, e.g. /workload (repeatable).")
UNIT_OPT = typer.Option(None, "--unit", help="Add a systemd service, restored as itself (repeatable).")
KERNEL_OPT = typer.Option(None, "--kernel", help="Target kernel version in /boot (overrides the config).")
JSON_OPT = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else.")
PROM_OPT = typer.Option(None, "--prometheus", metavar="FILE", help="Also write metrics to FILE for node_exporter's "
                        "textfile collector (written atomically; e.g. /var/lib/prometheus/node-exporter/kupgrade.prom).")


ALL_OPT = typer.Option(False, "--all-services", help="Every running service: carried, or started fresh when it "
                       "cannot be (each one's fate is listed), except those that start fresh in every boot.")


def _config(path: Optional[Path], pids, cgroups, kernel, units=(), need_target: bool = True,
            all_services: bool = False) -> config_mod.Config:
    """The config file with the command line's values; without a target kernel (when one is needed)
    a ConfigError, before anything is done or recorded."""
    cfg = config_mod.load(path)
    cfg = config_mod.with_overrides(cfg, pids=tuple(pids or ()), cgroups=tuple(cgroups or ()),
                                    units=tuple(units or ()), kernel=kernel or "", all_services=all_services or None)
    if need_target:
        resolve_target(cfg)
    return cfg


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
         cgroup: Optional[List[str]] = CGROUP_OPT,
        unit: Optional[List[str]] = UNIT_OPT, kernel: Optional[str] = KERNEL_OPT,
         all_services: bool = ALL_OPT, json: bool = JSON_OPT) -> None:
    """Show the ordered stages and what each will do on this machine (the workloads and their
    PIDs, memory to snapshot, the kernels), the blockers with their fixes and the downtime
    estimate with its basis. Changes nothing (it runs the read-only preflight)."""
    cfg = _config(config, pid, cgroup, kernel, unit, need_target=False, all_services=all_services)
    ctx = Context(cfg, new_record("plan"))
    try:
        pipeline.check(ctx, PlainUi(quiet=True))
    except KupgradeError:
        pass        # blockers (or e.g. no target kernel) are part of the plan, recorded by the stage
    rows = [(s.NAME, s.plan(ctx)) for s in pipeline.ALL]
    pre = ctx.record.stage("preflight")
    doc = {"kernel_from": ctx.kernel_from, "kernel_to": ctx.plan.target.version if ctx.plan.target else "",
           "workloads": [w.to_json() for w in ctx.workloads],
           "snapshot_estimate_bytes": ctx.plan.estimate_bytes,
           "blockers": pre.details.blockers if pre.details.blockers is not None else
           ([{"message": pre.error, "hint": pre.hint}] if pre.error else []),
           "downtime_estimate_s": pre.details.downtime_estimate_s,
           "downtime_basis": pre.details.downtime_basis or "", "services": pre.details.services or [],
           "stages": [{"name": n, "actions": a} for n, a in rows], "config": cfg.to_json()}
    if json:
        stdout_json(doc)
    else:
        Ui().plan(rows, doc)


@app.command()
def check(config: Optional[Path] = CONFIG_OPT, pid: Optional[List[int]] = PID_OPT,
          cgroup: Optional[List[str]] = CGROUP_OPT,
        unit: Optional[List[str]] = UNIT_OPT, kernel: Optional[str] = KERNEL_OPT,
          all_services: bool = ALL_OPT, json: bool = JSON_OPT, prometheus: Optional[Path] = PROM_OPT) -> None:
    """Preflight only: list every blocker and estimate the downtime. Changes nothing (except
    writing --prometheus FILE). Exit 0: ready; 3: blockers found; 2: config or usage error."""
    cfg = _config(config, pid, cgroup, kernel, unit, all_services=all_services)
    ctx = Context(cfg, new_record("check"), step_out_ok=True)      # what a plain `kupgrade run` would do
    ui = Ui(json_mode=json, quiet=json)
    try:
        pipeline.check(ctx, ui)
        pre = ctx.record.stage("preflight")
        ui.print(ui.esc(f"downtime estimate {pre.details.downtime_estimate_s} s: {pre.details.downtime_basis}"))
    finally:
        if json:
            stdout_json(ctx.record.to_json())
        if prometheus:
            metrics.write(prometheus, metrics.check(ctx.record))


STEP_OPT = typer.Option(False, "--step", help="Ask before every stage: continue, skip (where the stage "
                        "allows it) or abort safely.")
YES_OPT = typer.Option(False, "--yes", "-y", help="Never ask (also not at the go/no-go).")
SKIP_OPT = typer.Option(None, "--skip", help="Skip a stage that allows it (repeatable): prepare, flush.")


def _skips(skip) -> tuple[str, ...]:
    allowed = pipeline.skippable()
    for name in skip or ():
        if name not in allowed:
            raise ConfigError(f"--skip {name}: not a stage that can be skipped",
                              f"skippable: {', '.join(allowed)}; see `kupgrade plan`")
    return tuple(skip or ())


def _asking(yes: bool, step: bool) -> None:
    """Refuse before changing anything when nobody can answer."""
    if yes and step:
        raise ConfigError("--step and --yes contradict each other", "use --step to be asked, --yes never to be asked")
    if not yes and not sys.stdin.isatty():
        raise KupgradeError("no terminal on stdin to ask the go/no-go" + (" and the steps" if step else ""),
                            "run it from a terminal, or pass --yes to go through without asking")


def _begin(cfg: config_mod.Config, command: str) -> Context:
    """One run at a time (the lock, held until this process ends); from here on a signal rolls
    back like any failure, and what the run changes is written down for `kupgrade recover`."""
    _state["lock"] = inflight.acquire()
    inflight.catch_signals()
    return Context(cfg, new_record(command), journal=inflight.JOURNAL)


def _stage_ui(title: str, names: list[str], json_mode: bool = False) -> Ui:
    """The live view on a terminal; plain lines otherwise (a log file, a pipe)."""
    ui = Ui(json_mode=json_mode)
    if ui.console.is_terminal:
        return LiveUi(title, names, json_mode=json_mode)
    return ui


@app.command()
def run(config: Optional[Path] = CONFIG_OPT, pid: Optional[List[int]] = PID_OPT,
        cgroup: Optional[List[str]] = CGROUP_OPT,
        unit: Optional[List[str]] = UNIT_OPT, kernel: Optional[str] = KERNEL_OPT,
        all_services: bool = ALL_OPT, step: bool = STEP_OPT, yes: bool = YES_OPT,
        skip: Optional[List[str]] = SKIP_OPT) -> None:
    """Do the upgrade: freeze, flush, snapshot the workloads, load the target kernel, then (after
    the go/no-go) kexec into it; the new kernel restores the workloads. Changes: freezes the
    workloads, mounts a tmpfs, loads and executes the new kernel. Any failure or a "no" before the
    switch resumes the workloads unharmed."""
    _asking(yes, step)
    skips = _skips(skip)
    cfg = _config(config, pid, cgroup, kernel, unit, all_services=all_services)
    ctx = _begin(cfg, "run")
    ctx.step_out_ok = not step      # --step asks on the terminal: it cannot leave it
    ui = _stage_ui(f"kupgrade run {ctx.kernel_from} → {cfg.kernel or 'target'}", [s.NAME for s in pipeline.UPGRADE])
    ui.timeout = cfg.answer_timeout
    ctx.progress = ui.progress
    if (path := logfile.start(ctx.record.id)):
        ui.print(f"log: {ui.esc(path)}")
    with ui:
        pipeline.upgrade(ctx, ui, pipeline.Gate(ui, step=step, yes=yes, skip=skips))


@app.command()
def rehearse(config: Optional[Path] = CONFIG_OPT, pid: Optional[List[int]] = PID_OPT,
             cgroup: Optional[List[str]] = CGROUP_OPT,
        unit: Optional[List[str]] = UNIT_OPT, kernel: Optional[str] = KERNEL_OPT,
             step: bool = STEP_OPT, yes: bool = YES_OPT, skip: Optional[List[str]] = SKIP_OPT,
             json: bool = JSON_OPT) -> None:
    """The dress rehearsal on the running kernel: every stage up to the kexec load, then the
    workloads are restored from their snapshot here instead of switching kernels. Proves they
    can be checkpointed and restored, and measures the bandwidths the downtime estimate uses.
    Changes: the workloads are paused, then continue as restored tasks (same PIDs); the target
    kernel is loaded and unloaded again. A failure before the handover resumes them unharmed."""
    _asking(yes, step)
    skips = _skips(skip)
    cfg = _config(config, pid, cgroup, kernel, unit)
    ctx = _begin(cfg, "rehearse")
    ui = _stage_ui(f"kupgrade rehearse on {ctx.kernel_from} (target {cfg.kernel or '?'})",
                   [s.NAME for s in pipeline.REHEARSAL], json_mode=json)
    ui.timeout = cfg.answer_timeout
    ctx.progress = ui.progress
    if (path := logfile.start(ctx.record.id)):
        ui.print(f"log: {ui.esc(path)}")
    try:
        with ui:
            pipeline.rehearse(ctx, ui, pipeline.Gate(ui, step=step, yes=yes, skip=skips))
    finally:
        if json:
            stdout_json(ctx.record.to_json())
    paused = timeline.downtime(ctx.record)
    ui.print(f"[bold green]Rehearsal passed:[/] the workloads were restored on this kernel and run again "
             f"(paused {paused} s). The downtime estimate now uses these measurements; "
             "`kupgrade report` shows the timeline, `kupgrade run` does the upgrade.")


@app.command()
def restore(config: Optional[Path] = CONFIG_OPT,
            retry: bool = typer.Option(False, "--retry", help="Restore what an earlier attempt did not "
                                       "(after fixing the cause it recorded)."),
            discard: bool = typer.Option(False, "--discard", help="Give up the workloads a failed restore "
                                         "left in the snapshot and free it.")) -> None:
    """(New kernel.) Verify the snapshot in /run/kupgrade and restore its workloads; record the
    outcome. Does nothing when no snapshot is pending. The boot integration runs the leaner
    `kupgrade-restore`, which does the same. A failed restore keeps the snapshot (in RAM) until
    `--retry` brings the rest back or `--discard` gives it up. Changes: starts the restored
    tasks, frees the snapshot memory, writes the record."""
    if retry and discard:
        raise ConfigError("--retry and --discard contradict each other", "choose one")
    cfg = config_mod.load(config)
    ctx = Context(cfg, new_record("restore"))
    ui = Ui()
    if not (discard_pending(ctx, ui) if discard else restore_pending(ctx, ui, retry=retry)):
        ui.print("kupgrade: no snapshot pending in " + ui.esc(str(ctx.restore_dir)))


@app.command()
def recover(config: Optional[Path] = CONFIG_OPT) -> None:
    """After a `kupgrade run` or `rehearse` that was killed before it could undo its changes
    (SIGKILL, the OOM killer): resume every workload it stopped or froze and undo the rest
    (TCP locks, OOM scores, device hooks' quiesce, the snapshot tmpfs, a loaded kexec kernel),
    from what the run wrote down in /run. Changes: only what that run left behind; nothing
    when there is nothing to recover."""
    config_mod.load(config)     # a broken config is reported, though the run's own is used
    _state["lock"] = inflight.acquire(journal=None)
    state = inflight.read()
    ui = Ui()
    if state is None:
        ui.print("kupgrade: nothing to recover (no interrupted run left changes behind)")
        return
    if state.get("unreadable"):
        raise KupgradeError(f"{inflight.JOURNAL} is unreadable: what the interrupted run changed is unknown",
                            "check the workloads by hand (`kupgrade report`), then remove the file")
    inflight.catch_signals()
    ctx = pipeline.recover(state, ui)
    done = ctx.record.stage("rollback").details.done or []
    ui.print(f"kupgrade: recovered run {ctx.record.id}: {'; '.join(done) or 'nothing was left to undo'}",
             markup=False)


@app.command()
def report(config: Optional[Path] = CONFIG_OPT,
           id: Optional[str] = typer.Option(None, "--id", help="Record id (default: the last one)."),
           json: bool = JSON_OPT,
           svg: Optional[Path] = typer.Option(None, "--svg", help="Also write the report as an SVG file."),
           prometheus: Optional[Path] = PROM_OPT) -> None:
    """Show the last (or --id) upgrade record: stages, timeline, downtime, each workload's outcome.
    --json: the record with a `summary` (downtime, workloads by fate, the first error: what a fleet
    report shows). Changes nothing (except writing --svg FILE, --prometheus FILE)."""
    cfg = config_mod.load(config)
    rec = _record(Path(cfg.state_dir), id)
    if rec is None:
        raise KupgradeError(f"no upgrade record {'with id ' + id if id else 'yet'} in {cfg.state_dir}/records",
                            "run `kupgrade run` first, or check --id")
    if prometheus:
        metrics.write(prometheus, metrics.upgrade(rec))
    if json:
        stdout_json({**rec.to_json(), "summary": metrics.summary(rec)})
        return
    ui = Ui(record_svg=bool(svg))
    from kupgrade.switch.trees import pending
    from kupgrade.system.kexec import boot_id
    ui.here = (boot_id(), pending(Path(contract.RESTORE_DIR)))
    ui.report(rec)
    if svg:
        ui.console.save_svg(str(svg), title=f"kupgrade {rec.id}")
        ui.print(f"wrote {ui.esc(svg)}")


def _record(state_dir: Path, record_id: Optional[str]) -> Optional[record.UpgradeRecord]:
    """The record `report` shows; bad input (an id that is none, a corrupt file) is a ConfigError."""
    if record_id is not None and not record.valid_id(record_id):
        raise ConfigError(f"--id {record_id[:60]!r} is not a record id",
                          f"ids look like {record.new_id()}; `ls {state_dir}/records` lists them")
    try:
        return record.load(state_dir, record_id)
    except record.CorruptRecord as e:
        raise ConfigError(f"corrupt upgrade record: {e}",
                          "inspect the file, or remove it (and records/last if it names it); "
                          f"`kupgrade report --id ID` shows another record (`ls {state_dir}/records`)")
    except OSError as e:
        raise KupgradeError(f"cannot read the upgrade records in {state_dir}: {e.strerror}",
                            "records are root-only: run it as root")


@app.command("install-boot")
def install_boot(config: Optional[Path] = CONFIG_OPT,
                 kernel: Optional[List[str]] = typer.Option(None, "--kernel", help="Rebuild the initrd of this kernel "
                                                            "version (repeatable; default: the configured target)."),
                 no_rebuild: bool = typer.Option(False, "--no-rebuild", help="Only write the files."),
                 reserve: Optional[str] = typer.Option(None, "--reserve", metavar="SIZE", help="Also reserve SIZE "
                                                       "(e.g. 1G) of RAM from the next boot on for the snapshot to "
                                                       "cross the kernel switch in (snapshot.transport); 0 removes "
                                                       "it.")) -> None:
    """Install kupgrade's part of the initrd for the machine's initrd builder (initramfs-tools'
    hook and scripts, or a dracut module) and the kupgrade-restore.service unit, then rebuild the
    target initrd(s). Changes: files in /etc/initramfs-tools or /usr/lib/dracut/modules.d/90kupgrade
    and /etc/systemd/system, initrds in /boot."""
    cfg = config_mod.load(config)
    kernels = list(kernel or ([cfg.kernel] if cfg.kernel else []))
    for k in kernels:
        config_mod.check_option("kernel", k)
    if not kernels and not no_rebuild and reserve is None:
        raise KupgradeError("no kernel given to rebuild the initrd for", "pass --kernel VERSION or set target.kernel")
    size = None
    if reserve is not None:
        try:
            size = pmem.parse_size(reserve)
        except ValueError as e:
            raise ConfigError(f"--reserve: {e}", "give a size such as 512M or 2G (0 removes the reservation)") from None
    ui = Ui()
    for line in boot.install(kernels, rebuild=not no_rebuild) + ([] if size is None else boot.reserve(size)):
        ui.print(ui.esc(line))


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
