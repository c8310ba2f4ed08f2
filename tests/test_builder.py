"""The initrd builders (kupgrade/switch/boot.py `Builder`): which one a machine uses, what install-boot
writes for each, how their listings are read, and the dracut module run under a stand-in for
dracut's own functions."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kupgrade.errors import ConfigError, StageError
from kupgrade.switch import boot, contract

# lsinitrd's output as Debian's dracut 059 prints it (header, dracut modules, cpio -tv lines)
LSINITRD = f"""Image: /boot/initrd.img-6.12.117+deb12-amd64: 13M
========================================================================
Version: 

Arguments:  -f --kver '6.12.117+deb12-amd64'

dracut modules:
systemd
kupgrade
========================================================================
drwxr-xr-x  12 root     root            0 Dec  4 12:10 .
crw-r--r--   1 root     root       5,   1 Dec  4 12:10 dev/console
lrwxrwxrwx   1 root     root            7 Dec  4 12:10 bin -> usr/bin
-rw-r--r--   1 root     root            6 Dec  4 12:13 {contract.BOOT_MARKER}
-rwxr-xr-x   1 root     root       772880 May  7  2026 usr/bin/busybox
-rwxr-xr-x   1 root     root          203 Dec  4 12:13 usr/lib/dracut/hooks/cmdline/00-kupgrade-top.sh
-rwxr-xr-x   1 root     root          211 Dec  4 12:13 usr/lib/dracut/hooks/pre-pivot/90-kupgrade-bottom.sh
-rw-r--r--   1 root     root        10644 Nov 14 12:56 usr/lib/modules/6.12.117+deb12-amd64/kernel/drivers/nvdimm/nd_pmem.ko.xz
========================================================================
"""


def which_only(monkeypatch, *have: str) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}" if name in have else None)


@pytest.mark.parametrize("have, found", [
    (("update-initramfs", "dracut"), "initramfs-tools"),     # dracut-core beside initramfs-tools
    (("dracut",), "dracut"),                                  # initramfs-tools removed: only its -core is left
    (("update-initramfs",), "initramfs-tools"),
    ((), None),
])
def test_the_builder_is_the_one_whose_rebuild_command_is_there(monkeypatch, have, found):
    which_only(monkeypatch, *have)
    assert (b.name if (b := boot.detect()) else None) == found


def test_no_builder_or_no_lister_is_a_usage_error_with_a_hint(monkeypatch):
    which_only(monkeypatch)
    with pytest.raises(ConfigError, match="neither initramfs-tools") as e:
        boot.builder()
    assert e.value.exit_code == 2 and "dracut" in e.value.hint
    which_only(monkeypatch, "dracut")
    assert boot.builder() is boot.DRACUT
    with pytest.raises(ConfigError, match="lsinitrd is missing") as e:
        boot.builder(listing=True)
    assert "dracut" in e.value.hint


def test_rebuild_commands():
    assert boot.INITRAMFS_TOOLS.rebuild("6.12") == ["update-initramfs", "-u", "-k", "6.12"]
    assert boot.DRACUT.rebuild("6.12") == ["dracut", "--force", "--kver", "6.12"]


def test_lsinitrd_listing_gives_the_file_names_only():
    names = boot.DRACUT.names(LSINITRD)
    assert contract.BOOT_MARKER in names and "bin" in names and "dev/console" in names
    assert "kupgrade" not in names and "systemd" not in names and "Version:" not in names      # the header
    assert not any(" " in n for n in names)


def fake_listing(monkeypatch, tmp_path, listing: str) -> Path:
    monkeypatch.setattr(boot, "run", lambda argv, **kw: type("P", (), {"stdout": listing.encode()}))
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(listing.encode())        # a new size each time: no cached listing
    return initrd


def test_the_boot_script_check_reads_lsinitrd_on_a_dracut_machine(monkeypatch, tmp_path):
    which_only(monkeypatch, "dracut", "lsinitrd")
    assert boot.initrd_has_hook(fake_listing(monkeypatch, tmp_path, LSINITRD))
    assert boot.missing_modules(tmp_path / "initrd.img", ("nd_e820", "nd_pmem")) == ["nd_e820"]
    without = LSINITRD.replace("90-kupgrade-bottom.sh", "90-other.sh")
    assert not boot.initrd_has_hook(fake_listing(monkeypatch, tmp_path, without))
    older = LSINITRD.replace(contract.BOOT_MARKER, "etc/kupgrade-boot.0")
    assert not boot.initrd_has_hook(fake_listing(monkeypatch, tmp_path, older))
    # an initrd initramfs-tools built (before the machine moved to dracut) carries it as well
    tools = f"{contract.BOOT_MARKER}\nscripts/init-bottom/kupgrade\nusr/bin/busybox\n"
    assert boot.initrd_has_hook(fake_listing(monkeypatch, tmp_path, "x\n" + "\n".join(
        f"-rw-r--r--   1 root root 6 Dec  4 12:13 {n}" for n in tools.split())))


def test_install_writes_the_dracut_module_and_the_unit(monkeypatch, tmp_path):
    which_only(monkeypatch, "dracut", "busybox")
    ran = []
    monkeypatch.setattr(boot, "run", lambda argv, **kw: ran.append(argv))
    paths = boot.BootPaths(tmp_path)
    done = boot.install(["6.12"], paths)
    module = tmp_path / boot.DRACUT.MODULE
    assert sorted(p.name for p in module.iterdir()) == ["init-bottom", "init-top", "kupgrade-bottom.sh",
                                                       "kupgrade-top.sh", "module-setup.sh"]
    assert all(p.stat().st_mode & 0o111 for p in module.iterdir())
    assert (module / "init-top").read_text() == boot.boot_file("initramfs-top")
    assert (module / "init-bottom").read_text() == boot.boot_file("initramfs-script")
    assert paths.unit.exists() and paths.generator.exists() and not (tmp_path / "etc/initramfs-tools").exists()
    assert ran == [["dracut", "--force", "--kver", "6.12"]]
    assert done[0] == "initrd builder: dracut" and done[-1] == "rebuilt the initrd of 6.12 (dracut)"


def test_install_refuses_without_a_builder_or_busybox(monkeypatch, tmp_path):
    which_only(monkeypatch, "busybox")
    with pytest.raises(ConfigError, match="no initrd builder"):
        boot.install(["6.12"], boot.BootPaths(tmp_path))
    which_only(monkeypatch, "update-initramfs")
    with pytest.raises(ConfigError, match="busybox is missing") as e:
        boot.install(["6.12"], boot.BootPaths(tmp_path))
    assert e.value.exit_code == 2 and "install busybox" in e.value.hint
    assert not (tmp_path / "etc").exists()


def modules_named(text: str, command: str) -> set[str]:
    return {m for line in text.splitlines() if re.match(rf"\s*(hostonly='' )?{command} ", line)
            for m in line.split(command, 1)[1].split()}


def test_the_dracut_module_carries_what_the_initramfs_tools_hook_does():
    setup = boot.boot_file("dracut-module-setup.sh")
    hook = boot.boot_file("initramfs-hook")
    assert modules_named(setup, "instmods") == modules_named(hook, "manual_add_modules")
    assert f'"${{initdir}}/{contract.BOOT_MARKER}"' in setup
    # the hooks run the scripts where module-setup.sh puts them; the hook that proves the boot
    # script is there is named as dracut's inst_hook names it
    installed = dict(re.findall(r'inst_script "\$moddir/([\w-]+)" (\S+)', setup))
    hooks = dict((name, (point, prio)) for point, prio, name in re.findall(r"inst_hook ([\w-]+) (\d+) \"\$moddir/(\S+)\"", setup))
    assert hooks == {"kupgrade-top.sh": ("cmdline", "00"), "kupgrade-bottom.sh": ("pre-pivot", "90")}
    assert boot.boot_file("dracut-cmdline-hook.sh").splitlines()[-1] == installed["init-top"]
    assert boot.boot_file("dracut-pre-pivot-hook.sh").splitlines()[-1] == installed["init-bottom"]
    assert boot.DRACUT.script == "dracut/hooks/pre-pivot/90-kupgrade-bottom.sh"
    files = {Path(rel).name: name for rel, name, _ in boot.DRACUT.files}
    assert files["kupgrade-top.sh"] == "dracut-cmdline-hook.sh" and files["init-top"] == "initramfs-top"


FAKE_DRACUT = r"""
find_binary() { [ -n "$BUSYBOX" ] && echo "$BUSYBOX"; }
dfatal() { echo "dfatal $*"; }
for f in inst_binary inst_multiple inst_script inst_hook instmods; do eval "$f() { echo $f \"\$@\" hostonly=\$hostonly; }"; done
hostonly=-h
. "$1"
check; echo "check $?"
installkernel
install
echo "end"
"""


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash (dracut's shell)")
def test_module_setup_under_a_stand_in_for_dracut(tmp_path):
    """module-setup.sh as dracut calls it: included always, kernel modules not limited by host-only
    mode, busybox at /bin/busybox, the scripts and hooks, the marker; without busybox the build
    fails (as initramfs-tools' hook makes update-initramfs fail)."""
    setup = tmp_path / "module-setup.sh"
    setup.write_text(boot.boot_file("dracut-module-setup.sh"))
    env = {"PATH": "/usr/bin:/bin", "moddir": "/M", "initdir": str(tmp_path / "initrd"), "BUSYBOX": "/usr/bin/busybox"}
    out = subprocess.run(["bash", "-c", FAKE_DRACUT, "fake", str(setup)], env=env, capture_output=True, text=True).stdout
    lines = out.splitlines()
    assert lines[0] == "check 0" and lines[-1] == "end"
    assert all(l.endswith("hostonly=") for l in lines if l.startswith("instmods"))
    assert "inst_binary /usr/bin/busybox /bin/busybox hostonly=-h" in lines
    assert "inst_hook cmdline 00 /M/kupgrade-top.sh hostonly=-h" in lines
    assert "inst_hook pre-pivot 90 /M/kupgrade-bottom.sh hostonly=-h" in lines
    assert (tmp_path / "initrd" / contract.BOOT_MARKER).exists()
    env["BUSYBOX"] = ""
    r = subprocess.run(["bash", "-c", FAKE_DRACUT, "fake", str(setup)], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "dfatal kupgrade: busybox is missing" in r.stdout and "end" not in r.stdout


def counted_lsinitrd(monkeypatch) -> list:
    """A dracut machine whose lsinitrd prints LSINITRD; returns the list of its runs."""
    which_only(monkeypatch, "dracut", "lsinitrd")
    ran = []
    monkeypatch.setattr(boot, "run", lambda argv, **kw: ran.append(argv) or type("P", (), {"stdout": LSINITRD.encode()}))
    return ran


def test_a_listing_is_kept_by_content_and_the_lister_runs_once_per_content(monkeypatch, tmp_path):
    ran = counted_lsinitrd(monkeypatch)
    first = tmp_path / "initrd.img-6.12"
    first.write_bytes(b"the same bytes")
    assert boot.initrd_has_hook(first)
    boot._listing.cache_clear()          # another process: a check after install-boot
    copy = tmp_path / "copied"           # another path, inode and time: the same content
    copy.write_bytes(b"the same bytes")
    assert boot.initrd_has_hook(copy) and len(ran) == 1
    first.write_bytes(b"rebuilt")        # new content: listed again
    assert boot.initrd_has_hook(first) and len(ran) == 2
    assert oct((tmp_path / "initrd-listings").stat().st_mode & 0o777) == "0o700"


def test_a_damaged_or_unwritable_listing_store_only_costs_a_listing(monkeypatch, tmp_path):
    ran = counted_lsinitrd(monkeypatch)
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"content")
    assert boot.initrd_has_hook(initrd)
    for kept in (tmp_path / "initrd-listings").glob("*.json"):
        kept.write_text("{not json")
    boot._listing.cache_clear()
    assert boot.initrd_has_hook(initrd) and len(ran) == 2
    monkeypatch.setattr(boot, "LISTINGS", tmp_path / "a-file" / "below")
    (tmp_path / "a-file").write_text("")
    boot._listing.cache_clear()
    assert boot.initrd_has_hook(initrd) and len(ran) == 3


def test_install_checks_that_the_rebuilt_initrd_carries_the_boot_script(monkeypatch, tmp_path):
    which_only(monkeypatch, "dracut", "busybox", "lsinitrd")
    listing = {"text": LSINITRD}
    monkeypatch.setattr(boot, "run", lambda argv, **kw: type("P", (), {"stdout": listing["text"].encode()}))
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/initrd.img-6.12").write_bytes(b"built")
    done = boot.install(["6.12"], boot.BootPaths(tmp_path))
    assert done[-1] == "checked: the initrd of 6.12 carries the boot script (lsinitrd)"
    listing["text"] = LSINITRD.replace("90-kupgrade-bottom.sh", "90-other.sh")
    (tmp_path / "boot/initrd.img-6.12").write_bytes(b"built without it")
    with pytest.raises(StageError, match="does not carry kupgrade's boot script") as e:
        boot.install(["6.12"], boot.BootPaths(tmp_path))
    assert "install-boot again" in e.value.hint
