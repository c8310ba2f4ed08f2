"""systemd units as workloads: the drop-in, the generator, resolving, restore bookkeeping."""

import os
from pathlib import Path

from kupgrade.output import record
from kupgrade.output.record import StageResult, UpgradeRecord, Workload
from kupgrade.switch import restorecmd, restorerecord, trees
from kupgrade.system import sched
from kupgrade.userspace import systemd, workloads


def test_dropin_turns_the_start_into_the_restore():
    text = systemd.dropin("web.service", "ID1", "/usr/sbin/kupgrade-restore", Path("/run/kupgrade"))
    lines = text.splitlines()
    assert "Type=forking" in lines and "PIDFile=/run/kupgrade/units/web.service.pid" in lines
    # the original command is cleared before ours; pre/post commands are cleared
    # with full privileges ("+"): none of the unit's sandboxing applies to criu
    # (run from a shell that first raises its session's CPU share: system/sched.py)
    start = "ExecStart=+" + sched.boosted("/usr/sbin/kupgrade-restore --unit web.service")
    assert start.endswith("' /usr/sbin/kupgrade-restore --unit web.service") and '"$$0" "$$@"' in start
    assert lines.index("ExecStart=") < lines.index(start)
    assert "ExecStartPre=" in lines and "ExecStartPost=" in lines and "Restart=no" in lines

    assert not [line for line in lines if line.startswith("SyslogIdentifier=")]


def test_the_restored_output_keeps_the_units_name_in_the_journal(tmp_path):
    """systemd names a unit's output stream after SyslogIdentifier=, else its ExecStart's program:
    the restore's command is `sh`, so the drop-in names it as the old boot did."""
    exec_start = "{ path=/usr/sbin/memcached ; argv[]=/usr/sbin/memcached -m 64 ; ignore_errors=no ; pid=0 }"
    assert systemd.identifier({"SyslogIdentifier": "", "ExecStart": exec_start}) == "memcached"
    assert systemd.identifier({"SyslogIdentifier": "redis", "ExecStart": exec_start}) == "redis"
    for odd in ("a b", "100%", "x\\", ""):        # not written back: systemd's default stays
        assert systemd.identifier({"SyslogIdentifier": odd, "ExecStart": ""}) == ""
    text = systemd.dropin("web.service", "ID1", "/usr/sbin/kupgrade-restore", Path("/run/kupgrade"), "nginx")
    assert "SyslogIdentifier=nginx" in text.splitlines()
    systemd.generate(tmp_path, "ID1", ["web.service", "db.service"], "/r", Path("/run/kupgrade"), dirs=(),
                     idents={"web.service": "nginx"})
    assert "SyslogIdentifier=nginx" in (tmp_path / "web.service.d" / systemd.DROPIN).read_text()
    assert "SyslogIdentifier" not in (tmp_path / "db.service.d" / systemd.DROPIN).read_text()
    w = Workload("unit:web.service", 5, (5,), unit="web.service", ident="nginx")
    assert Workload.from_json(w.to_json()) == w and "ident" not in Workload("pid:5", 5, (5,)).to_json()


def _wanted(early: Path) -> list[str]:
    text = (early / "multi-user.target.d" / systemd.WANTS_DROPIN).read_text()
    return next(line for line in text.splitlines() if line.startswith("Wants=")).split("=", 1)[1].split()


def test_generate_writes_dropins_and_wants(tmp_path):
    units = tmp_path / "lib"
    units.mkdir()
    (units / "web.service").write_text("[Service]\nExecStart=/bin/true\n")
    (units / "getty@.service").write_text("[Service]\nExecStart=/bin/true\n")
    early = tmp_path / "early"
    done = systemd.generate(early, "ID1", ["web.service", "getty@tty5.service", "gone.service"],
                            "/usr/sbin/kupgrade-restore", Path("/run/kupgrade"), dirs=(str(units),))
    assert (early / "web.service.d" / systemd.DROPIN).exists()
    assert (early / "gone.service.d" / systemd.DROPIN).exists()          # restored if something starts it
    # pulled into multi-user.target (an instance by its template's file), the commit unit too;
    # regular files only: the old kernel writes them into the snapshot
    assert _wanted(early) == ["web.service", "getty@tty5.service", systemd.COMMIT_UNIT]
    commit = (early / systemd.COMMIT_UNIT).read_text()
    assert "After=kupgrade-restore.service web.service getty@tty5.service gone.service" in commit
    assert "ExecStart=/usr/sbin/kupgrade-restore --commit" in commit
    assert not [p for p in early.rglob("*") if p.is_symlink()]
    assert len(done) == 5


