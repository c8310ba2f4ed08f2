#!/usr/bin/python
# GNU General Public License v2.0 or later (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""kupgrade.fleet.run: the documentation; the work is the action plugin plugins/action/run.py."""

from __future__ import annotations

DOCUMENTATION = r"""
module: run
short_description: Replace the host's kernel with kupgrade and wait for the new one
description:
  - Starts C(kupgrade run --yes) on the host as a transient systemd unit (C(systemd-run)), so that
    it goes on when the kernel switch (kexec) cuts the connection, then waits, as
    M(ansible.builtin.reboot) does, for the host's boot id to change (the switch) or for the unit
    to end in the same boot (a run that stopped before the switch, which changed nothing).
  - After a switch it waits until the new kernel has finished the upgrade record (the restore, or
    the way back to the old kernel), then returns C(kupgrade report --json). C(restored) is
    success; any other outcome fails the task.
  - A host whose upgrade failed is left as kupgrade left it; this module never reboots.
  - ssh connections get keepalives for the task (a connection the switch cut is given up in
    seconds).
options:
  prometheus:
    description: Write the upgrade's metrics there once it is done (C(kupgrade report --prometheus)).
    type: path
  timeout:
    description: Seconds for the whole upgrade (the run, the switch, the restore).
    type: int
    default: 1800
  poll_interval:
    description: Seconds between two looks at the host.
    type: float
    default: 2
  unit:
    description: The transient unit's name prefix (a timestamp and .service are added).
    type: str
    default: kupgrade-ansible
notes:
  - Needs systemd on the host. Check mode starts nothing.
extends_documentation_fragment:
  - kupgrade.fleet.common
  - kupgrade.fleet.common.selection
author: kupgrade developers
"""

EXAMPLES = r"""
- name: Upgrade, carrying the database
  kupgrade.fleet.run:
    args: [--unit, postgresql.service]
    prometheus: /var/lib/prometheus/node-exporter/kupgrade.prom
  register: upgrade
"""

RETURN = r"""
switched:
  description: The kernel switch happened (the boot id changed).
  type: bool
  returned: always
outcome:
  description: The record's outcome (restored, restore-failed, rolled-back, aborted, ...), or
    not-started when the run left no record, unknown when it switched and no record was readable.
  type: str
  returned: always
kernel_before:
  description: The kernel before.
  type: str
  returned: always
kernel_after:
  description: The kernel the host runs now.
  type: str
  returned: always
record:
  description: C(kupgrade report --json) of the run's record ({} if it left none).
  type: dict
  returned: always
kupgrade_fleet:
  description: What the fleet report keeps of the upgrade.
  type: dict
  returned: always
"""

if __name__ == "__main__":
    from ansible.module_utils.basic import AnsibleModule
    AnsibleModule(argument_spec={}).fail_json(msg="kupgrade.fleet.run is an action plugin: run it as a task")
