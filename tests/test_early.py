"""early-restore: bundling /bin/sh hooks into the snapshot, the initramfs runner, collecting."""

import json
import subprocess

import pytest
from hookfakes import ETH0, PyHook, write_exec

from kupgrade.errors import HookError
from kupgrade.hooks import Hook, early, parse_spec

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


def runner_env(tmp_path, busybox_without=(), path_tools=("sh", "cat")):
    """The runner's environment: a busybox lacking some applets, a PATH with only these tools."""
    import os
    import shutil
    fake = tmp_path / "fake-busybox"
    fake.write_text("#!/bin/sh\ncase \"$1\" in " + "|".join(busybox_without or ("NONE",)) + ") exit 127 ;; esac\n"
                    "exec busybox \"$@\"\n".replace("busybox", shutil.which("busybox"), 1))
    fake.chmod(0o755)
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in path_tools:
        os.symlink(shutil.which(tool), bin_ / tool)
    return {"PATH": str(bin_), "KUPGRADE_BUSYBOX": str(fake) if busybox_without != ("all",) else "/nonexistent"}


def bundled(tmp_path, body='cat > /dev/null; touch "$0.ran"; echo \'{"up": 1}\''):
    snap = tmp_path / "snap"
    hook = sh_hook(tmp_path, "net", body, critical=True)
    early.bundle([hook], [ETH0], EXTRA, snap, restore_dir=snap)
    return snap, snap / "hooks" / early.BUNDLE


def run_with(snap, env):
    subprocess.run(["/bin/sh", str(snap / "hooks" / early.BUNDLE / early.RUNNER)], check=True, timeout=30, env=env)


@pytest.mark.parametrize("shell", [["sh"], ["busybox", "sh"]])      # busybox sh: as in the initramfs
def test_bundle_holds_the_sums_of_each_hooks_files(tmp_path, shell):
    snap, d = bundled(tmp_path)
    lines = (d / "net.sha256").read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == ["net", "net.request.json", "net.timeout"]
    subprocess.run([*shell, str(d / early.RUNNER)], check=True, timeout=30)
    [r] = early.collect(snap)
    assert r.ok and r.reply == {"up": 1} and (d / "net.ran").exists()


@pytest.mark.parametrize("tampered", ["net", "net.request.json", "net.timeout", "net.sha256"])
def test_a_hook_whose_files_do_not_match_is_not_run(tmp_path, tampered):
    snap, d = bundled(tmp_path)
    with open(d / tampered, "a") as f:
        f.write("\n# changed\n")
    run_runner(snap)
    with pytest.raises(HookError, match="critical hook net failed at early-restore: not verified: its script, "
                                        "request or timeout does not match the sha256 written at save: not run"):
        early.collect(snap)
    assert not (d / "net.ran").exists()


def test_no_sha256_tool_means_not_run(tmp_path):
    snap, d = bundled(tmp_path)
    run_with(snap, runner_env(tmp_path, busybox_without=("sha256sum",), path_tools=("sh", "cat", "timeout")))
    with pytest.raises(HookError, match="net failed at early-restore: not verified: no sha256sum") as e:
        early.collect(snap)
    assert not (d / "net.ran").exists() and e.value.results[0].seconds < 5


def test_no_timeout_means_not_run(tmp_path):
    snap, d = bundled(tmp_path)
    run_with(snap, runner_env(tmp_path, busybox_without=("timeout",), path_tools=("sh", "cat", "sha256sum")))
    with pytest.raises(HookError, match="net failed at early-restore: no timeout available .*: not run"):
        early.collect(snap)
    assert not (d / "net.ran").exists()


def test_without_busybox_the_commands_on_path_do(tmp_path):
    snap, d = bundled(tmp_path)
    run_with(snap, runner_env(tmp_path, busybox_without=("all",), path_tools=("sh", "cat", "sha256sum", "timeout")))
    [r] = early.collect(snap)
    assert r.ok and r.reply == {"up": 1}


def test_early_reply_is_bounded(tmp_path):
    snap, d = bundled(tmp_path, body="cat >/dev/null; head -c 2000000 /dev/zero | tr '\\0' ' '; echo '{}'")
    run_runner(snap)
    with pytest.raises(HookError, match="net failed at early-restore: reply larger than 1 MiB"):
        early.collect(snap)
