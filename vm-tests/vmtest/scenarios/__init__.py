"""One module per scenario: NAME, DESCRIPTION and run(vm, image, result); optionally INIT
("systemd" to boot systemd instead of the small test init), NIC (see qemu.nic_argv) and MACHINE
(extra QEMU devices, disks, kernel arguments: qemu.Machine); SECOND_JUMP (boot the image's
KERNEL_TO, upgrade to the newest kernel: newest.py). hooks.py is not one: it holds the
device hooks' steps that the tcp scenario runs on its guest (and ALL_DEVICES, shared)."""

from . import explore_sandbox, basic, basic_dracut, dirty_data, faults, fleet, md, newest, pmem, rehearse, rollback, services, systemd_service, tcp, tui, watchdog

# The suite (scripts/test runs them all).
SCENARIOS = {m.NAME: m for m in (basic, basic_dracut, rehearse, tui, faults, rollback, pmem, dirty_data, systemd_service, tcp, watchdog, md, services, newest, fleet)}
# Run by name only: they measure criu itself, not kupgrade (what kupgrade builds on them is proven
# by the suite: `services` carries sandboxed units end to end).
EXPLORATIONS = {m.NAME: m for m in (explore_sandbox,)}
KNOWN = {**SCENARIOS, **EXPLORATIONS}
