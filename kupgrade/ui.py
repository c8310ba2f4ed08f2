"""Human output. PlainUi writes plain lines (the new kernel's restore path: no rich import,
no terminal). Ui uses rich; with --json, stdout carries only the JSON document and Ui writes
to stderr (or nothing)."""

from __future__ import annotations

import json
import sys

from .record import FAILED, OK, StageResult, UpgradeRecord


class PlainUi:
    marks = {OK: "done", FAILED: "FAILED", "skipped": "skipped"}

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def print(self, text: str = "") -> None:
        if not self.quiet:
            print(text, flush=True)

    def stage_start(self, name: str) -> None:
        self.print(self.bold(f"▶ {name}") + " …")

    def bold(self, text: str) -> str:
        return text

    def stage_end(self, r: StageResult) -> None:
        line = f"  {self.marks.get(r.status, r.status)} {r.name} in {r.duration_s:.2f} s"
        if r.summary:
            line += f": {r.summary}"
        self.print(line)
        blockers = r.details.get("blockers", [])
        if r.error and not blockers:
            self.print(f"  {r.error}")
        for b in blockers:
            self.print(f"  ✗ {b['message']}" + (f"\n    fix: {b['hint']}" if b.get("hint") else ""))


class Ui(PlainUi):
    marks = {OK: "[green]done[/]", FAILED: "[red]FAILED[/]", "skipped": "[yellow]skipped[/]"}

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

    def point_of_no_return(self, ctx) -> None:
        self.print(f"[bold yellow]Switching to {ctx.target.version} now.[/] This session ends with the old kernel; "
                   "log in again and run `kupgrade report` to see how the restore went.")

    def plan(self, rows: list[tuple[str, list[str]]]) -> None:
        from rich.table import Table
        t = Table(title="kupgrade plan", show_lines=True)
        t.add_column("#", justify="right")
        t.add_column("stage")
        t.add_column("what it will do on this machine")
        for i, (name, actions) in enumerate(rows, 1):
            t.add_row(str(i), name, "\n".join(f"• {a}" for a in actions))
        self.print(t)

    def report(self, rec: UpgradeRecord) -> None:
        from rich.table import Table
        from . import timeline
        self.print(f"[bold]upgrade {rec.id}[/]: {rec.kernel_from} → {rec.kernel_to or '?'}  outcome: [bold]{rec.outcome}[/]")
        t = Table(show_header=True)
        for col in ("stage", "status", "seconds", "summary"):
            t.add_column(col)
        for s in rec.stages:
            t.add_row(s.name, self.marks.get(s.status, s.status), f"{s.duration_s:.2f}", s.error or s.summary)
        self.print(t)
        chart = Table(title="timeline", show_header=False, box=None)
        chart.add_column(justify="right")
        chart.add_column()
        chart.add_column(justify="right")
        for label, bar, secs, status in timeline.bars(rec):
            chart.add_row(label, f"[{'red' if status == FAILED else 'cyan'}]{bar}[/]", f"{secs:.1f} s")
        self.print(chart)
        if (d := timeline.downtime(rec)) is not None:
            self.print(f"[bold]workloads paused for about {d} s[/] (freeze → restored, wall clocks of both kernels, ±1 s)")
        restored = (rec.stage("restore").details.get("workloads", {}) if rec.stage("restore") else {})
        for w in rec.workloads:
            r = restored.get(w.key)
            state = ("restored, same PID" if r.get("same_pid") else f"restored as PID {r.get('root_pid')}") if r and r.get("ok") \
                else (f"[red]NOT restored[/]: {r.get('error')} (images: {r.get('images')})" if r else "not restored (yet)")
            self.print(f"  workload {w.selector}: root PID {w.root_pid}, {len(w.pids)} task(s): {state}")


def stdout_json(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
