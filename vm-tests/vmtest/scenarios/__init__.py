"""One module per scenario: NAME, DESCRIPTION and run(vm, image, result); optionally INIT
("systemd" to boot systemd instead of the small test init), NIC (see qemu.nic_argv) and MACHINE
(extra QEMU devices, disks, kernel arguments: qemu.Machine)."""

from . import explore_sandbox, abort, basic, dirty_data, faults, fleet, hooks, md, pmem, rehearse, rollback, services, systemd_service, tcp, tui, watchdog

SCENARIOS = {m.NAME: m for m in (basic, rehearse, tui, abort, faults, rollback, pmem, dirty_data, systemd_service, tcp, hooks, watchdog, md, services, fleet, explore_sandbox)}
