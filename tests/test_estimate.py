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


def test_the_region_transport_loads_only_the_initrd():
    r = estimate.rates_from(restored_record())
    total, basis = estimate.downtime(40 * MB, 6 * MB, r, "pmem")
    assert total == 23.1 and "dump 1.0 s" in basis     # 1.0 dump + 0.06 load + 18.0 switch + 4.0 restore
    assert estimate.transport_of(restored_record()) == "initrd"


def test_latest_of_one_transport(tmp_path):
    record.save(restored_record(), tmp_path)
    assert record.latest(tmp_path, record.RESTORED, lambda r: estimate.transport_of(r) == "pmem") is None
    assert record.latest(tmp_path, record.RESTORED, lambda r: estimate.transport_of(r) == "initrd").id == "R1"


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


def rehearsal_record(created: float) -> UpgradeRecord:
    stages = (StageResult("snapshot", "ok", 200.0, 1.0, details={"snapshot_bytes": 80 * MB, "dump_s": 0.4, "pack_s": 0.6}),
              StageResult("kexec", "ok", 201.0, 0.5, details={"initrd_bytes": 90 * MB, "load_s": 0.45}),
              StageResult("handover", "ok", 201.5, 0.5),
              StageResult("restore", "ok", 202.0, 4.0))
    return UpgradeRecord(id="H1", command="rehearse", kernel_from="a", kernel_to="b", outcome=record.REHEARSED,
                         stages=stages, created=created)


def test_a_rehearsal_measures_bandwidths_but_not_the_kernel_switch():
    r = estimate.rates_from(None, rehearsal_record(created=5.0))
    assert r.dump_bps == 80 * MB and r.load_bps == 200 * MB and r.restore_bps == 20 * MB
    assert r.boot_s == estimate.DEFAULTS.boot_s
    assert "rehearsal H1" in r.source and "stated default" in r.source


def test_newer_rehearsal_bandwidths_with_the_upgrade_kernel_switch():
    up = restored_record()                       # created 0.0
    r = estimate.rates_from(up, rehearsal_record(created=5.0))
    assert r.dump_bps == 80 * MB and r.boot_s == 18.0
    assert "rehearsal H1" in r.source and "upgrade R1" in r.source
    older = estimate.rates_from(up, rehearsal_record(created=-1.0))
    assert older.dump_bps == 40 * MB
