"""All or nothing in the new kernel (kupgrade/switch/commit.py): with a way back, every tree is restored
stopped and they continue together once all are back; when one fails, the way back carries
them all, since none has run; without a way back, each runs as soon as it is restored."""

import os
import signal

import pytest

from kupgrade import faults
from kupgrade.config import Config
from kupgrade.context import Context
from kupgrade.errors import KupgradeError, RestoreError
from kupgrade.output import record
from kupgrade.output.record import StageResult, UpgradeRecord, Workload
from kupgrade.output.ui import PlainUi
from kupgrade.switch import commit, manifest, newkernel, switchback, trees

A = Workload("pid:100", 100, (100, 101), stopped_before=(101,))
B = Workload("pid:200", 200, (200,))
U = Workload("unit:web.service", 300, (300,), unit="web.service")


def snapshot(tmp_path, workloads=(A, B), back=True):
    snap = tmp_path / "run-kupgrade"
    files = {}
    for w in workloads:
        d = snap / "images" / w.key
        d.mkdir(parents=True)
        (d / "pages-1.img").write_bytes(w.key.encode())
        files[f"images/{w.key}/pages-1.img"] = {"size": len(w.key), manifest.CHECKSUM: manifest.checksum_file(d / "pages-1.img")}
    (tmp_path / "old-vmlinuz").write_bytes(b"x")
    way = {"kernel": "6.1", "vmlinuz": str(tmp_path / "old-vmlinuz"), "initrd": str(tmp_path / "old-vmlinuz"),
           "cmdline": "", "method": "classic"} if back else {}
    (snap / manifest.NAME).write_bytes(manifest.dumps(manifest.make("U7", "6.1", os.uname().release, workloads,
                                                                    files, back=way)))
    return snap


def ctx(tmp_path):
    return Context(Config(state_dir=str(tmp_path / "state"), hooks_dir=str(tmp_path / "none")),
                   newkernel.new_record("restore"), restore_dir=tmp_path / "run-kupgrade")


@pytest.fixture
def world(monkeypatch):
    """criu and the kernel, faked: which trees were restored how, which signals went where."""
    w = {"broken": set(), "tried": [], "signals": [], "back": []}

    def restore_one(snap, wl, pidfile=None, state_dir=None, hold=False):
        w["tried"].append((wl.key, hold))
        if wl.key in w["broken"]:
            return {"selector": wl.selector, "ok": False, "error": "criu: boom", "images": str(snap / "images" / wl.key)}
        return {"selector": wl.selector, "ok": True, "root_pid": wl.root_pid, "same_pid": True,
                **({"held": True} if hold else {})}

    def go(c, m, cause):
        w["back"].append(sorted(p.name for p in (c.restore_dir / "images").iterdir()))
        raise KupgradeError("kexec --load failed", "")
    monkeypatch.setattr(trees, "restore_one", restore_one)
    monkeypatch.setattr(commit.os, "kill", lambda pid, sig: w["signals"].append((pid, sig)))
    monkeypatch.setattr(switchback, "go", go)
    return w


def test_all_back_then_all_continue(tmp_path, world):
    snap = snapshot(tmp_path)
    assert newkernel.restore_pending(ctx(tmp_path), PlainUi(quiet=True))
    assert world["tried"] == [(A.key, True), (B.key, True)] and world["back"] == []
    assert world["signals"] == [(100, signal.SIGCONT), (200, signal.SIGCONT)]    # 101 was stopped before
    rec = record.load(tmp_path / "state", "U7")
    assert rec.outcome == record.RESTORED and rec.stage("restore").details.commit["continued"] == [A.key, B.key]
    assert (snap / trees.DONE).exists() and not (snap / "images" / A.key).exists()


def test_one_fails_none_has_run_the_way_back_carries_all(tmp_path, world):
    snap = snapshot(tmp_path)
    world["broken"].add(B.key)
    with pytest.raises(RestoreError, match="1 of 2"):
        newkernel.restore_pending(ctx(tmp_path), PlainUi(quiet=True))
    assert world["back"] == [[A.key, B.key]]       # the restored one's images still there for the way back
    # the way back failed here (the fake): the restored one continues in this kernel, nothing stays stopped
    assert world["signals"] == [(100, signal.SIGCONT)]
    rec = record.load(tmp_path / "state", "U7")
    assert rec.outcome == record.RESTORE_FAILED and rec.stages[-1].name == "commit"
    assert "no way back (the way back failed: kexec --load failed)" in rec.stages[-1].summary
    assert (snap / "images" / B.key).exists() and not (snap / "images" / A.key).exists()
    assert "already run on" in trees.refused(manifest.read(snap), rec)     # --retry: no hold any more
    world["broken"].clear()
    assert newkernel.restore_pending(ctx(tmp_path), PlainUi(quiet=True), retry=True)
    assert world["tried"][-1] == (B.key, False)


