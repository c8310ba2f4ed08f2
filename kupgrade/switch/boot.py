"""Boot integration: kupgrade's part of the initrd (initramfs-tools hook and scripts, or a dracut
module with the same scripts), and the restore unit.

`kupgrade install-boot` installs them for the initrd builder this machine uses (`Builder`: the one
place that knows initramfs-tools from dracut) and rebuilds the target initrds so they carry the
scripts. In the new kernel the init-top script makes new PIDs start above the snapshot's (dracut:
the cmdline hook, before udev) and the init-bottom script moves the unpacked snapshot to
/run/kupgrade (dracut: the pre-pivot hook); early userspace then runs `kupgrade-restore`
(systemd: kupgrade-restore.service; other inits: call `kupgrade-restore` before starting
services, see docs/boot.md).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import re
import shutil
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kupgrade import __version__
from kupgrade.errors import ConfigError, StageError
from kupgrade.switch import contract, pmem
from kupgrade.system import sched
from kupgrade.system.run import run

MARKER = contract.BOOT_MARKER
log = logging.getLogger("kupgrade.boot")


@dataclass(frozen=True)
class BootPaths:
    root: Path = Path("/")

    @property
    def unit(self) -> Path:
        return self.root / "etc/systemd/system/kupgrade-restore.service"

    @property
    def generator(self) -> Path:
        return self.root / "etc/systemd/system-generators/kupgrade"

    @property
    def grub(self) -> Path:
        return self.root / "etc/default/grub.d/kupgrade.cfg"


class Builder:
    """An initrd builder: the files that put kupgrade's scripts into every initrd it builds, how
    it rebuilds one kernel's initrd, how it lists one, and which listed file shows that an initrd
    carries the boot script."""

    name = ""
    command = ""        # rebuilds an initrd; on PATH: this machine builds its initrds this way
    lister = ""         # lists an initrd's files
    get = ""            # how to install it (a hint)
    files: tuple[tuple[str, str, int], ...] = ()    # (path under the root, file in kupgrade/data/, mode)
    script = ""         # a listed name ending so: the initrd carries the boot script (its init-bottom)

    def rebuild(self, kernel: str) -> list[str]:
        raise NotImplementedError

    def names(self, listing: str) -> frozenset[str]:
        """The file names in the lister's output."""
        raise NotImplementedError


class InitramfsTools(Builder):
    """Debian's and Ubuntu's: a hook (busybox, kernel modules, the marker) and two boot scripts
    in /etc/initramfs-tools."""

    name = "initramfs-tools"
    command = "update-initramfs"
    lister = "lsinitramfs"
    get = "apt-get install initramfs-tools"
    files = (("etc/initramfs-tools/hooks/kupgrade", "initramfs-hook", 0o755),
             ("etc/initramfs-tools/scripts/init-top/kupgrade", "initramfs-top", 0o755),
             ("etc/initramfs-tools/scripts/init-bottom/kupgrade", "initramfs-script", 0o755))
    script = "scripts/init-bottom/kupgrade"

    def rebuild(self, kernel: str) -> list[str]:
        return ["update-initramfs", "-u", "-k", kernel]

    def names(self, listing: str) -> frozenset[str]:
        return frozenset(listing.split())


# a file line of lsinitrd (cpio -tv): mode, links, owner, group, size (major, minor), date, name[ -> target]
_LSINITRD_FILE = re.compile(r"^[-dlcbps][-rwxsStT]{9}\S*\s+\d+\s+\S+\s+\S+\s+(?:\d+,\s*)?\d+\s+"
                            r"\S+\s+\d+\s+[\d:]+\s(.+?)(?: -> .*)?$")


