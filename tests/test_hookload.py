"""Finding hooks: built-ins, entry points, executables and their ownership/permission rules."""

import types
from importlib import metadata

from hookfakes import PyHook, write_exec

from kupgrade.hooks import hookload
from kupgrade.hooks.hookload import load_builtins, load_entry_points, load_executables, load_hooks


def test_builtins_load_without_entry_points():
    hooks, skipped = load_builtins()
    assert skipped == []
    net = next(h for h in hooks if h.name == "network")
    assert net.kind == "builtin" and net.source == "kupgrade_hooks.network"
    assert "restore" in net.spec.points


def test_missing_builtin_package_is_reported():
    hooks, [s] = load_builtins("no_such_package_xyz")
    assert hooks == [] and "not installed" in s.reason


def _fake_entry_points(monkeypatch, **objects):
    eps = [metadata.EntryPoint(name, f"fake:{name}", hookload.GROUP) for name in objects]
    monkeypatch.setattr(metadata.EntryPoint, "load", lambda self: objects[self.name])
    monkeypatch.setattr(hookload.metadata, "entry_points", lambda group: eps if group == hookload.GROUP else [])


def test_entry_points_module_instance_or_class(monkeypatch):
    module = types.SimpleNamespace(describe=lambda: {"points": ["save"]}, save=lambda r: {})

    class Klass:
        def describe(self):
            return {"points": ["verify", "early-restore"]}

        def verify(self, r):
            return {}

    _fake_entry_points(monkeypatch, mod=module, inst=PyHook("inst"), klass=Klass, broken=object())
    hooks, skipped = load_entry_points()
    assert [h.name for h in hooks] == ["inst", "klass", "mod"]
    assert next(h for h in hooks if h.name == "klass").spec.points == ("verify",)   # no Python in the initramfs
    assert [(s.name, "describe" in s.reason) for s in skipped] == [("broken", True)]


def test_executables_run_parts_names_and_order(tmp_path):
    for name in ("20-b", "10-a", "c.dpkg-old", "README.md"):
        write_exec(tmp_path, name)
    (tmp_path / "notexec").write_text("x")
    hooks, skipped = load_executables(tmp_path)
    assert [h.name for h in hooks] == ["10-a", "20-b"]
    assert hooks[0].kind == "executable" and hooks[0].spec.match == ({"subsystem": "net"},)
    reasons = {s.name: s.reason for s in skipped}
    assert "run-parts" in reasons["c.dpkg-old"] and "run-parts" in reasons["README.md"]
    assert reasons["notexec"] == "not an executable file"


def test_executables_must_not_be_group_or_world_writable(tmp_path):
    write_exec(tmp_path, "gw", mode=0o775)
    write_exec(tmp_path, "ww", mode=0o757)
    write_exec(tmp_path, "ok", mode=0o700)
    hooks, skipped = load_executables(tmp_path)
    assert [h.name for h in hooks] == ["ok"]
    assert {s.name: s.reason for s in skipped} == {
        "gw": "group/world-writable (mode 0775); chmod go-w it",
        "ww": "group/world-writable (mode 0757); chmod go-w it"}


def test_executables_must_be_root_owned(tmp_path):
    write_exec(tmp_path, "mine")
    hooks, [s] = load_executables(tmp_path, owner_ok=lambda st: False)
    assert hooks == [] and "not root" in s.reason


def test_unsafe_directory_disables_all(tmp_path):
    d = tmp_path / "hooks.d"
    d.mkdir()
    write_exec(d, "a")
    d.chmod(0o777)
    hooks, [s] = load_executables(d)
    assert hooks == [] and s.name == "*" and "no hook in it runs" in s.reason


def test_bad_describe_is_skipped_with_reason(tmp_path):
    write_exec(tmp_path, "wrongname", describe={"name": "other", "points": ["save"]})
    write_exec(tmp_path, "nopoints", describe={"points": []})
    (tmp_path / "crash").write_text("#!/bin/sh\necho oops >&2\nexit 1\n")
    (tmp_path / "crash").chmod(0o755)
    hooks, skipped = load_executables(tmp_path)
    reasons = {s.name: s.reason for s in skipped}
    assert hooks == []
    assert "describe says name 'other'" in reasons["wrongname"]
    assert "points" in reasons["nopoints"]
    assert reasons["crash"] == "describe: exited 1: oops"


def test_executable_overrides_builtin(tmp_path, monkeypatch):
    _fake_entry_points(monkeypatch)
    write_exec(tmp_path, "network", describe={"points": ["save"], "match": [{"subsystem": "net"}]})
    hooks, skipped = load_hooks(tmp_path)
    net = next(h for h in hooks if h.name == "network")
    assert net.kind == "executable"
    assert any(s.source == "kupgrade_hooks.network" and "overridden by executable" in s.reason for s in skipped)


def test_missing_directory_is_no_hooks(tmp_path):
    assert load_executables(tmp_path / "absent") == ([], [])
