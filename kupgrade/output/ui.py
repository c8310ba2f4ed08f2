"""Human output. PlainUi writes plain lines (the new kernel's restore path: no rich import,
no terminal). Ui uses rich; with --json, stdout carries only the JSON document and Ui writes
to stderr (or nothing)."""

from __future__ import annotations

import json
import sys
import time

from kupgrade.errors import KupgradeError
from kupgrade.output import results
from kupgrade.output.record import FAILED, OK, SKIPPED, StageResult, UpgradeRecord

SESSION_ENDS = ("This session ends with the old kernel: the workloads come back by themselves in the new "
                "one. Log in again and run `kupgrade report` to see how the restore went.")


class PlainUi:
    marks = {OK: "done", FAILED: "FAILED", SKIPPED: "skipped"}

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def print(self, text: str = "") -> None:
        if not self.quiet:
            print(text, flush=True)

    def stage_start(self, name: str) -> None:
        self.print(self.bold(f"▶ {name}") + " …")

    def progress(self, label: str, done: int, total: int) -> None:
        """Bytes done of a long stage (the live view draws a bar; lines output ignores it)."""

    def ask_stage(self, name: str, actions: list[str], skippable: str) -> str:
        raise KupgradeError("--step needs a terminal to ask", "run it from a terminal")

    def go_no_go(self, ctx, question: str) -> bool:
        raise KupgradeError("no terminal to ask the go/no-go", "run it from a terminal, or pass --yes")

    def point_of_no_return(self, ctx) -> None:
        self.print(f"Switching to {ctx.plan.target.version} now. " + SESSION_ENDS)

    def bold(self, text: str) -> str:
        return text

    def esc(self, text: object) -> str:
        """Text from users, records or the system, as this output prints it literally."""
        return str(text)

    def blocker(self, b: dict, mark: str = "✗") -> str:
        return f"{mark} {self.esc(b['message'])}" + (f"\n    fix: {self.esc(b['hint'])}" if b.get("hint") else "")

    def services(self, details: results.Details) -> None:
        """What happens to each running service (preflight with workloads.all_services)."""
        if not isinstance(details, results.Preflight):
            return
        from kupgrade.userspace.selection import lines
        for line in lines(details.services or []):
            self.print("  " + self.esc(line))
        for note in details.notes or []:
            self.print("  note: " + self.esc(note))

    def stage_end(self, r: StageResult) -> None:
        line = f"  {self.marks.get(r.status) or self.esc(r.status)} {self.esc(r.name)} in {r.duration_s:.2f} s"
        if r.summary:
            line += f": {self.esc(r.summary)}"
        self.print(line)
        self.services(r.details)
        blockers = blockers_of(r)
        if r.error and not blockers:
            self.print(f"  {self.esc(r.error)}")
        for b in blockers:
            self.print("  " + self.blocker(b))