def test_without_a_way_back_each_runs_as_soon_as_restored(tmp_path, world):
    snapshot(tmp_path, back=False)
    assert newkernel.restore_pending(ctx(tmp_path), PlainUi(quiet=True))
    assert world["tried"] == [(A.key, False), (B.key, False)] and world["signals"] == []


def test_units_commit_after_the_last_unit(tmp_path, world):
    snap = snapshot(tmp_path, (A, U))
    assert newkernel.restore_pending(ctx(tmp_path), PlainUi(quiet=True))
    rec = record.load(tmp_path / "state", "U7")
    assert rec.outcome == record.RESTORING and world["signals"] == []       # A waits, stopped, for the unit
    assert commit.held(trees.attempts(rec)) == [A.key]
    assert commit.missing(manifest.read(snap), trees.attempts(rec)) == [U.key]
    done = rec.with_stage(StageResult("restore-unit", "ok", 0, 0, details={
        "unit": "web.service", "workloads": {U.key: {"ok": True, "held": True}}}))
    record.save(done, tmp_path / "state")
    assert newkernel.commit_pending(ctx(tmp_path), PlainUi(quiet=True))
    assert sorted(world["signals"]) == [(100, signal.SIGCONT), (300, signal.SIGCONT)]
    rec = record.load(tmp_path / "state", "U7")
    assert rec.outcome == record.RESTORED and rec.stages[-1].name == "commit" and (snap / trees.DONE).exists()
    assert not newkernel.commit_pending(ctx(tmp_path), PlainUi(quiet=True))     # nothing pending any more


def test_a_unit_whose_start_never_restored_it_sends_all_back(tmp_path, world):
    snapshot(tmp_path, (A, U))
    newkernel.restore_pending(ctx(tmp_path), PlainUi(quiet=True))
    with pytest.raises(RestoreError, match=r"1 of 2 workload\(s\) not restored .*web.service \(its start did not"):
        newkernel.commit_pending(ctx(tmp_path), PlainUi(quiet=True))
    assert world["back"] == [[A.key, U.key]]
    rec = record.load(tmp_path / "state", "U7")
    assert [s.name for s in rec.stages][-2:] == ["commit", "commit"] and rec.outcome == record.RESTORE_FAILED
    assert world["signals"] == [(100, signal.SIGCONT)]     # the way back failed (the fake): A runs here


def test_fault_second_fails_from_the_second_time_on(tmp_path, monkeypatch):
    monkeypatch.setenv("KUPGRADE_FAULT", "restore:second")
    monkeypatch.setattr(faults, "MARKER", str(tmp_path / "fault.{name}"))
    faults.point("restore", "x")
    with pytest.raises(KupgradeError, match="fault injected"):
        faults.point("restore", "x")
    with pytest.raises(KupgradeError):
        faults.point("restore", "x")


def test_commit_results_ignore_the_other_kernels_attempt():
    failed_there = StageResult("restore", "failed", 0, 0, details={"workloads": {A.key: {"ok": False}}})
    rec = UpgradeRecord("U7", "run", "6.1", stages=(failed_there, StageResult("switch-back", "ok", 0, 0)))
    assert commit.results(trees.attempts(rec)) == {}


def test_with_a_way_back_the_health_check_runs_when_all_are_back(tmp_path, world):
    """restore.health_check sees every tree restored, none running: failing, all go back."""
    from dataclasses import replace
    snapshot(tmp_path)
    c = ctx(tmp_path)
    c.config = replace(c.config, health_check="/bin/sh -c 'exit 3'")
    with pytest.raises(RestoreError, match="health check"):
        newkernel.restore_pending(c, PlainUi(quiet=True))
    assert world["tried"] == [(A.key, True), (B.key, True)] and world["back"] == [[A.key, B.key]]
    rec = record.load(tmp_path / "state", "U7")
    failed = rec.stage("restore")
    assert failed.status == "failed" and failed.details.workloads[A.key]["held"]


def test_the_commit_unit_runs_the_health_check_before_continuing(tmp_path, world):
    from dataclasses import replace
    snapshot(tmp_path, (A, U))
    newkernel.restore_pending(ctx(tmp_path), PlainUi(quiet=True))
    rec = record.load(tmp_path / "state", "U7")
    record.save(rec.with_stage(StageResult("restore-unit", "ok", 0, 0, details={
        "unit": "web.service", "workloads": {U.key: {"ok": True, "held": True}}})), tmp_path / "state")
    c = ctx(tmp_path)
    c.config = replace(c.config, health_check="/bin/false")
    with pytest.raises(RestoreError, match="health check"):
        newkernel.commit_pending(c, PlainUi(quiet=True))
    assert world["back"] == [[A.key, U.key]]
