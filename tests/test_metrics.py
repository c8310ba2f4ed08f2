"""`--prometheus FILE`: the last upgrade and the last check for node_exporter's textfile collector."""

from kupgrade.output import metrics, record
from kupgrade.output.record import Fresh, StageResult, UpgradeRecord, Workload

W = (Workload("pid:5", 5, (5,)), Workload("unit:a.service", 7, (7,), unit="a.service"))


def test_upgrade_metrics(tmp_path):
    stages = (StageResult("freeze", "ok", 100.0, 0.5, details={"frozen_cgroups": ["/w"]}),
              StageResult("snapshot", "ok", 100.5, 2.0),
              StageResult("restore", "ok", 120.0, 5.0, details={"workloads": {"tree-5": {"ok": True},
                                                                              "tree-7": {"ok": False}}}))
    rec = UpgradeRecord("R1", "run", "6.1", kernel_to="6.12", outcome=record.RESTORE_FAILED, stages=stages,
                        workloads=W, fresh=(Fresh("m.service", "own mount namespace", stop=True),), created=100.0)
    text = metrics.upgrade(rec)
    assert 'kupgrade_last_upgrade_info{id="R1",command="run",kernel_from="6.1",kernel_to="6.12",' \
           'outcome="restore-failed"} 1' in text
    assert "kupgrade_last_upgrade_success 0" in text and "kupgrade_last_upgrade_downtime_seconds 25" in text
    assert 'kupgrade_last_upgrade_workloads{state="carried"} 1' in text
    assert 'kupgrade_last_upgrade_workloads{state="failed"} 1' in text
    assert 'kupgrade_last_upgrade_workloads{state="fresh"} 1' in text
    out = tmp_path / "kupgrade.prom"
    metrics.write(out, text)
    assert out.read_text() == text and out.stat().st_mode & 0o777 == 0o644 and len(list(tmp_path.iterdir())) == 1


def test_check_metrics_say_whether_upgradable():
    blocked = StageResult("preflight", "failed", 1.0, 1.0, details={"blockers": [{"message": "x"}],
                                                                    "downtime_estimate_s": 12.5})
    rec = UpgradeRecord("C1", "check", "6.1", kernel_to="6.12", outcome=record.ABORTED, stages=(blocked,))
    text = metrics.check(rec)
    assert "kupgrade_upgradable 0" in text and "kupgrade_check_blockers 1" in text
    assert "kupgrade_check_downtime_estimate_seconds 12.5" in text
    ok = UpgradeRecord("C2", "check", "6.1", kernel_to="6.12", outcome=record.CHECKED,
                       stages=(StageResult("preflight", "ok", 1.0, 1.0, details={"blockers": []}),))
    assert "kupgrade_upgradable 1" in metrics.check(ok)
    assert metrics._labels(k='a"b\\c\nd') == '{k="a\\"b\\\\c\\nd"}'


def test_summary_names_the_workloads_by_fate_and_the_first_error():
    stages = (StageResult("freeze", "ok", 100.0, 0.5, details={"frozen_cgroups": ["/w"]}),
              StageResult("snapshot", "ok", 100.5, 2.0),
              StageResult("restore", "failed", 120.0, 5.0, error="criu restore of tree-7 failed", hint="see the log",
                          details={"workloads": {"tree-5": {"ok": True}, "tree-7": {"ok": False}}}))
    rec = UpgradeRecord("R1", "run", "6.1", kernel_to="6.12", outcome=record.RESTORE_FAILED, stages=stages,
                        workloads=W, fresh=(Fresh("m.service", "own mount namespace", stop=True),
                                            Fresh("journald.service", "left to the boot")))
    assert metrics.summary(rec) == {"downtime_s": 25.0, "error": "restore: criu restore of tree-7 failed",
                                    "hint": "see the log", "workloads": {"carried": ["pid:5"],
                                                                         "failed": ["unit:a.service"],
                                                                         "fresh": ["m.service"]}}
    before_restore = UpgradeRecord("R2", "run", "6.1", outcome=record.ABORTED, workloads=W,
                                   stages=(StageResult("preflight", "ok", 1.0, 1.0),))
    assert metrics.summary(before_restore) == {"downtime_s": None, "error": "", "hint": "",
                                               "workloads": {"carried": [], "failed": [], "fresh": []}}
