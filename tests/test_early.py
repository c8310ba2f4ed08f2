"""early-restore: bundling /bin/sh hooks into the snapshot, the initramfs runner, collecting."""

import json
import subprocess

import pytest
from hookfakes import ETH0, PyHook, write_exec

from kupgrade import early
from kupgrade.errors import HookError
from kupgrade.hooks import Hook, parse_spec

EXTRA = {"upgrade_id": "u1"}


def sh_hook(directory, name, body, critical=False, timeout=5):
    decl = {"points": ["early-restore"], "match": [{"subsystem": "net"}], "critical": critical, "timeout": timeout}
    path = write_exec(directory, name, describe=decl, body=body)
    return Hook(parse_spec(decl, name), "executable", str(path))


def run_runner(snap):
    subprocess.run(["sh", str(snap / "hooks" / early.BUNDLE / early.RUNNER)], check=True, timeout=30)


def test_bundle_run_collect(tmp_path):
    src, snap = tmp_path / "hooks.d", tmp_path / "snap"
    src.mkdir()
    good = sh_hook(src, "10-good", 'cat > /dev/null; echo \'{"restored": 2}\'')
    bad = sh_hook(src, "20-bad", 'echo "no such device" >&2; exit 4')
    py_exec = Hook(parse_spec({"points": ["early-restore"]}, "30-py"), "executable",
                   str(write_exec(src, "30-py")))
    (src / "30-py").write_text("#!/usr/bin/python3\n")
    notes = early.bundle([good, bad, py_exec, PyHook("40-inproc", points=("restore",)).hook()], [ETH0], EXTRA,
                         snap, restore_dir=snap)
    assert notes == ["10-good: bundled for early-restore", "20-bad: bundled for early-restore",
                     ("30-py: early-restore skipped: not a /bin/sh script (first line '#!/usr/bin/python3'): "
                      "the initramfs has only busybox")]
    d = snap / "hooks" / early.BUNDLE
    req = json.loads((d / "10-good.request.json").read_text())
    assert req["point"] == "early-restore" and req["devices"][0]["sys_name"] == "eth0"
    assert req["state_dir"] == str(snap / "hooks" / "10-good")
    assert early.collect(snap)[0].error.startswith("did not run")       # the initramfs did not run it
    run_runner(snap)
    results = early.collect(snap)
    assert [(r.hook, r.ok) for r in results] == [("10-good", True), ("20-bad", False), ("30-py", False)]
    assert results[0].reply == {"restored": 2}
    assert results[1].error == "exited 4: no such device"
    assert results[2].error.startswith("skipped: not a /bin/sh script")


def test_runner_timeout_and_critical(tmp_path):
    snap = tmp_path / "snap"
    slow = sh_hook(tmp_path, "slow", "sleep 20", critical=True, timeout=1)
    early.bundle([slow], [ETH0], EXTRA, snap, restore_dir=snap)
    run_runner(snap)
    with pytest.raises(HookError, match="critical hook slow failed at early-restore: timed out") as e:
        early.collect(snap)
    assert e.value.results[0].seconds < 10


def test_critical_hook_that_cannot_run_early_stops_before_the_switch(tmp_path):
    hook = PyHook("gpu", points=("save",), critical=True).hook()
    hook = Hook(parse_spec({"points": ["early-restore"], "critical": True}, "gpu"), "entry-point", "x", hook.target)
    with pytest.raises(HookError, match="critical hook gpu declares early-restore but Python hooks"):
        early.bundle([hook], [], EXTRA, tmp_path)


def test_nothing_bundled_nothing_collected(tmp_path):
    assert early.collect(tmp_path) == []
