# GNU General Public License v2.0 or later (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""kupgrade.fleet.fleet_report: one table (and JSON) over every host of the play at its end."""

from __future__ import annotations

DOCUMENTATION = r"""
name: fleet_report
type: aggregate
short_description: The fleet report of a kupgrade rollout (one table, and JSON)
description:
  - Collects what the collection's modules (check, run, report, health) returned for each host,
    the tasks that failed and the hosts that could not be reached, and at the end of the playbook
    prints one table over all hosts of the plays that used them (kernel before and after,
    downtime, workloads carried, the reason of every failure) and writes it as JSON.
  - It runs at the end even when the rollout stopped early (a failed batch, max_fail_percentage);
    the hosts of the batches that never ran are listed as "not reached".
  - Enable it in ansible.cfg (C(callbacks_enabled = kupgrade.fleet.fleet_report)) or with
    ANSIBLE_CALLBACKS_ENABLED.
options:
  report_path:
    description: Write the fleet report as JSON to this file (and the table next to it, .txt).
    type: path
    env:
      - name: KUPGRADE_FLEET_REPORT
    ini:
      - section: callback_fleet_report
        key: report_path
requirements:
  - enabled in callbacks_enabled
author: kupgrade developers
"""

import json
from pathlib import Path

from ansible.plugins.callback import CallbackBase
from ansible_collections.kupgrade.fleet.plugins.module_utils.fleet import Fleet, document, table

KEY = "kupgrade_fleet"


def _result(result) -> dict:
    """The task's result dict (ansible-core 2.19 names it `result`, earlier ones `_result`)."""
    return result.result if hasattr(type(result), "result") else result._result


def _host(result) -> str:
    return (result.host if hasattr(type(result), "host") else result._host).get_name()


def _task(result):
    return result.task if hasattr(type(result), "task") else result._task


def _ours(result) -> bool:
    """A task of this collection (its modules and action)."""
    task = _task(result)
    return str(getattr(task, "resolved_action", None) or task.action).startswith("kupgrade.fleet.")


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "kupgrade.fleet.fleet_report"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fleet = Fleet()
        self.used = False           # a kupgrade step ran: there is a report to give
        self.play_hosts: list[str] = []

    def v2_playbook_on_play_start(self, play) -> None:
        """The play's hosts, all of them (each serial batch starts the play anew, restricted to it)."""
        try:
            inventory = play.get_variable_manager()._inventory
            self.play_hosts = [h.get_name() for h in inventory.get_hosts(play.hosts, ignore_restrictions=True)]
        except (AttributeError, TypeError):
            self.play_hosts = []

    def _saw(self, result) -> dict:
        r = _result(result)
        if _ours(result) or isinstance(r.get(KEY), dict):
            self.fleet.expect(self.play_hosts)     # in the play's order, once; none left out
            self.used = True
        if isinstance(r.get(KEY), dict):
            self.fleet.step(_host(result), dict(r[KEY]))
        return r

    def v2_runner_on_ok(self, result) -> None:
        self._saw(result)

    def v2_runner_on_failed(self, result, ignore_errors: bool = False) -> None:
        r = self._saw(result)
        if not ignore_errors:
            msg = str(r.get("msg", "failed")).splitlines()[0][:500]
            self.fleet.failed(_host(result), _task(result).name or "", msg)

    def v2_runner_on_unreachable(self, result) -> None:
        self.fleet.unreachable(_host(result), str(_result(result).get("msg", "unreachable"))[:500])

    def v2_playbook_on_stats(self, stats) -> None:
        if not self.used:
            return
        entries = self.fleet.entries()
        text = table(entries)
        self._display.banner("KUPGRADE FLEET REPORT")
        self._display.display(text)
        path = self.get_option("report_path")
        if path:
            out = Path(path)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(document(entries), indent=2) + "\n")
            out.with_suffix(".txt").write_text(text)
            self._display.display(f"fleet report: {out}")
