"""Metrics for a monitoring stack: the last upgrade and the last check in the text format of
node_exporter's textfile collector (`--collector.textfile.directory`), so that a fleet
dashboard shows how each host's last upgrade went and which hosts can be upgraded live now.

`kupgrade report --prometheus FILE` writes the last upgrade's, `kupgrade check --prometheus
FILE` the check's (give the two their own files in the collector's directory). Written
atomically (a temporary file renamed), as the collector may read at any moment."""

from __future__ import annotations

import os
from pathlib import Path

from kupgrade.output import record, timeline
from kupgrade.output.record import UpgradeRecord
from kupgrade.output.results import Preflight
from kupgrade.switch import commit


def _labels(**kv: str) -> str:
    def esc(v: str) -> str:
        return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in kv.items()) + "}"


def _metric(name: str, help_: str, samples: list[tuple[str, float]], kind: str = "gauge") -> list[str]:
    return [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *(f"{name}{labels} {value:g}" for labels, value in samples)]


def workload_fates(rec: UpgradeRecord) -> dict[str, list[str]]:
    """The workloads' selectors by what became of them: carried (restored in the new kernel, or
    back on the old one), failed (not restored; none before a restore was attempted), fresh (the
    units stopped and started by the new boot instead)."""
    attempts = [s for s in rec.stages if s.name in ("restore", "restore-unit")]
    results = commit.results(attempts)
    carried = [w.selector for w in rec.workloads if results.get(w.key, {}).get("ok")]
    failed = [w.selector for w in rec.workloads if attempts and w.selector not in carried]
    return {"carried": carried, "failed": failed, "fresh": [f.unit for f in rec.fresh if f.stop]}


def workload_counts(rec: UpgradeRecord) -> dict[str, int]:
    return {k: len(v) for k, v in workload_fates(rec).items()}


def summary(rec: UpgradeRecord) -> dict:
    """What a fleet report shows of one upgrade (`kupgrade report --json` adds it as `summary`):
    the downtime, the workloads by fate, the first failed stage's error and hint."""
    failed = next((s for s in rec.stages if s.status == record.FAILED), None)
    return {"downtime_s": timeline.downtime(rec), "workloads": workload_fates(rec),
            "error": f"{failed.name}: {failed.error}" if failed else "", "hint": failed.hint if failed else ""}


def upgrade(rec: UpgradeRecord) -> str:
    """The last upgrade (a `run` or `rehearse` record)."""
    ok = rec.outcome in (record.RESTORED, record.REHEARSED)
    lines = _metric("kupgrade_last_upgrade_info", "The last upgrade: its id, kernels and outcome.",
                    [(_labels(id=rec.id, command=rec.command, kernel_from=rec.kernel_from, kernel_to=rec.kernel_to,
                              outcome=rec.outcome), 1)])
    lines += _metric("kupgrade_last_upgrade_success", "1 if every workload of the last upgrade was restored.",
                     [("", 1 if ok else 0)])
    lines += _metric("kupgrade_last_upgrade_timestamp_seconds", "When the last upgrade started (Unix time).",
                     [("", rec.created)])
    if (down := timeline.downtime(rec)) is not None:
        lines += _metric("kupgrade_last_upgrade_downtime_seconds", "How long the workloads of the last upgrade "
                         "were paused, freeze to restore.", [("", down)])
    lines += _metric("kupgrade_last_upgrade_workloads", "Workloads of the last upgrade by what became of them.",
                     [(_labels(state=k), v) for k, v in workload_counts(rec).items()])
    return "\n".join(lines) + "\n"


def check(rec: UpgradeRecord) -> str:
    """The last check: can this host be upgraded live now, and what stands in the way."""
    pre = rec.stage("preflight")
    details = pre.details if pre else Preflight()
    blockers = details.blockers or []
    ok = rec.outcome == record.CHECKED and not blockers
    lines = _metric("kupgrade_upgradable", "1 if the last `kupgrade check` found no blocker.", [("", 1 if ok else 0)])
    lines += _metric("kupgrade_check_blockers", "Blockers the last check found.", [("", len(blockers))])
    lines += _metric("kupgrade_check_timestamp_seconds", "When the last check ran (Unix time).", [("", rec.created)])
    lines += _metric("kupgrade_check_info", "The last check: running and target kernel.",
                     [(_labels(kernel_from=rec.kernel_from, kernel_to=rec.kernel_to or ""), 1)])
    if (est := details.downtime_estimate_s) is not None:
        lines += _metric("kupgrade_check_downtime_estimate_seconds", "The last check's downtime estimate.",
                         [("", est)])
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    """Atomically, world-readable (the collector runs as its own user; no secrets in it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, path)
