"""Rendering from records and stage events, as text at a fixed width (golden)."""

import io

from rich.console import Console

from kupgrade.config import Config
from kupgrade.context import Context
from kupgrade.output.record import OK, SKIPPED, StageResult, UpgradeRecord, Workload
from kupgrade.output.ui import LiveUi, Ui, bar_text, go_no_go_lines


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def lines(text: str) -> str:
    return "".join(line.rstrip() + "\n" for line in text.splitlines())


def render_text(renderable, width=100) -> str:
    c = Console(file=io.StringIO(), width=width, color_system=None, legacy_windows=False)
    c.print(renderable)
    return c.file.getvalue()


def test_live_view_golden():
    clock = Clock()
    ui = LiveUi("kupgrade run 6.1 → 6.12", ["preflight", "freeze", "flush", "snapshot", "kexec"], clock=clock)
    ui.quiet = True
    ui.stage_start("preflight")
    clock.t += 2.0
    ui.stage_end(StageResult("preflight", OK, 0, 2.04, "1 workload(s), ~64 MiB to snapshot"))
    ui.stage_end(StageResult("freeze", OK, 0, 0.003, "froze 1 cgroup(s)"))
    ui.stage_end(StageResult("flush", SKIPPED, 0, 0.0, "skipped by the admin"))
    ui.stage_start("snapshot")
    clock.t += 1.5
    ui.progress("dump", 32 << 20, 64 << 20)
    assert lines(render_text(ui.render())) == """\
kupgrade run 6.1 → 6.12 · 3.5 s
┏━━━┳━━━━━━━━━━━┳━━━━━━━━━┳━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┓
┃ # ┃ stage     ┃ state   ┃  time ┃ progress / result                   ┃
┡━━━╇━━━━━━━━━━━╇━━━━━━━━━╇━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┩
│ 1 │ preflight │ done    │ 2.0 s │ 1 workload(s), ~64 MiB to snapshot  │
│ 2 │ freeze    │ done    │ 0.0 s │ froze 1 cgroup(s)                   │
│ 3 │ flush     │ skipped │ 0.0 s │ skipped by the admin                │
│ 4 │ snapshot  │ running │ 1.5 s │ ██████████░░░░░░░░░░ dump 32/64 MiB │
│ 5 │ kexec     │ pending │       │                                     │
└───┴───────────┴─────────┴───────┴─────────────────────────────────────┘
"""


def test_bar_text():
    assert bar_text("pack", 0, 0, width=4) == "░░░░ pack 0/0 MiB"
    assert bar_text("pack", 3 << 20, 2 << 20, width=4) == "████ pack 3/2 MiB"


def test_unknown_stage_gets_a_row():
    ui = LiveUi("t", ["preflight"], clock=Clock())
    ui.quiet = True
    ui.stage_end(StageResult("rollback", OK, 0, 0.1, "thawed /w"))
    assert "rollback" in render_text(ui.render())


def test_go_no_go_lines():
    st = (StageResult("preflight", OK, 100.0, 2.0, details={"downtime_estimate_s": 29.2, "downtime_basis": "B"}),
          StageResult("freeze", OK, 102.0, 0.0),
          StageResult("snapshot", OK, 102.5, 2.0, details={"snapshot_bytes": 73 << 20, "total_bytes": 79 << 20}),
          StageResult("kexec", OK, 104.5, 0.8, details={"method": "classic"}))
    rec = UpgradeRecord("X", "run", "6.1", "6.12", stages=st, workloads=(Workload("pid:7", 7, (7, 8), name="w"),))
    ctx = Context(Config(), rec)
    lines = go_no_go_lines(ctx, now=106.0)
    assert "  workload pid:7 (w, 2 task(s)): stopped, snapshotted" in lines
    assert "  paused for 3.5 s so far" in lines                # from the snapshot (criu seizes PID trees)
    assert "  snapshot 73 MiB, packed initrd 79 MiB" in lines
    assert "  6.12 is loaded (classic load)" in lines
    assert "  estimated pause in total: 29.2 s (B)" in lines
    assert any("kexec --exec" in l and "kupgrade report" in l for l in lines)
    ctx.frozen_cgroups.append("/w")
    assert "  paused for 4.0 s so far" in go_no_go_lines(ctx, now=106.0)      # from the freeze
    ctx.rehearsal = True
    assert any("restored from the snapshot on this kernel" in l for l in go_no_go_lines(ctx, now=106.0))


