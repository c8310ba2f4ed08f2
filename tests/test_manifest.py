import hashlib
import json
import os

import pytest

from kupgrade.output.record import Workload
from kupgrade.switch import manifest

W = (Workload("cgroup:/w", 100, (100, 101), cgroup="/w", name="python3"),)


def build(tmp_path):
    """Pack a snapshot as kupgrade does and unpack it as the kernel would."""
    import io

    from kupgrade.switch import initrd
    src = tmp_path / "src"
    (src / "tree-100").mkdir(parents=True)
    (src / "tree-100" / "pages-1.img").write_bytes(b"a" * 5000)
    buf = io.BytesIO()
    w = initrd.CpioWriter(buf)
    w.directory("")
    files = w.tree(src, prefix="images")
    w.data("record.json", b"{}")
    m = manifest.make("ID1", "6.1.0-47-amd64", "6.12.117+deb12-amd64", W,
                      {**files, "record.json": {"size": 2, "sha256": hashlib.sha256(b"{}").hexdigest()}})
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
    assert problems == ["images/tree-100/pages-1.img: crc32s mismatch"]


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 16, 23, 40])
def test_a_file_is_summed_in_chunks_the_same_in_order_and_by_the_cpus(tmp_path, monkeypatch, size):
    """The archive sums a file as it copies it (in order); the memory region's seal and the
    verification cut it into CHUNK pieces that threads sum at once: the same digest."""
    monkeypatch.setattr(manifest, "CHUNK", 8)
    data = bytes(range(size))
    f = tmp_path / "f"
    f.write_bytes(data)
    h = manifest.Crc32s()
    for i in range(0, size, 3):
        h.update(data[i:i + 3])
    parts = [data[i:i + 8] for i in range(0, size, 8)] or [b""]
    want = ".".join(f"{manifest.zlib.crc32(p):08x}" for p in parts)
    assert h.hexdigest() == want == manifest.checksum_file(f) == manifest.checksums([f, f])[1]


def test_damage_in_any_chunk_of_a_large_file_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "CHUNK", 1024)
    snap, m = build(tmp_path)           # pages-1.img: 5000 bytes, 5 chunks
    assert m.files["images/tree-100/pages-1.img"][manifest.CHECKSUM].count(".") == 4
    assert manifest.verify(snap, "6.12.117+deb12-amd64")[1] == []
    with (snap / "images/tree-100/pages-1.img").open("r+b") as f:
        f.seek(4500)
        f.write(b"b")
    assert manifest.verify(snap, "6.12.117+deb12-amd64")[1] == ["images/tree-100/pages-1.img: crc32s mismatch"]


def test_a_manifest_with_whole_file_crc32_entries_is_verified_so(tmp_path):
    snap, m = build(tmp_path)
    files = {**m.files, "images/tree-100/pages-1.img": {"size": 5000, "crc32": f"{manifest.zlib.crc32(b'a' * 5000):08x}"}}
    (snap / manifest.NAME).write_bytes(manifest.dumps(manifest.make("ID1", "a", "b", W, files)))
    assert manifest.verify(snap, "b")[1] == []
    (snap / "images/tree-100/pages-1.img").write_bytes(b"b" * 5000)
    assert manifest.verify(snap, "b")[1] == ["images/tree-100/pages-1.img: crc32 mismatch"]


def test_a_manifest_with_sha256_entries_is_verified_with_sha256(tmp_path):
    """record.json is listed with sha256 (as kupgrade wrote every entry before CRC-32)."""
    snap, m = build(tmp_path)
    assert "sha256" in m.files["record.json"] and manifest.verify(snap, "6.12.117+deb12-amd64")[1] == []
    (snap / "record.json").write_bytes(b"[]")
    assert manifest.verify(snap, "6.12.117+deb12-amd64")[1] == ["record.json: sha256 mismatch"]


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


@pytest.mark.parametrize("text, words", [
    ("[]", "the manifest is a list, not a JSON object"),
    ('{"format": 1}', "the manifest has no `id`"),
    ('{"format": 1, "id": "I", "kernel_from": "a", "kernel_to": "b", "created": 1, "workloads": [], "files": []}',
     "`files` is a list"),
    ('{"format": 1, "id": "I", "kernel_from": "a", "kernel_to": "b", "created": 1, "workloads": [], '
     '"files": {"images/x": {"size": "1", "sha256": "00"}}}', "entry 'images/x': `size` is a str"),
    ('{"format": 1, "id": "I", "kernel_from": "a", "kernel_to": "b", "created": 1, "workloads": [], '
     '"files": {"images/x": {}}}', "needs `size` and `crc32s`"),
    ('{"format": 1, "id": "I", "kernel_from": "a", "kernel_to": "b", "created": 1, "workloads": [{}], "files": {}}',
     "a workload in the manifest"),
    ('{"format": 1, "id": "I", "kernel_from": "a", "kernel_to": "b", "created": 1, "workloads": [3], "files": {}}',
     "a workload is a int"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"format": 1, "id": "../x", "kernel_from": "a", "kernel_to": "b", "created": 1, "workloads": [], "files": {}}',
     "the manifest's id '../x' is not a record id"),
    ("\xff", "unreadable"),
])
def test_a_manifest_of_the_wrong_shape_is_a_problem_not_a_crash(tmp_path, text, words):
    (tmp_path / manifest.NAME).write_text(text, encoding="latin-1")
    with pytest.raises(ValueError):
        manifest.read(tmp_path)
    m, problems = manifest.verify(tmp_path, "b")
    assert m is None and len(problems) == 1 and words in problems[0], problems


