"""The hook contract: declarations, results, the runner and its failure policy."""

import json

import pytest
from hookfakes import DEVICES, ETH0, PyHook, write_exec

from kupgrade.errors import HookError
from kupgrade.hooks import (
    Hook,
    HookFailed,
    HookResult,
    HookSpec,
    blockers,
    call_executable,
    load_saved,
    parse_spec,
    run_point,
    store_saved,
)

EXTRA = {"upgrade_id": "20250101T000000-abcdef", "kernel_from": "6.1.0", "kernel_to": "6.12.0"}


def test_parse_spec_defaults_and_point_order():
    spec = parse_spec({"points": ["verify", "save"]}, "x")
    assert spec == HookSpec("x", ("save", "verify"), (), False, 30.0, "")
    assert HookSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


@pytest.mark.parametrize("decl, problem", [
    ([], "JSON object"),
    ({"name": "other", "points": ["save"]}, "named 'x'"),
    ({"points": []}, "points"),
    ({"points": ["reboot"]}, "points"),
    ({"points": ["save"], "match": {"subsystem": "net"}}, "list"),
    ({"points": ["save"], "match": [{"vendor": "x"}]}, "unknown match key"),
    ({"points": ["save"], "match": [{"attributes": {"mtu": 1500}}]}, "attributes"),
    ({"points": ["save"], "critical": "yes"}, "critical"),
    ({"points": ["save"], "timeout": 0}, "timeout"),
])
def test_parse_spec_rejects(decl, problem):
    with pytest.raises(ValueError, match=problem):
        parse_spec(decl, "x")


def test_result_json_round_trip():
    r = HookResult("network", "save", True, 0.25, {"state": {"links": []}}, "", True)
    assert HookResult.from_json(json.loads(json.dumps(r.to_json()))) == r
    assert r.state == {"links": []}


def test_request_carries_matched_devices_and_state_dir(tmp_path):
    fake = PyHook(save={"state": {"mtu": 1400}})
    [r] = run_point("save", [fake.hook()], DEVICES, EXTRA, snapshot_dir=tmp_path)
    req = fake.requests[0]
    assert r.ok and r.state == {"mtu": 1400}
    assert req["point"] == "save" and req["hook"] == "fake" and req["api"] == 1
    assert req["upgrade_id"] == EXTRA["upgrade_id"]
    assert [d["sys_name"] for d in req["devices"]] == ["eth0"]
    assert req["state_dir"] == str(tmp_path / "hooks" / "fake") and (tmp_path / "hooks" / "fake").is_dir()
    assert "state" not in req


def test_saved_state_comes_back_at_restore(tmp_path):
    fake = PyHook(save={"state": {"mtu": 1400}}, restore={"ok": 1})
    store_saved(tmp_path, run_point("save", [fake.hook()], DEVICES, EXTRA, snapshot_dir=tmp_path))
    assert load_saved(tmp_path)["fake"].state == {"mtu": 1400}
    [r] = run_point("restore", [fake.hook()], DEVICES, EXTRA, snapshot_dir=tmp_path, saved=load_saved(tmp_path))
    assert r.ok and fake.requests[-1]["state"] == {"mtu": 1400}


def test_hooks_without_devices_do_not_run_machine_wide_ones_do():
    gpu_only = PyHook("gpu", match=({"subsystem": "drm"},))
    machine = PyHook("machine", match=())
    ran = run_point("save", [gpu_only.hook(), machine.hook()], [ETH0], EXTRA)
    assert [r.hook for r in ran] == ["machine"]


def test_after_save_a_hook_whose_device_vanished_still_runs(tmp_path):
    fake = PyHook(save={"state": {"a": 1}}, restore={})
    saved = {r.hook: r for r in run_point("save", [fake.hook()], [ETH0], EXTRA, snapshot_dir=tmp_path)}
    [r] = run_point("restore", [fake.hook()], [], EXTRA, snapshot_dir=tmp_path, saved=saved)
    assert r.ok and fake.requests[-1]["devices"] == []


def test_before_no_return_first_failure_raises_and_stops():
    a = PyHook("a", points=("quiesce",), quiesce=RuntimeError("device busy"))
    b = PyHook("b", points=("quiesce",))
    with pytest.raises(HookError) as e:
        run_point("quiesce", [b.hook(), a.hook()], [ETH0], EXTRA)
    assert e.value.exit_code == 7
    assert "hook a failed at quiesce: RuntimeError: device busy" in e.value.message
    assert "rolled back" in e.value.hint
    assert [r.hook for r in e.value.results] == ["a"] and not b.requests    # name order: a first, b never ran


def test_after_no_return_failures_recorded_others_go_on():
    a = PyHook("a", points=("restore",), restore=RuntimeError("boom"))
    b = PyHook("b", points=("restore",), restore={"done": True})
    results = run_point("restore", [a.hook(), b.hook()], [ETH0], EXTRA)
    assert [(r.hook, r.ok) for r in results] == [("a", False), ("b", True)]
    assert results[0].error == "RuntimeError: boom"


def test_critical_failure_raised_after_the_rest_ran():
    a = PyHook("a", points=("verify",), critical=True, verify=RuntimeError("lost"))
    b = PyHook("b", points=("verify",))
    with pytest.raises(HookError, match="critical hook a failed at verify") as e:
        run_point("verify", [a.hook(), b.hook()], [ETH0], EXTRA)
    assert [(r.hook, r.ok) for r in e.value.results] == [("a", False), ("b", True)]
    assert b.requests


