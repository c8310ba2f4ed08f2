"""Pre-dump iterations (snapshot.pre_dump): criu's command lines, the links they leave in the
images, how they are hashed and verified, and prepare's loop (criu faked)."""

import os

from kupgrade.config import Config
from kupgrade.context import Context
from kupgrade.errors import CommandError
from kupgrade.output.record import UpgradeRecord, Workload
from kupgrade.stages import prepare
from kupgrade.switch import manifest, packing
from kupgrade.system import criu

W = Workload("cgroup:/wl", 5, (5, 6), cgroup="/wl")


def test_command_lines(tmp_path):
    first = criu.pre_dump_argv(W, tmp_path, 1)
    assert first[:2] == ["criu", "pre-dump"] and "--track-mem" in first and "--prev-images-dir" not in first
    assert first[first.index("--images-dir") + 1] == str(tmp_path / "pre-1")
    assert first[first.index("--freeze-cgroup") + 1] == "/sys/fs/cgroup/wl"
    second = criu.pre_dump_argv(W, tmp_path, 2)
    assert second[second.index("--prev-images-dir") + 1] == "../pre-1"
    final = criu.dump_argv(W, tmp_path, pre=2)
    assert final[final.index("--prev-images-dir") + 1] == "pre-2" and "--track-mem" in final
    assert "--prev-images-dir" not in criu.dump_argv(W, tmp_path)


def images_with_a_pre_dump(root):
    tree = root / "images" / "tree-5"
    (tree / "pre-1").mkdir(parents=True)
    (tree / "pre-1" / "pages-1.img").write_bytes(b"a" * 4096)
    (tree / "pages-1.img").write_bytes(b"b" * 100)
    (tree / "parent").symlink_to("pre-1")
    return tree


def test_links_are_sealed_verified_and_known_hashes_reused(tmp_path):
    tree = images_with_a_pre_dump(tmp_path)
    known = packing.hashed(tmp_path)
    assert known["images/tree-5/parent"] == {"size": 0, "link": "pre-1"}
    fake = {**known, "images/tree-5/pre-1/pages-1.img": {"size": 4096, "sha256": "earlier"}}
    assert packing.hashed(tmp_path, known=fake)["images/tree-5/pre-1/pages-1.img"]["sha256"] == "earlier"
    m = packing.seal(tmp_path, (W,), lambda files: manifest.make("U1", "6.1", "6.12", (W,), files), "{}")
    again = manifest.Manifest.from_json(__import__("json").loads(manifest.dumps(m)))
    assert manifest.verify(tmp_path, "6.12")[1] == [] and again.files == m.files
    (tree / "parent").unlink()
    (tree / "parent").symlink_to("elsewhere")
    assert manifest.verify(tmp_path, "6.12")[1] == ["images/tree-5/parent: not the link the manifest names"]


def ctx(tmp_path, n=2):
    c = Context(Config(snapshot_dir=str(tmp_path / "snap"), pre_dump=n), UpgradeRecord("U1", "run", "6.1"))
    c.workloads = [W]
    c.snapshot_mounted = True       # mounted: prepare only uses it
    return c


def test_prepare_runs_the_iterations(tmp_path, monkeypatch):
    def fake(argv, **kw):
        d = argv[argv.index("--images-dir") + 1]
        assert os.path.isdir(d)         # criu wants it there
        open(os.path.join(d, "pages-1.img"), "wb").write(b"x" * 1000)
    monkeypatch.setattr(prepare, "run_cmd", fake)
    c = ctx(tmp_path)
    out = prepare.pre_dump(c, 2)
    assert [it["bytes"] for it in out["trees"]["tree-5"]["iterations"]] == [1000, 1000]
    assert c.pre_dumped == {"tree-5": 2} and "failed" not in out["trees"]["tree-5"]


def test_a_failed_pre_dump_leaves_one_full_dump(tmp_path, monkeypatch):
    def fails(argv, **kw):
        d = argv[argv.index("--images-dir") + 1]
        if d.endswith("pre-2"):
            open(argv[argv.index("--log-file") + 1], "w").write("(00.1) Error (criu/mem.c:1): no soft-dirty\n")
            raise CommandError(argv, 1, "")
    monkeypatch.setattr(prepare, "run_cmd", fails)
    c = ctx(tmp_path)
    out = prepare.pre_dump(c, 2)
    assert "no soft-dirty" in out["trees"]["tree-5"]["failed"] and c.pre_dumped == {}
    assert not (tmp_path / "snap" / "images" / "tree-5").exists()


def test_auto_pre_dumps_once_when_the_region_holds_the_pages_twice():
    from types import SimpleNamespace

    from kupgrade.stages import prepare
    region = SimpleNamespace(size=2 << 30)
    assert prepare.iterations("auto", region, 64 << 20) == prepare.AUTO_PRE_DUMP == 1
    assert prepare.iterations("auto", region, 1500 << 20) == 0        # fits once, not 1.5 times
    assert prepare.iterations("auto", None, 64 << 20) == 0            # the initrd: packed in the pause anyway
    assert prepare.iterations(3, None, 64 << 20) == 3 and prepare.iterations(0, region, 1) == 0


def test_pre_dump_setting_is_a_number_or_auto():
    import pytest

    from kupgrade import config
    from kupgrade.errors import ConfigError
    assert config.parse("").pre_dump == "auto"
    assert config.parse("[snapshot]\npre_dump = 2\n").pre_dump == 2
    for bad, words in (('"often"', 'must be "auto" or a number'), ("true", "must be an integer or string"),
                       ("9", "must be 0 to")):
        with pytest.raises(ConfigError, match=words):
            config.parse(f"[snapshot]\npre_dump = {bad}\n")
