from pathlib import Path

import pytest

from kupgrade import config, configchecks, configdoc
from kupgrade.errors import ConfigError

GOOD = """
[workloads]
pids = [1234, 5678]
cgroups = ["/workload"]

[target]
kernel = "6.12.117+deb12-amd64"

[snapshot]
size = "2G"

[kexec]
method = "file"
"""


def test_parse_good():
    c = config.parse(GOOD, "k.toml")
    assert c.pids == (1234, 5678)
    assert c.cgroups == ("/workload",)
    assert c.kernel == "6.12.117+deb12-amd64"
    assert c.snapshot_size == "2G"
    assert c.kexec_method == "file"
    assert c.source == "k.toml"


def test_json_round_trip():
    c = config.parse(GOOD, "k.toml")
    assert config.Config.from_json(c.to_json()) == c


@pytest.mark.parametrize("text, words", [
    ("[workloads]\npid = [1]\n", ["k.toml", "unknown key `workloads.pid`", ]),
    ("[workload]\npids = [1]\n", ["k.toml", "unknown section [workload]"]),
    ("[workloads]\npids = 1234\n", ["`workloads.pids` must be a list of int", "1234"]),
    ("[workloads]\npids = [\"1234\"]\n", ["`workloads.pids` must be a list of int"]),
    ("[workloads]\npids = [1]\n", ["PIDs must be > 1"]),
    ("[workloads]\ncgroups = [\"workload\"]\n", ["cgroup paths must be absolute"]),
    ("[snapshot]\ndir = \"/boot/snap\"\n", ["never under /boot"]),
    ("[snapshot]\ndir = \"/\"\n", ["`snapshot.dir` must be a directory of its own under /run or /dev/shm"]),
    ("[snapshot]\ndir = \"/etc\"\n", ["under /run or /dev/shm", "hiding what is there"]),
    ("[snapshot]\ndir = \"/run\"\n", ["under /run or /dev/shm"]),
    ("[snapshot]\ndir = \"/run/../etc\"\n", ["under /run or /dev/shm"]),
    ("[snapshot]\ndir = \"/run/kupgrade\"\n", ["not be in /run/kupgrade"]),
    ("[snapshot]\ndir = \"/run/kupgrade/x\"\n", ["not be in /run/kupgrade"]),
    ("[workloads]\npids = [99999999999999999999999999999]\n", ["PIDs must be > 1 and at most"]),
    ("[target]\nkernel = \"../../etc/passwd\"\n", ["`target.kernel` must be a kernel version"]),
    ("[target]\nkernel = \".hidden\"\n", ["not starting with a dot"]),
    ("a = " + "[" * 100000 + "]" * 100000 + "\n", ["k.toml: nested too deeply"]),
    ("a = " + "{b=" * 5000 + "1" + "}" * 5000 + "\n", ["k.toml: nested too deeply"]),
    ("[workloads]\npids = " + "[" * 50 + "]" * 50 + "\n", ["`workloads.pids` must be a list of int"]),
    ("[snapshot]\nsize = \"lots\"\n", ["`snapshot.size`"]),
    ("[kexec]\nmethod = \"fast\"\n", ["`kexec.method` must be one of auto, file, classic"]),
    ("[target]\nkernel = \"x\"\nvmlinuz = \"/v\"\ninitrd = \"/i\"\n", ["either `target.kernel`"]),
    ("[target]\nvmlinuz = \"/v\"\n", ["go together"]),
    ("[workloads\n", ["not valid TOML"]),
])
def test_errors_name_key_and_file(text, words):
    with pytest.raises(ConfigError) as e:
        config.parse(text, "k.toml")
    for w in words:
        assert w in e.value.message
    assert e.value.hint
    assert e.value.exit_code == 2


def test_missing_default_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "none.toml")
    assert config.load(None) == config.Config(source="")


def test_missing_given_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "none.toml")


def test_overrides_are_checked():
    c = config.with_overrides(config.Config(), pids=(42,), kernel="6.12")
    assert c.pids == (42,) and c.kernel == "6.12"
    with pytest.raises(ConfigError, match="PIDs must be > 1"):
        config.with_overrides(config.Config(), pids=(1,))


def test_docs_in_step_with_settings():
    docs = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert docs.read_text() == configdoc.docs_markdown(), "regenerate: python -m kupgrade.config > docs/config.md"


