"""A failed restore keeps the snapshot: `kupgrade restore --retry` brings back what the first
attempt did not (and only that), `--discard` gives it up on purpose; both are recorded."""

import os

import pytest

from kupgrade.config import Config
from kupgrade.context import Context
from kupgrade.errors import RestoreError
from kupgrade.output import record
from kupgrade.output.record import UpgradeRecord, Workload
from kupgrade.output.ui import PlainUi
from kupgrade.stages import restore
from kupgrade.switch import manifest, newkernel, trees

A, B = Workload("pid:100", 100, (100,)), Workload("pid:200", 200, (200,))


def snapshot(tmp_path):
    snap = tmp_path / "run-kupgrade"
    files = {}
    for w in (A, B):
        d = snap / "images" / w.key
        d.mkdir(parents=True)
        (d / "pages-1.img").write_bytes(w.key.encode())
        files[f"images/{w.key}/pages-1.img"] = {"size": len(w.key), manifest.CHECKSUM: manifest.checksum_file(d / "pages-1.img")}
    (snap / manifest.NAME).write_bytes(manifest.dumps(manifest.make("U9", "6.1", os.uname().release, (A, B), files)))
    return snap


def ctx(tmp_path):
    return Context(Config(state_dir=str(tmp_path / "state"), hooks_dir=str(tmp_path / "none")),
                   newkernel.new_record("restore"), restore_dir=tmp_path / "run-kupgrade")


def test_retry_restores_only_what_failed(tmp_path, monkeypatch):
    snap = snapshot(tmp_path)
    broken = {B.key}
    tried = []

    def fake(snap_, w, pidfile=None, state_dir=None, hold=False):
        tried.append(w.key)
        if w.key in broken:
            return {"selector": w.selector, "ok": False, "error": "criu: boom", "images": str(snap_ / "images" / w.key)}
        return {"selector": w.selector, "ok": True, "root_pid": w.root_pid, "same_pid": True}
    monkeypatch.setattr(trees, "restore_one", fake)
    with pytest.raises(RestoreError, match="1 of 2 workload"):
        newkernel.restore_pending(ctx(tmp_path), PlainUi(quiet=True))
    assert (snap / manifest.NAME).exists() and not (snap / "images" / A.key).exists()
    assert record.load(tmp_path / "state", "U9").outcome == record.RESTORE_FAILED
    with pytest.raises(RestoreError, match="attempted already"):      # not again without --retry
        newkernel.restore_pending(ctx(tmp_path), PlainUi(quiet=True))
    broken.clear()
    assert newkernel.restore_pending(ctx(tmp_path), PlainUi(quiet=True), retry=True)
    assert tried == [A.key, B.key, B.key]
    rec = record.load(tmp_path / "state", "U9")
    assert rec.outcome == record.RESTORED and (snap / trees.DONE).exists()


def test_discard_gives_the_rest_up_on_record(tmp_path, monkeypatch):
    snap = snapshot(tmp_path)
    monkeypatch.setattr(trees, "restore_one", lambda s, w, **kw: {"selector": w.selector, "ok": False,
                                                                      "error": "criu: boom", "images": "x"})
    with pytest.raises(RestoreError):
        newkernel.restore_pending(ctx(tmp_path), PlainUi(quiet=True))
    assert newkernel.discard(ctx(tmp_path), PlainUi(quiet=True))
    rec = record.load(tmp_path / "state", "U9")
    assert rec.stages[-1].name == "discard" and rec.stages[-1].details.discarded == ["pid:100", "pid:200"]
    assert rec.outcome == record.RESTORE_FAILED and not snap.exists()
    assert not newkernel.discard(ctx(tmp_path), PlainUi(quiet=True))      # nothing pending any more


def test_a_damaged_tree_is_named_and_the_others_restored(tmp_path, monkeypatch):
    snap = snapshot(tmp_path)
    (snap / "images" / A.key / "pages-1.img").write_bytes(b"tree-10X")      # same size, other bytes
    tried = []
    monkeypatch.setattr(trees, "restore_one", lambda s, w, **kw: tried.append(w.key) or
                        {"selector": w.selector, "ok": True, "root_pid": w.root_pid, "same_pid": True})
    c = ctx(tmp_path)
    with pytest.raises(RestoreError, match="1 of 2 workload.*images failed verification"):
        newkernel.restore_pending(c, PlainUi(quiet=True))
    assert tried == [B.key]
    rec = record.load(tmp_path / "state", "U9")
    r = rec.stage("restore").details.workloads[A.key]
    assert r["corrupt"] and "crc32s mismatch" in r["error"] and "the only copy is damaged" in r["error"]
    from dataclasses import replace
    m = replace(manifest.read(snap), back={"kernel": "6.1", "vmlinuz": str(snap / manifest.NAME),
                                           "initrd": str(snap / manifest.NAME), "cmdline": "", "method": "classic"})
    assert "already run on" in trees.refused(m, rec)            # B runs: no way back


