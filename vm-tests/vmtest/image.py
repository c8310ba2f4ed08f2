"""Build the Debian bookworm guest image the scenarios boot.

Two cached layers, each keyed by a hash of its inputs:

1. base tree: debootstrap + the kernels + the dracut .debs + the newest kernel and its criu
   (newest.py) (slow, ~3 min, and ~2 min more once for criu; rebuilt only when the package list
   or this recipe changes);
2. disk image: the base tree + kupgrade from this checkout + the guest agent, its boot
   integration installed with ``kupgrade install-boot``, written as a raw ext4 image with
   ``mkfs.ext4 -d`` (no loop mounts). Rebuilt whenever the checkout changes (~20 s).

Scenarios boot a qcow2 overlay of the image, so they never change the cached image.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from kupgrade.system.run import run

from . import newest

log = logging.getLogger("vmtest.image")

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
KERNEL_FROM = "6.1.0-47-amd64"
KERNEL_TO = "6.12.117+deb12-amd64"
BASE_PACKAGES = [
    "criu", "kexec-tools", "python3", "python3-typer", "python3-rich", "python3-psutil",
    "python3-pyudev", "iproute2", "initramfs-tools", "kmod", "procps", "udev", "zstd",
    "busybox", "iptables", "nftables", "systemd-sysv", "e2fsprogs", "tmux", "mdadm",
]
KERNEL_PACKAGES = [f"linux-image-{KERNEL_FROM}", f"linux-image-{KERNEL_TO}"]
# Servers as Debian ships them (the services scenario carries them with --all-services). Their
# units start at boot only when the kernel command line has SERVICES_GATE (a drop-in, the only
# change to them): the other scenarios boot as before, and the services scenario's guest starts
# them at boot, with boot-time PIDs, as a server does. The new kernel inherits the command line.
POSTGRES_UNIT = "postgresql@15-main.service"
SERVICE_PACKAGES = ["openssh-server", "cron", "nginx", "memcached", "redis-server", "postgresql"]
SERVICE_UNITS = ["ssh.service", "cron.service", "nginx.service", "memcached.service", "redis-server.service",
                 POSTGRES_UNIT]
# PostgreSQL answers the host (QEMU's port forwarding) with a password: listen_addresses and a
# pg_hba.conf line, what an admin sets for remote clients; the rest as Debian installs it.
POSTGRES_CONF = "/etc/postgresql/15/main"
POSTGRES_PASSWORD = "vmtest"
# The one change `kupgrade check` asks of PostgreSQL as Debian installs it (its hint): its System V
# segment (the interlock) in an IPC namespace of its own, which criu carries, instead of the host's,
# which it does not (as shipped, check says it starts fresh; the faults scenario proves that blocker).
POSTGRES_DROPIN = "[Service]\nPrivateIPC=yes\n"
SERVICES_GATE = "vmtest.services"
# logind and the system bus, Debian's default (systemd Recommends libpam-systemd): an ssh login
# then runs in a scope of its own (user.slice/user-0.slice/session-N.scope), not in ssh.service.
# Behind the same gate: the other scenarios' guests boot without a system bus, as before.
LOGIND_PACKAGES = ["libpam-systemd", "dbus"]
LOGIND_UNITS = ["dbus.socket", "dbus.service", "systemd-logind.service"]
SANDBOXED_UNIT = "vmtest-sandboxed.service"     # ours: DynamicUser, PrivateTmp, ProtectSystem=strict (guest/)
CLASH_UNIT = "vmtest-shmclash.service"          # ours: a SysV segment next to shared memory of its number (guest/)
# A small initrd: what a tuned server would list. MODULES=most makes 31 MB initrds that take
# ~16 s each to build under TCG; this list makes ~6 MB in ~1.5 s.
INITRD_MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "ext4",
                  "crc32c_generic", "crc32c_intel"]
# Debian's dracut, for the basic-dracut scenario: its .debs (and what they need that the image
# lacks) downloaded into the image, installed offline in that scenario's guest, which replaces
# initramfs-tools with it. Every other scenario boots the image as it is.
DRACUT_PACKAGES = ["dracut"]
DRACUT_DEBS = "/var/cache/kupgrade-debs/dracut"
BASE_RECIPE_VERSION = "11"
IMAGE_SIZE = "3G"

REPO = Path(__file__).resolve().parents[2]
GUEST_DIR = REPO / "vm-tests" / "guest"


def cache_root() -> Path:
    return Path(os.environ.get("KUPGRADE_VM_CACHE", "/var/cache/kupgrade-vmtest"))


@dataclass(frozen=True)
class Image:
    disk: Path          # raw ext4 root image (read-only for scenarios)
    kernel: Path        # vmlinuz of kernel_from (QEMU boots it directly)
    initrd: Path
    kernel_from: str = KERNEL_FROM
    kernel_to: str = KERNEL_TO

    def second_jump(self) -> "Image":
        """The same disk, booting KERNEL_TO, for the upgrade to the newest kernel (newest.py)."""
        return replace(self, kernel=self.kernel.with_name(f"vmlinuz-{KERNEL_TO}"),
                       initrd=self.initrd.with_name(f"initrd.img-{KERNEL_TO}"), kernel_from=KERNEL_TO,
                       kernel_to=newest.KERNEL_NEWEST)


def _hash(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _tree_hash(*roots: Path) -> str:
    h = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(REPO)).encode())
                h.update(path.read_bytes())
                h.update(oct(path.stat().st_mode & 0o111).encode())
    return h.hexdigest()[:16]


def base_key() -> str:
    return _hash(BASE_RECIPE_VERSION, SUITE, MIRROR, " ".join(BASE_PACKAGES),
                 " ".join(KERNEL_PACKAGES), " ".join(INITRD_MODULES), " ".join(SERVICE_PACKAGES), SERVICES_GATE,
                 " ".join(LOGIND_PACKAGES), " ".join(LOGIND_UNITS),
                 " ".join(DRACUT_PACKAGES), DRACUT_DEBS, newest.recipe())


def _chroot(tree: Path, *argv: str, timeout: float = 900) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LANG": "C.UTF-8", "HOME": "/root"}
    run(["chroot", str(tree), *argv], env=env, timeout=timeout)


def _install_services(tree: Path) -> None:
    """Debian's servers and logind, installed by apt (not started in the chroot), PostgreSQL
    answering the host, every unit gated on SERVICES_GATE."""
    log.info("installing services %s", " ".join(SERVICE_PACKAGES))
    # without systemd running in the chroot, invoke-rc.d would start their init scripts on the host
    policy = tree / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    # PostgreSQL's initdb (run by the package) picks its dynamic shared memory by what works: on a
    # machine, POSIX segments in /dev/shm; in a chroot without /dev/shm it falls back to System V
    # segments, which no Debian machine has by default (one of them next to its main shared memory
    # with the same number failed criu's dump in a CI run: carry.py shm_clashes)
    shm = tree / "dev/shm"
    shm.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", "mode=1777", "vmtest-shm", str(shm)])
    try:
        _chroot(tree, "apt-get", "install", "-y", "-q", "--no-install-recommends", *SERVICE_PACKAGES,
                *LOGIND_PACKAGES)
    finally:
        policy.unlink()
        run(["umount", str(shm)])
    conf = tree / POSTGRES_CONF.lstrip("/")
    if "dynamic_shared_memory_type = posix" not in (conf / "postgresql.conf").read_text():
        raise RuntimeError(f"PostgreSQL's initdb did not choose POSIX dynamic shared memory (Debian's default on a "
                           f"machine): see {conf / 'postgresql.conf'}")
    with open(conf / "postgresql.conf", "a") as f:
        f.write("# vm-tests: the host's client comes through QEMU's port forwarding\nlisten_addresses = '*'\n")
    with open(conf / "pg_hba.conf", "a") as f:
        f.write("# vm-tests: the host's client\nhost all all 0.0.0.0/0 scram-sha-256\n")
    for unit in (*SERVICE_UNITS, *LOGIND_UNITS):
        d = tree / "etc/systemd/system" / f"{unit}.d"
        d.mkdir(parents=True, exist_ok=True)
        (d / "vmtest-gate.conf").write_text(f"# vm-tests: started at boot only in the services scenario\n"
                                            f"[Unit]\nConditionKernelCommandLine={SERVICES_GATE}\n")


def build_base(force: bool = False) -> Path:
    tree = cache_root() / f"base-{base_key()}"
    if (tree / ".complete").exists() and not force:
        return tree
    if tree.exists():
        shutil.rmtree(tree)
    tree.parent.mkdir(parents=True, exist_ok=True)
    log.info("debootstrap %s into %s (about 1 minute)", SUITE, tree)
    run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
         SUITE, str(tree), MIRROR], timeout=1800)
    (tree / "etc/apt/sources.list").write_text(
        f"deb {MIRROR} {SUITE} main\ndeb {MIRROR} {SUITE}-updates main\n"
        f"deb {SECURITY_MIRROR} {SUITE}-security main\n")
    conf = tree / "etc/initramfs-tools/initramfs.conf"
    conf.write_text(conf.read_text().replace("MODULES=most", "MODULES=list"))
    (tree / "etc/initramfs-tools/modules").write_text("\n".join(INITRD_MODULES) + "\n")
    # kexec-tools' postinst would turn every reboot into a kexec reboot: not in our guest.
    (tree / "etc/default").mkdir(exist_ok=True)
    (tree / "etc/default/kexec").write_text("LOAD_KEXEC=false\n")
    # mdadm's initramfs hook would put md into every initrd (and raid6's boot-time benchmark into
    # every scenario's downtime). A tuned server with its root off md leaves it out, as here: the
    # block hook assembles the arrays in the new kernel (the md scenario proves it).
    # (Out of hooks/: initramfs-tools runs every file there but *.dpkg-old and the like.)
    _chroot(tree, "dpkg-divert", "--local", "--rename", "--divert", "/usr/share/mdadm/initramfs-hook.not-in-initrd",
            "--add", "/usr/share/initramfs-tools/hooks/mdadm")
    log.info("installing kernels %s", " ".join(KERNEL_PACKAGES))
    _chroot(tree, "apt-get", "update", "-q")
    _chroot(tree, "apt-get", "install", "-y", "-q", "--no-install-recommends", *KERNEL_PACKAGES)
    newest.install(tree, cache_root(), SUITE, MIRROR, _chroot)
    _install_services(tree)
    log.info("downloading %s into %s", " ".join(DRACUT_PACKAGES), DRACUT_DEBS)
    debs = tree / DRACUT_DEBS.lstrip("/")
    (debs / "partial").mkdir(parents=True, exist_ok=True)
    _chroot(tree, "apt-get", "install", "-y", "-q", "--no-install-recommends", "--download-only",
            "-o", f"Dir::Cache::archives={DRACUT_DEBS}", *DRACUT_PACKAGES)
    shutil.rmtree(debs / "partial")
    (debs / "lock").unlink(missing_ok=True)
    _chroot(tree, "apt-get", "clean")
    (tree / "etc/hostname").write_text("kupgrade-guest\n")
    (tree / "etc/fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
    (tree / ".complete").write_text(base_key() + "\n")
    return tree


def image_key(base: Path) -> str:
    return _hash(base.name, _tree_hash(REPO / "kupgrade", REPO / "hooks", GUEST_DIR),
                 (REPO / "pyproject.toml").read_text(), Path(__file__).read_bytes())   # this recipe, too


def install_kupgrade(tree: Path) -> None:
    """Install kupgrade from this checkout as a Debian admin would: packages + console script."""
    dist = tree / "usr/lib/python3/dist-packages"
    for src, package in ((REPO / "kupgrade", "kupgrade"), (REPO / "hooks", "kupgrade_hooks")):
        if (dist / package).exists():
            shutil.rmtree(dist / package)
        shutil.copytree(src, dist / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name, module in (("kupgrade", "kupgrade.cli"), ("kupgrade-restore", "kupgrade.switch.restorecmd")):
        script = tree / "usr/sbin" / name
        script.write_text(f"#!/usr/bin/python3\nimport sys\nfrom {module} import main\nsys.exit(main())\n")
        script.chmod(0o755)


def install_guest_files(tree: Path) -> None:
    dest = tree / "usr/local/lib/vmtest"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(GUEST_DIR, dest, ignore=shutil.ignore_patterns("__pycache__"))
    for f in dest.iterdir():
        if f.suffix in (".py", "") and f.is_file():
            f.chmod(0o755)
    # For scenarios that boot systemd: the agent as an early unit; no login prompts on the console.
    units = tree / "etc/systemd/system"
    shutil.copy2(GUEST_DIR / "vmtest-agent.service", units / "vmtest-agent.service")
    wants = units / "sysinit.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "vmtest-agent.service").unlink(missing_ok=True)
    (wants / "vmtest-agent.service").symlink_to("/etc/systemd/system/vmtest-agent.service")
    d = units / f"{POSTGRES_UNIT}.d"
    d.mkdir(parents=True, exist_ok=True)
    (d / "vmtest-private-ipc.conf").write_text("# vm-tests: what kupgrade check's hint asks for\n" + POSTGRES_DROPIN)
    # memcached answers the host's client (QEMU's port forwarding), what an admin sets for remote clients
    conf = tree / "etc/memcached.conf"
    conf.write_text(conf.read_text().replace("\n-l 127.0.0.1\n", "\n-l 0.0.0.0\n"))
    # nginx keeps the host's one keep-alive connection for the whole test (its default closes it
    # after 1000 requests: at 10 a second, a planned reconnect that could fall into the pause)
    (tree / "etc/nginx/conf.d/vmtest-keepalive.conf").write_text(
        "# vm-tests: the host's client keeps one connection\nkeepalive_requests 1000000;\nkeepalive_timeout 600s;\n")
    # The services scenario's own sandboxed server, started at boot behind the same gate as Debian's.
    wants = units / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in (SANDBOXED_UNIT, CLASH_UNIT):
        shutil.copy2(GUEST_DIR / unit, units / unit)
        (wants / unit).unlink(missing_ok=True)
        (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")
    for getty in ("serial-getty@ttyS0.service", "getty@tty1.service"):
        (units / getty).unlink(missing_ok=True)
        (units / getty).symlink_to("/dev/null")


def build_image(force: bool = False) -> Image:
    base = build_base(force=force)
    key = image_key(base)
    out = cache_root() / f"image-{key}"
    img = Image(out / "root.img", out / f"vmlinuz-{KERNEL_FROM}", out / f"initrd.img-{KERNEL_FROM}")
    if (out / ".complete").exists() and not force:
        return img
    # Keep the two newest other images (a concurrent run may be booting one); drop the rest.
    others = sorted(cache_root().glob("image-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[2:]:
        shutil.rmtree(old, ignore_errors=True)
    if out.exists():            # an earlier build of this key was interrupted
        shutil.rmtree(out)
    out.mkdir(parents=True)
    work = out / "tree"
    log.info("assembling the disk image %s", out)
    run(["cp", "-a", "--reflink=auto", str(base), str(work)], timeout=600)
    install_kupgrade(work)
    # byte-compiled by the guest's own Python, as a Debian package's install does (py3compile):
    # otherwise a module the old kernel's run never imported is compiled inside the pause
    _chroot(work, "python3", "-m", "compileall", "-q", *(f"/usr/lib/python3/dist-packages/{package}"
                                                         for package in ("kupgrade", "kupgrade_hooks")))
    install_guest_files(work)
    # The boot integration goes in the way an admin installs it.
    _chroot(work, "kupgrade", "install-boot", "--kernel", KERNEL_TO, "--kernel", KERNEL_FROM,
            "--kernel", newest.KERNEL_NEWEST, timeout=600)
    for boots in (img, img.second_jump()):
        shutil.copy2(work / f"boot/vmlinuz-{boots.kernel_from}", boots.kernel)
        shutil.copy2(work / f"boot/initrd.img-{boots.kernel_from}", boots.initrd)
    (work / ".complete").unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(work), str(img.disk), IMAGE_SIZE], timeout=600)
    shutil.rmtree(work)
    (out / ".complete").write_text(key + "\n")
    return img


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build_image(force="--rebuild" in sys.argv))
