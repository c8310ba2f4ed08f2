import math

import pytest

from kupgrade.output import estimate, record
from kupgrade.output.record import StageResult, UpgradeRecord
from kupgrade.switch import restorecmd

MB = 1_000_000
MIB = 1 << 20
# a machine measured of itself: every per-byte rate 50 MB/s, the kernel switch 10 s (+ the snapshot at 100 MB/s)
MACHINE = estimate.Rates(50 * MB, 50 * MB, 10.0, 50 * MB, "this machine (test)", 100 * MB, 1.0, 1.0, 1.0,
                         "this machine's memory copy (test)")


def restored_record(size: int = 80 * MB, dump_s: float = 2.0, load_s: float = 1.0, switch_s: float = 18.0,
                    restore_s: float = 8.0, rid: str = "R1", created: float = 0.0, transport: str = "initrd",
                    outcome: str = record.RESTORED) -> UpgradeRecord:
    packed = transport == "initrd"
    stages = (StageResult("snapshot", "ok", 100.0, dump_s, details={"snapshot_bytes": size, "transport": transport}),
              StageResult("kexec", "ok", 102.0, load_s, details={"initrd_bytes": size + 10 * MB if packed else 10 * MB,
                                                                 "loaded_before_freeze": not packed}),
              StageResult("exec", "ok", 103.0, 0.0),
              StageResult("restore", "ok", 103.0 + switch_s, restore_s))
    return UpgradeRecord(id=rid, command="run", kernel_from="a", kernel_to="b", outcome=outcome, stages=stages,
                         created=created)


def truth(size: float) -> dict[str, float]:
    """A machine whose stages are a fixed part + bytes at a rate."""
    return {"dump_s": 0.5 + size / (50 * MB), "load_s": 0.2 + (size + 10 * MB) / (200 * MB),
            "switch_s": 10.0 + size / (300 * MB), "restore_s": 3.0 + size / (40 * MB)}


def series(sizes_mib, transport: str = "initrd", noise=lambda i: 0.0) -> list[UpgradeRecord]:
    return [restored_record(m * MIB, rid=f"R{m}", created=float(i), transport=transport,
                            **{k: v + noise(i) for k, v in truth(m * MIB).items()})
            for i, m in enumerate(sizes_mib)]


def test_a_fixed_part_and_a_rate_fitted_across_sizes_predict_another_size():
    r = estimate.rates_from(series([16, 64, 256, 1024]), MACHINE)
    assert r.restore_fixed_s == pytest.approx(3.0) and r.restore_bps == pytest.approx(40 * MB)
    size = 512 * MIB
    total, basis = estimate.downtime(size, 10 * MB, r)
    want = sum(truth(size).values())
    assert total == pytest.approx(want, rel=0.02)
    assert "measured by upgrade R1024, upgrade R256" in basis and "a line through 4 samples" in basis
    assert "this machine" not in basis      # nothing left to what the machine measured of itself


def test_one_size_keeps_this_machines_rate_and_measures_the_fixed_part():
    rec = restored_record(80 * MB, dump_s=2.0, load_s=1.0, switch_s=18.0, restore_s=8.0)
    r = estimate.rates_from([rec], MACHINE)
    assert r.restore_bps == 50 * MB and r.restore_fixed_s == pytest.approx(8.0 - 80 / 50)
    assert r.boot_s == pytest.approx(18.0 - 80 / 100) and r.deliver_bps == 100 * MB
    assert r.load_fixed_s == 0.0 and r.load_bps == pytest.approx(90 * MB)   # faster than the machine: its own rate
    total, basis = estimate.downtime(80 * MB, 10 * MB, r)
    assert total == pytest.approx(2.0 + 1.0 + 18.0 + 8.0, abs=0.1)       # the size it measured: what it measured
    assert "measured by upgrade R1" in basis and "this machine's memory copy (test)" in basis


