"""--all-services: which running services are carried, start fresh or are left to the boot; the
policy for a unit that cannot be carried; stopping them before the freeze and starting them
again on a rollback or in the new boot."""

import json

import pytest

from kupgrade import config, inflight, journal, pipeline
from kupgrade.config import Config
from kupgrade.context import Context
from kupgrade.errors import ConfigError
from kupgrade.output.record import Blocker, Fresh, UpgradeRecord, Workload
from kupgrade.stages import freeze
from kupgrade.switch import manifest
from kupgrade.userspace import selection, systemd


def unit(name: str, pid: int) -> Workload:
    return Workload(f"unit:{name}", pid, (pid,), cgroup=f"/system.slice/{name}", unit=name)


def test_candidates_leave_pid1_helpers_and_kupgrades_own_unit_to_the_boot():
    running = ["cron.service", "systemd-journald.service", "dbus.service", "getty@tty1.service", "ssh.service",
               "nginx.service", "backup-nightly.service", "web.service"]
    carry, boot = selection.candidates(("backup-*.service",), named=("web.service",), running=running,
                                       mine={"ssh.service": 812})
    assert carry == ["cron.service", "nginx.service"]           # web.service: named, resolved as such
    fates = {f.unit: f.reason for f in boot}
    assert set(fates) == {"systemd-journald.service", "dbus.service", "getty@tty1.service", "ssh.service",
                          "backup-nightly.service"}
    assert fates["backup-nightly.service"] == "starts fresh in every boot (backup-*.service)"
    assert "kupgrade runs inside it (PID 812)" in fates["ssh.service"]
    assert not any(f.stop for f in boot)        # left running until the switch, never stopped


