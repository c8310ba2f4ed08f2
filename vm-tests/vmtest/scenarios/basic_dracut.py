"""basic-dracut: basic on a guest that builds its initrds with dracut. Debian's dracut package
replaces initramfs-tools (installed offline from the .debs the image carries: the guest has no
network), `kupgrade install-boot` finds dracut, installs kupgrade's dracut module and rebuilds
the target's initrd with it; then basic's upgrade 6.1 -> 6.12 and all its checks. Debian's
dracut puts systemd into the initrd: the module's hooks run from dracut-cmdline.service and
dracut-pre-pivot.service in the new kernel. The way back's initrd (6.1) stays the one
initramfs-tools built with kupgrade's scripts: preflight lists both with lsinitrd and accepts it
(a dracut build costs a minute under TCG)."""

from __future__ import annotations

import re

from .. import image as vmimage
from ..scenario import Result, booted, last_record, workload_running
from . import basic

NAME = "basic-dracut"
DESCRIPTION = "basic on a guest whose initrds dracut builds (systemd in the initrd) instead of initramfs-tools"
# A small initrd, as the image's initramfs-tools one (MODULES=list): only these kernel modules,
# loaded early as initramfs-tools loads its list; no md, dm, crypt, resume, ... Debian's dracut
# builds generic initrds otherwise (36 MB, slow to build and boot under TCG). Uncompressed: zstd
# took a quarter of the build under TCG (measured in the guest: 117 s with it, 86 s without).
MODULES = " ".join(vmimage.INITRD_MODULES)
DRACUT_CONF = f"""# vm-tests (basic-dracut): a small initrd, like the image's initramfs-tools one
hostonly="no"
drivers="{MODULES}"
force_drivers="{MODULES}"
omit_dracutmodules+=" mdraid dm crypt lvm nvdimm resume overlay-root usrmount terminfo lunmask qemu virtiofs kernel-modules-extra "
compress="cat"
early_microcode="no"
"""


def to_dracut(vm, image, res: Result) -> None:
    """dracut in, initramfs-tools out, offline; install-boot builds the target's initrd with dracut."""
    # apt takes the .debs from the directory the image downloaded them into (its archive cache
    # for this command: nothing to fetch). INITRD=No: the package's own trigger does not build
    # every kernel's initrd; install-boot does
    vm.sh("mkdir", "-p", f"{vmimage.DRACUT_DEBS}/partial")
    r = vm.sh("env", "INITRD=No", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
              "--no-install-recommends", "--no-download", "-o", f"Dir::Cache::archives={vmimage.DRACUT_DEBS}",
              *vmimage.DRACUT_PACKAGES, check=False, timeout=300)
    status = vm.sh("dpkg-query", "-W", "-f", "${Package} ${Status}\\n", "dracut", "initramfs-tools", check=False)["stdout"]
    res.check(r["rc"] == 0 and "dracut install ok installed" in status and "initramfs-tools install ok" not in status,
              "dracut installed from the image's .debs without network, initramfs-tools removed",
              (r["stdout"] + r["stderr"])[-1500:] + status)
    vm.sh("tee", "/etc/dracut.conf.d/vmtest.conf", input=DRACUT_CONF)
    t = vm.sh("cat", "/proc/uptime")["stdout"].split()[0]
    out = vm.sh("kupgrade", "install-boot", "--kernel", image.kernel_to, timeout=900)["stdout"]
    res.data["install_boot_s"] = round(float(vm.sh("cat", "/proc/uptime")["stdout"].split()[0]) - float(t), 1)
    res.say(out)
    res.check("initrd builder: dracut" in out and f"rebuilt the initrd of {image.kernel_to} (dracut)" in out,
              "install-boot found dracut, wrote its module and rebuilt the target's initrd with it", out[-1500:])
    listing = vm.sh("lsinitrd", f"/boot/initrd.img-{image.kernel_to}", timeout=300)["stdout"]
    res.check(all(f in listing for f in ("dracut/hooks/cmdline/00-kupgrade-top.sh", "usr/lib/kupgrade/init-top",
                                         "dracut/hooks/pre-pivot/90-kupgrade-bottom.sh", "usr/bin/busybox",
                                         "usr/lib/systemd/systemd", "unix_diag.ko")),
              "the target's initrd (lsinitrd): kupgrade's dracut hooks and scripts, busybox, systemd, the diag modules",
              listing[-1500:])


def restored_through_dracut(vm, image, res: Result) -> None:
    """The new kernel booted through dracut's systemd initrd, and kupgrade's hooks ran there;
    preflight listed the target initrd with lsinitrd."""
    dmesg = vm.sh("dmesg")["stdout"]
    lines = [l for l in dmesg.splitlines() if "kupgrade:" in l or "Running in initrd" in l]
    res.check("Running in initrd" in dmesg and "new PIDs start above" in dmesg and " ready in " in dmesg,
              "the new kernel's initramfs was dracut's with systemd; its cmdline hook moved ns_last_pid and its "
              "pre-pivot hook made the snapshot ready", "\n".join(lines)[-1500:])
    # listed by lsinitrd, or kept from such a listing of the same content (plan and check ran before)
    log = vm.sh("grep", "-E", r"listed \S+ with lsinitr", f"/var/log/kupgrade/{last_record(vm)['id']}.log",
                check=False)["stdout"]
    listed = {m.group(1): m.group(2) for m in re.finditer(r"listed (\S+) with (\w+)", log)}
    res.check(sorted(listed) == sorted(f"/boot/initrd.img-{k}" for k in (image.kernel_from, image.kernel_to))
              and set(listed.values()) == {"lsinitrd"},
              "preflight checked the target's initrd and the way back's (initramfs-tools built it) with lsinitrd",
              log[-1500:])


def run(vm, image, res: Result) -> None:
    booted(vm, res)
    to_dracut(vm, image, res)
    wl, before = workload_running(vm, cgroup="/workload")
    basic.upgraded(vm, image, res, wl, before)
    if res.data.get("kernel_after") == image.kernel_to:
        restored_through_dracut(vm, image, res)
