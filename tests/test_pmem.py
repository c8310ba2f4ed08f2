"""kupgrade's memory region (the pmem transport): which region is ours, sealing a snapshot in
place, the way back through it, and the reservation install-boot writes."""

import json
from pathlib import Path

import pytest

from kupgrade.config import Config, ConfigError, load
from kupgrade.context import Context
from kupgrade.output.record import UpgradeRecord, Workload
from kupgrade.stages import preflight
from kupgrade.switch import boot, contract, manifest, packing, pmem, switchback
from kupgrade.system import kexec

IOMEM = """00000000-00000fff : Reserved
00001000-0009fbff : System RAM
000f0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-7ffdffff : System RAM
  01000000-01ffffff : Kernel code
7ffe0000-7fffffff : Reserved
"""


def fake_block(tmp_path, start=0x50000000, size=512 << 20, name="pmem0"):
    region = tmp_path / "devices" / "ndbus0" / "region0"
    ns = region / "namespace0.0"
    ns.mkdir(parents=True)
    (region / "resource").write_text(f"{start:#x}\n")
    (region / "size").write_text(f"{size}\n")
    block = tmp_path / "class" / "block"
    block.mkdir(parents=True, exist_ok=True)
    (block / name).mkdir()
    (block / name / "device").symlink_to(ns)
    return block


def test_only_the_region_the_command_line_marks_is_ours(tmp_path):
    block = fake_block(tmp_path)
    r, why = pmem.find("root=/dev/vda memmap=512M!1280M kupgrade.pmem=0x50000000", block)
    assert r == pmem.Region(0x50000000, 512 << 20, "/dev/pmem0") and why == ""
    r, why = pmem.find("root=/dev/vda memmap=512M!1280M", block)
    assert r is None and "install-boot --reserve" in why
    r, why = pmem.find("kupgrade.pmem=0x60000000", block)
    assert r is None and "no pmem device covers it" in why
    assert pmem.marked_start("kupgrade.pmem=1342177280") == 0x50000000
    assert pmem.marked_start("kupgrade.pmem=512M") is None     # the init-top script compares numbers


def test_sizes_parse_and_reject():
    assert pmem.parse_size("512M") == 512 << 20 and pmem.parse_size("2G") == 2 << 30
    assert pmem.parse_size("0x1000") == 4096
    with pytest.raises(ValueError):
        pmem.parse_size("lots")


def test_reservation_at_the_top_of_the_largest_ram_range():
    words, start = pmem.reserve_words(500 << 20, IOMEM)
    assert start == 0x58000000 and start % pmem.ALIGN == 0
    assert words == "memmap=512M!1408M kupgrade.pmem=0x58000000"
    with pytest.raises(ValueError):
        pmem.reserve_words(4 << 30, IOMEM)


def test_install_boot_reserve_writes_grub_or_says_the_words(tmp_path, monkeypatch):
    monkeypatch.setattr(boot.shutil, "which", lambda name: None)
    iomem = tmp_path / "iomem"
    iomem.write_text(IOMEM)
    paths = boot.BootPaths(tmp_path / "root")
    out = boot.reserve(512 << 20, paths, iomem)
    assert "add these words" in out[0] and "memmap=512M!" in out[0]
    paths.grub.parent.mkdir(parents=True)
    out = boot.reserve(512 << 20, paths, iomem)
    text = paths.grub.read_text()
    assert 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX memmap=512M!1408M kupgrade.pmem=0x58000000"' in text
    assert any("reboot once" in line for line in out)
    assert boot.reserve(0, paths, iomem)[0] == f"removed {paths.grub}" and not paths.grub.exists()


def test_kexec_keeps_the_region_words_and_drops_an_old_marker():
    line = kexec.command_line("BOOT_IMAGE=/vmlinuz root=/dev/vda memmap=512M!1280M kupgrade.pmem=0x50000000 "
                              "kupgrade.snapshot=OLD", "NEW")
    assert line == "root=/dev/vda memmap=512M!1280M kupgrade.pmem=0x50000000 kupgrade.snapshot=NEW"


def test_transport_setting_is_checked(tmp_path):
    f = tmp_path / "k.toml"
    f.write_text('[snapshot]\ntransport = "floppy"\n')
    with pytest.raises(ConfigError, match="transport"):
        load(f)


def snapshot_tree(root):
    (root / "images" / "tree-5").mkdir(parents=True)
    (root / "images" / "tree-5" / "pages-1.img").write_bytes(b"\1" * 5000)
    (root / "hooks" / "net").mkdir(parents=True)
    (root / "hooks" / "net" / "state.json").write_text("{}")
    (root / contract.GENERATED / "web.service.d").mkdir(parents=True)
    (root / contract.GENERATED / "web.service.d" / "zz-kupgrade-restore.conf").write_text("[Service]\n")


def test_seal_writes_what_the_restoring_side_reads_first(tmp_path):
    snapshot_tree(tmp_path)
    w = (Workload("pid:5", 5, (5, 9)),)
    m = packing.seal(tmp_path, w, lambda files: manifest.make("U1", "6.1", "6.12", w, files), "{}")
    assert set(m.files) == {"images/tree-5/pages-1.img", "hooks/net/state.json",
                            f"{contract.GENERATED}/web.service.d/zz-kupgrade-restore.conf"}
    assert (tmp_path / contract.MAX_PID).read_text() == "9\n"
    # a thread's ID above every process PID (memcached's workers): new PIDs must start above it too
    w = (Workload("pid:5", 5, (5, 9), tids=(12, 14)),)
    packing.seal(tmp_path, w, lambda files: manifest.make("U1", "6.1", "6.12", w, files), "{}")
    assert (tmp_path / contract.MAX_PID).read_text() == "14\n"
    assert (tmp_path / contract.MAX_PID).stat().st_mode & 0o777 == 0o600
    again, problems = manifest.verify(tmp_path, "6.12")
    assert problems == [] and again.id == "U1"


