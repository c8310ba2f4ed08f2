# GNU General Public License v2.0 or later (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""kupgrade.fleet.run: `kupgrade run --yes` on a host, across the kernel switch.

The switch ends the connection mid-task (kexec), so the run is started detached from it, as a
transient systemd unit (systemd-run), and the action polls the host by its boot id, as Ansible's
reboot action does: every boot, a kexec too, has a new one, so a changed boot id is the switch,
with no guessing from uptime. The unit ending in the same boot is a run that stopped before the
switch (blocked, failed, rolled back: the workloads run on as before). After a switch it waits
until the new kernel (or the way back to the old one, another switch) has finished the record.
`kupgrade report --json` decides: `restored` is success, anything else fails the task. Nothing
else is done to the host: a host whose upgrade failed is left as kupgrade left it, never
rebooted."""

from __future__ import annotations

import json
import shlex
import time

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.kupgrade.fleet.plugins.module_utils.records import (SUCCESS, error_line, final,
                                                                                parse_poll, poll_command,
                                                                                poll_state, run_message,
                                                                                run_summary)

display = Display()
KEEPALIVE = "-o ServerAliveInterval=5 -o ServerAliveCountMax=3"   # a dead connection noticed in ~15 s


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("args", "config", "executable", "prometheus", "timeout", "poll_interval", "unit"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        if self._connection.transport == "local":
            return {**result, "failed": True, "msg": "kupgrade.fleet.run over a local connection would replace the "
                    "controller's own kernel under Ansible; hint: run it against remote hosts"}
        if self._task.check_mode:
            return {**result, "changed": False, "skipped": True, "msg": "check mode: kupgrade run not started"}
        args = self._task.args
        self._kupgrade = [args.get("executable", "kupgrade")] + (["--config", args["config"]]
                                                                  if args.get("config") else [])
        self._unit = f"{args.get('unit', 'kupgrade-ansible')}-{time.strftime('%Y%m%d%H%M%S')}.service"
        self._interval = float(args.get("poll_interval", 2))
        deadline = time.monotonic() + int(args.get("timeout", 1800))
        saved = self._keepalive()
        try:
            return {**result, **self._upgrade(list(args.get("args", [])), args.get("prometheus"), deadline)}
        finally:
            self._restore_options(saved)

    # --- the upgrade ---------------------------------------------------------------------
    def _upgrade(self, argv: list, prometheus, deadline: float) -> dict:
        before = parse_poll(self._sh(poll_command(self._unit))["stdout"])
        prev_id = self._report()[1].get("id", "")
        start = ["systemd-run", f"--unit={self._unit}", "--description=kupgrade run (Ansible)",
                 "--property=RemainAfterExit=yes", "--quiet", "--", *self._kupgrade[:1], "run", "--yes",
                 *self._kupgrade[1:], *argv]
        r = self._sh(shlex.join(start))
        if r["rc"] != 0:
            return {"failed": True, "changed": False, "msg": f"could not start kupgrade run: "
                    f"{error_line(r['stderr'] + r['stdout'])}; hint: the host needs systemd (systemd-run) and "
                    "kupgrade in root's PATH (or the executable option)"}
        display.vv(f"kupgrade.fleet.run: started {self._unit} (boot {before['boot_id']})")
        state = self._wait_for_end_or_switch(before["boot_id"], deadline)
        error = ""
        if state == "switched":
            kernel, doc = self._wait_for_record(prev_id, deadline)
            if not final(doc, prev_id):
                error = (f"switched kernels, but the record was not final within the timeout (outcome "
                         f"{doc.get('outcome', 'unknown')}; hint: `kupgrade report` on the host)")
        elif state == "ended":          # before the switch: kupgrade put everything back
            error = self._unit_error()
            kernel, doc = self._report()
            doc = doc if doc.get("id") not in ("", prev_id) else {}
            self._sh(f"systemctl stop {self._unit}; systemctl reset-failed {self._unit}")
        else:                           # still running: left alone (stopping it is the admin's call)
            error = (f"kupgrade run neither switched kernels nor ended within the timeout; it goes on as "
                     f"{self._unit} (hint: `journalctl -u {self._unit}` on the host; `kupgrade report` once it ends)")
            kernel, doc = self._report()
            doc = doc if doc.get("id") not in ("", prev_id) else {}
        if prometheus and doc:
            self._report(prometheus)
        summary = run_summary(doc, state == "switched", kernel, error)
        return {"changed": state == "switched", "failed": summary["outcome"] != SUCCESS,
                "switched": state == "switched", "outcome": summary["outcome"], "kernel_before": before["kernel"],
                "kernel_after": kernel, "unit": self._unit, "record": doc, "msg": run_message(summary),
                "kupgrade_fleet": summary}

    def _wait_for_end_or_switch(self, boot_id: str, deadline: float) -> str:
        """Poll until the boot id changes (switched) or the unit ends in this boot (ended)."""
        failures = 0
        while time.monotonic() < deadline:
            r = self._try(poll_command(self._unit))
            if r is None:
                failures += 1
                time.sleep(min(2 ** failures, 10))
                continue
            failures = 0
            state = poll_state(boot_id, parse_poll(r["stdout"]))
            if state != "running":
                return state
            time.sleep(self._interval)
        return "timed out"

    def _wait_for_record(self, prev_id: str, deadline: float) -> tuple[str, dict]:
        """After the switch: until the run's record is final (the restore, or the way back, done)."""
        kernel, doc = "", {}
        while time.monotonic() < deadline:
            got = self._report(quiet=True)
            if got is not None:
                kernel, doc = got
                if final(doc, prev_id):
                    return kernel, doc
            time.sleep(self._interval)
        return kernel, doc if doc.get("id") != prev_id else {}

    def _unit_error(self) -> str:
        """kupgrade's one-line error, from the unit's journal (it ended in this boot)."""
        r = self._sh(f"journalctl -u {self._unit} -o cat --no-pager -n 60")
        return error_line(r["stdout"]) or "kupgrade run ended without switching"

    # --- talking to the host -------------------------------------------------------------
    def _sh(self, cmd: str) -> dict:
        r = self._low_level_execute_command(cmd, sudoable=True)
        if r["rc"] != 0:
            display.vvv(f"kupgrade.fleet.run: `{cmd}` exited {r['rc']}: {r['stderr'][-300:]}")
        return r

    def _try(self, cmd: str):
        """The command's result, or None when the host is not reachable (the connection reset)."""
        try:
            return self._low_level_execute_command(cmd, sudoable=True)
        except (AnsibleConnectionFailure, AnsibleError) as e:
            display.vvv(f"kupgrade.fleet.run: host not reachable yet ({str(e).splitlines()[0][:200]})")
            try:
                self._connection.reset()
            except AnsibleError:
                pass
            return None

    def _report(self, prometheus: str | None = None, quiet: bool = False):
        """(kernel, `kupgrade report --json`), {} for no record; None when unreachable (quiet)."""
        argv = [*self._kupgrade[:1], "report", *self._kupgrade[1:], "--json"]
        argv += ["--prometheus", prometheus] if prometheus else []
        cmd = f"uname -r; {shlex.join(argv)}"
        r = self._try(cmd) if quiet else self._sh(cmd)
        if r is None:
            return None
        kernel, _, out = r["stdout"].partition("\n")
        try:
            return kernel.strip(), json.loads(out) if r["rc"] == 0 else {}
        except ValueError:
            return kernel.strip(), {}

    def _keepalive(self) -> dict:
        """ssh: keepalives, so that a connection the kexec cut is given up in seconds, not when TCP
        gives up; a fresh master connection takes them. Returns the options to put back."""
        if self._connection.transport not in ("ssh", "ansible.builtin.ssh"):
            return {}
        try:
            saved = {"ssh_extra_args": self._connection.get_option("ssh_extra_args")}
            self._connection.set_option("ssh_extra_args", f"{saved['ssh_extra_args'] or ''} {KEEPALIVE}".strip())
            self._connection.reset()
            return saved
        except (AnsibleError, KeyError, AttributeError):
            return {}

    def _restore_options(self, saved: dict) -> None:
        for key, value in saved.items():
            try:
                self._connection.set_option(key, value)
            except (AnsibleError, KeyError, AttributeError):
                pass
