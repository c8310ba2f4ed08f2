from pathlib import Path

from kupgrade.output.record import Workload
from kupgrade.system import criu, kexec


def test_command_line_keeps_ours_drops_loader_words():
    cur = "BOOT_IMAGE=/vmlinuz-6.1 root=UUID=abc ro quiet initrd=/initrd.img kupgrade.snapshot=OLD\n"
    assert kexec.command_line(cur, "NEW", "mitigations=auto") == \
        "root=UUID=abc ro quiet mitigations=auto kupgrade.snapshot=NEW"


def test_lockdown_mode(tmp_path):
    p = tmp_path / "lockdown"
    p.write_text("none [integrity] confidentiality\n")
    assert kexec.lockdown_mode(p) == "integrity"
    p.write_text("[none] integrity confidentiality\n")
    assert kexec.lockdown_mode(p) == "none"
    assert kexec.lockdown_mode(tmp_path / "absent") == "none"


def test_method_choice():
    assert kexec.choose_method("auto", "none").name == "classic"
    m = kexec.choose_method("auto", "integrity")
    assert m.name == "file" and "lockdown" in m.why
    assert kexec.choose_method("file", "none").name == "file"
    assert "refuse" in kexec.choose_method("classic", "integrity").why


def test_load_argv():
    classic = kexec.load_argv(kexec.Method("classic", ""), Path("/boot/vmlinuz"), Path("/run/s/initrd.img"), "root=/dev/vda")
    assert classic == ["kexec", "--no-checks", "--load", "/boot/vmlinuz", "--initrd=/run/s/initrd.img",
                       "--command-line=root=/dev/vda"]
    file_ = kexec.load_argv(kexec.Method("file", ""), Path("/v"), Path("/i"), "x")
    assert file_[:2] == ["kexec", "--kexec-file-syscall"]
    assert kexec.unload_argv(kexec.Method("file", "")) == ["kexec", "--kexec-file-syscall", "--unload"]
    assert kexec.exec_argv() == ["kexec", "--exec"]


def test_criu_argv():
    w = Workload("cgroup:/w", 300, (300, 301), cgroup="/w")
    argv = criu.dump_argv(w, Path("/snap/images/tree-300"))
    assert argv[:4] == ["criu", "dump", "--tree", "300"]
    assert "--leave-stopped" in argv
    assert "--file-locks" in argv       # carry.py relies on it: the tree's own locks are carried
    assert argv[argv.index("--freeze-cgroup") + 1] == "/sys/fs/cgroup/w"
    assert "--freeze-cgroup" not in criu.dump_argv(Workload("pid:300", 300, (300,)), Path("/x"))
    # an ssh session's scope in the tree: criu seizes task by task (its freezer mode would not)
    session = Workload("unit:ssh.service", 300, (300, 301), cgroup="/w", other_cgroups=("/user.slice/s.scope",))
    assert "--freeze-cgroup" not in criu.dump_argv(session, Path("/x"))
    assert "--freeze-cgroup" not in criu.pre_dump_argv(session, Path("/x"), 1)
    r = criu.restore_argv(Path("/run/kupgrade/images/tree-300"), Path("/p"))
    assert r[:2] == ["criu", "restore"] and "--restore-detached" in r and r[r.index("--pidfile") + 1] == "/p"
    assert r[r.index("--images-dir") + 1] == "/run/kupgrade/images/tree-300" and "-v4" in r
    assert r[r.index("--log-file") + 1] == criu.RESTORE_LOG     # kept by finish_trees, read by first_error


def _bzimage(path: Path, syssize: int, total: int, version: str = "") -> Path:
    """A bzImage header (setup_sects 3) with, optionally, the kernel_version string as the
    boot protocol places it: at the field's value + 0x200."""
    import struct
    data = bytearray(total)
    data[0x1F1] = 3
    struct.pack_into("<I", data, 0x1F4, syssize)
    data[0x202:0x206] = b"HdrS"
    if version:
        struct.pack_into("<H", data, 0x20E, 0x300)
        text = f"{version} (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC".encode() + b"\0"
        data[0x500:0x500 + len(text)] = text
    path.write_bytes(bytes(data))
    return path


def test_bzimage_version_from_the_header_not_the_name(tmp_path):
    img = _bzimage(tmp_path / "vmlinuz-custom", syssize=100, total=4 * 512 + 1600 + 64, version="6.12.117+deb12-amd64")
    assert kexec.bzimage_version(img) == "6.12.117+deb12-amd64"
    assert kexec.bzimage_version(_bzimage(tmp_path / "old", syssize=1, total=4096)) == ""
    assert kexec.bzimage_version(tmp_path / "absent") == ""