def test_generate_pulls_in_the_units_that_start_fresh(tmp_path):
    units = tmp_path / "lib"
    units.mkdir()
    (units / "memcached.service").write_text("[Service]\nExecStart=/bin/true\n")
    early = tmp_path / "early"
    systemd.generate(early, "ID1", [], "/usr/sbin/kupgrade-restore", Path("/run/kupgrade"), dirs=(str(units),),
                     start=("memcached.service",))
    assert _wanted(early) == ["memcached.service"]
    assert not (early / "memcached.service.d").exists()         # started fresh: its own start, no restore
    assert not (early / systemd.COMMIT_UNIT).exists()           # nothing carried by a unit: nothing to commit


def _generator(tmp_path: Path) -> tuple[Path, Path]:
    """The installed generator, its restore dir moved under tmp_path and its Python fallback a
    script that says it ran."""
    from kupgrade.switch import boot, contract
    run_dir = tmp_path / "run"
    fallback = tmp_path / "fallback"
    fallback.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/fallback.ran\n")
    fallback.chmod(0o755)
    text = boot.boot_file("systemd-generator").replace(contract.RESTORE_DIR, str(run_dir))
    text = text.replace(boot.restore_command(), str(fallback))
    gen = tmp_path / "generator"
    gen.write_text(text)
    return gen, run_dir


def test_generator_copies_what_the_old_kernel_wrote(tmp_path):
    import subprocess
    from kupgrade.switch import contract
    gen, run_dir = _generator(tmp_path)
    out = tmp_path / "out"
    for d in ("normal", "early", "late"):
        (out / d).mkdir(parents=True)
    argv = ["sh", str(gen), *(str(out / d) for d in ("normal", "early", "late"))]
    subprocess.run(argv, check=True)                    # no snapshot: nothing
    assert not any(out.rglob("*.conf")) and not (tmp_path / "fallback.ran").exists()
    run_dir.mkdir()
    (run_dir / contract.MANIFEST).write_text("{}")
    subprocess.run(argv, check=True)                    # a snapshot without the drop-ins: the restore writes them
    assert (tmp_path / "fallback.ran").read_text().split() == ["--generator", *argv[2:]]
    (tmp_path / "fallback.ran").unlink()
    units = tmp_path / "lib"
    units.mkdir()
    (units / "web.service").write_text("[Service]\nExecStart=/bin/true\n")
    systemd.generate(run_dir / contract.GENERATED, "ID1", ["web.service"], "/usr/sbin/kupgrade-restore",
                     Path("/run/kupgrade"), dirs=(str(units),))
    for p in (run_dir / contract.GENERATED).rglob("*"):        # as the initramfs left them
        p.chmod(0o700 if p.is_dir() else 0o600)
    subprocess.run(argv, check=True)
    assert not (tmp_path / "fallback.ran").exists()
    assert (out / "early/web.service.d" / systemd.DROPIN).read_text() == \
        (run_dir / contract.GENERATED / "web.service.d" / systemd.DROPIN).read_text()
    assert _wanted(out / "early") == ["web.service", systemd.COMMIT_UNIT]
    assert (out / "early" / systemd.COMMIT_UNIT).is_file() and not any((out / "normal").iterdir())
    # copied out of the root-only snapshot, readable as unit files are (systemd warns otherwise)
    assert all(p.stat().st_mode & 0o005 == 0o005 if p.is_dir() else p.stat().st_mode & 0o004
               for p in (out / "early").rglob("*"))


def test_resolve_unit_to_main_pid_and_cgroup():
    me = os.getpid()

    def describe(unit):
        return {"MainPID": str(me), "ControlGroup": "/system.slice/web.service", "ActiveState": "active"}, ""

    ws, blockers = workloads.resolve((), (), ("web.service",), describe_unit=describe)
    assert [(w.selector, w.root_pid, w.unit, w.cgroup) for w in ws] == [
        ("unit:web.service", me, "web.service", "/system.slice/web.service")]
    assert any("contains kupgrade itself" in b.message for b in blockers)     # (it is this test)
    down = workloads.resolve((), (), ("down.service",),
                             describe_unit=lambda u: ({}, "unit down.service is not active (inactive)"))
    assert down[0] == [] and "not active" in down[1][0].message


def test_pid_taken_is_detected_before_criu(tmp_path):
    w = Workload("unit:web.service", os.getpid(), (os.getpid(),), unit="web.service")
    r = trees.restore_one(tmp_path, w)
    assert r["ok"] is False and f"PID {os.getpid()} of unit:web.service is taken in this boot" in r["error"]
    assert r["images"] == str(tmp_path / "images" / w.key)
    thread = Workload("unit:web.service", 999999999, (999999999,), unit="web.service", tids=(os.getpid(),))
    assert f"PID {os.getpid()} of unit:web.service is taken" in trees.restore_one(tmp_path, thread)["error"]


