"""kexec command lines: which load method, which command line, load / unload / exec (with the
kexec paths.kexec chooses: run.program)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from kupgrade.switch import contract
from kupgrade.system.run import program

KEXEC = "kexec"
MARKER = contract.CMDLINE_KEY
_DROP_PREFIXES = ("BOOT_IMAGE=", "initrd=", f"{MARKER}=", f"{contract.CMDLINE_MAXPID}=",
                  f"{contract.CMDLINE_PIDMAX}=")   # kupgrade.pmem= stays


@dataclass(frozen=True)
class Method:
    name: str     # "file" | "classic"
    why: str


def lockdown_mode(path: Path = Path("/sys/kernel/security/lockdown")) -> str:
    """'none', 'integrity' or 'confidentiality' (the bracketed word); 'none' if absent."""
    try:
        text = path.read_text()
    except OSError:
        return "none"
    for word in text.split():
        if word.startswith("["):
            return word.strip("[]")
    return "none"


def choose_method(configured: str, lockdown: str) -> Method:
    if configured == "file":
        return Method("file", "configured (kexec.method = \"file\")")
    if configured == "classic":
        if lockdown != "none":
            return Method("classic", f"configured, but lockdown={lockdown} will refuse it")
        return Method("classic", "configured (kexec.method = \"classic\")")
    if lockdown != "none":
        return Method("file", f"kernel lockdown ({lockdown}) permits only kexec_file_load with a signed kernel")
    return Method("classic", "no lockdown: kexec_load without purgatory hashing saves ~2 s per 100 MB of "
                             "snapshot; the snapshot is verified by its manifest in the new kernel instead")


def boot_id() -> str:
    """This boot's id: a later boot that finds no restore recorded for a switch can tell it
    was not the one the switch went into."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def kept_words(current: str) -> list[str]:
    """The words of the current command line a kexec carries on: without the boot loader's and
    an earlier switch's (its snapshot's id and PID words); kupgrade.pmem= stays."""
    return [w for w in current.split() if not w.startswith(_DROP_PREFIXES)]


def command_line(current: str, snapshot_id: str, append: str = "", max_pid: int | None = None,
                 pid_max: int | None = None) -> str:
    """The current command line, minus boot-loader words and an old snapshot's words, plus ours:
    the snapshot's id, (max_pid) a PID no PID of the snapshot is above and (pid_max) this
    kernel's kernel.pid_max, which the new one's init-top raises its own to when max_pid needs it."""
    words = kept_words(current)
    words += append.split()
    words.append(f"{MARKER}={snapshot_id}")
    if max_pid is not None:
        words.append(f"{contract.CMDLINE_MAXPID}={max_pid}")
    if max_pid is not None and pid_max is not None:
        words.append(f"{contract.CMDLINE_PIDMAX}={pid_max}")
    return " ".join(words)


def max_pid_word(cmdline: str) -> int | None:
    """N of a kupgrade.maxpid=N word (None: none)."""
    for w in cmdline.split():
        if w.startswith(f"{contract.CMDLINE_MAXPID}=") and w.split("=", 1)[1].isdigit():
            return int(w.split("=", 1)[1])
    return None


def load_argv(method: Method, kernel: Path, initrd: Path, cmdline: str) -> list[str]:
    argv = [program(KEXEC), "--load", str(kernel), f"--initrd={initrd}", f"--command-line={cmdline}"]
    if method.name == "file":
        argv.insert(1, "--kexec-file-syscall")
    else:
        argv.insert(1, "--no-checks")
    return argv


def unload_argv(method: Method) -> list[str]:
    return [program(KEXEC), *(["--kexec-file-syscall"] if method.name == "file" else []), "--unload"]


def exec_argv() -> list[str]:
    return [program(KEXEC), "--exec"]


def bzimage_version(path: Path) -> str:
    """The kernel release (what `uname -r` will say) from an x86 bzImage's header: the boot
    protocol's `kernel_version` field (offset 0x20E) points at a string (its value + 0x200)
    that starts with the release, e.g. "6.12.117+deb12-amd64 (debian-kernel@...) #1 SMP ...".
    "" when the image has none (not a bzImage, protocol < 2.0, unreadable)."""
    try:
        with path.open("rb") as f:
            head = f.read(0x210)
            if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
                return ""
            ptr = struct.unpack_from("<H", head, 0x20E)[0]
            if ptr == 0:
                return ""
            f.seek(ptr + 0x200)
            text = f.read(256).split(b"\0", 1)[0].decode("ascii", errors="replace")
    except OSError:
        return ""
    words = text.split()
    return words[0] if words else ""


def check_bzimage(path: Path) -> str | None:
    """A problem with an x86 bzImage that kexec would load and then jump into, or None.

    kexec-tools accepts a truncated image as long as its header is intact; executing it
    loses every workload. The header says how long the image must be (boot protocol 2.x)."""
    try:
        with path.open("rb") as f:
            head = f.read(0x270)
            size = path.stat().st_size
    except OSError as e:
        return f"cannot read {path}: {e.strerror}"
    if len(head) < 0x270 or head[0x202:0x206] != b"HdrS":
        return f"{path} is not an x86 bzImage (no HdrS header)"
    setup_sects = head[0x1F1] or 4
    syssize = struct.unpack_from("<I", head, 0x1F4)[0]
    want = (setup_sects + 1) * 512 + syssize * 16
    if size < want:
        return f"{path} is truncated: {size} bytes, its header says {want}"
    return None
