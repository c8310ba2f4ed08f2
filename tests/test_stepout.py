"""Stepping out of a carried tree (an admin's ssh session): the real fork, in a small tree."""

import json
import subprocess
import sys
import time
from pathlib import Path

from kupgrade.output.record import Workload
from kupgrade.userspace import stepout

REPO = str(Path(__file__).resolve().parent.parent)


def test_kupgrade_leaves_the_tree_and_goes_on_alone(tmp_path):
    out = tmp_path / "out.json"
    child = f"""
import json, os, sys, time
sys.path.insert(0, {REPO!r})
from kupgrade.userspace import stepout
from kupgrade.output.record import Workload
root, before = os.getppid(), os.getpid()
pid = stepout.step_out([Workload("pid:%d" % root, root, (root, before))],
                       lambda text: open({str(out)!r} + ".said", "w").write(text))
open({str(out)!r} + ".tmp", "w").write(json.dumps({{"before": before, "root": root, "pid": pid,
                                                    "ppid": os.getppid(), "sid": os.getsid(0)}}))
os.replace({str(out)!r} + ".tmp", {str(out)!r})      # the test reads it as soon as it exists
"""
    shell = f"import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', {child!r}]).returncode)"
    assert subprocess.run([sys.executable, "-c", shell], timeout=30).returncode == 0     # like bash: it goes on
    deadline = time.monotonic() + 10
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    r = json.loads(out.read_text())
    assert r["pid"] != r["before"] and r["sid"] == r["pid"] and r["ppid"] not in (r["before"], r["root"])
    assert "steps out of this terminal" in Path(str(out) + ".said").read_text()


def test_why_not(tmp_path):
    w = Workload("unit:ssh.service", 10, (10, 11), cgroup="/system.slice/ssh.service")
    assert stepout.why_not(Workload("pid:5", 5, (5,)), me=5) == "kupgrade is its root"
    assert stepout.why_not(w, 12, lambda pid: "/user.slice/user-0.slice/session-3.scope") == ""     # an ssh session
    in_ssh = lambda pid: "/system.slice/ssh.service"      # no pam_systemd: the session stays in the unit's cgroup
    assert stepout.why_not(w, 12, in_ssh, scopes=lambda: True) == ""           # it moves into a scope of its own
    assert "frozen" in stepout.why_not(w, 12, in_ssh, scopes=lambda: False)


def test_can_leave_the_unit_it_runs_in_unless_it_is_its_main_process():
    show = lambda unit: {"MainPID": "10"}
    assert stepout.can_leave("ssh.service", 12, show, scopes=lambda: True)
    assert not stepout.can_leave("ssh.service", 10, show, scopes=lambda: True)
    assert not stepout.can_leave("ssh.service", 12, show, scopes=lambda: False)


def test_leaving_the_cgroup_asks_systemd_for_a_scope(monkeypatch):
    cgroup = {"now": "/system.slice/ssh.service"}
    asked = []

    def own_scope(pid, why):
        asked.append(why)
        cgroup["now"] = f"/system.slice/kupgrade-{pid}.scope"
    monkeypatch.setattr(stepout.systemd, "own_scope", own_scope)
    ssh = Workload("unit:ssh.service", 10, (10, 11), cgroup="/system.slice/ssh.service")
    stepout._leave_cgroups([ssh, Workload("pid:20", 20, (20,))], lambda pid: cgroup["now"])
    assert asked == ["kupgrade run, stepped out of unit:ssh.service"]
    # systemd answers StartTransientUnit before its job moved the PID (measured): kupgrade waits
    cgroup["now"], calls = "/system.slice/ssh.service", []

    def later(pid):
        calls.append(pid)
        return "/system.slice/ssh.service" if len(calls) < 4 else "/system.slice/kupgrade-9.scope"
    monkeypatch.setattr(stepout.systemd, "own_scope", lambda pid, why: None)
    stepout._leave_cgroups([ssh], later)
    assert len(calls) >= 4
    monkeypatch.setattr(stepout, "MOVED_WAIT_S", 0.1)     # systemd did not move it
    cgroup["now"] = "/system.slice/ssh.service"
    try:
        stepout._leave_cgroups([ssh], lambda pid: cgroup["now"])
        raise AssertionError("no error")
    except stepout.KupgradeError as e:
        assert "still in its cgroup" in e.message


def test_without_dbus_kupgrade_takes_a_cgroup_of_its_own(tmp_path):
    root = tmp_path / "cgroup"
    root.mkdir()
    assert stepout.systemd.own_scope(524, "why", bus=tmp_path / "no-bus", root=root) == "/kupgrade-524"
    assert (root / "kupgrade-524" / "cgroup.procs").read_text() == "524\n"
    (root / "kupgrade-524" / "cgroup.procs").write_text("")      # it ended
    (root / "kupgrade-600").mkdir()
    (root / "kupgrade-600" / "cgroup.procs").write_text("600\n")    # still running
    removed = []
    stepout.systemd.sweep_own(root, rmdir=lambda d: removed.append(d.name))
    assert removed == ["kupgrade-524"]



def test_kupgrade_leaves_the_session_scope_of_a_tree_it_dumps():
    """criu (kupgrade's child) leaves its own cgroup out of the images: it must not share the
    session's scope, or that session cannot be restored ("cg: No set 1 found")."""
    w = Workload("unit:ssh.service", 10, (10, 11, 12), cgroup="/system.slice/ssh.service",
                 other_cgroups=("/user.slice/user-0.slice/session-3.scope",))
    assert stepout.inside(w, 13, lambda pid: "/user.slice/user-0.slice/session-3.scope")
    assert not stepout.inside(w, 13, lambda pid: "/user.slice/user-0.slice/session-30.scope")
    assert stepout.inside(w, 13, lambda pid: "/system.slice/ssh.service")


def test_a_stop_before_the_switch_is_told_on_the_admins_terminal(tmp_path):
    term = tmp_path / "pts-0"
    term.write_text("")
    assert stepout.tell("kupgrade: the upgrade stopped", str(term))
    assert term.read_bytes() == b"\r\nkupgrade: the upgrade stopped\r\n"
    assert not stepout.tell("x", "") and not stepout.tell("x", str(tmp_path / "gone"))
