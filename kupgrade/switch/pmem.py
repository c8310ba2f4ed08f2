"""The memory-region transport: the snapshot crosses the kernel switch in RAM that both kernels
leave alone, instead of inside the target initrd.

The boot loader reserves the region on the kernel command line (`memmap=SIZE!START`, legacy
persistent memory; `kupgrade install-boot --reserve SIZE` writes it) together with
`kupgrade.pmem=START`, which marks it as kupgrade's: no other pmem is ever touched. Both words
stay on the command line kexec gives the new kernel (and the way back), so the region is there,
unchanged, on the other side. The old kernel makes an ext4 file system on /dev/pmemN (no journal,
DAX where the kernel allows it: criu writes straight into the region), dumps into it; the new
kernel's init-top script mounts it where the initrd transport would have moved the snapshot
(contract.RESTORE_DIR). No copy into an initrd, no unpacking, no move: the pause holds the dump
and the restore, not three copies of the snapshot.

After use the region is zeroed (the snapshot holds process memory). Runs on the new kernel's
boot path too (the restore clears, the way back reuses it): standard library only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from kupgrade.errors import CommandError
from kupgrade.switch import contract
from kupgrade.system import procfs
from kupgrade.system.run import run

BLOCK = Path("/sys/class/block")
ALIGN = 128 << 20           # memory section size: the start and size install-boot chooses
LABEL = "kupgrade-snap"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class Region:
    start: int          # physical address
    size: int           # bytes
    device: str         # /dev/pmemN

    def to_json(self) -> dict:
        return {"device": self.device, "start": hex(self.start), "size": self.size}


def marked_start(cmdline: str) -> int | None:
    """The start address `kupgrade.pmem=START` names (None: no region is kupgrade's)."""
    for word in cmdline.split():
        if word.startswith(contract.CMDLINE_PMEM + "="):
            try:        # hex or decimal: the init-top script compares it in shell arithmetic
                return int(word.split("=", 1)[1], 0)
            except ValueError:
                return None
    return None


def parse_size(text: str) -> int:
    """"512M", "1G", "0x60000000", "1610612736" -> bytes."""
    m = re.fullmatch(r"(0x[0-9a-fA-F]+|\d+)([KMGT]?)", text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a size (e.g. 512M, 2G, 0x60000000)")
    return int(m.group(1), 0) * _UNITS[m.group(2)]


def regions(block: Path = BLOCK) -> list[Region]:
    """The pmem block devices and the physical range of the region each lives in."""
    out = []
    for dev in sorted(block.glob("pmem*")):
        if not re.fullmatch(r"pmem\d+", dev.name):      # pmem0p1, pmem0s: not a whole region
            continue
        region = Path(os.path.realpath(dev / "device")).parent
        try:
            start = int((region / "resource").read_text(), 0)
            size = int((region / "size").read_text(), 0)
        except (OSError, ValueError):
            continue
        out.append(Region(start, size, f"/dev/{dev.name}"))
    return out


def find(cmdline: str, block: Path = BLOCK) -> tuple[Region | None, str]:
    """kupgrade's region, or None and why there is none."""
    start = marked_start(cmdline)
    if start is None:
        return None, (f"no memory region is reserved for it (no {contract.CMDLINE_PMEM}= on the command line; "
                      "`kupgrade install-boot --reserve SIZE` and one reboot set one up)")
    for r in regions(block):
        if r.start == start:
            return r, ""
    return None, (f"{contract.CMDLINE_PMEM}={start:#x} is on the command line but no pmem device covers it "
                  "(a memmap=SIZE!START word for the same start is needed; modprobe nd_e820 nd_pmem)")


MODULES = {"nd_e820": "CONFIG_X86_PMEM_LEGACY", "nd_pmem": "CONFIG_BLK_DEV_PMEM"}    # init-top loads them


def modules_needed(release: str, boot: Path = Path("/boot")) -> tuple[tuple[str, ...], str]:
    """The region's drivers a kernel needs from its initrd (built as modules; none when built in),
    or why that kernel cannot have the region at all ("": it can)."""
    try:
        config = dict(line.split("=", 1) for line in (boot / f"config-{release}").read_text().splitlines()
                      if line.startswith("CONFIG_") and "=" in line)
    except OSError:
        return tuple(MODULES), ""           # not known: the initrd must carry them
    if off := [option for option in MODULES.values() if config.get(option) not in ("y", "m")]:
        return (), f"kernel {release} is built without {' and '.join(off)}"
    return tuple(m for m, option in MODULES.items() if config[option] == "m"), ""


def needed(snapshot_bytes: int) -> int:
    """Room the file system on the region needs for a snapshot of this estimate."""
    return snapshot_bytes + snapshot_bytes // 8 + (48 << 20)


def make(region: Region) -> None:
    """A fresh, empty file system on the region (whatever was there before is gone)."""
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "^has_journal", "-m", "0", "-L", LABEL,
         "-E", "root_owner=0:0,nodiscard", region.device], timeout=120)


