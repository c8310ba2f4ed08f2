"""A unit's sandboxing: the blockers for what criu 3.17 does not carry, from a fake /proc and
fake `systemctl show` output (as systemd 252 prints it)."""

import os
from pathlib import Path

from procfake import fake_proc, task

from kupgrade.output.record import Workload
from kupgrade.switch import trees
from kupgrade.system import criu
from kupgrade.userspace import sandbox, systemd, workloads

HOST_MNT, OWN_MNT = "mnt:[4026531841]", "mnt:[4026532301]"
HOST_USER, OWN_USER = "user:[4026531837]", "user:[4026532400]"

# `systemctl show` of a unit with nothing set (the defaults as systemd 252 prints them)
DEFAULTS = {p: "" for p in sandbox.PROPS} | {
    "PrivateUsers": "no", "PrivateTmp": "no", "ProtectSystem": "no", "ProtectHome": "no", "PrivateDevices": "no",
    "DynamicUser": "no", "PrivateMounts": "no", "PrivateIPC": "no", "ProtectKernelTunables": "no",
    "ProtectKernelModules": "no", "ProtectKernelLogs": "no", "ProtectControlGroups": "no", "ProtectProc": "default",
    "ProcSubset": "all"}


def show(**set_) -> dict[str, str]:
    return DEFAULTS | {"MainPID": "500", "ControlGroup": "/system.slice/web.service", "ActiveState": "active"} | set_


def proc_with(tmp_path, mnt=HOST_MNT, user=HOST_USER, nnp="0", child_nnp=None):
    proc = fake_proc(tmp_path)
    for kind, link in (("mnt", HOST_MNT), ("user", HOST_USER)):
        os.symlink(link, proc / "self" / "ns" / kind)
    task(proc, 500, comm="web", status=f"NoNewPrivs:\t{nnp}\nSeccomp:\t2\n")
    os.symlink(mnt, proc / "500" / "ns" / "mnt")
    os.symlink(user, proc / "500" / "ns" / "user")
    if child_nnp is not None:
        task(proc, 501, ppid=500, session=500, comm="worker", status=f"NoNewPrivs:\t{child_nnp}\n")
    return proc


WEB = Workload("unit:web.service", 500, (500,), unit="web.service", cgroup="/system.slice/web.service")


def test_systemctl_show_asks_for_the_sandbox_options():
    assert {"PrivateTmp", "ProtectSystem", "DynamicUser", "PrivateUsers"} <= set(systemd.PROPS)
    assert {"MainPID", "ControlGroup", "ActiveState"} <= set(systemd.PROPS)


def test_carried_options_are_no_blocker(tmp_path):
    """ProtectHostname (a UTS namespace), SystemCallFilter, RestrictNamespaces and
    MemoryDenyWriteExecute (seccomp filters) were dumped and restored by the unit's start."""
    proc = proc_with(tmp_path)
    props = show(ProtectHostname="yes", RestrictNamespaces="yes", MemoryDenyWriteExecute="yes",
                 SystemCallFilter="_llseek accept accept4")
    assert sandbox.blockers(WEB, props, proc) == []


def test_set_options_reads_systemctl_show_values():
    props = show(PrivateTmp="yes", ProtectSystem="strict", ProtectHome="read-only", ReadOnlyPaths="/srv",
                 MountFlags="shared", ProtectProc="invisible")
    assert sandbox.set_options(props, sandbox.MOUNT_OPTIONS) == [
        "PrivateTmp", "ProtectSystem", "ProtectHome", "ProtectProc", "ReadOnlyPaths"]
    assert sandbox.set_options(show(), sandbox.MOUNT_OPTIONS) == []
    assert sandbox.set_options({}, sandbox.MOUNT_OPTIONS) == []       # an older systemd: nothing named


def jailed(proc):
    """PID 500's mount namespace has a root that is not the host's / (RootDirectory=)."""
    (proc / "self" / "mountinfo").write_text("21 1 254:1 / / rw shared:1 - ext4 /dev/vda1 rw\n")
    (proc / "500" / "mountinfo").write_text("120 100 254:1 /srv/jail / ro shared:49 master:1 - ext4 /dev/vda1 rw\n")
    return proc