def test_paths_outside_the_snapshot_are_never_opened(tmp_path, monkeypatch):
    snap, m = build(tmp_path)
    (tmp_path / "secret").write_bytes(b"s")
    (snap / "images" / "link").symlink_to(tmp_path / "secret")
    meta = {"size": 1, "sha256": hashlib.sha256(b"s").hexdigest()}
    bad = {"../secret": meta, str(tmp_path / "secret"): meta, "images/link": meta, "": meta, "images/a\0b": meta}
    (snap / manifest.NAME).write_bytes(manifest.dumps(manifest.make("ID1", "a", "b", W, {**m.files, **bad})))
    opened = []
    for kind, real in list(manifest.SUMS.items()):
        monkeypatch.setitem(manifest.SUMS, kind, lambda p, real=real: opened.append(p) or real(p))
    real_range = manifest.crc32_range
    monkeypatch.setattr(manifest, "crc32_range", lambda p, *a: opened.append(p) or real_range(p, *a))
    _, problems = manifest.verify(snap, "b")
    assert sorted(problems) == sorted(f"{rel!r}: not a path inside the snapshot (not opened)" for rel in bad)
    assert sorted(p.name for p in opened) == ["pages-1.img", "record.json"]


def test_files_the_manifest_does_not_list_are_problems(tmp_path):
    snap, _ = build(tmp_path)
    (snap / "images" / "tree-100" / "pages-2.img").write_bytes(b"x")
    (snap / "hooks" / "early-restore.d").mkdir(parents=True)
    (snap / "hooks" / "early-restore.d" / "net").write_text("#!/bin/sh\n")
    (snap / "hooks" / "extra.json").write_text("{}")
    os.symlink("/etc", snap / "images" / "etc")
    _, problems = manifest.verify(snap, "6.12.117+deb12-amd64")
    assert sorted(problems) == ["hooks/early-restore.d/net: not in the manifest", "hooks/extra.json: not in the manifest",
                                "images/etc: not in the manifest", "images/tree-100/pages-2.img: not in the manifest"]


def test_what_the_new_kernel_adds_before_the_verification_is_allowed(tmp_path):
    from kupgrade.hooks import early
    snap, _ = build(tmp_path)
    d = snap / "hooks" / "early-restore.d"
    d.mkdir(parents=True)
    for out in ("net.rc", "net.time", "net.reply.json", "net.stderr"):
        (d / out).write_text("0")
    (snap / "hooks" / "net").mkdir()
    (snap / "hooks" / "net" / "links.json").write_text("{}")
    (snap / "images" / "tree-100" / "pages-2.img").write_bytes(b"x")
    (d / "net.sh").write_text("")
    _, problems = manifest.verify(snap, "6.12.117+deb12-amd64", added=early.written_in_new_kernel)
    assert sorted(problems) == ["hooks/early-restore.d/net.sh: not in the manifest",
                                "images/tree-100/pages-2.img: not in the manifest"]


def test_the_new_kernel_refuses_a_damaged_manifest_with_one_line(tmp_path):
    from kupgrade.config import Config
    from kupgrade.context import Context
    from kupgrade.errors import RestoreError
    from kupgrade.steps import new_record
    from kupgrade.switch import newkernel, unitrestore
    (tmp_path / manifest.NAME).write_text("[]")
    (tmp_path / "verified").write_text("ID1\n")       # restore_unit: damaged after the verification
    ctx = Context(Config(state_dir=str(tmp_path / "state")), new_record("restore"), restore_dir=tmp_path)
    for call in (lambda: newkernel.restore_pending(ctx, None), lambda: unitrestore.restore_unit(ctx, "x.service", None),
                 lambda: newkernel.generator(["a", "b", "c"], tmp_path)):
        with pytest.raises(RestoreError, match=f"the snapshot in {tmp_path} is damaged: manifest.json: the manifest "
                                               "is a list, not a JSON object"):
            call()
