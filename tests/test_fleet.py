"""The Ansible collection's logic (ansible/plugins/module_utils): kupgrade's JSON read for the
fleet, the state of a detached run as a poll sees it, the fleet report's rows, JSON and table."""

import importlib.util
from pathlib import Path

UTILS = Path(__file__).resolve().parents[1] / "ansible" / "plugins" / "module_utils"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"fleet_{name}", UTILS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


records, fleet = load("records"), load("fleet")
OLD, NEW = "6.1.0-47-amd64", "6.12.117+deb12-amd64"


def check_doc(blockers=(), kernel_to=NEW, outcome="checked") -> dict:
    return {"id": "C", "command": "check", "kernel_from": OLD, "kernel_to": kernel_to, "outcome": outcome,
            "stages": [{"name": "preflight", "status": "ok", "details": {
                "blockers": [{"message": m, "hint": "h", "workload": "unit:x"} for m in blockers],
                "downtime_estimate_s": 4.5}}]}


def report_doc(outcome="restored", error="") -> dict:
    return {"id": "20260101T000000-abcdef", "command": "run", "kernel_from": OLD, "kernel_to": NEW,
            "outcome": outcome, "stages": [],
            "summary": {"downtime_s": 6.2, "error": error, "hint": "see the log" if error else "",
                        "workloads": {"carried": ["unit:db.service"], "failed": [], "fresh": ["cron.service"]}}}


def test_check_summary_blocked_ready_and_current():
    ready = records.check_summary(check_doc())
    assert ready == {"step": "check", "kernel_from": OLD, "kernel_to": NEW, "current": False, "blocked": False,
                     "blockers": [], "downtime_estimate_s": 4.5}
    blocked = records.check_summary(check_doc(["x.service is a transient unit"], outcome="aborted"))
    assert blocked["blocked"] and blocked["blockers"] == [{"message": "x.service is a transient unit", "hint": "h"}]
    current = records.check_summary(check_doc([f"target kernel {NEW} is the running kernel"], kernel_to=OLD,
                                              outcome="aborted"))
    assert current["current"] and not current["blocked"]


def test_error_line_is_kupgrades_message_and_hint():
    err = "Traceback...\nkupgrade: blocked: no workloads selected\nhint: set workloads.units\n"
    assert records.error_line(err) == "kupgrade: blocked: no workloads selected; hint: set workloads.units"
    assert records.error_line("sh: 1: kupgrade: not found\n") == "sh: 1: kupgrade: not found"


def test_run_summary_and_message():
    ok = records.run_summary(report_doc(), switched=True, kernel_now=NEW)
    assert ok["outcome"] == "restored" and ok["error"] == "" and ok["carried"] == ["unit:db.service"]
    assert records.run_message(ok) == f"restored in {NEW}: 1 workload(s) carried, 1 started fresh, downtime 6.2 s"
    bad = records.run_summary(report_doc("aborted", "freeze: the cgroup did not freeze"), False, OLD)
    assert bad["error"] == "freeze: the cgroup did not freeze"
    assert records.run_message(bad) == (f"kupgrade run: aborted (now on {OLD}): freeze: the cgroup did not freeze "
                                        "(hint: see the log)")
    own = records.run_summary(report_doc("aborted", "preflight: blocked: x"), False, OLD,
                              error="kupgrade: blocked: x; hint: fix x")
    assert (own["error"], own["hint"]) == ("kupgrade: blocked: x; hint: fix x", "")
    none = records.run_summary({}, False, OLD, error="kupgrade: no target kernel configured")
    assert none["outcome"] == "not-started" and none["error"] == "kupgrade: no target kernel configured"
    back = records.run_summary({**report_doc("rolled-back"), "summary": {}}, True, OLD)
    assert back["error"] == "outcome rolled-back" and back["downtime_s"] is None


def test_poll_tells_switched_ended_and_running():
    out = "b1\n6.1.0-47-amd64\nActiveState=active\nSubState=running\nResult=success\nExecMainStatus=0\n"
    poll = records.parse_poll(out)
    assert poll == {"boot_id": "b1", "kernel": OLD, "ActiveState": "active", "SubState": "running",
                    "Result": "success", "ExecMainStatus": "0"}
    assert records.poll_state("b1", poll) == "running"
    assert records.poll_state("b0", poll) == "switched"
    assert records.poll_state("b1", {**poll, "ActiveState": "failed", "SubState": "failed"}) == "ended"
    assert records.poll_state("b1", {**poll, "SubState": "exited"}) == "ended"       # RemainAfterExit
    assert records.poll_state("b1", records.parse_poll("")) == "running"             # said nothing: ask again
    assert records.final(report_doc(), "older") and not records.final(report_doc(), "20260101T000000-abcdef")
    assert not records.final({**report_doc(), "outcome": "kexec"}, "older")
    assert "systemctl show" in records.poll_command("kupgrade-ansible-1.service")


