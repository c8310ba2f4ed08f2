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


def one_line_and_hint(capsys) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("kupgrade: ") and err[1].startswith("hint: "), err
    return err[0]


def state_config(tmp_path, body=""):
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'[paths]\nstate = "{tmp_path / "state"}"\n' + body)
    return cfg


def test_no_target_kernel_is_a_usage_error_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    from kupgrade.output import logfile
    monkeypatch.setattr(logfile, "LOG_DIR", tmp_path / "log")
    cfg = state_config(tmp_path, "[workloads]\npids = [4242]\n")
    assert main(["check", "--config", str(cfg)]) == 2
    assert one_line_and_hint(capsys) == "kupgrade: no target kernel configured"
    assert main(["run", "--yes", "--config", str(cfg)]) == 2
    assert one_line_and_hint(capsys) == "kupgrade: no target kernel configured"
    assert not (tmp_path / "state").exists() and not (tmp_path / "log").exists()


def test_plan_shows_a_missing_target_as_a_blocker(tmp_path, capsys):
    cfg = state_config(tmp_path)
    assert main(["plan", "--config", str(cfg), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["blockers"][0]["message"] == "no target kernel configured"


def test_huge_pid_is_a_config_error(tmp_path, capsys):
    cfg = state_config(tmp_path)
    assert main(["check", "--config", str(cfg), "--kernel", "x", "--pid", "99999999999999999999"]) == 2
    assert one_line_and_hint(capsys).startswith("kupgrade: --pid: PIDs must be > 1 and at most ")
    cfg.write_text("[workloads]\npids = [1000000000000000000000000000000]\n")
    assert main(["check", "--config", str(cfg), "--kernel", "x"]) == 2
    assert "`workloads.pids` PIDs must be > 1 and at most" in one_line_and_hint(capsys)


def test_non_utf8_config_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "k.toml"
    cfg.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert main(["check", "--config", str(cfg)]) == 2
    assert one_line_and_hint(capsys) == f"kupgrade: {cfg}: not UTF-8 text (byte 0): not a TOML config file"


def test_deeply_nested_config_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "k.toml"
    cfg.write_text("a = " + "[" * 100000 + "]" * 100000 + "\n")
    assert main(["plan", "--config", str(cfg)]) == 2
    assert one_line_and_hint(capsys) == f"kupgrade: {cfg}: nested too deeply to parse"


def test_kernel_names_are_checked(tmp_path, capsys):
    cfg = state_config(tmp_path)
    for cmd in (["check", "--pid", "4242"], ["install-boot", "--no-rebuild"]):
        assert main([*cmd, "--config", str(cfg), "--kernel", "../../etc/passwd"]) == 2
        assert one_line_and_hint(capsys).startswith("kupgrade: --kernel: must be a kernel version")


def test_report_id_must_be_a_record_id(tmp_path, capsys):
    cfg = state_config(tmp_path)
    assert main(["report", "--config", str(cfg), "--id", "../x"]) == 2
    assert one_line_and_hint(capsys) == "kupgrade: --id '../x' is not a record id"


def test_corrupt_records_are_one_line(tmp_path, capsys):
    from kupgrade.output import record
    cfg = state_config(tmp_path)
    records = tmp_path / "state" / "records"
    records.mkdir(parents=True)
    rid = record.new_id()
    bad = {"not json": "{", "missing keys": '{"id": "x"}', "wrong shape": "[]",
           "wrong types": json.dumps({"id": rid, "command": "run", "kernel_from": "a", "outcome": "x",
                                      "stages": [{"name": "s", "status": "ok", "started": "x", "duration_s": 1}]})}
    for text in bad.values():
        (records / f"{rid}.json").write_text(text)
        assert main(["report", "--config", str(cfg), "--id", rid]) == 2
        line = one_line_and_hint(capsys)
        assert line.startswith(f"kupgrade: corrupt upgrade record: {records / rid}.json: "), line
    (records / "last").write_text("20200101T000000-abcdef\n")
    assert main(["report", "--config", str(cfg)]) == 2
    assert "last names '20200101T000000-abcdef', which is no record" in one_line_and_hint(capsys)
    assert record.latest(tmp_path / "state", "x") is None          # the corrupt ones are skipped


def test_markup_in_a_cgroup_name_is_printed_literally(tmp_path, capsys):
    cfg = state_config(tmp_path)
    for cg in ("/x[/y]", "/[bold]"):
        assert main(["check", "--config", str(cfg), "--kernel", "x", "--cgroup", cg]) == 3
        out, err = capsys.readouterr()
        assert f"cgroup {cg} does not exist" in out
        assert err.startswith("kupgrade: blocked: ") and "Traceback" not in err
        assert main(["plan", "--config", str(cfg), "--kernel", "x", "--cgroup", cg]) == 0
        assert f"cgroup {cg} does not exist" in capsys.readouterr().out


def test_report_json_is_the_record_with_a_summary(tmp_path, capsys):
    from kupgrade.output import record
    cfg = state_config(tmp_path)
    rec = record.UpgradeRecord(record.new_id(), "run", "6.1", kernel_to="6.12", outcome=record.ABORTED,
                               stages=(record.StageResult("freeze", "failed", 1.0, 0.2, error="no", hint="yes"),))
    record.save(rec, tmp_path / "state")
    assert main(["report", "--config", str(cfg), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert record.UpgradeRecord.from_json(doc) == rec
    assert doc["summary"]["error"] == "freeze: no" and doc["summary"]["downtime_s"] is None


def test_the_help_formatter_is_loaded_only_when_used():
    """typer's rich help formatter (rich's markdown parser with it) costs seconds of every
    command's start under QEMU TCG: importing the CLI leaves it to --help and usage errors."""
    import subprocess
    import sys
    code = ("import sys, kupgrade.cli; m = sys.modules.get('typer.rich_utils'); "
            "print('rich.markdown' in sys.modules, m is None or type(m).__name__ == '_StandIn')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
