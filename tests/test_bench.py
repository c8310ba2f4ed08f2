"""vm-tests/bench's pure parts: the fit, the JSON it writes, the SVG (no VM needed)."""
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vm-tests"))

from vmtest.benchplot import nice_step, svg  # noqa: E402
from vmtest.benchreport import (REFERENCE_MIB, assemble, cpu_model_name, fit_line, parse_sizes,  # noqa: E402
                                size_entry, stage_seconds, until_first_beat)
from vmtest.qemu import Line, Machine, qemu_argv  # noqa: E402
from vmtest.timeline import intervals, marks  # noqa: E402
from vmtest.workload import Workload  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"
BREAKDOWN = {"last_heartbeat->kexec_exec": 4.0, "kexec_exec->init_started": 6.0, "init_started->restore_begin": 0.5,
             "restore_begin->first_heartbeat": 2.0, "first_heartbeat->restore_end": 0.3}
RECORD = {"id": "r1", "outcome": "restored", "stages": [
    {"name": "freeze", "duration_s": 0.5, "details": {}},
    {"name": "snapshot", "duration_s": 2.0, "details": {"snapshot_bytes": 70_000_000}},
    {"name": "kexec", "duration_s": 1.0, "details": {"method": "classic", "initrd_bytes": 80_000_000}},
    {"name": "restore-unit", "duration_s": 1.25, "details": {}},
    {"name": "restore-unit", "duration_s": 0.75, "details": {}}]}


def entry(mib, downtime):
    return size_entry(mib, downtime, BREAKDOWN, RECORD)


def test_parse_sizes_always_has_the_reference():
    assert parse_sizes("16,64,256,1024") == [16, 64, 256, 1024]
    assert parse_sizes("1024, 16") == [16, REFERENCE_MIB, 1024]
    assert parse_sizes("64,64") == [64]
    for bad in ("16,x", "0", "-16"):
        with pytest.raises(ValueError):
            parse_sizes(bad)


def test_cpu_model_name():
    text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\nprocessor\t: 1\n"
    assert cpu_model_name(text) == "Intel(R) Xeon(R) CPU @ 2.20GHz"
    assert cpu_model_name("processor : 0\n") == "unknown"


def test_fit_line_least_squares():
    slope, intercept = fit_line([(16, 11.0), (64, 12.0), (256, 16.0), (1024, 32.0)])
    assert slope == pytest.approx(0.020833, abs=1e-5)     # exact line 10.667 + x/48
    assert intercept == pytest.approx(10.6667, abs=1e-3)
    slope, intercept = fit_line([(0, 1.0), (1, 2.0), (2, 2.0)])     # not on a line: the least-squares one
    assert (slope, intercept) == pytest.approx((0.5, 7 / 6))
    assert fit_line([(64, 12.0)]) is None and fit_line([(64, 12.0), (64, 13.0)]) is None


def test_phases_are_the_downtime_segments():
    assert until_first_beat(BREAKDOWN) == list(BREAKDOWN.items())[:4]
    assert sum(s for _, s in until_first_beat(BREAKDOWN)) == 12.5
    early = {"kexec_exec->last_heartbeat": 0.1, **BREAKDOWN}     # a mark before the last beat is no phase
    assert until_first_beat(early) == list(BREAKDOWN.items())[:4]


def test_size_entry_from_the_record():
    e = entry(64, 12.5)
    assert stage_seconds(RECORD) == {"freeze": 0.5, "snapshot": 2.0, "kexec": 1.0, "restore-unit": 2.0}
    assert e["stages"] == stage_seconds(RECORD) and e["downtime_s"] == 12.5
    assert (e["snapshot_bytes"], e["initrd_bytes"], e["kexec_method"]) == (70_000_000, 80_000_000, "classic")
    assert (e["record_id"], e["outcome"]) == ("r1", "restored")
    assert list(e["phases"]) == list(BREAKDOWN)[:4]