class Dracut(Builder):
    """Fedora's, RHEL's, SUSE's (and Debian's dracut package): a dracut module, 90kupgrade, with
    the same two scripts, run from its cmdline hook (init-top) and pre-pivot hook (init-bottom),
    under dracut's shell init or its systemd units alike."""

    name = "dracut"
    command = "dracut"
    lister = "lsinitrd"
    get = "install dracut (Debian: apt-get install dracut; Fedora, RHEL: dnf install dracut; SUSE: zypper install dracut)"
    MODULE = "usr/lib/dracut/modules.d/90kupgrade"
    files = ((f"{MODULE}/module-setup.sh", "dracut-module-setup.sh", 0o755),
             (f"{MODULE}/init-top", "initramfs-top", 0o755),
             (f"{MODULE}/init-bottom", "initramfs-script", 0o755),
             (f"{MODULE}/kupgrade-top.sh", "dracut-cmdline-hook.sh", 0o755),
             (f"{MODULE}/kupgrade-bottom.sh", "dracut-pre-pivot-hook.sh", 0o755))
    script = "dracut/hooks/pre-pivot/90-kupgrade-bottom.sh"

    def rebuild(self, kernel: str) -> list[str]:
        return ["dracut", "--force", "--kver", kernel]

    def names(self, listing: str) -> frozenset[str]:
        return frozenset(m.group(1) for line in listing.splitlines() if (m := _LSINITRD_FILE.match(line)))


INITRAMFS_TOOLS, DRACUT = InitramfsTools(), Dracut()
# initramfs-tools first: dracut-core may be installed beside it, but Debian's kernel packages
# build with update-initramfs while it is there (installing `dracut` removes it)
BUILDERS = (INITRAMFS_TOOLS, DRACUT)
NO_BUILDER = ("no initrd builder is installed: neither initramfs-tools (update-initramfs) nor dracut",
              "install one: apt-get install initramfs-tools (Debian, Ubuntu), or dracut (Fedora, RHEL, SUSE)")


def detect() -> Builder | None:
    """The initrd builder this machine uses (None: neither is installed)."""
    return next((b for b in BUILDERS if shutil.which(b.command)), None)


def builder(listing: bool = False) -> Builder:
    """This machine's initrd builder; with `listing`, its lister must be there too."""
    found = detect()
    if found is None:
        raise ConfigError(*NO_BUILDER)
    if listing and not shutil.which(found.lister):
        raise ConfigError(f"{found.lister} is missing ({found.name} builds this machine's initrds)",
                          f"{found.get}: {found.lister} comes with it")
    return found


def _data(name: str) -> str:
    return resources.files("kupgrade").joinpath("data", name).read_text()


def restore_command() -> str:
    """The installed kupgrade-restore (next to the kupgrade being run)."""
    found = shutil.which("kupgrade-restore")
    return found or str(Path(sys.argv[0]).resolve().with_name("kupgrade-restore"))


# (BootPaths attribute, file in kupgrade/data/, mode): what install() writes for every builder
COMMON_FILES = (("unit", "kupgrade-restore.service", 0o644), ("generator", "systemd-generator", 0o755))
# every boot file, by its name in kupgrade/data/
BOOT_FILES = tuple(dict.fromkeys(name for b in BUILDERS for _, name, _ in b.files)) + \
    tuple(name for _, name, _ in COMMON_FILES)


def boot_file(name: str) -> str:
    """A boot file as installed: the contract's values (kupgrade/switch/contract.py) filled in."""
    return contract.render(_data(name), {"VERSION": __version__, "RESTORE": restore_command(),
                                         "RESTORE_BOOSTED": sched.boosted(restore_command())})


def install(kernels: list[str], paths: BootPaths = BootPaths(), rebuild: bool = True,
            using: Builder | None = None) -> list[str]:
    """Write the files of this machine's initrd builder (or `using`) and the restore unit; rebuild
    the initrds of `kernels`. Returns what was done, one line each."""
    b = using or builder()
    if not shutil.which("busybox"):
        raise ConfigError("busybox is missing: kupgrade's scripts in the initrd run with it",
                          "install it (apt-get, dnf or zypper install busybox)")
    done = [f"initrd builder: {b.name}"]
    files = [(paths.root / rel, name, mode) for rel, name, mode in b.files]
    files += [(getattr(paths, attr), name, mode) for attr, name, mode in COMMON_FILES]
    for path, name, mode in files:
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
            run(b.rebuild(k), timeout=900, hint=f"check that the initrd of {k} can be rebuilt (free space in /boot)")
            done.append(f"rebuilt the initrd of {k} ({b.name})")
            done += _carries(paths.root / "boot" / f"initrd.img-{k}", k, b)
    return done