def test_resume_runs_in_reverse_and_never_raises():
    a = PyHook("a", points=("resume",), critical=True, resume=RuntimeError("x"))
    b = PyHook("b", points=("resume",))
    results = run_point("resume", [a.hook(), b.hook()], [ETH0], EXTRA)
    assert [(r.hook, r.ok) for r in results] == [("b", True), ("a", False)]


def test_preflight_blockers_and_bad_reply_shape():
    ok = PyHook("gpu", points=("preflight",), preflight={"blockers": [{"message": "CUDA context open", "hint": "stop it"}]})
    results = run_point("preflight", [ok.hook()], [ETH0], EXTRA)
    [b] = blockers(results)
    assert b.message == "hook gpu: CUDA context open" and b.hint == "stop it"
    bad = PyHook("bad", points=("preflight",), preflight={"blockers": "no"})
    with pytest.raises(HookError, match="blockers"):
        run_point("preflight", [bad.hook()], [ETH0], EXTRA)


def test_python_timeout_is_a_failure():
    import time
    slow = PyHook("slow", points=("restore",), timeout=0.2, restore=lambda r: time.sleep(2))
    [r] = run_point("restore", [slow.hook()], [ETH0], EXTRA)
    assert not r.ok and "timed out after 0.2 s" in r.error


def test_early_restore_is_not_run_in_process():
    with pytest.raises(ValueError, match="initramfs"):
        run_point("early-restore", [], [], EXTRA)


def test_executable_contract(tmp_path):
    path = write_exec(tmp_path, "echo-hook", body='cat > "$0.request"; echo \'{"state": {"seen": "yes"}}\'')
    reply = call_executable(path, "save", {"point": "save"}, 5)
    assert reply == {"state": {"seen": "yes"}}
    assert json.loads((tmp_path / "echo-hook.request").read_text()) == {"point": "save"}


def test_executable_failure_shows_stderr(tmp_path):
    path = write_exec(tmp_path, "bad", body='echo "eth9 is gone" >&2; exit 3')
    with pytest.raises(HookFailed, match="exited 3: eth9 is gone"):
        call_executable(path, "restore", {}, 5)


def test_executable_invalid_json_and_non_object(tmp_path):
    with pytest.raises(HookFailed, match="invalid JSON"):
        call_executable(write_exec(tmp_path, "a", body="echo not-json"), "save", {}, 5)
    with pytest.raises(HookFailed, match="not a JSON object"):
        call_executable(write_exec(tmp_path, "b", body="echo '[1]'"), "save", {}, 5)
    assert call_executable(write_exec(tmp_path, "c", body="true"), "save", {}, 5) == {}


def test_executable_timeout_kills_its_children_too(tmp_path):
    import time
    path = write_exec(tmp_path, "stuck", body="sleep 30 & sleep 30")
    t0 = time.monotonic()
    with pytest.raises(HookFailed, match="timed out after 0.5 s"):
        call_executable(path, "save", {}, 0.5)
    assert time.monotonic() - t0 < 10


def test_executable_hook_in_run_point(tmp_path):
    from kupgrade.hooks import parse_spec
    path = write_exec(tmp_path, "x", body="exit 1")
    hook = Hook(parse_spec({"points": ["save"], "match": [{"subsystem": "net"}]}, "x"), "executable", str(path))
    with pytest.raises(HookError, match="hook x failed at save: exited 1"):
        run_point("save", [hook], [ETH0], EXTRA, snapshot_dir=tmp_path)


@pytest.mark.parametrize("behaviour, error", [
    (SystemExit(3), "raised SystemExit(3)"),
    (KeyboardInterrupt(), "raised KeyboardInterrupt()"),
    ({"state": {"blob": "a" * (2 << 20)}}, "reply larger than 1 MiB"),
    ({"state": {1, 2}}, "hook replied something that is not JSON: TypeError"),
])
def test_python_hook_that_exits_or_replies_too_much_fails(behaviour, error):
    a = PyHook("a", points=("restore",), restore=behaviour)
    [r] = run_point("restore", [a.hook()], [ETH0], EXTRA)
    assert not r.ok and r.error.startswith(error), r.error


def test_python_reply_is_kept_as_plain_json():
    a = PyHook("a", points=("restore",), restore={"links": ("eth0",), "n": 1})
    [r] = run_point("restore", [a.hook()], [ETH0], EXTRA)
    assert r.ok and r.reply == {"links": ["eth0"], "n": 1}


def test_executable_output_is_bounded(tmp_path):
    big = write_exec(tmp_path, "big", body="cat >/dev/null; head -c 3000000 /dev/zero | tr '\\0' ' '; echo '{}'")
    with pytest.raises(HookFailed, match="reply larger than 1 MiB"):
        call_executable(big, "save", {}, 10)
    noisy = write_exec(tmp_path, "noisy", body="head -c 5000000 /dev/zero | tr '\\0' x >&2; echo >&2; echo last >&2; exit 2")
    with pytest.raises(HookFailed) as e:
        call_executable(noisy, "save", {}, 10)
    assert e.value.args[0].startswith("exited 2: ") and e.value.args[0].endswith("\nlast")
    assert len(e.value.args[0]) < 1100
    deep = write_exec(tmp_path, "deep", body="head -c 100000 /dev/zero | tr '\\0' '['")
    with pytest.raises(HookFailed, match="nested too deeply"):
        call_executable(deep, "save", {}, 10)


def test_executable_that_ignores_a_large_request(tmp_path):
    path = write_exec(tmp_path, "deaf", body="echo '{\"ok\": 1}'")
    assert call_executable(path, "save", {"devices": ["x" * 100] * 20000}, 10) == {"ok": 1}