def test_preflight_target_release_from_the_image(tmp_path):
    from kupgrade.context import Target
    from kupgrade.stages.preflight import _target
    img = _bzimage(tmp_path / "vmlinuz", syssize=100, total=4 * 512 + 1600 + 64, version="6.12.117+deb12-amd64")
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"x")
    blockers = []
    assert _target(Target("", img, initrd), blockers).version == "6.12.117+deb12-amd64" and not blockers
    t = _target(Target("6.12.999-amd64", img, initrd), blockers)
    assert t.version == "6.12.117+deb12-amd64"
    assert [b.message for b in blockers] == [f"{img} is kernel 6.12.117+deb12-amd64, not 6.12.999-amd64"]
    blockers.clear()
    _target(Target("", _bzimage(tmp_path / "noversion", syssize=100, total=4 * 512 + 1600 + 64), initrd), blockers)
    assert "does not say which kernel release" in blockers[0].message


def test_check_bzimage(tmp_path):
    good = _bzimage(tmp_path / "good", syssize=100, total=4 * 512 + 1600 + 64)
    assert kexec.check_bzimage(good) is None
    short = _bzimage(tmp_path / "short", syssize=100, total=4 * 512 + 100)
    assert "truncated" in kexec.check_bzimage(short)
    (tmp_path / "junk").write_bytes(b"x" * 4096)
    assert "not an x86 bzImage" in kexec.check_bzimage(tmp_path / "junk")
    assert "cannot read" in kexec.check_bzimage(tmp_path / "absent")


def test_keep_criu_logs_private(tmp_path):
    images = tmp_path / "images"
    (images / "tree-300").mkdir(parents=True)
    (images / "tree-300" / "dump.log").write_text("(00.1) Error (criu/x.c:1): boom\n")
    (images / "tree-300" / "pages-1.img").write_bytes(b"x")
    kept = criu.keep_logs(images, tmp_path / "logs" / "ID")
    assert kept == [str(tmp_path / "logs/ID/tree-300/dump.log")]
    assert Path(kept[0]).stat().st_mode & 0o077 == 0
    assert (tmp_path / "logs/ID").stat().st_mode & 0o077 == 0
    assert "boom" in criu.first_error(images / "tree-300", "dump.log")
    (tmp_path / criu.WARM_LOG).write_text("(00.2) kerndat\n")      # the restore's warm-up, beside the trees
    assert criu.keep_log(tmp_path / criu.WARM_LOG, tmp_path / "logs" / "ID", criu.WARM_LOG) == \
        str(tmp_path / "logs/ID" / criu.WARM_LOG)
    assert (tmp_path / "logs/ID" / criu.WARM_LOG).stat().st_mode & 0o077 == 0
    assert criu.warm_argv(Path("/run/kupgrade/x.log"))[-3:] == ["-v4", "--log-file", "/run/kupgrade/x.log"]


def test_criu_first_error_is_the_cause(tmp_path):
    from kupgrade.system import criu
    (tmp_path / "dump.log").write_text("(0.1) info\n(0.2) Error (criu/x.c:1): A session leader is outside\n"
                                       "(0.3) Error (criu/cr-dump.c:2053): Dumping FAILED.\n")
    assert criu.first_error(tmp_path, "dump.log") == "(0.2) Error (criu/x.c:1): A session leader is outside"
    assert criu.first_error(tmp_path, "missing.log") == ""


def test_criu_unit_dump_and_inherited_stdio(tmp_path):
    from kupgrade.output.record import Workload
    w = Workload("unit:web.service", 300, (300,), cgroup="/system.slice/web.service", unit="web.service")
    assert criu.dump_argv(w, Path("/i"), external=["socket:[77]"])[-2:] == ["--external", "unix[77]"]
    argv = criu.restore_argv(Path("/i"), Path("/p"), {"socket:[77]": 9})
    assert argv[-2:] == ["--inherit-fd", "fd[9]:socket:[77]"]
    proc = tmp_path / "proc"
    (proc / "300" / "fd").mkdir(parents=True)
    (proc / "300" / "fd" / "1").symlink_to("socket:[77]")
    (proc / "300" / "fd" / "2").symlink_to("socket:[77]")
    (proc / "300" / "fd" / "0").symlink_to("/dev/null")
    assert criu.stdio_sockets((300, 301), proc) == ["socket:[77]"]


