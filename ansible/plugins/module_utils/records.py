# GNU General Public License v2.0 or later (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""kupgrade's JSON as the collection reads it: what `kupgrade check --json` and `kupgrade report
--json` say of a host, in the compact form the fleet report collects (each module's result
carries it as `kupgrade_fleet`), and the state of a detached `kupgrade run` as one poll sees it.

Pure Python and no Ansible imports: the modules ship it to the hosts, the action plugin and the
callback use it on the controller, the unit tests (tests/test_ansible_records.py) import it as a
file."""

from __future__ import annotations

# Outcomes a record ends with once the new kernel (or the way back to the old one) is done with it.
FINAL = ("restored", "restore-failed", "rolled-back")
SUCCESS = "restored"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def error_line(stderr: str) -> str:
    """kupgrade's one-line error and its hint (`kupgrade: ...` / `hint: ...`), else stderr's tail."""
    lines = [ln.strip() for ln in stderr.splitlines()]
    mine = [ln for ln in lines if ln.startswith(("kupgrade:", "hint:"))]
    if mine:
        return "; ".join(mine[-2:])
    return " ".join(ln for ln in lines if ln)[-300:]


def _stage(doc: dict, name: str) -> dict:
    return next((s for s in doc.get("stages", []) if s.get("name") == name), {})


def check_summary(doc: dict) -> dict:
    """What the fleet report keeps of `kupgrade check --json`: the kernels, the blockers, the
    downtime estimate. `current`: the host already runs the target kernel (nothing to do)."""
    details = _stage(doc, "preflight").get("details", {})
    blockers = [{"message": b.get("message", ""), "hint": b.get("hint", "")} for b in details.get("blockers", [])]
    current = bool(doc.get("kernel_to")) and doc.get("kernel_to") == doc.get("kernel_from")
    return {"step": "check", "kernel_from": doc.get("kernel_from", ""), "kernel_to": doc.get("kernel_to", ""),
            "current": current, "blocked": not current and (bool(blockers) or doc.get("outcome") != "checked"),
            "blockers": blockers, "downtime_estimate_s": details.get("downtime_estimate_s")}


def run_summary(doc: dict, switched: bool, kernel_now: str, error: str = "") -> dict:
    """What the fleet report keeps of an upgrade: `doc` is `kupgrade report --json` of the run's
    record ({} if the run left none); `error`: what the action knows went wrong (kupgrade's own
    error line from the run's journal, a timeout), which says it best."""
    summary = doc.get("summary", {})
    fates = summary.get("workloads", {})
    # kupgrade's own one-line error and hint (the unit's journal) before the record's first failed stage
    failed, hint = (error, "") if error else (summary.get("error", ""), summary.get("hint", ""))
    if not failed and doc and doc.get("outcome") != SUCCESS:
        failed = f"outcome {doc.get('outcome')}"
    outcome = doc.get("outcome") or ("unknown" if switched else "not-started")
    return {"step": "run", "record_id": doc.get("id", ""), "outcome": outcome,
            "kernel_from": doc.get("kernel_from", ""), "kernel_to": doc.get("kernel_to", ""),
            "kernel_now": kernel_now, "switched": switched, "downtime_s": summary.get("downtime_s"),
            "carried": fates.get("carried", []), "failed": fates.get("failed", []), "fresh": fates.get("fresh", []),
            "error": failed if outcome != SUCCESS else "", "hint": hint if outcome != SUCCESS else ""}


def run_message(s: dict) -> str:
    """One line for the task's `msg`."""
    if s["outcome"] == SUCCESS:
        down = f", downtime {s['downtime_s']} s" if s["downtime_s"] is not None else ""
        return (f"restored in {s['kernel_now']}: {len(s['carried'])} workload(s) carried"
                f"{', %d started fresh' % len(s['fresh']) if s['fresh'] else ''}{down}")
    where = f"now on {s['kernel_now']}" if s["kernel_now"] else "kernel unknown"
    return f"kupgrade run: {s['outcome']} ({where}): {s['error']}" + (f" (hint: {s['hint']})" if s["hint"] else "")


def poll_command(unit: str) -> str:
    """One shell line that tells a poll everything: this boot's id, the kernel, the run's unit."""
    return (f"cat {BOOT_ID}; uname -r; systemctl show -p ActiveState -p SubState -p Result -p ExecMainStatus "
            f"{unit} 2>/dev/null || true")


def parse_poll(stdout: str) -> dict:
    """poll_command's output: boot_id, kernel and the unit's properties."""
    lines = [ln.strip() for ln in stdout.strip().splitlines()]
    props = dict(ln.split("=", 1) for ln in lines[2:] if "=" in ln)
    return {"boot_id": lines[0] if lines else "", "kernel": lines[1] if len(lines) > 1 else "", **props}


def poll_state(before_boot_id: str, poll: dict) -> str:
    """"switched" (another boot: the kexec happened), "ended" (the run's unit finished in this
    boot: it stopped before the switch) or "running"."""
    if poll.get("boot_id") and poll["boot_id"] != before_boot_id:
        return "switched"
    state, sub = poll.get("ActiveState", ""), poll.get("SubState", "")
    if state in ("failed", "inactive") or (state == "active" and sub == "exited"):
        return "ended"
    return "running"


def final(doc: dict, before_id: str) -> bool:
    """The report is this run's record (not the one before it) and the record is done."""
    return bool(doc) and doc.get("id") != before_id and doc.get("outcome") in FINAL
