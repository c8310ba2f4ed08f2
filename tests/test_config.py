from pathlib import Path

import pytest

from kupgrade import config
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
    assert docs.read_text() == config.docs_markdown(), "regenerate: python -m kupgrade.config > docs/config.md"