class Ui(PlainUi):
    marks = {OK: "[green]done[/]", FAILED: "[red]FAILED[/]", SKIPPED: "[yellow]skipped[/]"}
    timeout: float = 300.0          # seconds a question waits for an answer (`run.answer_timeout`)
    here: tuple[str, bool] = ("", True)     # for the report: this boot's id, a snapshot pending in it

    def __init__(self, json_mode: bool = False, quiet: bool = False, record_svg: bool = False,
                 width: int | None = None) -> None:
        from rich.console import Console
        super().__init__(quiet)
        self.console = Console(stderr=json_mode, highlight=False, record=record_svg, width=width)

    def print(self, *a, **kw) -> None:
        if not self.quiet:
            self.console.print(*a, **kw)

    def bold(self, text: str) -> str:
        return f"[bold]{text}[/]"

    def esc(self, text: object) -> str:
        from rich.markup import escape
        return escape(str(text))

    def point_of_no_return(self, ctx) -> None:
        self.print(f"[bold yellow]Switching to {self.esc(ctx.plan.target.version)} now.[/] {SESSION_ENDS}")

    def ask_stage(self, name: str, actions: list[str], skippable: str) -> str:
        self.print(f"[bold]next: {name}[/]")
        for a in actions:
            self.print(f"  • {a}", markup=False)
        choices = {"c": "continue", "a": "abort"}
        line = "[c]ontinue / [a]bort safely"
        if skippable:
            choices["s"] = "skip"
            line += f" / [s]kip ({skippable})"
        self.print(line, markup=False)
        answer = self.answer(f"{name}? [{'/'.join(choices)}] (c):", list(choices), "c", "a")
        return choices[answer]

    def go_no_go(self, ctx, question: str) -> bool:
        for line in go_no_go_lines(ctx):
            self.print(line, markup=False)
        return self.answer(f"{question} [y/n] (n):", ["y", "yes", "n", "no"], "n", "n") in ("y", "yes")

    def answer(self, prompt: str, choices: list[str], default: str, silent: str) -> str:
        """Ask until one of the choices (or Enter: default) is typed; after `timeout` seconds
        without an answer, `silent` (the safe one: no, abort). EOF on stdin is silence too."""
        while True:
            self.console.print(prompt + " ", end="", markup=False, highlight=False)
            ready, line = _read_line(sys.stdin.fileno(), self.timeout)
            if not ready or not line:
                self.print(f"\nno answer within {self.timeout:g} s: {silent}" if not ready else f"\n{silent}",
                           markup=False)
                return silent
            word = line.strip().lower() or default
            if word in choices:
                return word
            self.print(f"please answer one of {', '.join(choices)}", markup=False)

    def plan(self, rows: list[tuple[str, list[str]]], doc: dict) -> None:
        from rich.table import Table
        mib = doc["snapshot_estimate_bytes"] >> 20
        self.print(f"[bold]kupgrade plan[/]: {self.esc(doc['kernel_from'])} → {self.esc(doc['kernel_to'] or '?')}, "
                   f"{len(doc['workloads'])} workload(s), ~{mib} MiB to snapshot")
        t = Table(show_lines=True)
        t.add_column("#", justify="right")
        t.add_column("stage")
        t.add_column("what it will do on this machine")
        for i, (name, actions) in enumerate(rows, 1):
            t.add_row(str(i), self.esc(name), "\n".join(f"• {self.esc(a)}" for a in actions))
        self.print(t)
        self.services(doc)
        for b in doc["blockers"]:
            self.print(self.blocker(b, "[red]✗ blocker:[/]"))
        if not doc["blockers"]:
            self.print("[green]no blockers[/]: `kupgrade rehearse` or `kupgrade run` can go ahead")
        if doc["downtime_estimate_s"] is not None:
            self.print(f"downtime estimate [bold]{self.esc(doc['downtime_estimate_s'])} s[/]: "
                       f"{self.esc(doc['downtime_basis'])}")

    def report(self, rec: UpgradeRecord) -> None:
        from rich.table import Table

        from kupgrade.output import timeline
        e = self.esc
        self.print(f"[bold]upgrade {e(rec.id)}[/]: {e(rec.kernel_from)} → {e(rec.kernel_to or '?')}  "
                   f"outcome: [bold]{e(rec.outcome)}[/]")
        t = Table(show_header=True)
        for col in ("stage", "status", "seconds", "summary"):
            t.add_column(col)
        for s in rec.stages:
            t.add_row(e(s.name), self.marks.get(s.status) or e(s.status), f"{s.duration_s:.2f}", e(s.error or s.summary))
        self.print(t)
        chart = Table(title="timeline", show_header=False, box=None)
        chart.add_column(justify="right")
        chart.add_column()
        chart.add_column(justify="right")
        for label, bar, secs, status in timeline.bars(rec):
            chart.add_row(e(label), f"[{'red' if status == FAILED else 'cyan'}]{bar}[/]", f"{secs:.1f} s")
        self.print(chart)
        pre = rec.stage("preflight")
        est = f", estimated {pre.details.downtime_estimate_s} s" if pre and pre.details.downtime_estimate_s is not None else ""
        if (d := timeline.downtime(rec)) is not None:
            clocks = "this kernel's clock" if rec.stage("exec") is None else "wall clocks of both kernels, ±1 s"
            self.print(f"[bold]workloads paused for about {d} s[/] (freeze → restored, {clocks}{e(est)})")
        restored: dict[str, dict] = {}
        for s in rec.stages:
            if s.name in ("restore", "restore-unit"):
                restored.update({k: v for k, v in s.details.tree_results.items()
                                 if v.get("ok") is not None or k not in restored})
        for w in rec.workloads:
            r = restored.get(w.key)
            state = ("restored, same PID" if r.get("same_pid") else f"restored as PID {e(r.get('root_pid'))}") if r and r.get("ok") \
                else (f"[red]NOT restored[/]: {e(r.get('error'))} (images: {e(r.get('images'))})" if r and r.get("ok") is False
                      else e((r.get("pending") if r else None) or "not restored (yet)"))
            self.print(f"  workload {e(w.selector)}: root PID {w.root_pid}, {len(w.pids)} task(s): {state}")
            if r and (t := r.get("tcp")):
                held = f", {e(t['dropped_packets'])} packet(s) of their peers held back" if "dropped_packets" in t else ""
                kept = "kept" if r.get("ok") else "lost"
                self.print(f"    TCP: {len(t.get('connections', []))} connection(s) {kept}{held}: "
                           + e(", ".join(t.get("connections", []))))
        for f in rec.fresh:
            if f.stop:
                self.print(f"  service {e(f.unit)}: started fresh (stopped before the switch): {e(f.reason)}")
        if rows := hook_rows(rec):
            h = Table(title="device hooks", show_header=True)
            for col in ("hook", "point", "ok", "seconds", "error"):
                h.add_column(col)
            for hook, point, ok, secs, error in rows:
                h.add_row(e(hook), e(point), "ok" if ok else "[red]FAILED[/]", f"{secs:.2f}", e(error))
            self.print(h)
        for warning in rec.warnings(*self.here):
            self.print(f"[yellow]warning:[/] {e(warning)}")


