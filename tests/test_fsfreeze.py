"""The file systems frozen for the switch, and the helper that freezes, executes and thaws."""

import os
import subprocess

from kupgrade.system import fsfreeze


def test_targets_are_the_writable_freezable_file_systems_in_use(tmp_path):
    data = tmp_path / "data.log"
    data.write_text("x")
    dev = os.stat(data).st_dev
    info = tmp_path / "mountinfo"
    info.write_text(f"22 1 {os.major(dev)}:{os.minor(dev)} / /srv\\040data rw,relatime shared:1 - ext4 /dev/vda rw\n"
                    "23 1 0:5 / /proc rw - proc proc rw\n")
    proc = tmp_path / "proc"
    (proc / "7" / "fd").mkdir(parents=True)
    (proc / "7" / "fd" / "3").symlink_to(data)
    (proc / "7" / "fd" / "4").symlink_to("socket:[99]")
    (proc / "7" / "maps").write_text(f"7f00-7f01 r--s 00000000 fd:00 12 {data}\n")
    assert fsfreeze.targets([7, 8], proc, info) == ["/srv data"]
    info.write_text(f"22 1 {os.major(dev)}:{os.minor(dev)} / /srv ro,relatime - ext4 /dev/vda ro\n")
    assert fsfreeze.targets([7], proc, info) == []            # read-only: nothing in flight
    info.write_text(f"22 1 {os.major(dev)}:{os.minor(dev)} / /srv rw - tmpfs tmpfs rw\n")
    assert fsfreeze.targets([7], proc, info) == []            # tmpfs has no freeze


def test_helper_thaws_what_it_froze_when_the_kernel_does_not_switch(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "calls"
    (bin_ / "fsfreeze").write_text(f'#!/bin/sh\necho "$@" >> {log}\n[ "$2" != /busy ]\n')
    (bin_ / "kexec").write_text(f'#!/bin/sh\necho kexec "$@" >> {log}\nexit 1\n')
    for f in bin_.iterdir():
        f.chmod(0o755)
    argv = fsfreeze.exec_argv(str(bin_ / "kexec"), ["/srv", "/busy", "/"])
    r = subprocess.run(argv, env={"PATH": f"{bin_}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "/busy was not frozen" in r.stderr
    assert log.read_text().splitlines() == [
        "--freeze /srv", "--freeze /busy", "--freeze /", "kexec --exec --no-sync", "--unfreeze /srv", "--unfreeze /"]
