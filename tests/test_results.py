"""The stages' typed results: read by attribute, written as the same JSON the record always had."""

import json

import pytest

from kupgrade.output import results
from kupgrade.output.record import StageResult, UpgradeRecord


def test_a_result_writes_only_the_keys_it_has():
    d = results.Kexec(method="file", initrd_bytes=5 << 20, loaded_before_freeze=False)
    assert d.to_json() == {"method": "file", "initrd_bytes": 5 << 20, "loaded_before_freeze": False}


def test_keys_a_class_does_not_name_are_kept_and_written_back():
    raw = {"snapshot_id": "U1", "workloads": {"pid:1": {"ok": True}}, "from_a_newer_kupgrade": [1, 2]}
    d = results.of("restore", raw)
    assert isinstance(d, results.Restore) and d.snapshot_id == "U1" and d.workloads == {"pid:1": {"ok": True}}
    assert d.extra == {"from_a_newer_kupgrade": [1, 2]} and d.to_json() == raw


def test_plus_sets_a_named_key_or_an_extra_one():
    d = results.RestoreUnit(unit="nginx.service").plus(no_rollback="no way back", note="x")
    assert d.no_rollback == "no way back" and d.to_json() == {"unit": "nginx.service", "no_rollback": "no way back",
                                                              "note": "x"}


def test_a_stage_given_json_holds_its_own_type():
    s = StageResult("preflight", "failed", 0, 0, details={"blockers": [{"message": "m", "hint": "h"}]})
    assert isinstance(s.details, results.Preflight) and s.details.blockers == [{"message": "m", "hint": "h"}]
    assert isinstance(StageResult("preflight", "skipped", 0, 0).details, results.Preflight)
    assert type(StageResult("something-new", "ok", 0, 0, details={"a": 1}).details) is results.Details


@pytest.mark.parametrize("stage", sorted(results.BY_STAGE))
def test_every_stage_round_trips_through_the_record(stage):
    cls = results.BY_STAGE[stage]
    names = [f for f in cls.__dataclass_fields__ if f != "extra"]
    raw = {n: f"value of {n}" for n in names} | {"unknown_key": True}
    rec = UpgradeRecord("U1", "run", "6.1", stages=(StageResult(stage, "ok", 1.0, 2.0, "s", raw),))
    again = UpgradeRecord.from_json(json.loads(json.dumps(rec.to_json())))
    assert again.stages[0].details.to_json() == raw and again.to_json() == rec.to_json()
    assert all(getattr(again.stages[0].details, n) == f"value of {n}" for n in names)