def test_a_carried_mount_namespace_is_no_blocker(tmp_path):
    """PrivateTmp, ProtectSystem, DynamicUser...: carried (mountns.py)."""
    proc = proc_with(tmp_path, mnt=OWN_MNT)
    (proc / "self" / "mountinfo").write_text("21 1 254:1 / / rw shared:1 - ext4 /dev/vda1 rw\n")
    (proc / "500" / "mountinfo").write_text("120 100 254:1 / / ro shared:49 master:1 - ext4 /dev/vda1 rw\n"
                                            "130 120 254:1 /tmp/systemd-private-x/tmp /tmp rw master:1 - ext4 x rw\n")
    assert sandbox.blockers(WEB, show(PrivateTmp="yes", ProtectSystem="strict"), proc) == []


def test_mount_namespace_names_the_unit_and_the_options(tmp_path):
    proc = jailed(proc_with(tmp_path, mnt=OWN_MNT))
    [b] = sandbox.blockers(WEB, show(PrivateTmp="yes", ProtectHome="yes"), proc)
    assert b.message.startswith("web.service runs in a mount namespace of its own (PrivateTmp, ProtectHome) "
                                "that cannot be carried: its root is not the host's /")
    assert "systemctl edit web.service" in b.hint and "PrivateTmp=no ProtectHome=no" in b.hint


def test_mount_namespace_hint_clears_path_options(tmp_path):
    proc = jailed(proc_with(tmp_path, mnt=OWN_MNT))
    [b] = sandbox.blockers(WEB, show(ReadOnlyPaths="/srv", ProtectProc="invisible"), proc)
    assert "ProtectProc=default ReadOnlyPaths=" in b.hint


def test_mount_namespace_without_a_named_option(tmp_path):
    """The namespace is what counts; an option kupgrade does not know still blocks."""
    proc = jailed(proc_with(tmp_path, mnt=OWN_MNT))
    [b] = sandbox.blockers(WEB, show(), proc)
    assert "mount namespace of its own" in b.message and "systemctl cat web.service" in b.hint


def test_options_without_the_namespace_do_not_block(tmp_path):
    """The namespace is read from /proc: a unit restarted since it was edited counts as it runs."""
    proc = proc_with(tmp_path)
    assert sandbox.blockers(WEB, show(PrivateTmp="yes"), proc) == []


def test_dynamic_user_is_named(tmp_path):
    """DynamicUser implies PrivateTmp, ProtectSystem=strict, ProtectHome=read-only,
    NoNewPrivileges (systemctl show prints them so); its no_new_privs alone would be carried."""
    proc = jailed(proc_with(tmp_path, mnt=OWN_MNT, nnp="1"))
    props = show(DynamicUser="yes", PrivateTmp="yes", ProtectSystem="strict", ProtectHome="read-only")
    [mnt] = sandbox.blockers(WEB, props, proc)
    assert "(PrivateTmp, ProtectSystem, ProtectHome, DynamicUser)" in mnt.message


def test_private_users(tmp_path):
    proc = proc_with(tmp_path, user=OWN_USER)
    [b] = sandbox.blockers(WEB, show(PrivateUsers="yes"), proc)
    assert "web.service runs in a user namespace of its own (PrivateUsers=yes)" in b.message
    assert "Can't setns" in b.message and "PrivateUsers=no" in b.hint


def test_no_new_privs_of_the_root_is_carried(tmp_path, monkeypatch):
    """NoNewPrivileges=yes: the restore runs criu with it (setpriv), every task inherits it."""
    proc = proc_with(tmp_path, nnp="1", child_nnp="1")
    w = Workload("unit:web.service", 500, (500, 501), unit="web.service")
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: "/usr/bin/" + name)
    assert sandbox.blockers(w, show(NoNewPrivileges="yes"), proc) == []
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    [b] = sandbox.blockers(w, show(NoNewPrivileges="yes"), proc)
    assert "setpriv is not installed" in b.message and "util-linux" in b.hint