def blockers_of(r: StageResult) -> list[dict]:
    """The blockers a stage found (preflight's; JSON)."""
    return (r.details.blockers or []) if isinstance(r.details, results.Preflight) else []


def hook_rows(rec: UpgradeRecord) -> list[tuple[str, str, bool, float, str]]:
    """(hook, point, ok, seconds, error) of every hook call the record's stages made, in order."""
    return [(r["hook"], r["point"], r["ok"], r["seconds"], r.get("error", ""))
            for s in rec.stages for r in s.details.hook_calls]


def _read_line(fd: int, timeout: float) -> tuple[bool, str]:
    """(anything typed within timeout?, the line, "" at EOF). Byte by byte from the file
    descriptor: a buffered reader would hide typed-ahead lines from the next select()."""
    import os
    import select
    if not select.select([fd], [], [], timeout)[0]:
        return False, ""
    data = b""
    while not data.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            break
        data += byte
    return True, data.decode(errors="replace")


def go_no_go_lines(ctx, now: float | None = None) -> list[str]:
    """What the admin needs to decide: what is paused since when, what is loaded, what comes."""
    rec = ctx.record
    pre, snap, kx = rec.stage("preflight"), rec.stage("snapshot"), rec.stage("kexec")
    now = time.time() if now is None else now
    paused_since = (rec.stage("freeze") if ctx.frozen_cgroups else snap)
    out = ["go / no-go"]
    for w in rec.workloads:
        out.append(f"  workload {w.selector} ({w.name or '?'}, {len(w.pids)} task(s)): stopped, snapshotted")
    if fresh := [f.unit for f in rec.fresh if f.stop]:
        out.append(f"  stopped, start fresh in the new boot: {', '.join(fresh)}")
    if paused_since is not None:
        out.append(f"  paused for {now - paused_since.started:.1f} s so far")
    if snap is not None and snap.status == OK:
        out.append(f"  snapshot {(snap.details.snapshot_bytes or 0) >> 20} MiB, "
                   f"packed initrd {(snap.details.total_bytes or 0) >> 20} MiB")
    if kx is not None and kx.status == OK:
        out.append(f"  {rec.kernel_to} is loaded ({kx.details.method} load)")
    if pre is not None:
        out.append(f"  estimated pause in total: {pre.details.downtime_estimate_s} s "
                   f"({pre.details.downtime_basis})")
    if ctx.rehearsal:
        out.append("  next: the original tasks are ended and restored from the snapshot on this kernel")
    else:
        out.append(f"  next: kexec --exec. {SESSION_ENDS}")
    out.append("  answering no resumes the workloads unharmed")
    return out


