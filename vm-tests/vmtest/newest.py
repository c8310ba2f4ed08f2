"""The second jump's part of the guest image: the newest Debian kernel that boots in the guest
(trixie-backports, onto bookworm) and a criu that runs on it (bookworm's criu 3.17 cannot start
on kernels from 6.13: kupgrade/system/criu.py KERNEL_NEEDS).

- **criu 4.1.1**, built from Debian's source of it (the upstream tarball trixie's package is made
  from; trixie's .deb needs trixie's libc) in a bookworm build chroot, with `make criu`. The
  binary goes to /opt/criu-4.1.1/sbin/criu in the guest, beside bookworm's /usr/sbin/criu: the
  other scenarios keep Debian's criu; the newest scenario points paths.criu at this one, as an
  admin with a newer criu in /opt does. Its libraries are bookworm's (criu 3.17 needs the same).
- **linux-image-7.3.4+deb13-amd64** from trixie-backports. It pulls linux-base 4.17 from there,
  whose hook runner calls run-parts with two directories (debianutils >= 5.21; bookworm has
  5.7): for the install only, a run-parts first in PATH merges them by name, as 5.21 does.
Measured (explore-newest, 2026-12-04): 7.3.4 boots in this guest (systemd 252 at ~7 s under TCG,
no failed unit); criu 4.1.1 passes `criu check` on 6.1, 6.12 and 7.3.4.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import urllib.request
from pathlib import Path

from kupgrade.system.run import run

log = logging.getLogger("vmtest.image")

KERNEL_NEWEST = "7.3.4+deb13-amd64"
BACKPORTS = "trixie-backports"
CRIU_VERSION = "4.1.1"
CRIU_TARBALL = f"criu_{CRIU_VERSION}.orig.tar.xz"
CRIU_SHA256 = "f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe"   # trixie's Sources index
CRIU_IN_GUEST = f"/opt/criu-{CRIU_VERSION}/sbin/criu"
# what `make criu` needs (trixie's Build-Depends, less the documentation and packaging tools)
CRIU_BUILD_DEPS = ["build-essential", "pkgconf", "python3", "python3-protobuf", "protobuf-compiler",
                   "protobuf-c-compiler", "libprotobuf-dev", "libprotobuf-c-dev", "libnl-3-dev", "libnet1-dev",
                   "libcap-dev", "libbsd-dev", "libnftables-dev", "libgnutls28-dev", "uuid-dev"]
RUN_PARTS_SHIM = r"""#!/bin/sh
# vm-tests: run-parts DIR1 DIR2 as debianutils >= 5.21 does (files merged by name, the first
# directory's winning), for linux-base 4.17's hook runner on bookworm's run-parts (one directory)
n=0; opts=""; dirs=""
for a in "$@"; do case "$a" in -*) opts="$opts $a";; *) n=$((n+1)); dirs="$a $dirs";; esac; done
[ $n -le 1 ] && exec /bin/run-parts "$@"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for d in $dirs; do for f in "$d"/*; do [ -e "$f" ] && ln -sfn "$f" "$tmp/$(basename "$f")"; done; done
/bin/run-parts $opts "$tmp"
"""


def recipe() -> str:
    """What the base tree's key includes of this module."""
    return " ".join([KERNEL_NEWEST, BACKPORTS, CRIU_VERSION, CRIU_SHA256, CRIU_IN_GUEST, *CRIU_BUILD_DEPS,
                     RUN_PARTS_SHIM])


def _fetch_tarball(mirror: str, dest: Path) -> None:
    url = f"{mirror}/pool/main/c/criu/{CRIU_TARBALL}"
    log.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=300) as r:
        data = r.read()
    if hashlib.sha256(data).hexdigest() != CRIU_SHA256:
        raise RuntimeError(f"{url}: sha256 {hashlib.sha256(data).hexdigest()}, expected {CRIU_SHA256}")
    dest.write_bytes(data)


def build_criu(cache: Path, suite: str, mirror: str, chroot) -> Path:
    """criu CRIU_VERSION for `suite`, built once in a build chroot (~2 min) and cached."""
    out = cache / f"criu-{CRIU_VERSION}-{suite}"
    if (out / "criu").is_file():
        return out / "criu"
    build = cache / f"criu-build-{suite}"
    if build.exists():
        shutil.rmtree(build)
    log.info("building criu %s in a %s chroot (about 2 minutes, once)", CRIU_VERSION, suite)
    run(["debootstrap", "--variant=minbase", f"--include={','.join(CRIU_BUILD_DEPS)}", suite, str(build), mirror],
        timeout=1800)
    _fetch_tarball(mirror, build / "root" / CRIU_TARBALL)
    chroot(build, "tar", "-C", "/root", "-xJf", f"/root/{CRIU_TARBALL}")
    chroot(build, "make", "-C", f"/root/criu-{CRIU_VERSION}", "-j2", "criu", timeout=1800)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(build / f"root/criu-{CRIU_VERSION}/criu/criu", out / "criu.tmp")
    (out / "criu.tmp").rename(out / "criu")
    shutil.rmtree(build)
    return out / "criu"


def install(tree: Path, cache: Path, suite: str, mirror: str, chroot) -> None:
    """The newest kernel (its /boot files made by the tree's own hooks) and criu into the tree."""
    criu = build_criu(cache, suite, mirror, chroot)
    dest = tree / CRIU_IN_GUEST.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(criu, dest)
    dest.chmod(0o755)
    log.info("installing linux-image-%s from %s", KERNEL_NEWEST, BACKPORTS)
    sources = tree / "etc/apt/sources.list.d/vmtest-backports.list"
    sources.write_text(f"deb {mirror} {BACKPORTS} main\n")
    shim = tree / "root/vmtest-shim"
    shim.mkdir(exist_ok=True)
    (shim / "run-parts").write_text(RUN_PARTS_SHIM)
    (shim / "run-parts").chmod(0o755)
    try:
        chroot(tree, "apt-get", "update", "-q")
        # apt runs dpkg with a PATH of its own (DPkg::Path)
        chroot(tree, "apt-get", "install", "-y", "-q", "--no-install-recommends", "-t", BACKPORTS,
               "-o", "DPkg::Path=/root/vmtest-shim:/usr/sbin:/usr/bin:/sbin:/bin", f"linux-image-{KERNEL_NEWEST}")
    finally:
        shutil.rmtree(shim)
        sources.unlink()
    chroot(tree, "apt-get", "update", "-q")
    for f in (f"boot/vmlinuz-{KERNEL_NEWEST}", f"boot/initrd.img-{KERNEL_NEWEST}"):
        if not (tree / f).is_file():
            raise RuntimeError(f"linux-image-{KERNEL_NEWEST} installed without /{f}")