def test_a_size_twice_is_one_size():
    recs = [restored_record(80 * MB, restore_s=s, rid=f"R{i}", created=i) for i, s in enumerate((6.0, 8.0))]
    r = estimate.rates_from(recs, MACHINE)
    assert r.restore_bps == 50 * MB and r.restore_fixed_s == pytest.approx(7.0 - 80 / 50)


def test_noise_that_makes_a_line_fall_leaves_the_rate_to_the_machine():
    fit = estimate.fit([(100 * MB, 9.0), (300 * MB, 8.0)], 50 * MB)
    assert fit.bps == 50 * MB and fit.fixed_s == pytest.approx((9.0 - 2 + 8.0 - 6) / 2) and fit.mine
    fit = estimate.fit([(100 * MB, 1.0), (300 * MB, 9.0)], 50 * MB)      # a negative fixed part: through zero
    assert fit.fixed_s == 0.0 and fit.bps == pytest.approx((1e16 + 9e16) / (1e8 + 27e8) * 1.0)
    fit = estimate.fit([(100 * MB, 5.0), (150 * MB, 13.0)], 50 * MB)     # 160 ms per MB: 8x what the machine says
    assert fit.bps == pytest.approx(50 * MB / estimate.WITHIN) and "bounded" in fit.how and fit.mine
    assert fit.fixed_s == pytest.approx(9.0 - 125 * estimate.WITHIN / 50)
    assert estimate.fit([], 50 * MB) is None and estimate.fit([(0, 1.0)], 50 * MB) is None


def test_noisy_samples_across_sizes_stay_close():
    recs = series([16, 64, 256, 1024], noise=lambda i: (-0.3, 0.3)[i % 2])
    total, _ = estimate.downtime(512 * MIB, 10 * MB, estimate.rates_from(recs, MACHINE))
    assert total == pytest.approx(sum(truth(512 * MIB).values()), rel=0.05)


def test_the_region_transport_switch_does_not_depend_on_the_size():
    recs = series([16, 256], transport="pmem")
    r = estimate.rates_from(recs, MACHINE, "pmem")
    assert r.boot_s == pytest.approx(truth(256 * MIB)["switch_s"]) and math.isinf(r.deliver_bps)   # the newest
    total, basis = estimate.downtime(1024 * MIB, 10 * MB, r, "pmem")
    t = truth(1024 * MIB)
    assert total == pytest.approx(t["dump_s"] + r.boot_s + t["restore_s"], rel=0.02)   # loaded before the freeze
    assert basis.startswith("dump ") and "kexec load 0.0 s" in basis and "the newest upgrade's" in basis
    packed = estimate.rates_from(series([16, 256]), MACHINE, "initrd")
    assert packed.deliver_bps == pytest.approx(300 * MB)


def test_records_of_one_transport(tmp_path):
    for rec in series([16, 64], transport="pmem") + [restored_record(rid="R1", created=9.0)]:
        record.save(rec, tmp_path)
    same = lambda r: estimate.transport_of(r) == "pmem"          # noqa: E731
    assert [r.id for r in record.recent(tmp_path, (record.RESTORED,), same)] == ["R64", "R16"]
    assert estimate.transport_of(restored_record()) == "initrd"


def test_recent_records_newest_first(tmp_path):
    for i in range(4):
        record.save(restored_record(rid=f"2026010{i}T000000-00000{i}"), tmp_path)
    record.save(UpgradeRecord(id="20260109T000000-000009", command="run", kernel_from="a", outcome=record.ABORTED),
                tmp_path)
    assert [r.id[7] for r in record.recent(tmp_path, (record.RESTORED,), n=3)] == ["3", "2", "1"]
    assert len(record.recent(tmp_path, (record.RESTORED, record.ABORTED))) == 5
    assert record.latest(tmp_path, record.RESTORED).id.endswith("3")


def test_defaults_without_a_usable_record():
    assert estimate.rates_from([]) is estimate.DEFAULTS
    assert estimate.rates_from([restored_record(outcome=record.ABORTED)]) is estimate.DEFAULTS
    total, basis = estimate.downtime(0, 0, estimate.DEFAULTS)
    assert total == estimate.DEFAULTS.boot_s and "stated defaults" in basis


