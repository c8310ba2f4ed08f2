import json

from kupgrade.cli import main


def test_bad_config_is_one_line_with_hint(tmp_path, capsys):
    cfg = tmp_path / "k.toml"
    cfg.write_text("[workloads]\npid = [5]\n")
    assert main(["check", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"kupgrade: {cfg}: unknown key `workloads.pid`"
    assert err[1].startswith("hint: ")


def test_usage_error_exit_2(capsys):
    assert main(["check", "--bogus"]) == 2


def test_plan_json_only_json_on_stdout(tmp_path, capsys):
    cfg = tmp_path / "k.toml"
    cfg.write_text('[workloads]\npids = [4242]\n[target]\nkernel = "6.12.117+deb12-amd64"\n')
    assert main(["plan", "--config", str(cfg), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in doc["stages"]] == ["preflight", "prepare", "freeze", "flush", "snapshot", "kexec", "restore"]
    assert any("4242" in a for s in doc["stages"] for a in s["actions"])


def test_report_without_records(tmp_path, capsys):
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'[paths]\nstate = "{tmp_path}"\n')
    assert main(["report", "--config", str(cfg)]) == 1
    assert "no upgrade record yet" in capsys.readouterr().err


def test_run_without_terminal_or_yes_refuses_before_anything(tmp_path, capsys, monkeypatch):
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'[workloads]\npids = [4242]\n[target]\nkernel = "x"\n[paths]\nstate = "{tmp_path}"\n')
    assert main(["run", "--config", str(cfg)]) == 1
    assert "pass --yes" in capsys.readouterr().err
    assert not (tmp_path / "records").exists()


def test_step_and_yes_contradict(tmp_path, capsys):
    assert main(["run", "--step", "--yes", "--pid", "1", "--kernel", "x"]) == 2
    assert "--step and --yes contradict" in capsys.readouterr().err


def test_rehearse_step_without_terminal_refuses(tmp_path, capsys, monkeypatch):
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'[workloads]\npids = [4242]\n[target]\nkernel = "x"\n[paths]\nstate = "{tmp_path}"\n')
    assert main(["rehearse", "--step", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "no terminal on stdin to ask the go/no-go and the steps" in err
    assert not (tmp_path / "records").exists()


def test_every_command_help_says_what_it_changes(capsys):
    for cmd in ("plan", "check", "run", "rehearse", "restore", "report", "install-boot"):
        assert main([cmd, "--help"]) == 0
        out = capsys.readouterr().out
        assert "Changes" in out or "changes" in out, cmd


def test_skip_only_skippable_stages(capsys):
    assert main(["run", "--yes", "--skip", "snapshot", "--pid", "2", "--kernel", "x"]) == 2
    assert "--skip snapshot: not a stage that can be skipped" in capsys.readouterr().err