def test_assemble_ratios_slope_and_what_is_not_measured():
    meta = {"accel": "tcg", "kernel_from": "6.1", "kernel_to": "6.12", "guest_memory_mib": 6144}
    floor = {"seconds": 8.0, "basis": "plain kexec"}
    reboot = {"seconds": 25.0, "basis": "first-boot"}
    sizes = [entry(1024, 32.0), entry(16, 11.0), entry(64, 12.0), entry(256, 16.0)]
    b = assemble(meta, floor, reboot, sizes, floor_back=[{"seconds": 9.0}])
    assert b["accel"] == "tcg" and b["floor_s"] == 8.0 and b["reboot_s"] == 25.0 and b["reboot_basis"] == "first-boot"
    assert b["downtime_s"] == 12.0 and b["ratio_to_floor"] == 1.5 and b["ratio_to_reboot"] == 0.48
    assert [s["mib"] for s in b["sizes"]] == [16, 64, 256, 1024]
    assert b["sizes"][3]["ratio_to_floor"] == 4.0 and b["sizes"][3]["ratio_to_reboot"] == 1.28
    assert b["slope_ms_per_mb"] == 20.83 and b["intercept_s"] == 10.667
    assert set(b["pre_dump"]) == {"0", "1", "3"}
    assert all(v["freeze_s"] is None and "not reached" in v["not_measured"] for v in b["pre_dump"].values())
    assert b["missing"] == [] and b["floor_back"] == [{"seconds": 9.0}]
    assert set(b["transports"]) == {"initrd"} and b["transports"]["initrd"]["downtime_s"] == 12.0


def test_pre_dump_series_and_idle_ratio():
    runs = [{**entry(64, 12.0 - n), "pre_dump": n, "dirty_mib_s": 8} for n in (0, 1, 3)]
    runs += [{**entry(64, 11.0), "pre_dump": 1, "dirty_mib_s": 0}, {**entry(1024, 20.0), "pre_dump": 1, "dirty_mib_s": 0}]
    b = assemble({}, None, None, [entry(64, 12.0)], pre_dump_runs=runs)
    assert b["pre_dump"]["3"]["freeze_s"] == 3.5 and b["pre_dump"]["3"]["dirty_mib_s"] == 8      # freeze+snapshot+kexec
    assert b["pre_dump"]["idle"]["ratio_largest_to_reference"] == 1.0 and set(b["pre_dump"]["idle"]) >= {"64", "1024"}


def test_assemble_partial_session():
    b = assemble({}, None, {"seconds": 25.0, "basis": "first-boot"}, [entry(64, 12.0)], ["floor"])
    assert b["floor_s"] is None and b["ratio_to_floor"] is None and b["ratio_to_reboot"] == 0.48
    assert b["slope_ms_per_mb"] is None and b["missing"] == ["floor"]
    b = assemble({}, None, None, [], ["reboot baseline"])
    assert b["downtime_s"] is None and b["sizes"] == [] and b["reboot_basis"] is None


def test_nice_step():
    assert nice_step(40) == 10 and nice_step(12) == 2 and nice_step(0.9) == 0.2 and nice_step(0) == 1.0


def test_svg_is_wellformed_with_bars_and_both_lines():
    sizes = [entry(16, 11.0), entry(64, 12.5)]
    b = assemble({"accel": "tcg", "kernel_from": "6.1", "kernel_to": "6.12 <&>"}, {"seconds": 8.0, "basis": ""},
                 {"seconds": 25.0, "basis": ""}, sizes)
    root = ET.fromstring(svg(b))
    assert root.tag == f"{SVG}svg"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "kexec floor 8.0 s" in texts and "reboot 25.0 s" in texts
    assert "16 MiB" in texts and "64 MiB" in texts and "12.5 s" in texts
    assert any("6.12 <&>" in t for t in texts)                   # escaped in the file, intact when parsed
    rects = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert len(rects) == 2 * 4                                  # four phases stacked per size
    assert all(float(r.get("height")) >= 0 for r in rects)
    dashed = [ln for ln in root.iter(f"{SVG}line") if ln.get("stroke-dasharray") == "6 4"]
    assert len(dashed) == 2                                     # across the plot: floor and reboot


def test_svg_without_measurements():
    root = ET.fromstring(svg(assemble({}, None, None, [])))
    assert not [ln for ln in root.iter(f"{SVG}line") if ln.get("stroke-dasharray") == "6 4"]


def test_intervals_and_marks_with_a_table():
    assert intervals({"b": 2.0, "a": 1.0, "c": 2.5}) == {"a->b": 1.0, "b->c": 0.5}

    class VM:
        console = [Line(1.0, "vmtest-bench: kexec --exec"), Line(2.0, "Linux version 6.12 (x)"), Line(3.0, "other")]
    table = (("exec", "vmtest-bench: kexec --exec"), ("banner", "Linux version {to}"), ("never", "nope"))
    assert marks(VM, "6.12", 0.5, table) == {"exec": 1.0, "banner": 2.0}
    assert marks(VM, "6.12", 1.5, table) == {"banner": 2.0}


