"""Reading /proc: the mountinfo parser every reader shares."""

import os

from kupgrade.system.procfs import cgroup, mounts


def test_mounts_reads_every_field_kupgrade_uses(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text("22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
                    "31 22 0:26 / /run/my\\040dir rw,nosuid master:5 - tmpfs tmpfs rw,size=10k\n"
                    "40 22 259:0 / /run/kupgrade ro,relatime - ext4 /dev/pmem0 ro,dax=always\n")
    m = mounts(info)
    assert [(x.mount_id, x.point, x.fstype, x.source, x.ro) for x in m] == [
        ("22", "/", "ext4", "/dev/vda", False), ("31", "/run/my dir", "tmpfs", "tmpfs", False),
        ("40", "/run/kupgrade", "ext4", "/dev/pmem0", True)]
    assert m[2].st_dev == os.makedev(259, 0) and m[1].dev == "0:26"


def test_cgroup_is_the_v2_line(tmp_path):
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_text("1:name=systemd:/old\n0::/system.slice/ssh.service\n")
    assert cgroup(7, tmp_path) == "/system.slice/ssh.service"
    (tmp_path / "7" / "cgroup").write_text("1:name=systemd:/old\n")
    assert cgroup(7, tmp_path) == ""