def test_report_golden():
    st = (StageResult("preflight", "ok", 100.0, 2.0, "1 workload(s)", details={"downtime_estimate_s": 21.5}),
          StageResult("freeze", "ok", 102.0, 0.0, "froze 1 cgroup(s)", details={"frozen_cgroups": {"/w": 0.01}}),
          StageResult("flush", "ok", 102.0, 0.0, "synced 0 KiB dirty in 0.00 s"),
          StageResult("snapshot", "ok", 102.0, 2.0, "dumped 1 tree(s)"),
          StageResult("kexec", "ok", 104.0, 2.0, "loaded 6.12"),
          StageResult("exec", "ok", 106.0, 0.0, "kexec --exec: the point of no return"),
          StageResult("restore", "ok", 118.0, 2.0, "restored 1 workload(s)",
                      details={"workloads": {"tree-7": {"ok": True, "root_pid": 7, "same_pid": True}}}))
    rec = UpgradeRecord(id="T1", command="run", kernel_from="6.1", kernel_to="6.12", outcome="restored",
                        workloads=(Workload("cgroup:/w", 7, (7, 8), cgroup="/w"),), stages=st)
    ui = Ui(width=80, record_svg=True)
    ui.console.file = io.StringIO()
    ui.report(rec)
    assert lines(ui.console.export_text()) == """\
upgrade T1: 6.1 → 6.12  outcome: restored
┏━━━━━━━━━━━┳━━━━━━━━┳━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┓
┃ stage     ┃ status ┃ seconds ┃ summary                              ┃
┡━━━━━━━━━━━╇━━━━━━━━╇━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┩
│ preflight │ done   │ 2.00    │ 1 workload(s)                        │
│ freeze    │ done   │ 0.00    │ froze 1 cgroup(s)                    │
│ flush     │ done   │ 0.00    │ synced 0 KiB dirty in 0.00 s         │
│ snapshot  │ done   │ 2.00    │ dumped 1 tree(s)                     │
│ kexec     │ done   │ 2.00    │ loaded 6.12                          │
│ exec      │ done   │ 0.00    │ kexec --exec: the point of no return │
│ restore   │ done   │ 2.00    │ restored 1 workload(s)               │
└───────────┴────────┴─────────┴──────────────────────────────────────┘
                            timeline
     preflight  ████                                       2.0 s
        freeze      █                                      0.0 s
         flush      █                                      0.0 s
      snapshot      ████                                   2.0 s
         kexec          ████                               2.0 s
 kernel switch              ████████████████████████      12.0 s
       restore                                      ████   2.0 s
workloads paused for about 18.0 s (freeze → restored, wall clocks of both
kernels, ±1 s, estimated 21.5 s)
  workload cgroup:/w: root PID 7, 2 task(s): restored, same PID
"""


def test_report_warnings_for_a_failed_restore():
    st = (StageResult("snapshot", "ok", 102.0, 2.0),
          StageResult("restore", "failed", 118.0, 2.0, error="1 of 2 workload(s) failed to restore: PID taken",
                      hint="images kept", details={"workloads": {
                          "tree-7": {"selector": "pid:7", "ok": True, "root_pid": 9, "same_pid": False},
                          "tree-8": {"selector": "pid:8", "ok": False, "error": "PID taken", "images": "/run/x"}}}))
    rec = UpgradeRecord(id="T2", command="run", kernel_from="6.1", kernel_to="6.12", outcome="restore-failed",
                        workloads=(Workload("pid:7", 7, (7,)), Workload("pid:8", 8, (8,))), stages=st)
    assert rec.warnings() == ["restore failed: 1 of 2 workload(s) failed to restore: PID taken (images kept)",
                              "pid:7 was restored as PID 9, not its old PID"]
    ui = Ui(width=200, record_svg=True)
    ui.console.file = io.StringIO()
    ui.report(rec)
    text = ui.console.export_text()
    assert "workload pid:8: root PID 8, 1 task(s): NOT restored: PID taken (images: /run/x)" in text
    assert "warning: pid:7 was restored as PID 9, not its old PID" in text


