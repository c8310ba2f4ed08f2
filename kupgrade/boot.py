"""Boot integration: the initramfs-tools hook + init-bottom script, and the restore unit.

`kupgrade install-boot` installs them and rebuilds the target initrds so they carry the
script. In the new kernel the script moves the unpacked snapshot to /run/kupgrade; early
userspace then runs `kupgrade-restore` (systemd: kupgrade-restore.service; other inits:
call `kupgrade-restore` before starting services, see docs/boot.md).
"""

from __future__ import annotations

import functools
import re
import shutil
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import __version__, contract, pmem
from .errors import StageError
from .run import run

MARKER = contract.BOOT_MARKER


@dataclass(frozen=True)
class BootPaths:
    root: Path = Path("/")

    @property
    def hook(self) -> Path:
        return self.root / "etc/initramfs-tools/hooks/kupgrade"

    @property
    def script(self) -> Path:
        return self.root / "etc/initramfs-tools/scripts/init-bottom/kupgrade"

    @property
    def top_script(self) -> Path:
        return self.root / "etc/initramfs-tools/scripts/init-top/kupgrade"

    @property
    def unit(self) -> Path:
        return self.root / "etc/systemd/system/kupgrade-restore.service"

    @property
    def generator(self) -> Path:
        return self.root / "etc/systemd/system-generators/kupgrade"

    @property
    def grub(self) -> Path:
        return self.root / "etc/default/grub.d/kupgrade.cfg"


def _data(name: str) -> str:
    return resources.files("kupgrade").joinpath("data", name).read_text()


def restore_command() -> str:
    """The installed kupgrade-restore (next to the kupgrade being run)."""
    found = shutil.which("kupgrade-restore")
    return found or str(Path(sys.argv[0]).resolve().with_name("kupgrade-restore"))


# (BootPaths attribute, file in kupgrade/data/, mode): what install() writes
BOOT_FILES = (("hook", "initramfs-hook", 0o755), ("script", "initramfs-script", 0o755),
              ("top_script", "initramfs-top", 0o755), ("unit", "kupgrade-restore.service", 0o644),
              ("generator", "systemd-generator", 0o755))


def boot_file(name: str) -> str:
    """A boot file as installed: the contract's values (kupgrade/contract.py) filled in."""
    return contract.render(_data(name), {"VERSION": __version__, "RESTORE": restore_command()})


def install(kernels: list[str], paths: BootPaths = BootPaths(), rebuild: bool = True) -> list[str]:
    """Write the files; rebuild the initrds of `kernels`. Returns what was done, one line each."""
    if not Path("/usr/share/initramfs-tools/hook-functions").exists():
        raise StageError("initramfs-tools is not installed",
                         "install it (apt-get install initramfs-tools busybox); other initrd builders are not supported yet")
    done = []
    for path, name, mode in BOOT_FILES:
        path = getattr(paths, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(boot_file(name))
        path.chmod(mode)
        done.append(f"wrote {path}")
    wants = paths.root / "etc/systemd/system/sysinit.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / paths.unit.name
    if not link.is_symlink():
        link.symlink_to(paths.unit)
    done.append(f"enabled {paths.unit.name}")
    if rebuild:
        for k in kernels:
            run(["update-initramfs", "-u", "-k", k], timeout=900,
                hint=f"check that /boot/initrd.img-{k} can be rebuilt (free space in /boot)")
            done.append(f"rebuilt /boot/initrd.img-{k}")
    return done


@functools.lru_cache(maxsize=8)
def _listing(initrd: str, _stamp: tuple[int, int]) -> frozenset[str]:
    out = run(["lsinitramfs", initrd], timeout=300,
              hint="install initramfs-tools (lsinitramfs) or check the initrd file").stdout.decode()
    return frozenset(out.split())


def initrd_names(initrd: Path) -> frozenset[str]:
    """What the initrd holds (lsinitramfs; listed once per version of the file)."""
    st = initrd.stat()
    return _listing(str(initrd), (st.st_mtime_ns, st.st_size))


def initrd_has_hook(initrd: Path) -> bool:
    """True if the initrd carries our init-bottom script (lsinitramfs lists it)."""
    names = initrd_names(initrd)
    return MARKER in names and "scripts/init-bottom/kupgrade" in names


def missing_modules(initrd: Path, modules: tuple[str, ...]) -> list[str]:
    """Which of these kernel modules the initrd does not carry (any compression)."""
    have = {re.sub(r"\.ko(\.\w+)?$", "", n.rsplit("/", 1)[-1]) for n in initrd_names(initrd) if ".ko" in n}
    return [m for m in modules if m not in have]


def reserve(size: int, paths: BootPaths = BootPaths(), iomem: Path = Path("/proc/iomem")) -> list[str]:
    """Reserve kupgrade's memory region (snapshot.transport = "pmem") on the boot loader's command
    line from the next boot on: GRUB's config when GRUB is there, else the words to add by hand.
    size 0: remove the reservation. Returns what was done, one line each."""
    if size == 0:
        if not paths.grub.exists():
            return ["no memory region was reserved by kupgrade"]
        paths.grub.unlink()
        return [f"removed {paths.grub}", *_update_grub(), "the region is released from the next boot on"]
    try:
        words, start = pmem.reserve_words(size, iomem.read_text())
    except ValueError as e:
        raise StageError(f"cannot reserve the region: {e}", "choose a smaller --reserve SIZE") from None
    line = f"{-(-size // pmem.ALIGN) * pmem.ALIGN >> 20} MiB at {start:#x}"
    if not paths.grub.parent.is_dir():
        return [f"no GRUB configuration ({paths.grub.parent}): add these words to the kernel command line of "
                f"your boot loader, then reboot once: {words}"]
    paths.grub.write_text(f"# written by `kupgrade install-boot --reserve`: the memory region the snapshot crosses "
                          f"the kernel switch in\n# (snapshot.transport, kupgrade/pmem.py); "
                          f"`kupgrade install-boot --reserve 0` removes it\n"
                          f'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX {words}"\n')
    return [f"wrote {paths.grub} ({line}: {words})", *_update_grub(),
            "reboot once: the region is there from the next boot on (`kupgrade check` says which transport it uses)"]


def _update_grub() -> list[str]:
    if not shutil.which("update-grub"):
        return ["update-grub is not installed: regenerate your boot loader's configuration by hand"]
    run(["update-grub"], timeout=300)
    return ["ran update-grub"]