def test_good_snapshot_dirs_and_kernels():
    for d in ("/run/kupgrade-snapshot", "/run/x/y", "/dev/shm/kupgrade"):
        assert config.parse(f'[snapshot]\ndir = "{d}"\n').snapshot_dir == d
    assert config.parse('[target]\nkernel = "6.1.0-47+deb12~rc1_x"\n').kernel == "6.1.0-47+deb12~rc1_x"


def test_long_values_are_shortened_in_messages():
    with pytest.raises(ConfigError) as e:
        config.parse("[workloads]\npids = [" + ", ".join(["0"] * 100000) + "]\n", "k.toml")
    assert len(e.value.message) < 300


def test_non_utf8_file_names_the_file(tmp_path):
    p = tmp_path / "k.toml"
    p.write_bytes(b"[target]\nkernel = \"\xff\xfe\"\n")
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert e.value.message.startswith(f"{p}: not UTF-8 text") and e.value.hint


def test_pid_max_from_the_kernel_or_the_fallback(tmp_path, monkeypatch):
    f = tmp_path / "pid_max"
    f.write_text("32768\n")
    assert configchecks.pid_max(f) == 32768
    assert configchecks.pid_max(tmp_path / "none") == configchecks.PID_MAX_LIMIT
    monkeypatch.setattr(configchecks, "PID_MAX_FILE", f)
    assert config.parse("[workloads]\npids = [32768]\n").pids == (32768,)
    with pytest.raises(ConfigError, match=r"at most 32768 \(kernel.pid_max\) \(got \[32769\]\)"):
        config.parse("[workloads]\npids = [32769]\n")


def test_overrides_name_the_command_line_option():
    for over, flag in ((dict(pids=(10 ** 20,)), "--pid: "), (dict(cgroups=("w",)), "--cgroup: "),
                       (dict(units=("x",)), "--unit: "), (dict(kernel="../x"), "--kernel: ")):
        with pytest.raises(ConfigError) as e:
            config.with_overrides(config.Config(), **over)
        assert e.value.message.startswith(flag), e.value.message
        assert e.value.hint.startswith(f"for example: {flag[:-2]} ")


def test_snapshot_dir_must_be_free_and_empty(tmp_path):
    from kupgrade.stages.preflight import snapshot_dir_blockers
    assert snapshot_dir_blockers(tmp_path / "absent") == []
    assert snapshot_dir_blockers(tmp_path) == []
    (tmp_path / "x").write_text("")
    assert "is not an empty directory" in snapshot_dir_blockers(tmp_path)[0].message
    assert "is not an empty directory" in snapshot_dir_blockers(tmp_path / "x")[0].message
    assert "already mounted" in snapshot_dir_blockers(Path("/proc"))[0].message


def test_criu_and_kexec_are_settings_every_command_line_obeys(tmp_path):
    from kupgrade.output.record import Workload
    from kupgrade.system import criu, kexec, oom
    from kupgrade.system import run as run_mod
    fake = tmp_path / "criu"
    fake.write_text("#!/bin/sh\necho newer criu \"$@\"\n")
    fake.chmod(0o755)
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'[paths]\ncriu = "{fake}"\nkexec = "/opt/kexec/sbin/kexec"\n')
    try:
        assert config.load(cfg).criu == str(fake)
        assert run_mod.run(criu.check_argv()).stdout == b"newer criu check\n"
        assert criu.dump_argv(Workload("pid:7", 7, (7,)), tmp_path)[0] == str(fake)
        assert criu.restore_argv(tmp_path, tmp_path / "pid", no_new_privs=True)[2] == str(fake)     # after setpriv
        method = kexec.Method("classic", "test")
        load = oom.first_victim(kexec.load_argv(method, tmp_path / "vmlinuz", tmp_path / "initrd", "quiet"))
        assert load[load.index("--load") - 2] == "/opt/kexec/sbin/kexec"       # also after choom
        assert kexec.unload_argv(kexec.Method("file", "test")) == ["/opt/kexec/sbin/kexec", "--kexec-file-syscall",
                                                                  "--unload"]
        assert kexec.exec_argv() == ["/opt/kexec/sbin/kexec", "--exec"]
    finally:
        run_mod.use_programs({})
    assert kexec.exec_argv() == ["kexec", "--exec"] and criu.check_argv() == ["criu", "check"]
    with pytest.raises(ConfigError, match=r"paths.criu.*a program name found in PATH or an absolute path"):
        config.parse('[paths]\ncriu = "bin/criu"\n')