def test_no_new_privs_below_a_root_without_it(tmp_path):
    proc = proc_with(tmp_path, child_nnp="1")
    w = Workload("unit:web.service", 500, (500, 501), unit="web.service")
    [b] = sandbox.blockers(w, show(), proc)
    assert b.message.startswith("web.service: PID 501 set no_new_privs, its tree root PID 500 did not")
    assert "would run without it" in b.message


def test_everything_combined(tmp_path):
    proc = jailed(proc_with(tmp_path, mnt=OWN_MNT, user=OWN_USER, nnp="1"))
    props = show(PrivateUsers="yes", PrivateTmp="yes", ProtectSystem="strict", ProtectHome="yes",
                 ProtectHostname="yes", PrivateDevices="yes", DynamicUser="yes", NoNewPrivileges="yes",
                 RestrictNamespaces="yes", MemoryDenyWriteExecute="yes", SystemCallFilter="_llseek")
    got = [b.message for b in sandbox.blockers(WEB, props, proc)]
    assert len(got) == 2 and all(m.startswith("web.service") for m in got)
    assert "(PrivateTmp, ProtectSystem, ProtectHome, PrivateDevices, DynamicUser)" in got[0]
    assert "user namespace" in got[1]


def test_a_pid_workload_is_checked_too(tmp_path):
    proc = jailed(proc_with(tmp_path, mnt=OWN_MNT, child_nnp="1"))
    w = Workload("pid:500", 500, (500, 501))
    mnt, nnp = sandbox.blockers(w, None, proc)
    assert mnt.message.startswith("pid:500 runs in a mount namespace of its own (not set up by kupgrade)")
    assert "kupgrade's mount namespace" in mnt.hint and nnp.message.startswith("pid:500: PID 501 set no_new_privs")


def test_unreadable_namespaces_are_no_blocker(tmp_path):
    proc = fake_proc(tmp_path)          # no ns/mnt links at all (exited meanwhile, or no root)
    task(proc, 500, comm="web")
    assert sandbox.blockers(WEB, show(PrivateTmp="yes"), proc) == []


def test_resolve_passes_the_units_properties(monkeypatch):
    seen = []
    monkeypatch.setattr(sandbox, "blockers", lambda w, props=None, proc=None: seen.append((w.selector, props)) or [])
    me = os.getpid()
    props = {"MainPID": str(me), "ControlGroup": "/system.slice/web.service", "ActiveState": "active",
             "PrivateTmp": "yes"}
    workloads.resolve((), (), ("web.service",), describe_unit=lambda u: (props, ""))
    assert seen == [("unit:web.service", props)]


def test_restore_runs_criu_with_no_new_privs_when_the_root_had_it(tmp_path):
    plain = criu.restore_argv(Path("/i"), Path("/p"))
    argv = criu.restore_argv(Path("/i"), Path("/p"), no_new_privs=True)
    assert plain[0] == "criu" and argv == ["setpriv", "--no-new-privs", *plain]


def test_no_new_privs_of_a_task(tmp_path):
    proc = proc_with(tmp_path, nnp="1", child_nnp="0")
    assert criu.no_new_privs(500, proc) and not criu.no_new_privs(501, proc) and not criu.no_new_privs(502, proc)


def test_the_marker_next_to_the_images_makes_the_restore_keep_it(tmp_path, monkeypatch):
    images = tmp_path / "images" / "tree-500"
    images.mkdir(parents=True)
    (images / criu.NO_NEW_PRIVS).write_text("1\n")
    ran = []

    def fake_run(argv, **kw):
        ran.append(argv)
        (images / "restored.pid").write_text("500")

    monkeypatch.setattr(trees, "run_cmd", fake_run)
    monkeypatch.setattr(trees, "_taken", lambda w: "")
    r = trees.restore_one(tmp_path, WEB)
    assert r["ok"] and ran[0][:3] == ["setpriv", "--no-new-privs", "criu"]
    (images / criu.NO_NEW_PRIVS).unlink()
    trees.restore_one(tmp_path, WEB)
    assert ran[1][0] == "criu"