def test_latest_restored_record(tmp_path):
    record.save(restored_record(), tmp_path)
    newer = UpgradeRecord(id="R2", command="run", kernel_from="a", outcome=record.ABORTED)
    record.save(newer, tmp_path)
    assert record.latest(tmp_path, record.RESTORED).id == "R1"
    assert record.latest(tmp_path, record.CHECKED) is None


def rehearsal_record(created: float, size: int = 80 * MB) -> UpgradeRecord:
    stages = (StageResult("snapshot", "ok", 200.0, 1.0, details={"snapshot_bytes": size}),
              StageResult("kexec", "ok", 201.0, 0.5, details={"initrd_bytes": size + 10 * MB}),
              StageResult("handover", "ok", 201.5, 0.5),
              StageResult("restore", "ok", 202.0, 4.0))
    return UpgradeRecord(id="H1", command="rehearse", kernel_from="a", kernel_to="b", outcome=record.REHEARSED,
                         stages=stages, created=created)


def test_a_rehearsal_measures_the_stages_but_not_the_kernel_switch():
    r = estimate.rates_from([rehearsal_record(created=5.0)])
    assert r.restore_bps == estimate.DEFAULTS.restore_bps and r.restore_fixed_s == pytest.approx(4.0 - 0.4)
    assert r.boot_s == estimate.DEFAULTS.boot_s
    assert "rehearsal H1" in r.source and "stated default" in r.source


def test_a_rehearsal_and_an_upgrade_together():
    up = restored_record(80 * MB, restore_s=8.0)                  # created 0.0
    r = estimate.rates_from([up, rehearsal_record(created=5.0, size=240 * MB)], MACHINE)
    assert r.boot_s == pytest.approx(18.0 - 80 / 100)              # the switch: the upgrade's only
    # the larger one restored faster (noise): the machine's rate, the fixed part what both left over
    assert r.restore_bps == 50 * MB and r.restore_fixed_s == pytest.approx(((8.0 - 1.6) + (4.0 - 4.8)) / 2)
    assert r.dump_fixed_s == 0.0 and r.dump_bps == pytest.approx(320 * MB / 3.0)    # both faster than the machine
    assert "measured by upgrade R1, rehearsal H1" in r.source


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
    restorecmd.mark_restore_point(marked, uptime)
    uptime.write_text("99.0 1.0\n")
    restorecmd.mark_restore_point(marked, uptime)        # the first call of the boot counts
    assert estimate.restore_point("", marked, early)[0] == 9.75


def test_with_units_the_restore_point_is_where_systemd_starts_them(tmp_path):
    """Carried units are restored by their own start, in systemd's order: multi-user.target."""
    marked, early = tmp_path / "point", tmp_path / "early"
    seconds, how = estimate.restore_point("31500000", marked, early, target=estimate.MULTI_USER)
    assert seconds == 31.5 and "multi-user.target" in how
    # not reached in this boot (0), or long after its start (a target reached by hand): not used
    assert estimate.restore_point("0", marked, early, target=estimate.MULTI_USER) == (None, "")
    assert estimate.restore_point(str(int(estimate.LATEST_RESTORE_POINT_S + 1) * 10**6), marked, early,
                                  target=estimate.MULTI_USER) == (None, "")


