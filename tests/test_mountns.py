"""A unit's own mount namespace carried: the externals criu is told at the dump, what the restore
makes, from mountinfo as a unit with PrivateTmp + ProtectSystem=strict + DynamicUser and
Debian's memcached.service show it (measured in explore-sandbox, criu 3.17, kernel 6.1)."""

import json
import os
from pathlib import Path

import pytest

from kupgrade.userspace import mountns
from kupgrade.userspace.mountns import EMPTY, EMPTY_DIR, HOST, PRIVATE_DIR

HOST_MNT, OWN_MNT = "mnt:[4026531841]", "mnt:[4026532301]"
PRIVATE = "/tmp/systemd-private-1fcb-web.service-vHEaCW/tmp"

HOST_INFO = """\
21 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
22 21 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw
25 21 0:22 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw
26 25 0:23 / /run/lock rw,nosuid shared:6 - tmpfs tmpfs rw
40 21 0:20 / /proc rw,nosuid shared:12 - proc proc rw
90 25 0:40 / /run/kupgrade-snapshot rw shared:57 - tmpfs kupgrade-snapshot rw
"""

NS_INFO = f"""\
120 100 254:1 / / ro,relatime shared:49 master:1 - ext4 /dev/vda1 rw
121 120 0:50 / /dev rw,nosuid shared:50 - tmpfs tmpfs rw
126 120 0:22 / /run rw,nosuid shared:55 master:5 - tmpfs tmpfs rw
127 126 0:23 / /run/lock rw,nosuid shared:56 master:6 - tmpfs tmpfs rw
128 126 0:22 /systemd/inaccessible/dir /run/credentials ro shared:57 master:5 - tmpfs tmpfs rw
129 126 0:22 /systemd/propagate/web.service /run/systemd/incoming ro master:5 - tmpfs tmpfs rw
130 120 254:1 {PRIVATE} /tmp rw shared:71 master:1 - ext4 /dev/vda1 rw
131 120 254:1 /etc /etc ro shared:86 master:1 - ext4 /dev/vda1 rw
141 120 0:60 / /proc rw,nosuid shared:68 - proc proc rw
146 126 0:40 / /run/kupgrade-snapshot rw shared:73 master:57 - tmpfs kupgrade-snapshot rw
"""


def fake(tmp_path, ns_info=NS_INFO, fds=(), child_mnt=None) -> Path:
    """/proc with kupgrade (self) in the host's namespace and the unit's PID 500 in its own."""
    proc = tmp_path / "proc"
    for pid, info, mnt in (("self", HOST_INFO, HOST_MNT), ("500", ns_info, OWN_MNT)):
        for sub in ("ns", "fd", "fdinfo"):
            (proc / pid / sub).mkdir(parents=True)
        (proc / pid / "mountinfo").write_text(info)
        os.symlink(mnt, proc / pid / "ns" / "mnt")
    for n, (path, mnt_id, flags) in enumerate(fds):
        os.symlink(path, proc / "500" / "fd" / str(n))
        (proc / "500" / "fdinfo" / str(n)).write_text(f"pos:\t0\nflags:\t{flags}\nmnt_id:\t{mnt_id}\n")
    if child_mnt:
        (proc / "501" / "ns").mkdir(parents=True)
        os.symlink(child_mnt, proc / "501" / "ns" / "mnt")
    return proc


def test_every_slave_of_the_host_is_an_external_bound_from_its_masters_host_mount(tmp_path):
    p = mountns.plan(500, (500,), own=("/run/kupgrade-snapshot",), proc=fake(tmp_path))
    got = {m.point: (m.source, m.kind) for m in p.mounts}
    assert got == {
        "/run": ("/run", HOST), "/run/lock": ("/run/lock", HOST),
        # on /run's file system, as the master group needs it: never a copy elsewhere
        "/run/credentials": ("/run/systemd/inaccessible/dir", HOST),
        "/run/systemd/incoming": ("/run/systemd/propagate/web.service", HOST),
        "/tmp": (PRIVATE, PRIVATE_DIR), "/etc": ("/etc", HOST),
        "/run/kupgrade-snapshot": (EMPTY, EMPTY_DIR)}      # kupgrade's own, propagated in
    assert [m.key for m in p.mounts] == [f"c{n}" for n in range(1, 8)]
    # the namespace's own /dev and /proc, and its root, are criu's to make


