#!/usr/bin/python
# GNU General Public License v2.0 or later (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""kupgrade.fleet.report: `kupgrade report --json` on the host."""

from __future__ import annotations

DOCUMENTATION = r"""
module: report
short_description: How the host's last kernel upgrade went (kupgrade report --json)
description:
  - Reads the host's last (or a given) kupgrade record with C(kupgrade report --json), with the
    kernels, the outcome, the downtime, the workloads carried, started fresh or lost, the first
    error. Changes nothing (but the metrics file, if asked for).
  - kupgrade.fleet.run returns the same after an upgrade; this module is for reading the last
    upgrades of a fleet without running one (the fleet report lists them too).
options:
  id:
    description: The record's id (C(--id)); default the last one.
    type: str
  prometheus:
    description: Also write the upgrade's metrics there (C(--prometheus), for node_exporter's
      textfile collector, e.g. /var/lib/prometheus/node-exporter/kupgrade.prom).
    type: path
extends_documentation_fragment:
  - kupgrade.fleet.common
author: kupgrade developers
"""

EXAMPLES = r"""
- name: The last upgrade of every host, and its metrics
  kupgrade.fleet.report:
    prometheus: /var/lib/prometheus/node-exporter/kupgrade.prom
"""

RETURN = r"""
outcome:
  description: The record's outcome (restored is a successful upgrade).
  type: str
  returned: always
kernel_now:
  description: The kernel the host runs.
  type: str
  returned: always
record:
  description: The whole C(kupgrade report --json) document (the record and its summary).
  type: dict
  returned: always
kupgrade_fleet:
  description: What the fleet report keeps of it.
  type: dict
  returned: always
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kupgrade.fleet.plugins.module_utils.records import error_line, run_summary


def main() -> None:
    module = AnsibleModule(argument_spec={
        "id": {"type": "str"},
        "config": {"type": "path"},
        "prometheus": {"type": "path"},
        "executable": {"type": "str", "default": "kupgrade"},
    }, supports_check_mode=True)
    p = module.params
    argv = [p["executable"], "report", "--json", *(["--config", p["config"]] if p["config"] else []),
            *(["--id", p["id"]] if p["id"] else []), *(["--prometheus", p["prometheus"]] if p["prometheus"] else [])]
    rc, out, err = module.run_command(argv)
    try:
        doc = json.loads(out) if rc == 0 else None
    except ValueError:
        doc = None
    if doc is None:
        module.fail_json(msg=f"kupgrade report exited {rc}: {error_line(err) or out[-300:]}", rc=rc, stderr=err)
    summary = {**run_summary(doc, switched=False, kernel_now=os.uname().release), "step": "report"}
    module.exit_json(changed=False, outcome=summary["outcome"], kernel_now=summary["kernel_now"], record=doc,
                     kupgrade_fleet=summary)


if __name__ == "__main__":
    main()
