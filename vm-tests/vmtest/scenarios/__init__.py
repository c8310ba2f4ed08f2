"""One module per scenario: NAME, DESCRIPTION and run(vm, image, result); optionally INIT
("systemd" to boot systemd instead of the small test init) and NIC (see qemu.nic_argv)."""

from . import abort, basic, dirty_data, hooks, rehearse, systemd_service, tcp, tui

SCENARIOS = {m.NAME: m for m in (basic, rehearse, tui, abort, dirty_data, systemd_service, tcp, hooks)}
