#!/usr/bin/python
# GNU General Public License v2.0 or later (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""kupgrade.fleet.health: the health gate after an upgrade, a command or a URL, retried."""

from __future__ import annotations

DOCUMENTATION = r"""
module: health
short_description: The health gate after a kernel upgrade (a command or a URL, retried)
description:
  - Runs a command (exit 0 is healthy) or asks a URL (the expected status, and a text in the
    body if given) until it passes or the timeout is over. A failed gate fails the host, so a
    rollout with C(serial) and C(max_fail_percentage) stops before the next batch.
  - It runs where the task runs, on the host or (with C(delegate_to)) on the controller.
options:
  command:
    description: The command (an argv list, or a string split like a shell would, without one).
    type: raw
  url:
    description: The URL to ask (GET).
    type: str
  status_code:
    description: The HTTP statuses that pass.
    type: list
    elements: int
    default: [200]
  contains:
    description: A text the response body (or the command's output) must contain.
    type: str
  timeout:
    description: Seconds to keep trying.
    type: int
    default: 300
  interval:
    description: Seconds between tries.
    type: float
    default: 2
author: kupgrade developers
"""

EXAMPLES = r"""
- name: The service answers again
  kupgrade.fleet.health:
    url: http://localhost:8080/healthz
    contains: ok
- name: The database accepts queries
  kupgrade.fleet.health:
    command: [psql, -tAc, "select 1"]
"""

RETURN = r"""
ok:
  description: The gate passed.
  type: bool
  returned: always
attempts:
  description: How many tries it took.
  type: int
  returned: always
detail:
  description: The last try's result (the exit code and output tail, or the status).
  type: str
  returned: always
"""

import shlex
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url


def try_command(module, argv: list, contains: str | None) -> tuple[bool, str]:
    rc, out, err = module.run_command(argv)
    text = (out + err).strip()
    ok = rc == 0 and (not contains or contains in out)
    return ok, f"{' '.join(argv)}: exit {rc}" + (f": {text[-300:]}" if text else "")


def try_url(url: str, codes: list, contains: str | None) -> tuple[bool, str]:
    try:
        resp = open_url(url, timeout=10, follow_redirects="safe")
        status, body = resp.getcode(), resp.read().decode(errors="replace")
    except Exception as e:  # noqa: BLE001 - an HTTP error status, a refused connection: not healthy yet
        status, body = getattr(e, "code", None), str(e)
    ok = status in codes and (not contains or contains in body)
    return ok, f"{url}: {status or 'no answer'}" + ("" if ok else f": {body.strip()[-300:]}")


def main() -> None:
    module = AnsibleModule(argument_spec={
        "command": {"type": "raw"},
        "url": {"type": "str"},
        "status_code": {"type": "list", "elements": "int", "default": [200]},
        "contains": {"type": "str"},
        "timeout": {"type": "int", "default": 300},
        "interval": {"type": "float", "default": 2},
    }, required_one_of=[("command", "url")], mutually_exclusive=[("command", "url")], supports_check_mode=True)
    p = module.params
    argv = p["command"] if isinstance(p["command"], list) else shlex.split(p["command"] or "")
    deadline, attempts = time.monotonic() + p["timeout"], 0
    while True:
        attempts += 1
        ok, detail = try_command(module, [str(a) for a in argv], p["contains"]) if argv else \
            try_url(p["url"], p["status_code"], p["contains"])
        if ok or time.monotonic() + p["interval"] > deadline:
            break
        time.sleep(p["interval"])
    result = {"ok": ok, "attempts": attempts, "detail": detail,
              "kupgrade_fleet": {"step": "health", "ok": ok, "detail": detail}}
    if not ok:
        module.fail_json(msg=f"health gate failed after {attempts} tries: {detail}", **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
