"""tui (by name only, for the demo: the suite runs these steps in `rehearse`, after its
rehearsals, on the same guest): an admin at a real terminal (tmux in the guest) steps through
`kupgrade rehearse --step` and then `kupgrade run --step`: continue, skip the flush once, the
go/no-go with the estimate, the kernel switch; after it, `kupgrade report` at a terminal of the
new kernel. The screens are asserted at each stage and kept as artifacts (SCENARIO/screen-*.txt)."""

from __future__ import annotations

import re
import time

from ..scenario import (Result, heartbeats_back, kupgrade_config, last_record, restored_record, started, workload_kept,
                        write_config)
from ..timeline import breakdown, marks
from ..tmux import Terminal

NAME = "tui"
DESCRIPTION = "kupgrade rehearse --step, then run --step, driven through a terminal (tmux); report after"


def row(stage: str, state: str) -> str:
    """A regex for the live table's row of a stage in a state."""
    return rf"│\s*\d+\s*│\s*{re.escape(stage)}\s*│\s*{state}\s*│"


def prompt(stage: str, choices: str = "c/a") -> str:
    return rf"{re.escape(stage)}\? \[{re.escape(choices)}\] \(c\):"


class Screens:
    def __init__(self, vm, res: Result) -> None:
        self.vm, self.res, self.n = vm, res, 0

    def keep(self, label: str, text: str, show: bool = False) -> None:
        """Keep the screen as an artifact; the demo shows the telling ones."""
        self.n += 1
        (self.vm.workdir / f"screen-{self.n:02d}-{label}.txt").write_text(text)
        if show:
            self.res.say(f"--- the admin's terminal: {label} ---\n{text.rstrip()}\n")


def step_through(term: Terminal, res: Result, shots: Screens, what: str, skip_flush: bool) -> str:
    """Answer the step prompts up to the go/no-go; check what each screen shows; return the
    go/no-go screen."""
    s = term.answer(prompt("preflight"), "c")
    res.check("next: preflight" in s and "criu check" in s and re.search(row("preflight", "pending"), s) is not None,
              f"{what}: before preflight the screen lists the stages as pending and says what preflight does", s[-1500:])
    s = term.answer(prompt("prepare", "c/a/s"), "c")
    res.check(re.search(row("preflight", "done"), s) is not None and "next: prepare" in s,
              f"{what}: preflight shown done, prepare announced", s[-1500:])
    s = term.answer(prompt("freeze"), "c")
    res.check(re.search(row("prepare", "done"), s) is not None and "pre-flushed" in s,
              f"{what}: prepare shown done with what it wrote while the workload ran", s[-1500:])
    s = term.answer(prompt("flush", "c/a/s"), "s" if skip_flush else "c")
    res.check("[s]kip" in s, f"{what}: the flush can be skipped, and says why", s[-1500:])
    s = term.answer(prompt("snapshot"), "c")
    if skip_flush:
        res.check(re.search(row("flush", "skipped"), s) is not None, f"{what}: flush shown skipped", s[-1500:])
    shots.keep(f"{what}-before-snapshot", s)
    # While the snapshot runs: keep a screen of the live view (best effort: it takes ~2-3 s)
    while True:
        s = term.screen()
        if re.search(row("snapshot", "running"), s):
            shots.keep(f"{what}-snapshot-running", s)
            res.data.setdefault("progress_bar_seen", {})[what] = "░" in s or "█" in s
            break
        if re.search(prompt("kexec"), s):
            break
    s = term.answer(prompt("kexec"), "c")
    res.check(re.search(row("snapshot", "done"), s) is not None and "dumped 1 tree(s)" in s,
              f"{what}: snapshot shown done with what it dumped", s[-1500:])
    return term.wait_for(r"\[y/n\] \(n\):")