def mount(device: str, point: Path) -> bool:
    """Mount the region's file system on `point` (mode 0700); DAX where possible (returns whether)."""
    point.mkdir(mode=0o700, parents=True, exist_ok=True)
    opts = "nosuid,nodev,noexec"
    try:
        run(["mount", "-t", "ext4", "-o", f"dax,{opts}", device, str(point)], timeout=60)
        dax = True
    except CommandError:    # the kernel refused DAX here: through the page cache works too
        run(["mount", "-t", "ext4", "-o", opts, device, str(point)], timeout=60)
        dax = False
    point.chmod(0o700)
    return dax


def source(point: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str:
    """The device mounted on `point` ("" when none; the last mount on it wins)."""
    want = os.path.realpath(point)
    try:
        found = [m.source for m in procfs.mounts(mountinfo) if m.point == want]
    except OSError:
        return ""
    return found[-1] if found else ""


def is_region(device: str) -> bool:
    return re.fullmatch(r"/dev/pmem\d+", device) is not None


def wipe(device: str, chunk: int = 8 << 20) -> None:
    """Zero the whole region: the snapshot held process memory."""
    zeros = bytes(chunk)
    fd = os.open(device, os.O_WRONLY)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, 0, os.SEEK_SET)
        left = size
        while left > 0:
            left -= os.write(fd, zeros[:min(chunk, left)])
        os.fsync(fd)
    finally:
        os.close(fd)


def release(point: Path, lazy: bool = False) -> list[str]:
    """Unmount `point`; if it held kupgrade's region, zero the region. What was done."""
    if not os.path.ismount(point):
        return []
    dev = source(point)
    if lazy and not is_region(dev):
        run(["umount", "--lazy", str(point)], timeout=60)
        return [f"unmounted {point}"]
    run(["umount", str(point)], timeout=60)
    if not is_region(dev):
        return [f"unmounted {point}"]
    wipe(dev)
    return [f"unmounted {point} and zeroed {dev} (the snapshot's memory region)"]


def reserve_words(size: int, iomem: str) -> tuple[str, int]:
    """The command-line words that reserve `size` bytes at the top of the largest System RAM range
    (aligned to 128 MiB), and the start; ValueError when no range holds it."""
    size = -(-size // ALIGN) * ALIGN
    best = None
    for line in iomem.splitlines():
        if line.startswith(" ") or ": System RAM" not in line:
            continue
        lo, hi = (int(x, 16) for x in line.split(":")[0].strip().split("-"))
        start = ((hi + 1 - size) // ALIGN) * ALIGN
        if start >= lo and start + size <= hi + 1 and (best is None or hi - lo > best[1]):
            best = (start, hi - lo)
    if best is None:
        raise ValueError(f"no System RAM range in /proc/iomem holds {size >> 20} MiB")
    start = best[0]
    return f"memmap={size >> 20}M!{start >> 20}M {contract.CMDLINE_PMEM}={start:#x}", start
