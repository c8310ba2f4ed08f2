import json

from kupgrade import manifest
from kupgrade.record import Workload

W = (Workload("cgroup:/w", 100, (100, 101), cgroup="/w", name="python3"),)


def build(tmp_path):
    snap = tmp_path / "snap"
    (snap / "images" / "tree-100").mkdir(parents=True)
    (snap / "images" / "tree-100" / "pages-1.img").write_bytes(b"a" * 5000)
    (snap / "record.json").write_text("{}")
    return snap, manifest.build(snap, "ID1", "6.1.0-47-amd64", "6.12.117+deb12-amd64", W)


def test_build_and_verify(tmp_path):
    snap, m = build(tmp_path)
    assert set(m.files) == {"images/tree-100/pages-1.img", "record.json"}
    assert m.total_bytes == 5002
    assert (snap / "manifest.json").stat().st_mode & 0o077 == 0
    m2, problems = manifest.verify(snap, "6.12.117+deb12-amd64")
    assert problems == []
    assert m2 == manifest.read(snap)
    assert m2.workloads == W


def test_verify_finds_tampering(tmp_path):
    snap, _ = build(tmp_path)
    (snap / "images/tree-100/pages-1.img").write_bytes(b"b" * 5000)
    _, problems = manifest.verify(snap, "6.12.117+deb12-amd64")
    assert problems == ["images/tree-100/pages-1.img: sha256 mismatch"]


def test_verify_finds_truncation_missing_and_wrong_kernel(tmp_path):
    snap, _ = build(tmp_path)
    (snap / "images/tree-100/pages-1.img").write_bytes(b"a" * 10)
    (snap / "record.json").unlink()
    _, problems = manifest.verify(snap, "6.1.0-47-amd64")
    assert "snapshot was made for kernel 6.12.117+deb12-amd64, this is 6.1.0-47-amd64" in problems
    assert "images/tree-100/pages-1.img: size 10, manifest says 5000" in problems
    assert "record.json: missing" in problems


def test_verify_without_manifest(tmp_path):
    m, problems = manifest.verify(tmp_path, "x")
    assert m is None and "no manifest.json" in problems[0]


def test_unknown_format_is_refused(tmp_path):
    snap, _ = build(tmp_path)
    d = json.loads((snap / "manifest.json").read_text())
    d["format"] = 99
    (snap / "manifest.json").write_text(json.dumps(d))
    m, problems = manifest.verify(snap, "6.12.117+deb12-amd64")
    assert m is None and "format 99" in problems[0]
