import json

from kupgrade.output import record
from kupgrade.output.record import Blocker, StageResult, UpgradeRecord, Workload
from kupgrade.system.run import CommandLog


def sample() -> UpgradeRecord:
    return UpgradeRecord(
        id="20261123T000000-abcdef", command="run", kernel_from="6.1.0-47-amd64",
        kernel_to="6.12.117+deb12-amd64", outcome=record.RESTORED, created=1.5,
        workloads=(Workload("pid:300", 300, (300, 301), name="python3", stopped_before=(301,)),),
        stages=(StageResult("preflight", record.OK, 10.0, 1.25, "ok", {"blockers": []}),
                StageResult("restore", record.FAILED, 20.0, 2.5, "", {"x": [1]}, "boom", "retry")),
        commands=(CommandLog(("criu", "check"), 0, 0.25, ""),))


def test_round_trip():
    r = sample()
    assert UpgradeRecord.from_json(json.loads(r.dumps())) == r


def test_save_load_last(tmp_path):
    r = sample()
    path = record.save(r, tmp_path)
    assert path.stat().st_mode & 0o077 == 0
    assert record.load(tmp_path) == r
    assert record.load(tmp_path, r.id) == r
    assert record.load(tmp_path, "nope") is None
    assert record.load(tmp_path / "empty") is None


def test_stage_lookup_takes_the_latest():
    r = sample().with_stage(StageResult("preflight", record.FAILED, 30.0, 0.1))
    assert r.stage("preflight").status == record.FAILED
    assert r.stage("absent") is None


def test_blocker_round_trip():
    b = Blocker("PID 5 is traced", "detach")
    assert Blocker.from_json(b.to_json()) == b


def test_a_workload_recorded_before_stopped_before_existed_loads():
    old = {"selector": "pid:300", "root_pid": 300, "pids": [300, 301], "cgroup": "", "name": "w", "unit": ""}
    assert Workload.from_json(old).stopped_before == ()
    assert Workload.from_json(Workload.from_json(old).to_json()) == Workload("pid:300", 300, (300, 301), name="w")


def test_a_workloads_other_cgroups_cross_the_record():
    w = Workload("unit:ssh.service", 10, (10, 20), cgroup="/system.slice/ssh.service",
                 other_cgroups=("/user.slice/user-0.slice/session-3.scope",))
    assert Workload.from_json(w.to_json()) == w and not w.frozen
    assert "other_cgroups" not in Workload("pid:5", 5, (5,)).to_json()
