"""Files the new kernel's boot will not have (kupgrade/userspace/volatile.py): on a tmpfs, or in a
directory systemd-tmpfiles empties at boot; named per task and path by preflight."""

import os
import subprocess
import sys
from pathlib import Path

from kupgrade.userspace import volatile


def fake_task(proc, pid, fds=(), cwd="/var/lib/w", maps=(), mounts=None):
    t = proc / str(pid)
    (t / "fd").mkdir(parents=True)
    (t / "fdinfo").mkdir()
    (t / "comm").write_text("w\n")
    mounts = mounts or [("21", "/", "ext4"), ("22", "/run", "tmpfs"), ("23", "/dev/shm", "tmpfs"), ("24", "/tmp", "ext4")]
    (t / "mountinfo").write_text("".join(f"{i} 1 0:{i} / {p} rw - {fs} src rw\n" for i, p, fs in mounts))
    for n, (path, mnt) in enumerate(fds, start=3):
        (t / "fd" / str(n)).symlink_to(path)
        (t / "fdinfo" / str(n)).write_text(f"pos:\t0\nflags:\t02\nmnt_id:\t{mnt}\n")
    (t / "cwd").symlink_to(cwd)
    (t / "maps").write_text("".join(f"7f00-7f01 rw-s 00000000 00:17 5 {m}\n" for m in maps))


def test_files_on_a_tmpfs_or_emptied_at_boot_are_named(tmp_path):
    proc = tmp_path / "proc"
    fake_task(proc, 10, fds=[("/run/app.lock", "22"), ("/var/lib/app/db", "21"), ("socket:[123]", "8"),
                             ("/run/gone (deleted)", "22"), ("/tmp/counter", "24")],
              maps=["/dev/shm/ring", "/usr/lib/libc.so.6"])
    found = [b.message for b in volatile.blockers([10], proc, emptied=["/tmp"])]
    assert found == [
        "PID 10 (w) has /run/app.lock open (fd 3): it is on a tmpfs (/run), so the new kernel's boot will not have "
        "it and criu could not restore the process",
        "PID 10 (w) has /tmp/counter open (fd 7): /tmp is emptied at boot (systemd-tmpfiles), so the new kernel's "
        "boot will not have it and criu could not restore the process",
        "PID 10 (w) has /dev/shm/ring open (mapping): it is on a tmpfs (/dev/shm), so the new kernel's boot will not "
        "have it and criu could not restore the process"]
    assert "/var/tmp" in volatile.HINT
    assert volatile.blockers([99], proc, emptied=[]) == []       # exited meanwhile


def test_a_units_private_tmp_is_carried_with_its_namespace(tmp_path):
    """PrivateTmp: the task's /tmp is a bind of /tmp/systemd-private-*/tmp, which mountns.py
    copies into the snapshot and puts back: neither emptied at boot nor a tmpfs file to save."""
    proc = tmp_path / "proc"
    fake_task(proc, 10, fds=[("/tmp/notes", "24"), ("/var/tmp/cache", "25")])
    (proc / "10" / "mountinfo").write_text(
        "21 1 254:1 / / rw master:1 - ext4 /dev/vda rw\n"
        "24 21 254:1 /tmp/systemd-private-ab-web.service-X/tmp /tmp rw master:1 - ext4 /dev/vda rw\n"
        "25 21 0:40 /systemd-private-ab-web.service-Y/tmp /var/tmp rw master:7 - tmpfs tmpfs rw\n")
    assert volatile.blockers([10], proc, emptied=["/tmp", "/var/tmp"]) == []
    assert volatile.carried([10], proc) == {}


def test_tmpfiles_lines_that_empty_a_directory_at_boot(tmp_path):
    lib, etc, systemd = tmp_path / "lib", tmp_path / "etc", tmp_path / "systemd"
    for d in (lib, etc, systemd):
        d.mkdir()
    (lib / "tmp.conf").write_text("# Debian\nD /tmp 1777 root root -\n#q /var/tmp 1777 root root 30d\n")
    (lib / "x11.conf").write_text("D! /tmp/.X11-unix 1777 root root 10d\nR! /var/lib/stale\nd /run/x 0755\n")
    (etc / "x11.conf").write_text("d /tmp/.X11-unix 1777 root root -\n")     # the admin's overrides the vendor's
    assert volatile.emptied_at_boot((str(etc), str(lib)), systemd) == ["/tmp"]
    (etc / "x11.conf").unlink()
    assert volatile.emptied_at_boot((str(etc), str(lib)), systemd) == ["/tmp", "/tmp/.X11-unix", "/var/lib/stale"]
    assert volatile.emptied_at_boot((str(etc), str(lib)), tmp_path / "no-systemd") == []