class LiveUi(Ui):
    """The live view of `kupgrade run`/`rehearse` on a terminal: every stage with its state and
    elapsed time, a bar for the long ones; messages print above it; prompts pause it."""

    states = {"pending": "[dim]pending[/]", "running": "[bold yellow]running[/]", OK: "[green]done[/]",
              FAILED: "[bold red]failed[/]", SKIPPED: "[yellow]skipped[/]"}

    def __init__(self, title: str, stages: list[str], clock=time.monotonic, **kw) -> None:
        super().__init__(**kw)
        self.title, self.clock = title, clock
        self.rows: dict[str, dict] = {n: {"state": "pending"} for n in stages}
        self.t0 = clock()
        self.live = None

    def __enter__(self) -> "LiveUi":
        from rich.live import Live
        self.live = Live(get_renderable=self.render, console=self.console, refresh_per_second=4,
                         transient=False, redirect_stdout=False, redirect_stderr=False)
        self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def stage_start(self, name: str) -> None:
        self.rows.setdefault(name, {}).update(state="running", start=self.clock(), bar=None)

    def stage_end(self, r: StageResult) -> None:
        row = self.rows.setdefault(r.name, {})
        row.update(state=r.status, seconds=r.duration_s, summary=r.error or r.summary, bar=None)
        self.services(r.details)
        blockers = blockers_of(r)
        for b in blockers:
            self.print("  " + self.blocker(b, "[red]✗[/]"))
        if r.status == FAILED and r.error and not blockers:
            self.print(f"  [red]✗ {self.esc(r.name)}:[/] {self.esc(r.error)}")

    def progress(self, label: str, done: int, total: int) -> None:
        for row in self.rows.values():
            if row.get("state") == "running":
                row["bar"] = (label, done, total)

    def _paused(self, fn, *a):
        """Stop the live view for a question, then start a fresh one below the answer (a
        restarted Live would redraw over the question)."""
        running = self.live is not None
        self.__exit__()
        try:
            return fn(*a)
        finally:
            if running:
                self.__enter__()

    def ask_stage(self, name: str, actions: list[str], skippable: str) -> str:
        return self._paused(super().ask_stage, name, actions, skippable)

    def go_no_go(self, ctx, question: str) -> bool:
        return self._paused(super().go_no_go, ctx, question)

    def render(self, now: float | None = None):
        from rich.table import Table
        now = self.clock() if now is None else now
        t = Table(title=f"{self.esc(self.title)} · {now - self.t0:.1f} s", title_justify="left", expand=False)
        t.add_column("#", justify="right", no_wrap=True, min_width=1)
        t.add_column("stage", no_wrap=True, min_width=9)
        t.add_column("state", no_wrap=True, min_width=7)
        t.add_column("time", justify="right", no_wrap=True, min_width=5)
        # the other columns take 37 characters with the borders: the last one gets what is left
        t.add_column("progress / result", overflow="ellipsis", no_wrap=True,
                     max_width=max(20, min(60, self.console.width - 37)))
        for i, (name, row) in enumerate(self.rows.items(), 1):
            state = row.get("state", "pending")
            secs = row.get("seconds") if state != "running" else now - row["start"]
            detail = self.esc(row.get("summary", ""))
            if state == "running" and row.get("bar"):
                detail = self.esc(bar_text(*row["bar"]))
            t.add_row(str(i), self.esc(name), self.states.get(state) or self.esc(state),
                      "" if secs is None else f"{secs:.1f} s", detail)
        return t


def bar_text(label: str, done: int, total: int, width: int = 20) -> str:
    frac = min(1.0, done / total) if total > 0 else 0.0
    n = int(frac * width)
    return f"{'█' * n}{'░' * (width - n)} {label} {done >> 20}/{total >> 20} MiB"


def stdout_json(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