def test_outcome_waits_for_every_unit():
    class M:
        workloads = (Workload("pid:5", 5, (5,)), Workload("unit:a.service", 6, (6,), unit="a.service"))
        rollback = False
    early = StageResult("restore", "ok", 1.0, 1.0, details={"workloads": {
        "tree-5": {"ok": True}, "tree-6": {"ok": None, "pending": "restored when a.service starts"}}})
    rec = UpgradeRecord("X", "run", "a", stages=(early,))
    assert restorerecord.outcome_of(rec, M) == record.RESTORING
    unit_ok = StageResult("restore-unit", "ok", 2.0, 1.0, details={"workloads": {"tree-6": {"ok": True}}})
    assert restorerecord.outcome_of(rec.with_stage(unit_ok), M) == record.RESTORED
    unit_bad = StageResult("restore-unit", "failed", 2.0, 1.0, details={"workloads": {"tree-6": {"ok": False}}})
    assert restorerecord.outcome_of(rec.with_stage(unit_bad), M) == record.RESTORE_FAILED
    M.rollback = True           # the restore after the way back to the old kernel
    assert restorerecord.outcome_of(rec.with_stage(unit_ok), M) == record.ROLLED_BACK


def test_unit_start_without_a_pending_snapshot_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(restorecmd, "mark_restore_point", lambda: None)   # not this host's /run
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'[paths]\nstate = "{tmp_path}/state"\n')
    # restore_dir is fixed (/run/kupgrade); on this machine nothing is pending there
    assert not trees.pending(Path("/run/kupgrade"))
    assert restorecmd.main(["--config", str(cfg), "--unit", "web.service"]) == 6
    err = capsys.readouterr().err
    assert "web.service: no kupgrade snapshot is pending" in err and "systemctl daemon-reload" in err


def test_the_units_own_pid_file_is_written_back(tmp_path):
    w = Workload("unit:nginx.service", 812, (812, 813), unit="nginx.service", pidfile=str(tmp_path / "run/nginx.pid"))
    assert systemd.restore_pidfile(w, 812) == f"wrote {tmp_path / 'run/nginx.pid'}"
    assert (tmp_path / "run/nginx.pid").read_text() == "812\n"
    assert systemd.restore_pidfile(w, 999) == ""           # there already (the daemon wrote it): left alone
    assert (tmp_path / "run/nginx.pid").read_text() == "812\n"
    assert systemd.restore_pidfile(Workload("unit:a.service", 5, (5,), unit="a.service"), 5) == ""
    assert Workload.from_json(w.to_json()) == w


def test_a_carried_session_scope_is_adopted_by_systemd_in_the_new_boot(tmp_path, monkeypatch):
    cg = "/user.slice/user-0.slice/session-3.scope"
    procs = tmp_path / cg.lstrip("/") / "cgroup.procs"
    procs.parent.mkdir(parents=True)
    procs.write_text("648\n650\n")
    bus = tmp_path / "bus"
    assert "no system bus" in systemd.adopt(cg, bus=bus, root=tmp_path)
    bus.touch()
    asked = []

    def moved(*a):          # systemd's job moves the tasks (after it answered)
        asked.append(a)
        procs.write_text("")
    assert systemd.adopt(cg, bus=bus, root=tmp_path, scope=moved) == "kupgrade-session-3.scope"
    assert asked == [("kupgrade-session-3.scope", [648, 650], f"kupgrade: carried from {cg} of the old boot",
                      "user-0.slice")]
    again = "/user.slice/user-0.slice/kupgrade-session-3.scope"     # carried twice: the name stays
    (tmp_path / again.lstrip("/")).mkdir()
    (tmp_path / again.lstrip("/") / "cgroup.procs").write_text("648\n")
    monkeypatch.setattr(systemd, "ADOPT_WAIT_S", 0.05)             # never moved: waited for, left as it is
    assert systemd.adopt(again, bus=bus, root=tmp_path, scope=lambda *a: None) == "kupgrade-session-3.scope"
    assert (tmp_path / again.lstrip("/") / "cgroup.procs").read_text() == "648\n"


def test_the_restore_starts_with_its_session_boosted_and_puts_it_back_before_criu(tmp_path):
    import shlex
    import subprocess
    argv = shlex.split(sched.boosted("/bin/cat /proc/self/autogroup", systemd=False))
    # a session of its own: the boost is that session's, not the test run's
    out = subprocess.run(argv, capture_output=True, text=True, start_new_session=True).stdout
    if Path("/proc/self/autogroup").exists() and os.geteuid() == 0:     # a negative nice needs CAP_SYS_NICE
        assert out.endswith(f" nice {sched.BOOST}\n"), out
    (tmp_path / "autogroup").write_text("/autogroup-7 nice -10\n")
    assert sched.nice(tmp_path / "autogroup") == -10
    assert sched.unboost(tmp_path / "autogroup") and (tmp_path / "autogroup").read_text() == "0\n"
    assert not sched.unboost(tmp_path / "none")
