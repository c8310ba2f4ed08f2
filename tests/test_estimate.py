from kupgrade import estimate, record
from kupgrade.record import StageResult, UpgradeRecord

MB = 1_000_000


def restored_record(**over) -> UpgradeRecord:
    stages = (StageResult("snapshot", "ok", 100.0, 2.0, details={"snapshot_bytes": 80 * MB, "dump_s": 0.5, "pack_s": 1.5}),
              StageResult("kexec", "ok", 102.0, 1.0, details={"initrd_bytes": 90 * MB, "load_s": 0.9}),
              StageResult("exec", "ok", 103.0, 0.0),
              StageResult("restore", "ok", 121.0, 8.0))
    return UpgradeRecord(id="R1", command="run", kernel_from="a", kernel_to="b", outcome=over.get("outcome", record.RESTORED),
                         stages=stages)


def test_rates_from_a_restored_record():
    r = estimate.rates_from(restored_record())
    assert r.dump_bps == 40 * MB and r.load_bps == 100 * MB and r.boot_s == 18.0 and r.restore_bps == 10 * MB
    assert "R1" in r.source
    total, basis = estimate.downtime(40 * MB, 6 * MB, r)
    assert total == 23.5            # 1.0 dump + 0.46 load + 18.0 switch + 4.0 restore
    assert "kernel switch 18.0 s" in basis and "measured by upgrade R1" in basis


def test_defaults_without_a_usable_record():
    assert estimate.rates_from(None) is estimate.DEFAULTS
    assert estimate.rates_from(restored_record(outcome=record.ABORTED)) is estimate.DEFAULTS
    total, basis = estimate.downtime(0, 0, estimate.DEFAULTS)
    assert total == estimate.DEFAULTS.boot_s and "stated defaults" in basis


def test_latest_restored_record(tmp_path):
    record.save(restored_record(), tmp_path)
    newer = UpgradeRecord(id="R2", command="run", kernel_from="a", outcome=record.ABORTED)
    record.save(newer, tmp_path)
    assert record.latest(tmp_path, record.RESTORED).id == "R1"
    assert record.latest(tmp_path, record.CHECKED) is None
