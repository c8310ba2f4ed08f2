"""`kupgrade hooks list` and `kupgrade hooks new`, through the real command line."""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hookfakes import DEVICES, write_exec
from typer.testing import CliRunner

from kupgrade import cli_hooks
from kupgrade.cli import app, main
from kupgrade.hooks import early
from kupgrade.hooks.hookload import load_executables

REPO = Path(__file__).resolve().parents[1]


def runner() -> CliRunner:
    """stdout without stderr: click 8.1 (Debian bookworm) mixes them unless told not to; 8.2 never does."""
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)
    return CliRunner()


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_hooks, "list_devices", lambda: list(DEVICES))
    held = {"/dev/dri/card0": [(4242, "python3")], "/dev/infiniband/uverbs0": [(4300, "ib_send_bw")]}
    monkeypatch.setattr(cli_hooks, "open_devnodes", lambda: held)
    hooks_d = tmp_path / "hooks.d"
    hooks_d.mkdir()
    write_exec(hooks_d, "50-blk", describe={"points": ["save", "restore"], "match": [{"subsystem": "block"}]})
    write_exec(hooks_d, "60-loose", mode=0o777)
    write_exec(hooks_d, "x.dpkg-old")
    path = tmp_path / "k.toml"
    path.write_text(f'[hooks]\ndir = "{hooks_d}"\nallow = ["infiniband"]\n')
    return path


def test_list_json_is_only_json(cfg):
    result = runner().invoke(app, ["hooks", "list", "--config", str(cfg), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [h["name"] for h in doc["hooks"]] == ["50-blk", "block", "network", "watchdog"]     # name order
    assert [s["name"] for s in doc["skipped"]] == ["60-loose"]           # run-parts-ignored names only with --all
    rows = {d["device"]["sys_name"]: d for d in doc["devices"]}
    assert rows["eth0"]["hooks"] == ["network"] and rows["vda"]["hooks"] == ["50-blk", "block"]
    assert rows["0000:00:02.0"]["blocking"] and not rows["mlx5_0"]["blocking"] and rows["mlx5_0"]["allowed"]
    assert rows["0000:00:02.0"]["holders"] == [{"pid": 4242, "comm": "python3"}]
    assert [b["message"].split()[0] for b in doc["blockers"]] == ["0000:00:02.0"]


def test_list_all_shows_ignored_files(cfg):
    doc = json.loads(runner().invoke(app, ["hooks", "list", "-c", str(cfg), "--json", "--all"]).stdout)
    assert {s["name"] for s in doc["skipped"]} == {"60-loose", "x.dpkg-old"}
    assert doc["hidden_devices"] == 0


def test_list_human(cfg):
    result = runner().invoke(app, ["hooks", "list", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "UNSAFE, in use" in result.stdout and "skipped 60-loose" in result.stdout
    assert "held open by" in result.stdout and "PID 4242" in result.stdout and "(python3)" in result.stdout
    assert "1 unsafe device(s) in use block the upgrade" in result.stdout


def test_list_unused_gpu_does_not_block(cfg, monkeypatch):
    monkeypatch.setattr(cli_hooks, "open_devnodes", dict)
    result = runner().invoke(app, ["hooks", "list", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "unsafe class, not in use" in result.stdout and "nothing blocks" in result.stdout


def _pytest(directory: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(directory)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=directory,
                          check=False)


@pytest.mark.parametrize("flags, files", [
    ([], ["my-dev", "test_my_dev.py"]),
    (["--sh"], ["my-dev", "test_my_dev.py"]),
    (["--python"], ["my_dev.py", "test_my_dev.py"]),
])
def test_new_scaffold_passes_its_own_test(tmp_path, capsys, flags, files):
    assert main(["hooks", "new", "my-dev", "--dir", str(tmp_path), *flags]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
    proc = _pytest(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed" in proc.stdout


@pytest.mark.parametrize("flags, early_ok", [([], False), (["--sh"], True)])
def test_scaffolded_executable_loads_as_a_hook(tmp_path, flags, early_ok):
    assert main(["hooks", "new", "my-dev", "--dir", str(tmp_path), *flags]) == 0
    (tmp_path / "test_my_dev.py").unlink()
    [hook], _ = load_executables(tmp_path)
    assert hook.name == "my-dev" and hook.spec.match == ({"subsystem": "CHANGEME"},)
    assert (early.cannot_run_early(hook) is None) == early_ok


def test_new_refuses_to_overwrite(tmp_path, capsys):
    (tmp_path / "test_mine.py").write_text("keep me")
    assert main(["hooks", "new", "mine", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"kupgrade: {tmp_path / 'test_mine.py'} already exists; nothing was written"
    assert err[1].startswith("hint: ")
    assert not (tmp_path / "mine").exists() and (tmp_path / "test_mine.py").read_text() == "keep me"


def test_new_rejects_bad_names(tmp_path, capsys):
    assert main(["hooks", "new", "my.hook", "--dir", str(tmp_path)]) == 2
    assert "run-parts" in capsys.readouterr().err
    assert main(["hooks", "new", "9gpu", "--python", "--dir", str(tmp_path)]) == 2