def test_a_real_process_with_its_own_files(tmp_path):
    """This process's view of the real /proc: a file it opens is judged by the mount it is on."""
    f = tmp_path / "x"
    p = subprocess.Popen([sys.executable, "-c", f"import time; f = open({str(f)!r}, 'w'); print(1, flush=True); "
                          "time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        p.stdout.readline()
        found = volatile.blockers([p.pid], emptied=[str(tmp_path)])
        assert any(f"has {f} open (fd " in b.message for b in found)
        assert volatile.blockers([p.pid], emptied=[], own=(str(tmp_path), os.getcwd(), "/")) == []
    finally:
        p.kill()
        p.wait()


def test_device_nodes_in_a_services_own_dev_are_not_files_to_carry(tmp_path):
    """PrivateDevices gives the service a tmpfs /dev with device nodes: /dev/null is in every boot."""
    proc = tmp_path / "proc"
    fake_task(proc, 10, fds=[("/dev/null", "25"), ("/dev/shm/x", "25")],
              mounts=[("21", "/", "ext4"), ("25", "/dev", "tmpfs")])
    (proc / "10" / "fd" / "3").unlink()
    (proc / "10" / "fd" / "3").symlink_to("/dev/null")          # stat() follows it to the real device node
    found = [b.message for b in volatile.blockers([10], proc, emptied=[])]
    assert found == ["PID 10 (w) has /dev/shm/x open (fd 4): it is on a tmpfs (/dev), so the new kernel's boot "
                     "will not have it and criu could not restore the process"]


def test_small_files_on_a_tmpfs_are_carried_and_put_back(tmp_path):
    """A real process holding a file open in /dev/shm (a tmpfs): not a blocker; `save` copies it
    with the directory above it, `put_back` recreates both where this boot lacks them."""
    import shutil as sh
    import stat
    d = Path(f"/dev/shm/kupgrade-test-{os.getpid()}")
    d.mkdir(mode=0o750)
    f = d / "crond.pid"
    f.write_text("1234\n")
    f.chmod(0o640)
    p = subprocess.Popen([sys.executable, "-c", f"import time; f = open({str(f)!r}); print(1, flush=True); "
                          "time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        p.stdout.readline()
        assert volatile.blockers([p.pid], emptied=[]) == []
        assert volatile.carried([p.pid]) == {str(f): (p.pid, "/dev/shm")}
        images = tmp_path / "images"
        images.mkdir()
        assert volatile.save([p.pid], images) == 1
        root = tmp_path / "newboot"
        (root / "dev/shm").mkdir(parents=True)
        assert volatile.put_back(images, root) == [str(f)]
        back = root / str(f).lstrip("/")
        assert back.read_text() == "1234\n" and stat.S_IMODE(back.stat().st_mode) == 0o640
        assert stat.S_IMODE(back.parent.stat().st_mode) == 0o750
        assert volatile.put_back(images, root) == []             # there already: left as it is
    finally:
        p.kill()
        p.wait()
        sh.rmtree(d)


def test_a_fifo_on_a_tmpfs_is_made_again(tmp_path):
    """logind's session FIFO, as an ssh session's sshd holds it: carried, made again (empty)."""
    import shutil as sh
    import stat
    d = Path(f"/dev/shm/kupgrade-fifo-{os.getpid()}")
    d.mkdir(mode=0o755)
    fifo = d / "3.ref"
    os.mkfifo(fifo, 0o600)
    p = subprocess.Popen([sys.executable, "-c", f"import os, time; fd = os.open({str(fifo)!r}, os.O_RDWR); "
                          "print(1, flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        p.stdout.readline()
        assert volatile.blockers([p.pid], emptied=[]) == []
        images = tmp_path / "images"
        images.mkdir()
        assert volatile.save([p.pid], images) == 1
        root = tmp_path / "newboot"
        (root / "dev/shm").mkdir(parents=True)
        assert volatile.put_back(images, root) == [str(fifo)]
        assert stat.S_ISFIFO((root / str(fifo).lstrip("/")).stat().st_mode)
    finally:
        p.kill()
        p.wait()
        sh.rmtree(d)
