# GNU General Public License v2.0 or later (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""The fleet report: one row per host of the play, built on the controller from what the
collection's modules returned (their `kupgrade_fleet`), the task failures and the unreachable
hosts, by the fleet_report callback. Pure Python and no Ansible imports (unit-tested as a file).

A host's status, from the first that applies:
  unreachable  Ansible could not reach it
  failed       the upgrade failed (the outcome says how: aborted before the switch, restore-failed),
               or another task failed for it; left as kupgrade left it
  rolled-back  the new kernel could not restore the workloads: they run again on the old one
  unhealthy    upgraded, but the health gate did not pass
  upgraded     runs the target kernel, the workloads restored, healthy
  current      already ran the target kernel (nothing to do)
  blocked      `kupgrade check` found blockers: nothing was changed (the host skipped, or failed
               as kupgrade_on_blocked says)
  checked      checked and not upgraded (check mode, or no upgrade task ran)
  not reached  none of the collection's steps ran on it (the play stopped before its batch)
"""

from __future__ import annotations

STATUSES = ("upgraded", "current", "blocked", "failed", "rolled-back", "unhealthy", "unreachable", "checked",
            "not reached")


class Fleet:
    """What the play said of each host, in the order the hosts were first seen."""

    def __init__(self) -> None:
        self._hosts: dict[str, dict] = {}

    def _host(self, host: str) -> dict:
        return self._hosts.setdefault(host, {"steps": {}, "failure": "", "unreachable": ""})

    def expect(self, hosts) -> None:
        """The play's hosts: one never reached is still listed."""
        for host in hosts:
            self._host(host)

    def step(self, host: str, data: dict) -> None:
        """A module's `kupgrade_fleet` (its `step`: check, run, report or health; report, the last
    upgrade's record read without running one, counts as the run where there is none)."""
        self._host(host)["steps"][data.get("step", "?")] = data

    def failed(self, host: str, task: str, msg: str) -> None:
        """A task that failed for this host (the first one is the reason)."""
        h = self._host(host)
        if not h["failure"]:
            h["failure"] = f"{task}: {msg}" if task else msg

    def unreachable(self, host: str, msg: str) -> None:
        self._host(host)["unreachable"] = msg or "unreachable"

    def entries(self) -> list[dict]:
        return [entry(host, h) for host, h in self._hosts.items()]


def _status(h: dict) -> tuple[str, str]:
    steps = h["steps"]
    check, run, health = steps.get("check"), steps.get("run") or steps.get("report"), steps.get("health")
    if h["unreachable"]:
        return "unreachable", h["unreachable"]
    if run:
        if run["outcome"] == "rolled-back":
            return "rolled-back", run["error"]
        if run["outcome"] != "restored":
            return "failed", run["error"] or f"outcome {run['outcome']}"
        if health and not health.get("ok"):
            return "unhealthy", health.get("detail", "")
        return ("failed", h["failure"]) if h["failure"] else ("upgraded", "")
    if check and check.get("current"):
        return "current", f"already runs {check['kernel_to']}"
    if check and check.get("blocked"):     # skipped, or failed as kupgrade_on_blocked says: blocked either way
        return "blocked", "; ".join(b["message"] for b in check.get("blockers", [])) or "blocked"
    if h["failure"]:
        return "failed", h["failure"]
    if check:
        return "checked", ""
    return "not reached", "none of kupgrade's steps ran on it (the play stopped before its batch)"


def entry(host: str, h: dict) -> dict:
    """One host's row (and JSON object)."""
    steps = h["steps"]
    check, run = steps.get("check", {}), steps.get("run") or steps.get("report") or {}
    status, reason = _status(h)
    before = check.get("kernel_from") or run.get("kernel_from") or None
    if run:
        after = run.get("kernel_now") or None
    else:       # nothing ran that changes the kernel
        after = before
    return {"host": host, "status": status, "kernel_before": before, "kernel_after": after,
            "kernel_target": check.get("kernel_to") or run.get("kernel_to") or None,
            "downtime_s": run.get("downtime_s"), "carried": run.get("carried", []), "fresh": run.get("fresh", []),
            "failed_workloads": run.get("failed", []), "record_id": run.get("record_id") or None,
            "outcome": run.get("outcome"), "health": steps.get("health", {}).get("detail"), "reason": reason}


def counts(entries: list[dict]) -> dict[str, int]:
    out = {s: 0 for s in STATUSES}
    for e in entries:
        out[e["status"]] = out.get(e["status"], 0) + 1
    return {s: n for s, n in out.items() if n}


def document(entries: list[dict]) -> dict:
    """The fleet report as JSON."""
    return {"hosts": entries, "counts": counts(entries)}


def _kernels(e: dict) -> str:
    before, after = e["kernel_before"] or "?", e["kernel_after"] or "?"
    if e["kernel_before"] is None and e["kernel_after"] is None:
        return "-"
    return f"{before} (unchanged)" if before == after else f"{before} -> {after}"


def _carried(e: dict) -> str:
    if not (e["carried"] or e["fresh"] or e["failed_workloads"]):
        return "-"
    parts = [f"{len(e['carried'])} carried"] + ([f"{len(e['fresh'])} fresh"] if e["fresh"] else []) + \
        ([f"{len(e['failed_workloads'])} lost"] if e["failed_workloads"] else [])
    return ", ".join(parts)


def table(entries: list[dict]) -> str:
    """The fleet report for a terminal: one row per host, then the counts."""
    head = ("HOST", "STATUS", "KERNEL", "DOWNTIME", "WORKLOADS", "REASON")
    rows = [(e["host"], e["status"], _kernels(e), "-" if e["downtime_s"] is None else f"{e['downtime_s']} s",
             _carried(e), e["reason"] or "-") for e in entries]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in [head, *rows]]
    total = counts(entries)
    lines.append(f"{len(entries)} host(s): " + ", ".join(f"{n} {s}" for s, n in total.items()))
    return "\n".join(lines) + "\n"
