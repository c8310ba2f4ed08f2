from kupgrade.cli import main
from kupgrade.output import timeline
from kupgrade.output.record import StageResult, UpgradeRecord, Workload, save


def rec() -> UpgradeRecord:
    st = (StageResult("preflight", "ok", 100.0, 2.0),
          StageResult("freeze", "ok", 102.0, 0.0, details={"frozen_cgroups": {"/w": 0.01}}),
          StageResult("flush", "ok", 102.0, 0.0),
          StageResult("snapshot", "ok", 102.0, 2.0),
          StageResult("kexec", "ok", 104.0, 2.0),
          StageResult("exec", "ok", 106.0, 0.0),
          StageResult("restore", "ok", 118.0, 2.0, details={"workloads": {"tree-7": {"ok": True, "root_pid": 7, "same_pid": True}}}))
    return UpgradeRecord(id="T1", command="run", kernel_from="6.1", kernel_to="6.12", outcome="restored",
                         workloads=(Workload("cgroup:/w", 7, (7, 8), cgroup="/w"),), stages=st)


def test_spans_insert_the_kernel_switch():
    labels = [(s.label, s.start, s.seconds) for s in timeline.spans(rec())]
    assert ("kernel switch", 6.0, 12.0) in labels
    assert "exec" not in [l for l, _, _ in labels]


def test_downtime_from_freeze_to_restored():
    assert timeline.downtime(rec()) == 18.0          # 102 (freeze) -> 120 (restore end)


def test_bars_golden():
    rows = timeline.bars(rec(), width=20)
    assert rows[0] == ("preflight", "██                  ", 2.0, "ok")
    assert rows[-2] == ("kernel switch", "      ████████████  ", 12.0, "ok")
    assert rows[-1] == ("restore", "                  ██", 2.0, "ok")
    assert all(len(bar) == 20 for _, bar, _, _ in rows)


def test_report_text_and_svg(tmp_path, capsys):
    save(rec(), tmp_path)
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'[paths]\nstate = "{tmp_path}"\n')
    assert main(["report", "--config", str(cfg), "--svg", str(tmp_path / "r.svg")]) == 0
    out = capsys.readouterr().out
    assert "paused for about 18.0 s" in out and "restored, same PID" in out and "kernel switch" in out
    assert (tmp_path / "r.svg").read_text().startswith("<svg")
