"""The init-bottom script (kupgrade/data/initramfs-script) run under busybox sh on a stand-in
early rootfs: the snapshot the kernel unpacked moved to where kupgrade-restore looks for it."""

import os
import shutil
import subprocess
from pathlib import Path

from kupgrade.switch import boot, contract, manifest

BUSYBOX = shutil.which("busybox") or "busybox"     # scripts/setup installs it: missing, these tests fail

SNAPSHOT_ID = "20261206T120000-abc123"


def script(tmp_path: Path, busybox: str) -> Path:
    """The script as installed, its paths moved under tmp_path: the early rootfs's snapshot, /run,
    the command line (it names SNAPSHOT_ID) and the kernel log."""
    text = contract.render(boot._data("initramfs-script"), {
        "ARCHIVE_ROOT": str(tmp_path / "snap").lstrip("/"),
        "RESTORE_DIR": str(tmp_path / "run/kupgrade"),
        "REJECTED_DIR": str(tmp_path / "run/rejected"),
        "REGION_PENDING": str(tmp_path / "run/pending"),
    })
    (tmp_path / "cmdline").write_text(f"root=/dev/vda {contract.CMDLINE_KEY}={SNAPSHOT_ID}\n")
    for old, new in (("/proc/cmdline", tmp_path / "cmdline"), ("> /dev/kmsg", f">> {tmp_path / 'kmsg'}"),
                     ("bb=/bin/busybox", f"bb={busybox}")):
        assert old in text
        text = text.replace(old, str(new))
    path = tmp_path / "init-bottom"
    path.write_text(text)
    return path


def snapshot(tmp_path: Path) -> dict[str, bytes]:
    """A snapshot as the kernel unpacks it: the small files on top, criu's images, a hook's state
    (a dot file, a name with a space, a symbolic link); returns each file's content by path."""
    files = {
        manifest.NAME: f'{{"id": "{SNAPSHOT_ID}"}}\n'.encode(),
        contract.RECORD: b"{}\n",
        f"{contract.IMAGES}/tree-1/pages-1.img": os.urandom(1 << 16),
        f"{contract.IMAGES}/tree-1/core-1.img": b"core",
        f"{contract.HOOKS}/net work/.state": b"dot",
        f"{contract.HOOKS}/net work/addr list.json": b"[]",
    }
    for rel, data in files.items():
        path = tmp_path / "snap" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (tmp_path / "snap" / contract.HOOKS / "net work" / "link").symlink_to("addr list.json")
    (tmp_path / "snap" / contract.IMAGES / "empty").mkdir()
    return files


def wrapped_busybox(tmp_path: Path, before: str) -> str:
    """A busybox that runs the shell line `before` first (its arguments in "$@")."""
    path = tmp_path / "busybox"
    path.write_text(f'#!/bin/sh\n{before}\nexec {BUSYBOX} "$@"\n')
    path.chmod(0o755)
    return str(path)


def run(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([BUSYBOX, "sh", str(path)], capture_output=True, text=True, timeout=60)


def test_the_snapshot_is_moved_whole_directory_by_directory(tmp_path):
    files = snapshot(tmp_path)
    r = run(script(tmp_path, BUSYBOX))
    assert r.returncode == 0, r.stderr
    dest = tmp_path / "run/kupgrade"
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data, rel
    link = dest / contract.HOOKS / "net work" / "link"
    assert link.is_symlink() and os.readlink(link) == "addr list.json"
    assert (dest / contract.IMAGES / "empty").is_dir()
    assert all(p.stat().st_mode & 0o777 == 0o700 for p in [dest, *dest.rglob("*")] if p.is_dir() and not p.is_symlink())
    assert not (tmp_path / "snap").exists() and not (dest / contract.MOVE_FAILED).exists()
    assert f"kupgrade: snapshot {SNAPSHOT_ID} ready in {dest}" in (tmp_path / "kmsg").read_text()


def test_a_directory_of_many_files_is_moved_in_batches(tmp_path):
    snapshot(tmp_path)
    many = tmp_path / "snap" / contract.IMAGES / "tree-2"
    many.mkdir()
    names = [f"core-{i}.img" for i in range(600)]      # a large tree: more than one batch
    for name in names:
        (many / name).write_text(name)
    calls = tmp_path / "calls"
    counting = wrapped_busybox(tmp_path, f'[ "$1" = mv ] && echo "$#" >> {calls}')
    assert run(script(tmp_path, counting)).returncode == 0
    moved = tmp_path / "run/kupgrade" / contract.IMAGES / "tree-2"
    assert sorted(p.name for p in moved.iterdir()) == sorted(names)
    assert all((moved / n).read_text() == n for n in names)
    counts = [int(n) for n in calls.read_text().split()]             # mv's arguments: mv, files, the directory
    assert max(counts) == 258 and counts.count(258) == 2             # 600 files: 256 + 256 + 88


def test_a_file_that_cannot_be_moved_leaves_its_reason_and_the_snapshot_in_place(tmp_path):
    snapshot(tmp_path)
    # mv fails for criu's images (as when the tmpfs is full)
    failing = wrapped_busybox(tmp_path, 'if [ "$1" = mv ]; then case "$*" in *pages-1.img*) exit 1 ;; esac; fi')
    r = run(script(tmp_path, failing))
    assert r.returncode == 0, r.stderr
    dest = tmp_path / "run/kupgrade"
    why = (dest / contract.MOVE_FAILED).read_text()
    assert f"cannot move the files of ./{contract.IMAGES}/tree-1 to {dest}" in why
    assert (dest / manifest.NAME).exists()                          # the top directory went first
    assert (tmp_path / "snap" / contract.IMAGES / "tree-1" / "pages-1.img").exists()
    assert "nothing will be restored" in (tmp_path / "kmsg").read_text()
    assert "ready in" not in (tmp_path / "kmsg").read_text()


def test_a_snapshot_the_command_line_does_not_name_is_kept_aside(tmp_path):
    files = snapshot(tmp_path)
    path = script(tmp_path, BUSYBOX)
    (tmp_path / "cmdline").write_text(f"root=/dev/vda {contract.CMDLINE_KEY}=20200101T000000-000000\n")
    assert run(path).returncode == 0
    assert (tmp_path / "run/rejected" / manifest.NAME).read_bytes() == files[manifest.NAME]
    assert not (tmp_path / "run/kupgrade").exists()
    assert "is not the one" in (tmp_path / "kmsg").read_text()