def test_machine_memory_and_which_workload_is_followed(tmp_path):
    from vmtest.image import Image
    img = Image(tmp_path / "root.img", tmp_path / "vmlinuz", tmp_path / "initrd")
    argv = qemu_argv(img, tmp_path / "o.qcow2", tmp_path / "con", tmp_path / "ctl", "root=/dev/vda")
    assert argv[argv.index("-m") + 1] == "2048"
    argv = qemu_argv(img, tmp_path / "o.qcow2", tmp_path / "con", tmp_path / "ctl", "root=/dev/vda",
                     machine=Machine(memory_mb=6144))
    assert argv[argv.index("-m") + 1] == "6144"
    assert Workload(vm=None).followed and Workload(vm=None, env={"KUPGRADE_WL_MIB": "1024"}).followed
    assert not Workload(vm=None, env={"KUPGRADE_WL_DIR": "/var/lib/big", "KUPGRADE_WL_MIB": "256"}).followed


def test_prewarm_pair():
    from vmtest.benchreport import prewarm_fields
    runs = [{**entry(64, 20.0), "prewarm": False, "throttle_bps": 4 << 20, "map_mib": 16},
            {**entry(64, 17.5), "prewarm": True, "throttle_bps": 4 << 20, "map_mib": 16}]
    runs[1]["phases"] = {**runs[1]["phases"], "restore_begin->first_heartbeat": 1.25}
    p = prewarm_fields(runs)
    assert p["gain_s"] == 2.5 and p["on"]["throttle_bps"] == 4 << 20 and prewarm_fields([]) == {}
    assert p["on"]["mapped_mib"] == p["off"]["mapped_mib"] == 16
    assert p["restore_gain_s"] == round(runs[0]["phases"]["restore_begin->first_heartbeat"] - 1.25, 3)


def test_the_prewarm_pair_reads_a_mapped_data_file():
    from vmtest.bench import prewarm_runs
    off, on = prewarm_runs("pmem")
    assert (off.prewarm, on.prewarm) == (False, True) and off.map_mib == on.map_mib == 64
    assert on.label == "64 MiB (pmem, 64 MiB mapped file, disk at 16 MiB/s, prewarm on)"


def test_run_labels():
    from vmtest.bench import Run
    assert Run("pmem", 64, 3, 8).label == "64 MiB (pmem, 3 pre-dump(s), dirtying 8 MiB/s)"
    assert Run("pmem", 64, prewarm=False, throttle_bps=4 << 20).label == "64 MiB (pmem, disk at 4 MiB/s, prewarm off)"


def test_kupgrades_defaults_right_after_the_regions_reference():
    from vmtest.bench import Run, switch_runs
    runs = switch_runs([64, 1024], ("initrd", "pmem"))
    assert runs[:8] == [Run("initrd", 64), Run("initrd", 64), Run("initrd", 1024), Run("pmem", 64), Run("pmem", 64),
                        Run("pmem", 64), Run("auto", 64, "auto", series="defaults_runs"), Run("pmem", 1024)]
    assert runs[6].label == "64 MiB (kupgrade's defaults: transport and pre-dump auto)"
    assert not any(r.series == "defaults_runs" for r in switch_runs([64], ("initrd",)))


def test_defaults_entry():
    rec = {**RECORD, "stages": [*RECORD["stages"], {"name": "prepare", "duration_s": 1.0,
                                                    "details": {"pre_dump": {"tree-1": 1}}}]}
    run = size_entry(64, 9.0, BREAKDOWN, rec)
    b = assemble({}, {"seconds": 6.0, "basis": "plain-kexec"}, {"seconds": 18.0, "basis": "first-boot"},
                 [entry(64, 12.0)], defaults_runs=[run])
    d = b["defaults"]
    assert d["downtime_s"] == 9.0 and d["ratio_to_floor"] == 1.5 and d["ratio_to_reboot"] == 0.5
    assert d["pre_dumps"] == {"tree-1": 1} and d["freeze_s"] == 3.5
    assert assemble({}, None, None, [entry(64, 12.0)])["defaults"] == {}


def test_the_reference_is_the_median_of_its_samples():
    b = assemble({}, {"seconds": 10.0, "basis": "plain-kexec"}, None,
                 [entry(64, 19.0), entry(64, 12.0), entry(64, 14.0), entry(1024, 30.0)])
    assert b["downtime_s"] == 14.0 and b["ratio_to_floor"] == 1.4
    assert b["transports"]["initrd"]["reference_samples_s"] == [19.0, 12.0, 14.0]
    assert b["slope_ms_per_mb"] is not None
