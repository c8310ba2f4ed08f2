"""The way back to the old kernel: when it is taken, and what preflight checks for it."""


from kupgrade.config import Config
from kupgrade.context import Context
from kupgrade.output.record import StageResult, UpgradeRecord, Workload
from kupgrade.stages import preflight
from kupgrade.switch import manifest, switchback, trees

W = (Workload("pid:5", 5, (5,)),)


def m(tmp_path, **kw):
    for f in ("vmlinuz", "initrd"):
        (tmp_path / f).write_bytes(b"x")
    back = {"kernel": "6.1", "vmlinuz": str(tmp_path / "vmlinuz"), "initrd": str(tmp_path / "initrd"),
            "cmdline": "root=/dev/vda", "method": "classic"}
    return manifest.make("U1", "6.1", "6.12", W, {}, **{"back": back, **kw})


def test_refused_only_when_going_back_would_be_wrong(tmp_path):
    rec = UpgradeRecord("U1", "run", "6.1")
    assert trees.refused(m(tmp_path), rec) == ""
    assert "keep" in trees.refused(m(tmp_path, back={}), rec)
    assert "no second one" in trees.refused(m(tmp_path, rollback=True), rec)
    assert "rehearsal" in trees.refused(m(tmp_path), rec, rehearsal=True)
    ran = rec.with_stage(StageResult("restore", "failed", 0, 0, details={"workloads": {"tree-5": {"ok": True}}}))
    assert "tree-5 already run on in this kernel" in trees.refused(m(tmp_path), ran)
    gone = m(tmp_path)
    (tmp_path / "initrd").unlink()
    assert trees.refused(gone, rec) == f"{tmp_path / 'initrd'} is gone"


def test_manifest_carries_the_way_back(tmp_path):
    back = manifest.Manifest.from_json(__import__("json").loads(manifest.dumps(m(tmp_path, rollback=True))))
    assert back.back["kernel"] == "6.1" and back.rollback


def test_preflight_blocks_when_the_way_back_is_missing(tmp_path):
    from kupgrade.system.kexec import Method
    ctx = Context(Config(), UpgradeRecord("U1", "run", "6.1"))
    blockers = []
    assert preflight._way_back(ctx, Method("classic", ""), blockers, boot=tmp_path) == {}
    assert "the way back is not there" in blockers[0].message and "on_failure" in blockers[0].hint
    keep = Context(Config(on_restore_failure="keep"), UpgradeRecord("U1", "run", "6.1"))
    blockers.clear()
    assert preflight._way_back(keep, Method("classic", ""), blockers, boot=tmp_path) == {} and blockers == []


def test_a_reset_after_the_switch_is_said_clearly():
    exec_ = StageResult("exec", "ok", 1.0, 0.0, details={"boot_id": "boot-A"})
    rec = UpgradeRecord("U1", "run", "6.1", outcome="kexec", stages=(exec_,))
    assert any("is the boot integration installed" in w for w in rec.warnings("boot-A", pending=False))
    later = rec.warnings("boot-C", pending=False)
    assert any("reset after the switch" in w and "lost" in w for w in later)
    assert not any("reset after the switch" in w for w in rec.warnings("boot-B", pending=True))   # restoring now


def test_the_old_kernel_restores_after_the_way_back(tmp_path, monkeypatch):
    """The new kernel's failed attempt is not the old kernel's: after the way back the restore
    runs (hooks included), and the outcome is rolled-back."""
    from kupgrade.output import record
    from kupgrade.output.ui import PlainUi
    from kupgrade.switch import newkernel, trees
    snap = tmp_path / "run-kupgrade"
    (snap / "images" / "tree-5").mkdir(parents=True)
    f = snap / "images" / "tree-5" / "pages-1.img"
    f.write_bytes(b"x")
    files = {"images/tree-5/pages-1.img": {"size": 1, manifest.CHECKSUM: manifest.checksum_file(f)}}
    import os
    (snap / manifest.NAME).write_bytes(manifest.dumps(manifest.make("U1", "6.12", os.uname().release, W, files,
                                                                    rollback=True)))
    failed = StageResult("restore", "failed", 0, 0, details={"workloads": {"tree-5": {"ok": False, "error": "x"}}})
    back = StageResult("switch-back", "ok", 0, 0)
    record.save(UpgradeRecord("U1", "run", "6.1", outcome=record.ROLLING_BACK,
                              stages=(StageResult("exec", "ok", 0, 0), failed, back)), tmp_path / "state")
    monkeypatch.setattr(trees, "restore_one", lambda s, w, **kw: {"selector": w.selector, "ok": True,
                                                                   "root_pid": 5, "same_pid": True})
    c = Context(Config(state_dir=str(tmp_path / "state"), hooks_dir=str(tmp_path / "none")),
                newkernel.new_record("restore"), restore_dir=snap)
    assert newkernel.restore_pending(c, PlainUi(quiet=True))
    rec = record.load(tmp_path / "state", "U1")
    assert rec.outcome == record.ROLLED_BACK and [s.name for s in rec.stages][-2:] == ["switch-back", "restore"]


def test_the_way_back_packs_the_same_images_and_refuses_changed_ones(tmp_path):
    import pytest

    from kupgrade.errors import KupgradeError
    from kupgrade.switch import initrd
    snap = tmp_path / "snap"
    (snap / "images" / "tree-5").mkdir(parents=True)
    img = snap / "images" / "tree-5" / "pages-1.img"
    img.write_bytes(b"memory")
    files = {"images/tree-5/pages-1.img": {"size": 6, manifest.CHECKSUM: manifest.checksum_file(img)}}
    fwd = manifest.make("U1", "6.1", "6.12", W, files, back={"initrd": str(tmp_path / "old-initrd")})
    (tmp_path / "old-initrd").write_bytes(b"\x1f\x8b old initrd")
    out = tmp_path / "back.img"
    (snap / "images" / "tree-5" / "restored.pid").write_text("5\n")    # the new kernel's held restore
    (snap / "images" / "tree-5" / "restore.log").write_text("criu")
    sent = switchback._pack(snap, fwd, UpgradeRecord("U1", "run", "6.1"), out)
    assert sent.rollback and (sent.kernel_from, sent.kernel_to) == ("6.12", "6.1") and sent.files == files
    archive = initrd.read_cpio(out.read_bytes()[512:])
    assert "kupgrade-snapshot/images/tree-5/restored.pid" not in archive     # criu would refuse it there
    assert archive["kupgrade-snapshot/images/tree-5/pages-1.img"] == b"memory"
    assert archive["kupgrade-snapshot/max-pid"] == b"5\n"
    img.write_bytes(b"MEMORY")
    with pytest.raises(KupgradeError, match="not what the old kernel packed"):
        switchback._pack(snap, fwd, UpgradeRecord("U1", "run", "6.1"), out)
