import json

from kupgrade import manifest
from kupgrade.record import Workload

W = (Workload("cgroup:/w", 100, (100, 101), cgroup="/w", name="python3"),)


def build(tmp_path):
    """Pack a snapshot as kupgrade does and unpack it as the kernel would."""
    import io
    from kupgrade import initrd
    src = tmp_path / "src"
    (src / "tree-100").mkdir(parents=True)
    (src / "tree-100" / "pages-1.img").write_bytes(b"a" * 5000)
    buf = io.BytesIO()
    w = initrd.CpioWriter(buf)
    w.directory("")
    files = w.tree(src, prefix="images")
    w.data("record.json", b"{}")
    m = manifest.make("ID1", "6.1.0-47-amd64", "6.12.117+deb12-amd64", W,
                      {**files, "record.json": {"size": 2, "sha256": manifest.hashlib.sha256(b"{}").hexdigest()}})
    w.data(manifest.NAME, manifest.dumps(m))
    w.close()
    snap = tmp_path / "snap"
    for name, data in initrd.read_cpio(buf.getvalue()).items():
        p = snap / name.removeprefix("kupgrade-snapshot").lstrip("/")
        if data is None:
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.write_bytes(data)
    return snap, m


def test_build_and_verify(tmp_path):
    snap, m = build(tmp_path)
    assert set(m.files) == {"images/tree-100/pages-1.img", "record.json"}
    assert m.total_bytes == 5002
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
