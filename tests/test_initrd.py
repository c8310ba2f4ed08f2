import io
import os
import zlib

import pytest

from kupgrade.switch import initrd, manifest


def make_snapshot(tmp_path):
    snap = tmp_path / "snap"
    (snap / "images" / "tree-1").mkdir(parents=True)
    (snap / "images" / "tree-1" / "pages-1.img").write_bytes(os.urandom(10_001))
    (snap / "manifest.json").write_text("{}\n")
    (snap / "empty").write_bytes(b"")
    return snap


def test_cpio_round_trip(tmp_path):
    snap = make_snapshot(tmp_path)
    buf = io.BytesIO()
    n = initrd.write_cpio(snap, buf)
    data = buf.getvalue()
    assert n == len(data) and len(data) % 4 == 0
    entries = initrd.read_cpio(data)
    assert entries["kupgrade-snapshot"] is None
    assert entries["kupgrade-snapshot/images/tree-1"] is None
    assert entries["kupgrade-snapshot/images/tree-1/pages-1.img"] == (snap / "images/tree-1/pages-1.img").read_bytes()
    assert entries["kupgrade-snapshot/manifest.json"] == b"{}\n"
    assert entries["kupgrade-snapshot/empty"] == b""
    # directories come before their contents: the kernel creates them in order
    names = list(entries)
    assert names.index("kupgrade-snapshot/images") < names.index("kupgrade-snapshot/images/tree-1/pages-1.img")


def test_cpio_modes_are_private(tmp_path):
    snap = make_snapshot(tmp_path)
    (snap / "manifest.json").chmod(0o644)
    buf = io.BytesIO()
    initrd.write_cpio(snap, buf)
    data = buf.getvalue()
    pos = data.index(b"kupgrade-snapshot/manifest.json") - 110
    mode = int(data[pos + 14:pos + 22], 16)
    assert mode & 0o077 == 0 and mode & 0o700 == 0o600


def test_cpio_carries_links_and_refuses_other_special_files(tmp_path):
    snap = make_snapshot(tmp_path)
    (snap / "pre-1").mkdir()
    (snap / "pre-1" / "pages-1.img").write_bytes(b"p" * 10)
    (snap / "parent").symlink_to("pre-1")       # criu's link to its pre-dump
    out = tmp_path / "combined"
    base = tmp_path / "base"
    base.write_bytes(b"\x1f\x8b" + b"z" * 100)
    sizes = initrd.assemble(base, out, lambda w: w.tree(snap))
    dest = tmp_path / "out"
    initrd.extract(out, sizes["target_initrd_bytes"] + sizes["padding_bytes"], dest)
    assert os.readlink(dest / "parent") == "pre-1" and (dest / "parent" / "pages-1.img").read_bytes() == b"p" * 10
    (snap / "parent").unlink()
    (snap / "parent").symlink_to("../../etc")
    sizes = initrd.assemble(base, out, lambda w: w.tree(snap))
    with pytest.raises(ValueError, match="points outside"):
        initrd.extract(out, sizes["target_initrd_bytes"] + sizes["padding_bytes"], tmp_path / "out2")
    (snap / "parent").unlink()
    os.mkfifo(snap / "fifo")
    with pytest.raises(ValueError, match="only directories, regular files and links"):
        initrd.write_cpio(snap, io.BytesIO())


def test_assemble_pads_appends_and_hashes(tmp_path):
    snap = make_snapshot(tmp_path)
    base = tmp_path / "initrd.img"
    base.write_bytes(b"\x28\xb5\x2f\xfd" + b"x" * 1000)      # stands for a compressed archive
    out = tmp_path / "combined.img"
    hashed = {}

    def fill(w):
        hashed.update(w.tree(snap / "images", prefix="images"))
        w.data("manifest.json", b'{"id": "X"}\n')

    sizes = initrd.assemble(base, out, fill)
    data = out.read_bytes()
    assert data.startswith(base.read_bytes())
    assert sizes["target_initrd_bytes"] == 1004
    assert (sizes["target_initrd_bytes"] + sizes["padding_bytes"]) % initrd.ALIGN == 0
    assert data[1004:1004 + sizes["padding_bytes"]] == b"\0" * sizes["padding_bytes"]
    start = sizes["target_initrd_bytes"] + sizes["padding_bytes"]
    assert data[start:start + 6] == b"070701"
    entries = initrd.read_cpio(data[start:])
    page = (snap / "images/tree-1/pages-1.img").read_bytes()
    assert entries["kupgrade-snapshot/images/tree-1/pages-1.img"] == page
    assert entries["kupgrade-snapshot/manifest.json"] == b'{"id": "X"}\n'
    assert hashed == {"images/tree-1/pages-1.img": {"size": len(page), manifest.CHECKSUM: f"{zlib.crc32(page):08x}"}}
    assert len(data) == sizes["total_bytes"]
    assert out.stat().st_mode & 0o777 == 0o600


def test_extract_from_combined_initrd(tmp_path):
    """The rehearsal unpacks the appended archive as the kernel would."""
    snap = make_snapshot(tmp_path)
    base = tmp_path / "initrd.img"
    base.write_bytes(os.urandom(1000))
    out = tmp_path / "combined.img"

    def fill(w):
        w.tree(snap / "images", prefix="images")
        w.data("manifest.json", b"{}\n")

    sizes = initrd.assemble(base, out, fill)
    dest = tmp_path / "run"
    n = initrd.extract(out, sizes["target_initrd_bytes"] + sizes["padding_bytes"], dest)
    assert n == 2
    assert (dest / "images/tree-1/pages-1.img").read_bytes() == (snap / "images/tree-1/pages-1.img").read_bytes()
    assert (dest / "manifest.json").read_bytes() == b"{}\n"
    assert (dest / "manifest.json").stat().st_mode & 0o077 == 0


def test_extract_rejects_garbage_offset(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\0" * 200)
    with pytest.raises(ValueError, match="bad cpio header"):
        initrd.extract(p, 0, tmp_path / "d")


def test_fill_carries_the_generators_output(tmp_path):
    """The drop-ins the old kernel wrote for the new boot's systemd generator travel in the
    archive and in the manifest (verified like the images)."""
    from kupgrade.output.record import Workload
    from kupgrade.switch import contract, packing
    snap = make_snapshot(tmp_path)
    gen = snap / contract.GENERATED / "web.service.d"
    gen.mkdir(parents=True)
    (gen / "zz-kupgrade-restore.conf").write_text("[Service]\n")
    base = tmp_path / "initrd.img"
    base.write_bytes(os.urandom(1000))
    w = (Workload("pid:1", 1, (1,)),)
    made = []
    sizes = initrd.assemble(base, tmp_path / "combined.img", lambda cw: made.append(packing.fill(
        cw, snap / "images", snap / "hooks", w, lambda files: manifest.make("U1", "6.1", "6.12", w, files), "{}",
        generated=snap / contract.GENERATED)))
    rel = f"{contract.GENERATED}/web.service.d/zz-kupgrade-restore.conf"
    assert rel in made[0].files
    dest = tmp_path / "run"
    initrd.extract(tmp_path / "combined.img", sizes["target_initrd_bytes"] + sizes["padding_bytes"], dest)
    assert (dest / rel).read_text() == "[Service]\n"
    assert manifest.verify(dest, "6.12")[1] == []