def test_the_command_lines(tmp_path):
    p = mountns.plan(500, (500,), proc=fake(tmp_path))
    dump, restore = p.dump_args(), p.restore_args()
    assert dump[:4] == ["--external", "mnt[/run]:c1", "--external", "mnt[/run/lock]:c2"]
    assert restore[:6] == ["--root", "/", "--external", "mnt[c1]:/run", "--external", "mnt[c2]:/run/lock"]
    assert f"mnt[c5]:{PRIVATE}" in restore


def test_files_outside_the_namespace(tmp_path):
    """systemd opens the unit's stdio /dev/null in the host's /dev before entering the namespace."""
    proc = fake(tmp_path, fds=[("/dev/null", 22, "0100000"), ("/etc/hostname", 131, "0100002"),
                               ("socket:[123]", 0, "02"), ("/dev/null", 22, "0100002")])
    p = mountns.plan(500, (500,), proc=proc)
    ino = os.stat("/dev/null").st_ino
    assert p.files == (mountns.ExtFile(f"file[16:{ino:x}]", "/dev/null", os.O_RDWR),)
    assert p.dump_args()[-2:] == ["--external", f"file[16:{ino:x}]"]


def test_a_root_that_is_not_the_hosts(tmp_path):
    info = NS_INFO.replace("254:1 / / ro,relatime shared:49 master:1", "254:1 /srv/jail / ro shared:49 master:1")
    with pytest.raises(mountns.NotCarried, match="RootDirectory"):
        mountns.plan(500, (500,), proc=fake(tmp_path, info))


def test_a_host_mount_that_is_gone(tmp_path):
    info = NS_INFO + "150 120 8:17 / /mnt/usb rw shared:90 master:77 - vfat /dev/sdb1 rw\n"
    with pytest.raises(mountns.NotCarried, match="/mnt/usb in it is bound from a host mount that is gone"):
        mountns.plan(500, (500,), proc=fake(tmp_path, info))


def test_a_task_in_another_namespace(tmp_path):
    with pytest.raises(mountns.NotCarried, match="PID 501 is in another mount namespace"):
        mountns.plan(500, (500, 501), proc=fake(tmp_path, child_mnt="mnt:[4026532999]"))


def test_save_load_and_prepare_in_the_new_boot(tmp_path):
    """The private /tmp is copied with the snapshot and put back at its path; systemd's per-unit
    directory and the empty stand-in are made; what exists is left alone; the files reopened."""
    private = tmp_path / "tmp" / "systemd-private-1fcb-web.service-X" / "tmp"
    private.mkdir(parents=True)
    (private / "sock.pid").write_text("42\n")
    (private / "sock.pid").chmod(0o640)
    os.chown(private / "sock.pid", 1234, 1234) if os.getuid() == 0 else None
    made, kept = tmp_path / "run" / "systemd" / "propagate" / "web.service", tmp_path / "etc"
    kept.mkdir()
    p = mountns.Plan((mountns.ExtMount("c1", "/tmp", str(private), PRIVATE_DIR),
                      mountns.ExtMount("c2", "/run/systemd/incoming", str(made), HOST),
                      mountns.ExtMount("c3", "/etc", str(kept), HOST)),
                     (mountns.ExtFile("file[16:5]", "/dev/null", os.O_RDWR),))
    images = tmp_path / "images"
    images.mkdir()
    mountns.save(p, images)
    assert json.loads((images / mountns.NAME).read_text())["mounts"][0]["kind"] == PRIVATE_DIR
    # the snapshot's archive carries every file as root's, 0600
    for f in (images / mountns.PRIVATE).rglob("*"):
        f.chmod(0o600) if f.is_file() else None
    assert (images / mountns.PRIVATE / "c1" / "sock.pid").read_text() == "42\n"
    # the next boot: systemd-tmpfiles removed every systemd-private-*
    (private / "sock.pid").unlink()
    private.rmdir()
    private.parent.rmdir()
    loaded = mountns.load(images)
    assert loaded == p
    fds = mountns.prepare(loaded, images)
    try:
        assert (private / "sock.pid").read_text() == "42\n"
        st = (private / "sock.pid").stat()
        assert oct(st.st_mode & 0o777) == "0o640" and (os.getuid() != 0 or st.st_uid == 1234)
        assert oct(private.parent.stat().st_mode & 0o777) == "0o700" and made.is_dir()
        assert list(fds) == ["file[16:5]"] and os.readlink(f"/proc/self/fd/{fds['file[16:5]']}") == "/dev/null"
    finally:
        for fd in fds.values():
            os.close(fd)
    assert mountns.load(tmp_path) is None


