#!/usr/bin/python
# GNU General Public License v2.0 or later (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""kupgrade.fleet.check: `kupgrade check --json` on the host."""

from __future__ import annotations

DOCUMENTATION = r"""
module: check
short_description: Can kupgrade replace this host's kernel now (kupgrade check --json)
description:
  - Runs C(kupgrade check --json) on the host and returns the blockers, the running and target kernels,
    the downtime estimate. Changes nothing (but the metrics file, if asked for).
  - A host with blockers is not a failure of this module; it returns C(blocked=true), and the
    play decides (the role kupgrade.fleet.upgrade skips the host or fails it, as
    C(kupgrade_on_blocked) says).
options:
  prometheus:
    description: Also write the check's metrics there (C(--prometheus), for node_exporter's
      textfile collector, e.g. /var/lib/prometheus/node-exporter/kupgrade-check.prom).
    type: path
extends_documentation_fragment:
  - kupgrade.fleet.common
  - kupgrade.fleet.common.selection
author: kupgrade developers
"""

EXAMPLES = r"""
- name: Blockers and downtime estimate
  kupgrade.fleet.check:
    args: [--unit, postgresql.service]
    prometheus: /var/lib/prometheus/node-exporter/kupgrade-check.prom
  register: check
"""

RETURN = r"""
blocked:
  description: kupgrade found blockers (nothing would be changed by a run).
  type: bool
  returned: always
current:
  description: The host already runs the target kernel.
  type: bool
  returned: always
blockers:
  description: Each blocker's message and hint.
  type: list
  returned: always
kernel_from:
  description: The running kernel.
  type: str
  returned: always
kernel_to:
  description: The target kernel.
  type: str
  returned: always
downtime_estimate_s:
  description: kupgrade's estimate of the workloads' pause, in seconds.
  type: float
  returned: when kupgrade could estimate it
check:
  description: The whole C(kupgrade check --json) document.
  type: dict
  returned: always
kupgrade_fleet:
  description: What the fleet report keeps of the check.
  type: dict
  returned: always
"""

import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kupgrade.fleet.plugins.module_utils.records import check_summary, error_line


def main() -> None:
    module = AnsibleModule(argument_spec={
        "args": {"type": "list", "elements": "str", "default": []},
        "config": {"type": "path"},
        "prometheus": {"type": "path"},
        "executable": {"type": "str", "default": "kupgrade"},
    }, supports_check_mode=True)
    p = module.params
    argv = [p["executable"], "check", "--json", *(["--config", p["config"]] if p["config"] else []), *p["args"],
            *(["--prometheus", p["prometheus"]] if p["prometheus"] else [])]
    rc, out, err = module.run_command(argv)
    try:
        doc = json.loads(out) if rc in (0, 3) else None
    except ValueError:
        doc = None
    if doc is None:     # not a check's verdict: a config or usage error, kupgrade missing, ...
        module.fail_json(msg=f"kupgrade check exited {rc}: {error_line(err) or out[-300:]}", rc=rc, stderr=err)
    summary = check_summary(doc)
    module.exit_json(changed=False, blocked=summary["blocked"], current=summary["current"],
                     blockers=summary["blockers"], kernel_from=summary["kernel_from"],
                     kernel_to=summary["kernel_to"], downtime_estimate_s=summary["downtime_estimate_s"],
                     check=doc, kupgrade_fleet=summary)


if __name__ == "__main__":
    main()
