"""Pre-warm: the files a workload uses, listed by the old kernel, read ahead by the new one."""

import os

from kupgrade import contract, prewarm
from procfake import fake_proc, task


def test_the_list_has_the_disk_files_open_or_mapped(tmp_path):
    data = tmp_path / "data.db"
    data.write_bytes(b"x" * 10)
    lib = tmp_path / "libfoo.so"
    lib.write_bytes(b"y")
    proc = fake_proc(tmp_path)
    maps = "".join(f"7f00-7f01 r-xp 00000000 fe:00 12 {p}\n" for p in (lib, "/run/lock/x"))
    task(proc, 5, maps=maps)
    for fd, target in ((3, str(data)), (4, "socket:[12]"), (5, "/dev/null"), (6, f"{tmp_path}/gone (deleted)")):
        os.symlink(target, proc / "5" / "fd" / str(fd))
    assert prewarm.list_files([5], proc) == sorted([str(data), str(lib)])


def test_start_asks_for_the_listed_files(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"z" * 4096)
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / contract.PREWARM).write_bytes(prewarm.text([str(f), str(tmp_path / "missing"), str(tmp_path)]))
    assert prewarm.start(snap) == {"files": 1, "bytes": 4096}
    assert prewarm.start(tmp_path / "none") == {}