def test_first_estimate_from_what_this_machine_measures():
    copy, sha = estimate.calibrate(2 << 20, rounds=2)
    assert copy > 0 and sha > 0
    r = estimate.first_rates(100 * MB, 50 * MB, (10.0, "this boot's kupgrade-restore ran"))
    assert r.boot_s == 10.0 + estimate.HANDOFF_S + estimate.EARLY_SNAPSHOT_S["initrd"]
    assert "memory copy 100 MB/s" in r.source
    hashes, copies = estimate.PASSES["initrd"]["dump"]
    assert 1 / r.dump_bps == pytest.approx(hashes / (50 * MB) + copies / (100 * MB))
    assert (r.dump_fixed_s, r.load_fixed_s, r.restore_fixed_s) == tuple(estimate.FIXED_S["initrd"][k] for k in
                                                                        ("dump", "load", "restore"))
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
    r = estimate.rates_from([reh], first)
    assert r.dump_fixed_s == 0.0 and r.dump_bps == 40 * MB       # faster than this machine's speed says
    assert r.restore_fixed_s == pytest.approx(8.0 - 80 * MB / first.restore_bps)
    assert r.boot_s == first.boot_s and r.deliver_bps == first.deliver_bps
    assert "rehearsal H1" in r.source and "memory copy" in r.source and "kupgrade-restore ran" in r.source


def test_the_first_estimate_across_sizes_has_fixed_parts():
    r = estimate.first_rates(400 * MB, 1200 * MB, (8.0, "this boot's kupgrade-restore ran"))     # the bench's
    small, _ = estimate.downtime(16 * MIB, 6 * MB, r)
    large, _ = estimate.downtime(1024 * MIB, 6 * MB, r)
    assert small > r.boot_s + sum(estimate.FIXED_S["initrd"].values()) and large / small < 6


def test_the_memory_region_copies_less_than_the_initrd():
    """With the region the images are written once and read in place: fewer passes per byte, and
    less for the initramfs to do than finding and moving an archive."""
    point = (10.0, "this boot's kupgrade-restore ran")
    packed = estimate.first_rates(300 * MB, 900 * MB, point)
    region = estimate.first_rates(300 * MB, 900 * MB, point, "pmem")
    assert region.dump_bps > packed.dump_bps and region.boot_s < packed.boot_s
    assert "+ 0.5 s for the initramfs to find the snapshot" in region.source
    assert estimate.first_rates(300 * MB, 900 * MB, point, "something new") == packed


def test_one_small_region_upgrade_estimates_a_gib_within_a_quarter():
    """The benchmark of 2026-12-06 (QEMU TCG): a 64 MiB switch through the region measured dump
    1.425 s, the kernel switch 11.3 s, restore 1.81 s; the 1 GiB one then took 21.74 s (dump 6.61,
    restore 4.16) where the estimate said 28.6 (+31.5 %), the cost per byte taken from passes
    fitted to the initrd. The preflight before it measured copy 387 MB/s, CRC-32 868 MB/s."""
    first = estimate.first_rates(387 * MB, 868 * MB, (10.79, "this boot's kupgrade-restore ran"), "pmem")
    small = restored_record(78_316_935, dump_s=1.425, load_s=0.011, switch_s=11.3, restore_s=1.81, transport="pmem")
    r = estimate.rates_from([small], first, "pmem")
    total, _ = estimate.downtime(1_085_168_049, 6_732_349, r, "pmem")
    assert total == pytest.approx(21.74, rel=0.25)


def test_a_restore_point_marked_long_after_the_boot_is_not_the_boots(tmp_path):
    marked, early = tmp_path / "point", tmp_path / "early"
    marked.write_text("19186.32\n")           # kupgrade-restore first run by hand, hours into the boot
    assert estimate.restore_point("", marked, early) == (None, "")


def test_without_a_region_check_says_what_one_would_make_of_the_pause():
    from kupgrade.stages.preflight import region_note
    note = region_note(80 * MIB, 15.9, 12.3)
    assert "12.3 s instead of 15.9 s" in note and "--reserve 512M`, then one reboot" in note
    assert "--reserve 1G`" in region_note(500 * MIB, 30.0, 20.0)      # 750 MiB + 1/8 + 48 MiB -> 1 GiB
    assert "--reserve 1280M`" in region_note(600 * MIB, 30.0, 20.0)
    assert region_note(80 * MIB, 15.9, None) is None and region_note(80 * MIB, 15.9, 16.0) is None