def test_a_missing_lister_blocks_instead_of_skipping_the_boot_script_check(tmp_path, monkeypatch):
    """Without the initrd builder's lister nothing shows that the target initrd has the boot
    script; without it the new kernel would not restore anything (the workloads would be lost):
    a blocker, naming what is missing for the builder this machine has (or that it has none)."""
    import shutil

    from kupgrade.context import Target
    from kupgrade.stages import preflight
    t = Target("6.12", tmp_path / "vmlinuz", tmp_path / "initrd.img")
    for have, missing, hint in ((set(), "no initrd builder", "dracut"),
                                ({"update-initramfs"}, "lsinitramfs is missing", "apt-get install initramfs-tools"),
                                ({"dracut"}, "lsinitrd is missing", "install dracut")):
        monkeypatch.setattr(shutil, "which", lambda name, have=have: f"/usr/bin/{name}" if name in have else None)
        [b] = preflight._initrd_blockers(t)
        assert missing in b.message and hint in b.hint, (have, b)


def test_the_command_line_says_which_pid_no_pid_of_the_snapshot_is_above():
    line = kexec.command_line("root=/dev/vda kupgrade.snapshot=OLD kupgrade.maxpid=7", "NEW", max_pid=30005)
    assert line == "root=/dev/vda kupgrade.snapshot=NEW kupgrade.maxpid=30005"
    assert kexec.max_pid_word(line) == 30005 and kexec.max_pid_word("root=/dev/vda") is None
    line = kexec.command_line("root=/dev/vda kupgrade.pidmax=9", "NEW", max_pid=40002, pid_max=4194304)
    assert line == "root=/dev/vda kupgrade.snapshot=NEW kupgrade.maxpid=40002 kupgrade.pidmax=4194304"



def test_a_plain_kexec_keeps_the_region_and_drops_an_earlier_switchs_words():
    cur = "BOOT_IMAGE=/vmlinuz root=/dev/vda kupgrade.pmem=0x180000000 kupgrade.snapshot=OLD kupgrade.maxpid=7 " \
          "kupgrade.pidmax=9"
    assert kexec.kept_words(cur) == ["root=/dev/vda", "kupgrade.pmem=0x180000000"]


def _ctx(*ids):
    from types import SimpleNamespace
    return SimpleNamespace(workloads=[Workload(f"pid:{ids[0]}", ids[0], ids)])


def test_the_pid_bound_is_exact_once_dumped_and_leaves_room_before(tmp_path):
    from kupgrade.stages import kexec as stage
    (tmp_path / "ns_last_pid").write_text("31000\n")
    (tmp_path / "pid_max").write_text("4194304\n")
    assert stage.pid_bound(_ctx(30001, 30005), exact=True, sysctl=tmp_path) == 30005
    assert stage.pid_bound(_ctx(30001, 30005), exact=False, sysctl=tmp_path) == 31000 + stage.PID_HEADROOM
    (tmp_path / "pid_max").write_text("32768\n")        # the new kernel's PIDs would soon wrap around
    assert stage.pid_bound(_ctx(30001, 30005), exact=False, sysctl=tmp_path) == 30005


def test_a_target_loaded_before_the_freeze_is_loaded_again_when_a_pid_went_above_its_bound(monkeypatch):
    from types import SimpleNamespace

    from kupgrade.output.record import StageResult, UpgradeRecord
    from kupgrade.stages import kexec as stage
    loads = []
    monkeypatch.setattr(stage, "load", lambda ctx: loads.append(1) or {"cmdline": "x kupgrade.maxpid=40000",
                                                                       "initrd_bytes": 1 << 20, "method": "classic"})
    monkeypatch.setattr(stage.fsfreeze, "targets", lambda pids: [])
    for bound, again in ((35000, False), (30010, True)):
        rec = UpgradeRecord("U", "run", "6.1").with_stage(StageResult(
            "prepare", "ok", 0, 0, details={"kexec_load": {"cmdline": f"x kupgrade.maxpid={bound}",
                                                           "initrd_bytes": 1 << 20, "method": "classic"}}))
        ctx = SimpleNamespace(record=rec, kexec_loaded=True, workloads=_ctx(30001, 30020).workloads,
                              plan=SimpleNamespace(region=None, target=SimpleNamespace(version="6.12"),
                                                   method=SimpleNamespace(name="classic")))
        details = stage.run(ctx)[1]
        assert bool(loads) == again and (details.reloaded is not None) == again
        loads.clear()