def _carries(initrd: Path, kernel: str, b: Builder) -> list[str]:
    """What was built is what check will ask for: the initrd lists the boot script (and the
    listing is kept for that check)."""
    if not initrd.is_file() or not shutil.which(b.lister):
        return []
    if not initrd_has_hook(initrd, b):
        raise StageError(f"the rebuilt initrd of {kernel} ({initrd}) does not carry kupgrade's boot script",
                         f"check {b.name}'s configuration (a hook or module left out?), then run install-boot again")
    return [f"checked: the initrd of {kernel} carries the boot script ({b.lister})"]


# Listings kept by the initrd's content (sha256): listing one decompresses all of it (seconds per
# initrd, and every check, plan and run lists the target's and the way back's); its hash is a
# fraction of that. install-boot lists what it built, so the first check finds them here.
LISTINGS = Path("/var/cache/kupgrade/initrd-listings")
KEEP_LISTINGS = 8


def _digest(initrd: str) -> str:
    with open(initrd, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _kept(path: Path) -> frozenset[str] | None:
    try:
        return frozenset(json.loads(path.read_text())["names"])
    except (OSError, ValueError, KeyError, TypeError):
        return None         # none yet, or unreadable: listed again


def _keep(path: Path, names: frozenset[str]) -> None:
    """Best effort (a read-only /var, a test without root): the listing is only not kept."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"names": sorted(names)}) + "\n")
        tmp.replace(path)
        for old in sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime)[:-KEEP_LISTINGS]:
            old.unlink()
    except OSError as e:
        log.debug("listing not kept in %s: %s", path.parent, e)


@functools.lru_cache(maxsize=8)
def _listing(lister: str, initrd: str, _stamp: tuple[int, int]) -> frozenset[str]:
    b = next(b for b in BUILDERS if b.lister == lister)
    kept = LISTINGS / f"{lister}-{_digest(initrd)}.json"
    if (names := _kept(kept)) is not None:
        with contextlib.suppress(OSError):
            kept.touch()        # the newest used are the ones kept
        log.info("listed %s with %s: kept from an earlier listing of the same content (%s)", initrd, lister, kept)
        return names
    out = run([lister, initrd], timeout=300, hint=f"check the initrd file, or {b.get}").stdout.decode(errors="replace")
    names = b.names(out)
    log.info("listed %s with %s", initrd, lister)
    _keep(kept, names)
    return names


def initrd_names(initrd: Path, using: Builder | None = None) -> frozenset[str]:
    """What the initrd holds (listed by this machine's builder's lister, once per version of the file)."""
    st = initrd.stat()
    return _listing((using or builder(listing=True)).lister, str(initrd), (st.st_mtime_ns, st.st_size))


def initrd_has_hook(initrd: Path, using: Builder | None = None) -> bool:
    """True if the initrd carries the marker of this contract and the boot script, as either
    builder puts it there (an initrd that initramfs-tools built boots as well on a machine that
    has moved to dracut since)."""
    names = initrd_names(initrd, using)
    return MARKER in names and any(n.endswith(b.script) for b in BUILDERS for n in names)


def missing_modules(initrd: Path, modules: tuple[str, ...], using: Builder | None = None) -> list[str]:
    """Which of these kernel modules the initrd does not carry (any compression)."""
    have = {re.sub(r"\.ko(\.\w+)?$", "", n.rsplit("/", 1)[-1]) for n in initrd_names(initrd, using) if ".ko" in n}
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
                          f"the kernel switch in\n# (snapshot.transport, kupgrade/switch/pmem.py); "
                          f"`kupgrade install-boot --reserve 0` removes it\n"
                          f'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX {words}"\n')
    return [f"wrote {paths.grub} ({line}: {words})", *_update_grub(),
            "reboot once: the region is there from the next boot on (`kupgrade check` says which transport it uses)"]


def _update_grub() -> list[str]:
    if not shutil.which("update-grub"):
        return ["update-grub is not installed: regenerate your boot loader's configuration by hand"]
    run(["update-grub"], timeout=300)
    return ["ran update-grub"]