def test_the_way_back_reseals_in_place_without_this_kernels_files(tmp_path):
    snapshot_tree(tmp_path)
    w = (Workload("pid:5", 5, (5,)),)
    m = packing.seal(tmp_path, w, lambda files: manifest.make("U1", "6.1", "6.12", w, files), "{}")
    (tmp_path / "images" / "tree-5" / "restore.log").write_text("criu")
    (tmp_path / contract.VERIFIED).write_text("ok")
    (tmp_path / "units").mkdir()
    back = switchback._seal(tmp_path, m, UpgradeRecord("U1", "run", "6.1"))
    assert back.rollback and back.kernel_to == "6.1" and set(back.files) == set(m.files)
    assert not (tmp_path / "images" / "tree-5" / "restore.log").exists()
    assert not (tmp_path / contract.VERIFIED).exists() and not (tmp_path / "units").exists()
    assert json.loads((tmp_path / manifest.NAME).read_text())["rollback"] is True
    (tmp_path / "images" / "tree-5" / "pages-1.img").write_bytes(b"\2" * 5000)
    with pytest.raises(switchback.KupgradeError, match="damaged memory"):
        switchback._seal(tmp_path, m, UpgradeRecord("U1", "run", "6.1"))


TARGET = preflight.Target("6.12", Path("/boot/vmlinuz-6.12"), Path("/boot/initrd.img-6.12"))


def ctx_for(**cfg):
    return Context(Config(**cfg), UpgradeRecord("U1", "run", "6.1"))


def test_preflight_chooses_the_region_when_it_fits(tmp_path, monkeypatch):
    ctx, block = ctx_for(), fake_block(tmp_path)
    monkeypatch.setattr(preflight.shutil, "which", lambda name: "/sbin/" + name)
    monkeypatch.setattr(preflight, "_region_drivers", lambda ctx, t: "")
    blockers = []
    t, region = preflight._transport(ctx, TARGET, 64 << 20, blockers, "kupgrade.pmem=0x50000000", block)
    assert t["name"] == "pmem" and region.device == "/dev/pmem0" and not blockers
    t, region = preflight._transport(ctx, TARGET, 600 << 20, blockers, "kupgrade.pmem=0x50000000", block)
    assert t["name"] == "initrd" and "does not fit" in t["why"] and region is None and not blockers


def test_preflight_blocks_a_required_region_that_is_not_there(tmp_path):
    ctx, block, blockers = ctx_for(transport="pmem"), fake_block(tmp_path), []
    assert preflight._transport(ctx, TARGET, 64 << 20, blockers, "root=/dev/vda", block)[0]["name"] == "initrd"
    assert "snapshot.transport = \"pmem\"" in blockers[0].message and "--reserve" in blockers[0].hint
    ctx = ctx_for(transport="initrd")
    assert preflight._transport(ctx, TARGET, 64 << 20, [], "kupgrade.pmem=0x50000000", block) == (
        {"name": "initrd", "why": "configured (snapshot.transport = \"initrd\")"}, None)


def test_boot_files_name_the_region_word():
    assert "@CMDLINE_PMEM@" in boot._data("initramfs-top")
    assert contract.CMDLINE_PMEM in boot.boot_file("initramfs-top")
    assert "nd_pmem" in boot.boot_file("initramfs-hook")


def test_a_kernel_without_the_region_drivers_is_named(tmp_path, monkeypatch):
    (tmp_path / "config-6.12").write_text("CONFIG_X86_PMEM_LEGACY=m\nCONFIG_BLK_DEV_PMEM=m\n")
    (tmp_path / "config-6.1").write_text("CONFIG_X86_PMEM_LEGACY=y\n# CONFIG_BLK_DEV_PMEM is not set\n")
    assert pmem.modules_needed("6.12", tmp_path) == (("nd_e820", "nd_pmem"), "")
    assert pmem.modules_needed("6.1", tmp_path) == ((), "kernel 6.1 is built without CONFIG_BLK_DEV_PMEM")
    assert pmem.modules_needed("7.0", tmp_path) == (("nd_e820", "nd_pmem"), "")      # no config: ask the initrd
    listing = "usr/lib/modules/6.12/kernel/drivers/nvdimm/nd_pmem.ko.xz\nusr/bin/busybox\n"
    monkeypatch.setattr(boot, "run", lambda argv, **kw: type("P", (), {"stdout": listing.encode()}))
    monkeypatch.setattr(boot, "builder", lambda listing=False: boot.INITRAMFS_TOOLS)
    initrd = tmp_path / "initrd.img-6.12"
    initrd.write_bytes(b"x")
    assert boot.missing_modules(initrd, ("nd_e820", "nd_pmem")) == ["nd_e820"]
    ctx = ctx_for(on_restore_failure="keep")
    ctx.plan = preflight.Plan(target=preflight.Target("6.12", tmp_path / "vmlinuz-6.12", initrd))
    why = preflight._region_drivers(ctx, ctx.plan.target, tmp_path)
    assert "lacks nd_e820" in why and "install-boot --kernel 6.12" in why