def test_own_units_follow_the_ancestors(tmp_path):
    for pid, ppid, cg in ((30, 20, "/user.slice/user-0.slice/session-3.scope"), (20, 10, "/system.slice/ssh.service"),
                          (10, 1, "/system.slice/ssh.service")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(f"0::{cg}\n")
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (x) S {ppid} {pid} {pid} 0 -1 0\n")
    assert selection.own_units(30, proc=tmp_path) == {"ssh.service": 20}


def blockers_for(*selectors):
    return [Blocker(f"{s} cannot be carried", "fix", s) for s in selectors]


def test_auto_policy_found_units_start_fresh_named_ones_block():
    ws = [unit("memcached.service", 300), unit("web.service", 400), unit("cron.service", 500)]
    bl = blockers_for("unit:memcached.service", "unit:web.service") + [Blocker("nft missing", "install it")]
    carried, fresh, still = selection.settle(ws, bl, "auto", {"memcached.service", "cron.service"},
                                             dependents=lambda u: set())
    assert [w.unit for w in carried] == ["web.service", "cron.service"]
    assert fresh == [Fresh("memcached.service", "unit:memcached.service cannot be carried", stop=True)]
    assert [b.message for b in still] == ["unit:web.service cannot be carried", "nft missing"]


def test_abort_and_fresh_policies():
    ws = [unit("memcached.service", 300), Workload("pid:77", 77, (77,))]
    bl = blockers_for("unit:memcached.service", "pid:77")
    carried, fresh, still = selection.settle(ws, bl, "abort", {"memcached.service"}, dependents=lambda u: set())
    assert fresh == [] and len(still) == 2 and len(carried) == 2
    carried, fresh, still = selection.settle(ws, bl, "fresh", set(), dependents=lambda u: set())
    assert [f.unit for f in fresh] == ["memcached.service"]
    assert [b.workload for b in still] == ["pid:77"]        # a PID cannot start fresh: it still blocks


def test_a_unit_that_needs_a_fresh_one_starts_fresh_too():
    ws = [unit("db.service", 300), unit("app.service", 400), unit("cron.service", 500)]
    deps = {"db.service": {"app.service", "other.target"}, "app.service": set()}
    carried, fresh, _ = selection.settle(ws, blockers_for("unit:db.service"), "auto", {"db.service", "app.service"},
                                         dependents=lambda u: deps.get(u, set()))
    assert [w.unit for w in carried] == ["cron.service"]
    assert {f.unit: f.reason for f in fresh}["app.service"] == \
        "it needs db.service, which starts fresh: stopping db.service stops it too"


def test_transient_and_socket_activated_units():
    props = {"Transient": "yes", "TriggeredBy": "cups.socket cups.path"}
    t, s = systemd.blockers("cups.service", props, "unit:cups.service")
    assert "transient unit" in t.message and t.workload == ""      # blocks even with on_blocked = fresh
    assert "socket-activated (cups.socket, cups.path)" in s.message and s.workload == "unit:cups.service"


def test_lines_say_each_services_fate():
    services = [{"unit": "cron.service", "fate": "carried"},
                {"unit": "memcached.service", "fate": "fresh", "reason": "own mount namespace"},
                {"unit": "ssh.service", "fate": "boot", "reason": "kupgrade runs inside it (PID 9)"},
                {"unit": "systemd-udevd.service", "fate": "boot", "reason": "starts fresh in every boot (systemd-*)"}]
    assert selection.lines(services) == [
        "carried: cron.service",
        "starts fresh (stopped before the switch, started by the new boot): memcached.service: own mount namespace",
        "left to the boot: ssh.service: kupgrade runs inside it (PID 9)",
        "left to the boot (they start fresh in every boot): systemd-udevd.service"]


def test_config_settings():
    cfg = config.parse('[workloads]\nall_services = true\nstart_fresh = ["backup-*.service"]\non_blocked = "fresh"\n')
    assert cfg.all_services is True and cfg.start_fresh == ("backup-*.service",) and cfg.on_blocked == "fresh"
    with pytest.raises(ConfigError, match="`workloads.on_blocked` must be one of auto, abort, fresh"):
        config.parse('[workloads]\non_blocked = "restart"\n')
    with pytest.raises(ConfigError, match="`workloads.all_services` must be a boolean"):
        config.parse('[workloads]\nall_services = "yes"\n')
    with pytest.raises(ConfigError, match="service names or patterns"):
        config.parse('[workloads]\nstart_fresh = ["cron"]\n')


class Calls:
    def __init__(self):
        self.argv = []

    def __call__(self, argv, **kw):
        self.argv.append(argv)


def test_stopped_before_the_freeze_started_again_by_the_rollback(tmp_path, monkeypatch):
    calls = Calls()
    monkeypatch.setattr(systemd, "run", calls)
    rec = UpgradeRecord("R1", "run", "6.1", fresh=(Fresh("memcached.service", "mount ns", stop=True),
                                                    Fresh("systemd-journald.service", "boot")))
    ctx = Context(Config(state_dir=str(tmp_path)), rec, journal=tmp_path / "j.json")
    summary, details = freeze.run(ctx)
    assert calls.argv == [["systemctl", "stop", "memcached.service"]]
    assert details.stopped_services == ["memcached.service"] and summary.startswith("stopped 1 service(s)")
    state = json.loads((tmp_path / "j.json").read_text())
    assert state["stopped_units"] == ["memcached.service"]
    assert "memcached.service stopped (to start fresh)" in inflight.describe(state)
    back = journal.context(state)                   # `kupgrade recover` would start it again too
    assert back.stopped_units == ["memcached.service"]

    class Quiet:
        def stage_end(self, r):
            self.r = r
    pipeline.rollback(ctx, Quiet(), RuntimeError("kexec load failed"))
    assert calls.argv[-1] == ["systemctl", "start", "memcached.service"]
    assert "started memcached.service again" in ctx.record.stage("rollback").summary
    assert ctx.stopped_units == []


def test_manifest_carries_the_units_to_start(tmp_path):
    m = manifest.make("20261204T010000-abcdef", "6.1", "6.12", (), {}, start=("memcached.service",))
    back = manifest.Manifest.from_json(json.loads(manifest.dumps(m)))
    assert back.start == ("memcached.service",)
    d = m.to_json() | {"start": ["../../etc/passwd"]}
    with pytest.raises(ValueError, match="`start` is not a list of service names"):
        manifest.Manifest.from_json(d)
    old = {k: v for k, v in m.to_json().items() if k != "start"}       # written by an earlier kupgrade
    assert manifest.Manifest.from_json(old).start == ()


def test_record_keeps_the_fresh_services():
    rec = UpgradeRecord("R1", "run", "6.1", fresh=(Fresh("memcached.service", "mount ns", stop=True),))
    assert UpgradeRecord.from_json(json.loads(rec.dumps())).fresh == rec.fresh


def test_a_found_unit_whose_dump_fails_starts_fresh_a_named_one_aborts(tmp_path, monkeypatch):
    calls = Calls()
    monkeypatch.setattr(systemd, "run", calls)
    found, named = unit("redis-server.service", 300), unit("web.service", 400)
    ctx = Context(Config(state_dir=str(tmp_path), units=("web.service",), all_services=True),
                  UpgradeRecord("R1", "run", "6.1", workloads=(found, named)), workloads=[found, named])
    assert freeze.go_fresh(ctx, named, "criu dump of unit:web.service failed: x") is False
    assert freeze.go_fresh(ctx, found, "criu dump of unit:redis-server.service failed: Can't dump") is True
    assert calls.argv == [["systemctl", "stop", "redis-server.service"]]
    assert ctx.workloads == [named] and ctx.record.workloads == (named,)
    assert ctx.record.fresh == (Fresh("redis-server.service", "its dump failed: criu dump of "
                                      "unit:redis-server.service failed: Can't dump", stop=True),)
    assert ctx.stopped_units == ["redis-server.service"]        # the rollback starts it again
    assert any("kupgrade check` did not predict it" in w for w in ctx.record.warnings())
