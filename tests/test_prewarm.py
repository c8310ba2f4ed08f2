"""Pre-warm: the files a workload uses and the ranges of them it had in its page tables,
listed by the old kernel, looked up and read ahead by the new one."""

import os

from procfake import fake_proc, task

from kupgrade.switch import contract, prewarm

P = prewarm.PAGE


def _pagemap(present: set[int], pages: int) -> bytes:
    return b"".join(((prewarm.PRESENT | i) if i in present else 0).to_bytes(8, "little") for i in range(pages))


def test_the_list_has_the_disk_files_and_the_mapped_pages_the_tasks_had(tmp_path):
    data = tmp_path / "data.db"
    data.write_bytes(b"x" * 10)
    lib = tmp_path / "libfoo.so"
    lib.write_bytes(b"y" * 8 * P)
    proc = fake_proc(tmp_path)
    base = 0x7f0000000000
    # libfoo mapped twice: pages 0-3 of the file at base (pages 0, 1 and 3 present), pages 4-7
    # (file offset 4 pages) at base + 4 pages (page 6 of the file present); /run is not a disk
    maps = (f"{base:x}-{base + 4 * P:x} r-xp 00000000 fe:00 12 {lib}\n"
            f"{base + 4 * P:x}-{base + 8 * P:x} r--p {4 * P:08x} fe:00 12 {lib}\n"
            f"{base + 8 * P:x}-{base + 9 * P:x} rw-s 00000000 00:19 3 /run/lock/x\n")
    task(proc, 5, maps=maps)
    with open(proc / "5" / "pagemap", "wb") as pm:      # sparse, as large as the address space used
        pm.seek(base // P * 8)
        pm.write(_pagemap({0, 1, 3, 6, 8}, 9))
    for fd, target in ((3, str(data)), (4, "socket:[12]"), (5, "/dev/null"), (6, f"{tmp_path}/gone (deleted)")):
        os.symlink(target, proc / "5" / "fd" / str(fd))
    assert prewarm.list_files([5], proc) == {str(data): [], str(lib): [(0, 2 * P), (3 * P, P), (6 * P, P)]}


def test_without_pagemap_a_mapping_is_looked_up_not_read(tmp_path):
    lib = tmp_path / "libfoo.so"
    lib.write_bytes(b"y" * P)
    proc = fake_proc(tmp_path)
    task(proc, 5, maps=f"7f0000000000-7f0000001000 r-xp 00000000 fe:00 12 {lib}\n")
    assert prewarm.list_files([5], proc) == {str(lib): []}


def test_start_looks_up_the_files_and_asks_for_their_ranges(tmp_path, monkeypatch):
    f, g = tmp_path / "f", tmp_path / "g"
    f.write_bytes(b"z" * 4 * P)
    g.write_bytes(b"z")
    snap = tmp_path / "snap"
    snap.mkdir()
    listed = {str(f): [(0, P), (2 * P, P)], str(g): [], str(tmp_path / "missing"): [(0, P)], str(tmp_path): [(0, P)]}
    (snap / contract.PREWARM).write_bytes(prewarm.text(listed))
    read = []
    real = os.preadv
    monkeypatch.setattr(prewarm, "READ_CHUNK", P // 2)      # a range read in chunks
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, o: read.append((o, len(bufs[0]))) or real(fd, bufs, o))
    reader = prewarm.start(snap)
    reader.join(10)
    assert reader.summary() == {"files": 2, "bytes": 4 * P, "read_bytes": 2 * P, "read_s": reader.took}    # bytes: listed
    assert reader.took is not None
    assert read == [(0, P // 2), (P // 2, P // 2), (2 * P, P // 2), (5 * P // 2, P // 2)]
    assert prewarm.start(tmp_path / "none") is None


def test_a_file_shorter_than_its_range_is_read_to_its_end(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"z" * P)                 # truncated since the old kernel listed it
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / contract.PREWARM).write_bytes(prewarm.text({str(f): [(0, 4 * P)]}))
    reader = prewarm.start(snap)
    reader.join(10)
    assert reader.summary()["read_bytes"] == P


def test_a_path_with_spaces_survives_the_list(tmp_path):
    f = tmp_path / "a b"
    f.write_bytes(b"z" * P)
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / contract.PREWARM).write_bytes(prewarm.text({str(f): [(0, P)]}))
    reader = prewarm.start(snap)
    reader.join(10)
    assert reader.summary()["files"] == 1 and reader.summary()["read_bytes"] == P