def test_report_says_which_tcp_connections_were_kept():
    tcp = {"connections": ["10.0.2.15:7000 <-> 10.0.2.2:41716"], "released": 1, "dropped_packets": 3}
    st = (StageResult("restore", "ok", 118.0, 2.0, "restored",
                      details={"workloads": {"tree-7": {"ok": True, "root_pid": 7, "same_pid": True, "tcp": tcp}}}),)
    rec = UpgradeRecord(id="T1", command="run", kernel_from="6.1", kernel_to="6.12", outcome="restored",
                        workloads=(Workload("pid:7", 7, (7,)),), stages=st)
    ui = Ui(width=120)
    ui.console.file = io.StringIO()
    ui.report(rec)
    assert ("    TCP: 1 connection(s) kept, 3 packet(s) of their peers held back: 10.0.2.15:7000 <-> 10.0.2.2:41716"
            in lines(ui.console.file.getvalue()))


def test_markup_in_records_is_printed_literally():
    st = (StageResult("preflight", "ok", 100.0, 2.0, "[bold]1 workload[/bold]", details={"downtime_estimate_s": 1}),
          StageResult("restore", "failed", 118.0, 2.0, error="criu: [/y] gone", hint="[x]", details={
              "workloads": {"tree-7": {"selector": "cgroup:/x[/y]", "ok": False, "error": "[red]no[/]",
                                       "images": "/run/[i]"}},
              "hooks": [{"hook": "net", "point": "restore", "ok": False, "seconds": 0.1, "error": "[/] bad"}]}))
    rec = UpgradeRecord(id="T1", command="run", kernel_from="6.1[/]", kernel_to="6.12", outcome="restore-failed",
                        workloads=(Workload("cgroup:/x[/y]", 7, (7,), cgroup="/x[/y]"),), stages=st)
    ui = Ui(width=200, record_svg=True)
    ui.console.file = io.StringIO()
    ui.report(rec)
    text = ui.console.export_text()
    for literal in ("upgrade T1: 6.1[/] → 6.12", "[bold]1 workload[/bold]", "criu: [/y] gone",
                    "workload cgroup:/x[/y]: root PID 7, 1 task(s): NOT restored: [red]no[/] (images: /run/[i])",
                    "[/] bad", "warning: restore failed: criu: [/y] gone ([x])"):
        assert literal in text, literal


def test_markup_in_stage_events_is_printed_literally():
    blocked = StageResult("preflight", "failed", 0, 0.1, error="blocked", details={
        "blockers": [{"message": "cgroup /x[/y] does not exist", "hint": "[bold]check[/]"}]})
    failed = StageResult("snapshot", "failed", 0, 0.1, error="criu dump of cgroup:/x[/y] failed")
    for ui in (Ui(width=200, record_svg=True), LiveUi("run → [/]", ["preflight"], clock=Clock(), width=200,
                                                      record_svg=True)):
        ui.console.file = io.StringIO()
        ui.stage_end(blocked)
        ui.stage_end(failed)
        text = ui.console.export_text()
        assert "✗ cgroup /x[/y] does not exist\n    fix: [bold]check[/]" in text
        assert "criu dump of cgroup:/x[/y] failed" in text
    assert "run → [/]" in render_text(ui.render()) and "criu dump of cgroup:/x[/y]" in render_text(ui.render(), 200)


def test_markup_in_the_plan_is_printed_literally():
    ui = Ui(width=200, record_svg=True)
    ui.console.file = io.StringIO()
    ui.plan([("freeze", ["freeze cgroup /x[/y]"])],
            {"kernel_from": "6.1", "kernel_to": "[b]", "workloads": [], "snapshot_estimate_bytes": 0,
             "blockers": [{"message": "cgroup /x[/y] does not exist", "hint": ""}],
             "downtime_estimate_s": 1.0, "downtime_basis": "[/]"})
    text = ui.console.export_text()
    for literal in ("6.1 → [b]", "• freeze cgroup /x[/y]", "✗ blocker: cgroup /x[/y] does not exist", ": [/]"):
        assert literal in text, literal
