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
    assert total == 23.0 and "dump 1.0 s" in basis     # 1.0 dump + 18.0 switch + 4.0 restore (loaded before)
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


def test_the_restore_point_of_this_boot(tmp_path):
    marked, early = tmp_path / "point", tmp_path / "early"
    assert estimate.restore_point("7250000", marked, early) == (7.25, "this boot reached sysinit.target (where the "
                                                                      "restore unit runs)")
    assert estimate.restore_point("", marked, early) == (None, "")
    early.write_text("release 6.1\ncpus 2\npids 1 2 3\nuptime 3.50\n")
    seconds, how = estimate.restore_point("0", marked, early)
    assert seconds == 3.5 + estimate.EARLY_USERSPACE_S and "initramfs started" in how
    uptime = tmp_path / "uptime"
    uptime.write_text("9.75 17.00\n")
    estimate.mark_restore_point(marked, uptime)
    uptime.write_text("99.0 1.0\n")
    estimate.mark_restore_point(marked, uptime)        # the first call of the boot counts
    assert estimate.restore_point("", marked, early)[0] == 9.75


def test_first_estimate_from_what_this_machine_measures():
    copy, sha = estimate.calibrate(2 << 20)
    assert copy > 0 and sha > 0
    r = estimate.first_rates(100 * MB, 50 * MB, (10.0, "this boot's kupgrade-restore ran"))
    assert r.boot_s == 10.0 + estimate.HANDOFF_S and "memory copy 100 MB/s" in r.source
    assert round(1 / r.dump_bps, 4) == round(1 / (50 * MB) + 5 / (100 * MB), 4)
    total, basis = estimate.downtime(80 * MB, 6 * MB, r)
    packed = total
    total, _ = estimate.downtime(80 * MB, 6 * MB, r, "pmem")
    assert packed - total > 80 * MB / r.deliver_bps - 0.1      # the region: nothing to unpack and move
    assert "kupgrade-restore ran" in basis
    assert estimate.first_rates(100 * MB, 50 * MB, (None, "")).boot_s == estimate.DEFAULTS.boot_s


def test_a_rehearsal_alone_leaves_the_switch_to_the_first_estimate():
    first = estimate.first_rates(100 * MB, 50 * MB, (10.0, "this boot's kupgrade-restore ran"))
    reh = UpgradeRecord(id="H1", command="rehearse", kernel_from="a", outcome=record.REHEARSED,
                        stages=restored_record().stages)
    r = estimate.rates_from(None, reh, first)
    assert r.dump_bps == 40 * MB and r.boot_s == first.boot_s and r.deliver_bps == first.deliver_bps
    assert "rehearsal H1" in r.source and "memory copy" in r.source


def test_recent_records_newest_first(tmp_path):
    for i in range(4):
        record.save(restored_record().__class__(**{**restored_record().__dict__, "id": f"2026010{i}T000000-00000{i}"}),
                    tmp_path)
    record.save(UpgradeRecord(id="20260109T000000-000009", command="run", kernel_from="a", outcome=record.ABORTED),
                tmp_path)
    assert [r.id[7] for r in record.recent(tmp_path, (record.RESTORED,), n=3)] == ["3", "2", "1"]
    assert len(record.recent(tmp_path, (record.RESTORED, record.ABORTED))) == 5
    assert record.latest(tmp_path, record.RESTORED).id.endswith("3")
