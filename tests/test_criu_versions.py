"""Which criu runs on which kernel, reads which images, and names its lock how (criu.py)."""

from kupgrade.system import criu


def test_parse_version():
    assert criu.parse_version("Version: 3.17.1\n") == (3, 17, 1)
    assert criu.parse_version("Version: 4.1\nGitID: v4.1-12\n") == (4, 1)
    assert criu.parse_version("7.3.4+deb13-amd64") == (7, 3, 4)
    assert criu.parse_version("no version") == ()


def test_criu_3_cannot_run_on_6_13_and_later():
    why = criu.unfit("3.17.1", "7.3.4+deb13-amd64")
    assert why.startswith("criu 3.17.1 cannot run on 7.3.4+deb13-amd64") and "4.1" in why and "vvar_vclock" in why
    assert criu.unfit("3.17.1", "6.13.0-1-amd64")
    assert criu.unfit("3.17.1", "6.12.117+deb12-amd64") == ""
    assert criu.unfit("4.1.1", "7.3.4+deb13-amd64") == ""
    assert criu.unfit("4.1", "6.1.0-47-amd64") == ""
    assert criu.unfit("", "7.3.4+deb13-amd64") == ""          # a criu that does not say: no known reason


def test_restores_own_and_older_images_only():
    assert criu.restores("3.17.1", "4.1.1") == ""
    assert criu.restores("4.1.1", "4.1.1") == ""
    assert "dumped by criu 4.1.1, this criu is 3.17.1" in criu.restores("4.1.1", "3.17.1")


def test_lock_tables(tmp_path):
    assert criu.lock_tables(tmp_path, 42) == ["CRIU-42"]           # no log: criu 3.x's name
    (tmp_path / criu.DUMP_LOG).write_text("(00.000000) Version: 4.1.1 (gitid 0)\n"
                                          "(00.000010) CRIU run id = 6f1c2d3e-aaaa-4bbb-8ccc-0123456789ab\n")
    assert criu.lock_tables(tmp_path, 42) == ["CRIU-6f1c2d3e-aaaa-4bbb-8c", "CRIU-42"]   # criu's char[32]


def test_preflight_blocks_a_criu_that_cannot_run_on_the_target(monkeypatch):
    from kupgrade.stages import preflight
    monkeypatch.setattr(criu.shutil, "which", lambda name: "/usr/sbin/criu")
    monkeypatch.setattr(criu, "version", lambda: "3.17.1")
    blockers = []
    assert preflight._criu("7.3.4+deb13-amd64", blockers) == {"program": "/usr/sbin/criu", "version": "3.17.1"}
    assert len(blockers) == 1 and blockers[0].message.startswith("criu 3.17.1 cannot run on 7.3.4+deb13-amd64")
    assert "paths.criu" in blockers[0].hint
    blockers = []
    preflight._criu("6.12.117+deb12-amd64", blockers)
    assert blockers == []


def test_manifest_carries_the_criu_that_dumped():
    from kupgrade.switch import manifest
    m = manifest.make("20261204-1", "6.12.117+deb12-amd64", "7.3.4+deb13-amd64", (), {},
                      criu={"program": "/opt/criu-4.1.1/sbin/criu", "version": "4.1.1"})
    again = manifest.Manifest.from_json(m.to_json())
    assert again.criu == {"program": "/opt/criu-4.1.1/sbin/criu", "version": "4.1.1"}
    old = m.to_json()
    del old["criu"]                                   # a snapshot of an earlier kupgrade
    assert manifest.Manifest.from_json(old).criu == {}