def test_mount_points_inside_what_is_bound_from_the_host(tmp_path):
    """criu mounts /run/kupgrade-snapshot on the namespace's /run, a bind of the host's: the new
    boot's /run must have that directory (it failed there: "Can't stat mountpoint")."""
    p = mountns.plan(500, (500,), own=("/run/kupgrade-snapshot",), proc=fake(tmp_path))
    assert mountns.Point("/run/kupgrade-snapshot", True) in p.points
    assert mountns.Point("/run/systemd/incoming", True) in p.points and mountns.Point("/etc", True) in p.points
    assert not any(pt.path.startswith("/proc/") for pt in p.points)     # inside its own /proc: criu makes them


def test_the_private_tmp_counts_in_the_snapshot_size(tmp_path):
    private = tmp_path / "tmp" / "systemd-private-1fcb-web.service-X" / "tmp"
    (private / "sub").mkdir(parents=True)
    (private / "a").write_bytes(b"x" * 1000)
    (private / "sub" / "b").write_bytes(b"y" * 24)
    proc = fake(tmp_path, NS_INFO.replace(PRIVATE, str(private)))
    assert mountns.private_bytes(500, proc) == 1024
    os.unlink(proc / "500" / "ns" / "mnt")
    os.symlink(HOST_MNT, proc / "500" / "ns" / "mnt")
    assert mountns.private_bytes(500, proc) == 0        # the host's namespace: nothing of its own


def test_a_file_from_outside_on_a_tmpfs_is_not_carried(tmp_path):
    """A regular file the tree opened on the host's /run (a tmpfs): the new boot has no such file."""
    f = tmp_path / "state"
    f.write_text("x")
    with pytest.raises(mountns.NotCarried, match="open from outside its namespace, on a tmpfs"):
        mountns.plan(500, (500,), proc=fake(tmp_path, fds=[(str(f), 25, "0100002")]))
    assert mountns.plan(500, (500,), proc=fake(tmp_path / "b", fds=[("/dev/null", 25, "02")])).files


def test_logind_s_session_fifo_in_an_ssh_session_is_a_foreign_file(tmp_path):
    """sshd (the host's namespace, NS_INFO standing for it) holds the write end of logind's
    session FIFO, passed over the bus from logind's own namespace (mount 268): an external,
    restored as a pipe's end; a regular file passed the same way is not carried."""
    fifo = tmp_path / "1.ref"
    os.mkfifo(fifo)
    proc = fake(tmp_path, fds=[(str(fifo), 268, "0104001"), ("/etc/hostname", 131, "0100000")])
    p = mountns.foreign((500,), proc=proc)
    ino = os.stat(fifo).st_ino
    assert p.mounts == () and p.files == (mountns.ExtFile(f"file[10c:{ino:x}]", str(fifo), os.O_WRONLY, False, True),)
    assert p.dump_args() == ["--external", f"file[10c:{ino:x}]"] and p.restore_args() == []
    images = tmp_path / "images"
    images.mkdir()
    mountns.save(p, images)
    fifo.unlink()               # the new boot has no such FIFO
    fds = mountns.prepare(mountns.load(images), images)
    try:
        st = os.fstat(fds[p.files[0].key])        # a FIFO, mode 0600, as criu checks
        assert oct(st.st_mode) == "0o10600" and os.readlink(f"/proc/self/fd/{fds[p.files[0].key]}").startswith("pipe:")
    finally:
        for fd in fds.values():
            os.close(fd)
    f = tmp_path / "b" / "state"
    f.parent.mkdir()
    f.write_text("x")
    with pytest.raises(mountns.NotCarried, match="from another mount namespace"):
        mountns.foreign((500,), proc=fake(tmp_path / "b", fds=[(str(f), 268, "0100002")]))
    assert mountns.foreign((500,), proc=fake(tmp_path / "c", fds=[("/etc/hostname", 131, "0100000")])) is None
