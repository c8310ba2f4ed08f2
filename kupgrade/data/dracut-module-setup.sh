#!/bin/bash
# kupgrade's dracut module (90kupgrade): puts into every initrd dracut builds what the
# initramfs-tools hook puts into initramfs-tools' (busybox, the kernel modules, the marker) and
# runs the same two scripts at the same points of the boot: init-top from the cmdline hook (the
# first one; before udev, whose workers would take PIDs), init-bottom from the pre-pivot hook (the
# root file system is mounted at /sysroot; the switch to it then moves /run, with the snapshot's
# tmpfs, into it). Under dracut's shell init or its systemd units (dracut-cmdline.service,
# dracut-pre-pivot.service) alike. dracut sources its hooks, so each hook runs its script as a
# program of its own. Written from kupgrade/switch/contract.py by `kupgrade install-boot` (contract
# @CONTRACT@); init-top, init-bottom and the two hooks are beside it.

# called by dracut: always included, in host-only mode too
check() {
    return 0
}

# called by dracut
depends() {
    return 0
}

# called by dracut. The kernel modules of kupgrade/switch/contract.py: kupgrade's memory region
# (kupgrade/switch/pmem.py), which init-top mounts before udev runs, and what the restore asks for
# (loaded in the background by init-top when a snapshot comes). hostonly='': also when this
# machine has not loaded them (a snapshot only comes with a kernel switch)
installkernel() {
    hostonly='' instmods @PMEM_MODULES@ @RESTORE_MODULES@
}

# called by dracut
install() {
    local bb
    if ! bb=$(find_binary busybox); then
        dfatal "kupgrade: busybox is missing; install it (apt-get, dnf or zypper install busybox)"
        exit 1
    fi
    inst_binary "$bb" /bin/busybox
    inst_multiple cat modprobe
    inst_script "$moddir/init-top" /usr/lib/kupgrade/init-top
    inst_script "$moddir/init-bottom" /usr/lib/kupgrade/init-bottom
    inst_hook cmdline 00 "$moddir/kupgrade-top.sh"
    inst_hook pre-pivot 90 "$moddir/kupgrade-bottom.sh"
    # The marker preflight looks for: this initrd carries the scripts of contract @CONTRACT@.
    mkdir -p "${initdir}/etc"
    echo "@VERSION@" > "${initdir}/@BOOT_MARKER@"
}