def test_no_way_back_for_damaged_images(tmp_path):
    from kupgrade.output.record import StageResult
    (tmp_path / "v").write_bytes(b"x")
    m = manifest.make("U9", "6.1", "6.12", (A,), {}, back={"kernel": "6.1", "vmlinuz": str(tmp_path / "v"),
                                                            "initrd": str(tmp_path / "v"), "cmdline": "", "method": "classic"})
    rec = UpgradeRecord("U9", "run", "6.1").with_stage(StageResult(
        "restore", "failed", 0, 0, details={"workloads": {A.key: {"ok": False, "corrupt": True}}}))
    assert "damaged: the old kernel has no better copy" in trees.refused(m, rec)


def test_units_connections_are_protected_until_systemd_restores_them(tmp_path, monkeypatch):
    """A unit restores later (when systemd starts it): its peers' packets must be dropped from
    the start of the restore stage, or the new kernel resets the connections."""
    from kupgrade.userspace import tcp
    unit = Workload("unit:srv.service", 300, (300,), unit="srv.service")
    snap = tmp_path / "run-kupgrade"
    d = snap / "images" / unit.key
    d.mkdir(parents=True)
    sock = tcp.Sock("10.0.2.15", 7000, "10.0.2.2", 5555, "01", 77)
    tcp.write(d, [sock])
    files = {f"images/{unit.key}/{tcp.FILE}": {"size": (d / tcp.FILE).stat().st_size,
                                               manifest.CHECKSUM: manifest.checksum_file(d / tcp.FILE)}}
    (snap / manifest.NAME).write_bytes(manifest.dumps(manifest.make("U9", "6.1", os.uname().release, (unit,), files)))
    installed = []
    monkeypatch.setattr(tcp, "install", lambda socks: installed.extend(socks) or len(socks))
    restore.run(ctx(tmp_path))
    assert installed == [sock]


def test_a_failing_health_check_restores_nothing_here(tmp_path, monkeypatch):
    """restore.health_check runs before any workload: failing, nothing was restored (with
    rollback: the way back); on the way back itself it is not run."""
    from dataclasses import replace
    snapshot(tmp_path)
    tried = []
    monkeypatch.setattr(trees, "restore_one", lambda s, w, **kw: tried.append(w.key) or
                        {"selector": w.selector, "ok": True, "root_pid": w.root_pid, "same_pid": True})
    c = ctx(tmp_path)
    c.config = replace(c.config, health_check="/bin/sh -c 'exit 3'")
    with pytest.raises(RestoreError, match="the health check `/bin/sh -c 'exit 3'` failed in .*exited 3"):
        restore.run(c)
    assert tried == [] and not (c.restore_dir / trees.VERIFIED).exists()
    c.config = replace(c.config, health_check="/bin/true")
    assert restore.run(c)[1].health_check == {"command": "/bin/true", "ok": True} and len(tried) == 2


def test_health_check_must_be_a_command_with_an_absolute_program():
    from kupgrade.config import ConfigError, parse
    assert parse('[restore]\nhealth_check = "/usr/bin/ping -c1 10.0.0.1"\n').health_check.startswith("/usr/bin/ping")
    for bad in ('"ping -c1 x"', '"/bin/sh -c \'unclosed"'):
        with pytest.raises(ConfigError, match="health_check"):
            parse(f"[restore]\nhealth_check = {bad}\n")


def test_the_restore_warms_criu_and_loads_nf_tables_alongside_the_verification(tmp_path, monkeypatch):
    """criu's probing of the new kernel and the module the TCP protection needs run while the
    snapshot is verified, and before the first criu restore; the stage's steps are timed."""
    from kupgrade.output.timeline import Laps
    from kupgrade.system import criu
    from kupgrade.userspace import tcp
    snapshot(tmp_path)
    did = []
    monkeypatch.setattr(criu, "warm", lambda log=None: did.append("criu") or True)
    monkeypatch.setattr(tcp, "load_module", lambda: did.append("nf_tables"))
    monkeypatch.setattr(trees, "restore_one", lambda s, w, **kw: did.append(w.key) or
                        {"selector": w.selector, "ok": True, "root_pid": w.root_pid, "same_pid": True})
    details = restore.run(ctx(tmp_path))[1]
    assert did == ["criu", A.key, B.key]            # no TCP connection in this snapshot: no module
    assert {"verify", "protect", "hooks", "warm_up", f"criu {A.key}", f"criu {B.key}"} <= set(details.seconds)
    d = tmp_path / "run-kupgrade" / "images" / A.key
    d.mkdir(parents=True, exist_ok=True)
    tcp.write(d, [tcp.Sock("10.0.2.15", 7000, "10.0.2.2", 5555, "01", 77)])
    did.clear()
    restore._warm_up(tmp_path / "run-kupgrade", Laps()).join()
    assert did == ["nf_tables", "criu"]
