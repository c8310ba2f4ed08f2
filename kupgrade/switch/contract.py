"""What the old kernel's side and the new kernel's side must agree on, in one place.

The old kernel's side is Python (`kupgrade run`); the new kernel's side is partly shell (the
initramfs-tools hook and scripts, which run before the root filesystem is mounted and cannot
read any config), partly systemd (the restore unit, the generator) and partly Python again
(`kupgrade-restore`). Every path, file name and command-line word they share is defined here;
the boot files in kupgrade/data/ name them as @PLACEHOLDERS@ that `kupgrade install-boot`
fills in from BOOT_VALUES (tests/test_contract.py fails when a boot file spells a value out or
names a placeholder that is not here).

VERSION is written into the initrd as the boot marker's name: preflight refuses an initrd whose
scripts were built for another contract (`kupgrade install-boot` rebuilds it).
"""

from __future__ import annotations

VERSION = 5                # 5: generated/ (the old kernel writes the systemd generator's output)

# --- the kernel command line of the new kernel -------------------------------------------------
CMDLINE_KEY = "kupgrade.snapshot"          # kupgrade.snapshot=ID: the snapshot this boot restores
CMDLINE_PMEM = "kupgrade.pmem"             # kupgrade.pmem=START: the memmap= region that is kupgrade's
                                           # (pmem.py); kept on every command line kexec passes on
CMDLINE_MAXPID = "kupgrade.maxpid"         # kupgrade.maxpid=N: no PID of the snapshot is above N, so new
                                           # PIDs start above it from init-top on, before the snapshot is
                                           # at hand (the memory region is mounted in the background)
CMDLINE_PIDMAX = "kupgrade.pidmax"         # kupgrade.pidmax=M: the old kernel's kernel.pid_max. A kernel
                                           # boots with 32768 on machines with few CPUs (systemd-sysctl
                                           # raises it later) and ns_last_pid cannot be set above it:
                                           # init-top raises it to M first when the snapshot's PIDs need it

# --- the snapshot archive appended to the target initrd ----------------------------------------
ARCHIVE_ROOT = "kupgrade-snapshot"         # the kernel unpacks it as /kupgrade-snapshot/ in the early rootfs
MANIFEST = "manifest.json"                 # id, kernels, workloads, size + CRC-32 of every file (manifest.py)
RECORD = "record.json"                     # the old kernel's upgrade record, continued by the restore
MAX_PID = "max-pid"                        # the snapshot's highest PID: new PIDs start above it
SIZE_KIB = "size-kib"                      # what the snapshot's tmpfs in the new kernel must hold
PREWARM = "prewarm"                        # the files the workloads use: OFFSET LENGTH PATH per line (prewarm.py)
MOVE_FAILED = "move-failed"                # left by the initramfs when it could not move the snapshot: why
IMAGES = "images"                          # images/TREE/: criu's images of one process tree
HOOKS = "hooks"                            # hooks/NAME/: a device hook's saved state
GENERATED = "generated"                   # generated/: the systemd generator's output for the new boot
                                          # (drop-ins), written by the old kernel; the generator copies it
DIRS = (IMAGES, HOOKS, GENERATED)         # the snapshot's directories: every file in them is in the manifest
EARLY_BUNDLE = "early-restore.d"           # hooks/early-restore.d/: the initramfs hooks and runner
EARLY_RUNNER = "run"

# --- the new kernel's side ---------------------------------------------------------------------
RESTORE_DIR = "/run/kupgrade"              # the snapshot, on a tmpfs of its own, after the initramfs
REJECTED_DIR = "/run/kupgrade-rejected"    # a snapshot that is not the one the command line names
VERIFIED = "verified"                      # written once every file matched the manifest
DONE = "restored.json"                     # the manifest, renamed once every workload is restored
UNIT_PIDFILES = "units"                    # RESTORE_DIR/units/UNIT.pid: a restored unit's main PID
BOOT_MARKER = f"etc/kupgrade-boot.{VERSION}"   # in the initrd: it carries this contract's scripts

# --- every boot through kupgrade's initrd ------------------------------------------------------
# The kernel modules the initrd carries (initramfs-tools' hook, dracut's module) and init-top loads:
# kupgrade's memory region (pmem.py), mounted before udev runs; and, in the background once a
# snapshot came, what the restore asks for (criu's socket-diag probes; nf_tables for the table
# that holds the peers' packets of carried TCP connections: 1.3 s inside the pause when the
# restore loaded it itself, 42 s once on a busy host). Not veth: criu's probe creates a veth pair
# in a new network namespace (1.4 s of its 3-4.5 s under QEMU TCG), but with veth in this list
# that step took as long (1.43 s without, 1.40 s with, one run each): not the module's load
PMEM_MODULES = "nd_e820 nd_pmem ext4"
RESTORE_MODULES = "unix_diag inet_diag tcp_diag udp_diag netlink_diag packet_diag nf_tables"

EARLY_PIDS = "/run/kupgrade-early-pids"   # init-top: the PIDs in use before userspace (bootpids.py)
REGION_PENDING = "/run/kupgrade-region.pending"   # init-top: the region is being mounted (init-bottom waits)
RESTORE_POINT = "/run/kupgrade-restore-point"  # kupgrade-restore, every call: seconds since the kernel started

# --- on disk, both kernels ---------------------------------------------------------------------
STATE_DIR = "/var/lib/kupgrade"            # records/ID.json, logs/ID/ (default of paths.state)
SNAPSHOT_TMPFS = "/run/kupgrade-snapshot"  # the old kernel's private tmpfs (default of snapshot.dir)

# The values the boot files (kupgrade/data/*) are written with.
BOOT_VALUES: dict[str, str] = {
    "CMDLINE_KEY": CMDLINE_KEY,
    "CMDLINE_PMEM": CMDLINE_PMEM,
    "CMDLINE_MAXPID": CMDLINE_MAXPID,
    "CMDLINE_PIDMAX": CMDLINE_PIDMAX,
    "ARCHIVE_ROOT": ARCHIVE_ROOT,
    "MANIFEST": MANIFEST,
    "MAX_PID": MAX_PID,
    "SIZE_KIB": SIZE_KIB,
    "PREWARM": PREWARM,
    "MOVE_FAILED": MOVE_FAILED,
    "HOOKS": HOOKS,
    "EARLY_BUNDLE": EARLY_BUNDLE,
    "GENERATED": GENERATED,
    "EARLY_RUNNER": EARLY_RUNNER,
    "RESTORE_DIR": RESTORE_DIR,
    "REJECTED_DIR": REJECTED_DIR,
    "BOOT_MARKER": BOOT_MARKER,
    "STATE_DIR": STATE_DIR,
    "EARLY_PIDS": EARLY_PIDS,
    "REGION_PENDING": REGION_PENDING,
    "PMEM_MODULES": PMEM_MODULES,
    "RESTORE_MODULES": RESTORE_MODULES,
    "CONTRACT": str(VERSION),
}


def render(text: str, extra: dict[str, str] | None = None) -> str:
    """A boot file with its @NAME@ placeholders filled in; an unknown one is a bug."""
    import re
    values = {**BOOT_VALUES, **(extra or {})}

    def sub(m: re.Match) -> str:
        if m.group(1) not in values:
            raise KeyError(f"boot file names @{m.group(1)}@, which the contract does not define")
        return values[m.group(1)]

    return re.sub(r"@([A-Z_]+)@", sub, text)