def rollout() -> list:
    """Five hosts: upgraded, blocked (skipped), rolled back, unhealthy, and one never reached."""
    f = fleet.Fleet()
    f.expect(["a", "b", "c", "d", "e"])
    f.step("a", records.check_summary(check_doc()))
    f.step("a", records.run_summary(report_doc(), True, NEW))
    f.step("a", {"step": "health", "ok": True, "detail": "curl: exit 0"})
    f.step("b", records.check_summary(check_doc(["x is a transient unit", "y is traced"], outcome="aborted")))
    f.step("c", records.check_summary(check_doc()))
    f.step("c", records.run_summary(report_doc("rolled-back", "restore: PID 5 is taken"), True, OLD))
    f.failed("c", "Kupgrade run", "kupgrade run: rolled-back ...")
    f.step("d", records.run_summary(report_doc(), True, NEW))
    f.step("d", {"step": "health", "ok": False, "detail": "http://d/: 503"})
    f.failed("d", "Health gate", "health gate failed")
    return f.entries()


def test_fleet_statuses_and_reasons():
    rows = {e["host"]: e for e in rollout()}
    assert [rows[h]["status"] for h in "abcde"] == ["upgraded", "blocked", "rolled-back", "unhealthy", "not reached"]
    assert rows["a"] == {"host": "a", "status": "upgraded", "kernel_before": OLD, "kernel_after": NEW,
                         "kernel_target": NEW, "downtime_s": 6.2, "carried": ["unit:db.service"],
                         "fresh": ["cron.service"], "failed_workloads": [], "record_id": "20260101T000000-abcdef",
                         "outcome": "restored", "health": "curl: exit 0", "reason": ""}
    assert rows["b"]["reason"] == "x is a transient unit; y is traced"
    assert rows["b"]["kernel_after"] == OLD and rows["b"]["outcome"] is None
    assert rows["c"]["reason"] == "restore: PID 5 is taken" and rows["c"]["kernel_after"] == OLD
    assert rows["d"]["reason"] == "http://d/: 503"
    assert rows["e"]["kernel_before"] is None and "stopped before its batch" in rows["e"]["reason"]


def test_fleet_unreachable_and_other_failures():
    f = fleet.Fleet()
    f.unreachable("u", "Failed to connect to the host via ssh")
    f.step("v", records.check_summary(check_doc()))
    f.failed("v", "Metrics directory", "permission denied")
    f.failed("v", "later", "not the first")
    f.step("w", records.check_summary(check_doc([f"target kernel {NEW} is the running kernel"], kernel_to=OLD)))
    rows = {e["host"]: e for e in f.entries()}
    assert (rows["u"]["status"], rows["u"]["reason"]) == ("unreachable", "Failed to connect to the host via ssh")
    assert (rows["v"]["status"], rows["v"]["reason"]) == ("failed", "Metrics directory: permission denied")
    assert (rows["w"]["status"], rows["w"]["reason"]) == ("current", f"already runs {OLD}")


def test_fleet_document_and_table():
    entries = rollout()
    doc = fleet.document(entries)
    assert doc["counts"] == {"upgraded": 1, "blocked": 1, "rolled-back": 1, "unhealthy": 1, "not reached": 1}
    lines = fleet.table(entries).splitlines()
    assert lines[0].split() == ["HOST", "STATUS", "KERNEL", "DOWNTIME", "WORKLOADS", "REASON"]
    assert lines[1].split()[:7] == ["a", "upgraded", OLD, "->", NEW, "6.2", "s"]
    assert "1 carried, 1 fresh" in lines[1]
    assert f"{OLD} (unchanged)" in lines[2] and lines[2].endswith("x is a transient unit; y is traced")
    assert lines[-1] == "5 host(s): 1 upgraded, 1 blocked, 1 rolled-back, 1 unhealthy, 1 not reached"
    assert len({ln.find(e["status"]) for ln, e in zip(lines[1:], entries)}) == 1     # one column


def test_a_switch_without_a_readable_record_is_unknown():
    s = records.run_summary({}, switched=True, kernel_now="", error="switched kernels, but the record was not final")
    assert (s["outcome"], s["error"]) == ("unknown", "switched kernels, but the record was not final")
    row = fleet.entry("h", {"steps": {"run": s}, "failure": "", "unreachable": ""})
    assert row["status"] == "failed" and row["kernel_after"] is None


def test_a_blocked_host_failed_on_purpose_is_still_blocked():
    f = fleet.Fleet()
    f.step("b", records.check_summary(check_doc(["x is a transient unit"], outcome="aborted")))
    f.failed("b", "Blocked, and blocked hosts fail", "kupgrade check found blockers: x is a transient unit")
    assert [(e["status"], e["reason"]) for e in f.entries()] == [("blocked", "x is a transient unit")]