def rehearsal(vm, res: Result, shots: Screens, wl, before: dict) -> None:
    """The rehearsal, step by step: the go/no-go with the estimate, every stage done, the
    workload goes on as itself."""
    term = Terminal(vm, "rehearse")
    term.start("kupgrade", "rehearse", "--step")
    s = step_through(term, res, shots, "rehearse", skip_flush=True)
    shots.keep("rehearse-go-no-go", s, show=True)
    res.check("go / no-go" in s and "estimated pause in total" in s and "restored from the snapshot on this kernel" in s,
              "rehearse: the go/no-go shows the estimate and what comes next", s[-1500:])
    term.type("y", "Enter")
    term.answer(prompt("handover"), "c")
    term.answer(prompt("restore"), "c")
    s = term.wait_for(r"\[command exited with \d+\]")
    shots.keep("rehearse-end", term.screen(history=80))
    res.check("[command exited with 0]" in s and "Rehearsal passed" in s and re.search(row("restore", "done"), s),
              "rehearse: ends with every stage done and says what to do next", s[-2000:])
    wl.wait_beats(3, after=wl.beats[-1].counter, timeout=120)
    mid = wl.state()
    res.check(mid["pid"] == before["pid"] and mid["child"] == before["child"] and wl.consecutive(),
              "rehearse: the workload goes on with the same PIDs", f"{before} -> {mid}")
    res.check(last_record(vm)["outcome"] == "rehearsed", "rehearse: the record says rehearsed")


def upgrade_stepped(vm, image, res: Result, shots: Screens) -> float:
    """The real upgrade, step by step, until the new kernel is ready; returns when the go/no-go
    was answered (host clock)."""
    term = Terminal(vm, "run")
    term.start("kupgrade", "run", "--step")
    s = step_through(term, res, shots, "run", skip_flush=False)
    shots.keep("run-go-no-go", s, show=True)
    res.check(f"Switch to {image.kernel_to} now?" in s and "estimated pause in total" in s
              and re.search(row("kexec", "done"), s) is not None and "kupgrade report" in s,
              "run: the go/no-go shows the loaded kernel, the estimate and what happens to the session", s[-1500:])
    res.check("rehearsal" in s, "run: the estimate is based on the rehearsal", s[-1500:])
    term.type("y", "Enter")
    t_go = time.time()
    ready = vm.event("ready", 600)
    res.data["kernel_after"] = ready["kernel"]
    res.check(ready["kernel"] == image.kernel_to, f"now running {image.kernel_to}", ready["kernel"])
    return t_go


def report(vm, res: Result, shots: Screens) -> None:
    """`kupgrade report` at a terminal of the new kernel."""
    term = Terminal(vm, "report")
    term.start("kupgrade", "report")
    term.wait_for(r"\[command exited with \d+\]", timeout=300)
    s = term.screen(history=80)
    shots.keep("report", s.rstrip() + "\n", show=True)
    res.check("[command exited with 0]" in s and "outcome: restored" in s and "restored, same PID" in s
              and "paused for about" in s and "kernel switch" in s,
              "report: outcome, same PID, downtime and the timeline with the kernel switch", s[-2500:])


def pauses(vm, image, res: Result, wl, last_before: int, t_go: float) -> None:
    """The upgrade's pause of the workload (from the old kernel's last heartbeat) includes the
    admin's answers (pause_with_prompts_s, not a downtime figure); downtime_s is its part after
    the last answer, the go: the switch and the restore."""
    gap, a, b = wl.largest_gap_after(last_before - 1)
    res.data["pause_with_prompts_s"] = round(gap, 3)
    res.data["downtime_s"] = round(b.t - t_go, 3)
    res.data["downtime_source"] = "the go/no-go answered -> the first heartbeat in the new kernel (host clock)"
    # where the time after the last answer went (host clock, console lines as they arrived)
    res.data["switch_breakdown"] = breakdown(a.t, b.t, marks(vm, image.kernel_to, a.t))


def at_a_terminal(vm, image, res: Result, wl, before: dict) -> None:
    """The running workload `wl` (`before`: its state when it started) rehearsed, then upgraded
    to the image's target, each step by step at a terminal; the report there."""
    write_config(vm, kupgrade_config(image.kernel_to, pids=[wl.pid]))
    shots = Screens(vm, res)
    # 1. the rehearsal, step by step
    rehearsal(vm, res, shots, wl, before)
    # 2. the real upgrade, step by step
    t_go = upgrade_stepped(vm, image, res, shots)
    last_before = heartbeats_back(vm, res, wl)
    res.data.update(workload_kept(res, wl, before, "run"))
    # 3. back at a terminal of the new kernel
    report(vm, res, shots)
    restored_record(vm, res)
    pauses(vm, image, res, wl, last_before, t_go)


def run(vm, image, res: Result) -> None:
    wl, before = started(vm, res)
    at_a_terminal(vm, image, res, wl, before)
