"""One module per scenario: NAME, DESCRIPTION and run(vm, image, result); optionally INIT
("systemd" to boot systemd instead of the small test init), NIC (see qemu.nic_argv) and MACHINE
(extra QEMU devices, disks, kernel arguments: qemu.Machine); SECOND_JUMP (boot the image's
KERNEL_TO, upgrade to the newest kernel: newest.py). hooks.py and dirty_data.py are not ones:
they hold steps that the tcp and systemd-service scenarios run on their guests; the suite runs
tui's steps inside rehearse (tui alone is the demo's)."""

from . import explore_sandbox, basic, basic_dracut, faults, fleet, md, newest, pmem, rehearse, rollback, services, systemd_service, tcp, tui, watchdog

# The suite (scripts/test runs them all).
SCENARIOS = {m.NAME: m for m in (basic, basic_dracut, rehearse, faults, rollback, pmem, systemd_service, tcp, watchdog, md, services, newest, fleet)}
# Run by name only: they measure criu itself, not kupgrade (what kupgrade builds on them is proven
# by the suite: `services` carries sandboxed units end to end).
EXPLORATIONS = {m.NAME: m for m in (explore_sandbox,)}
# Run by name only: the demo's (scripts/demo); the suite covers them inside its scenarios.
DEMOS = {m.NAME: m for m in (tui,)}
KNOWN = {**SCENARIOS, **EXPLORATIONS, **DEMOS}
