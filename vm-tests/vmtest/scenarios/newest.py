"""newest: the second jump, 6.12 -> the newest Debian kernel that boots in the guest
(linux-image-7.3.4+deb13-amd64, trixie-backports), with the criu that kernel needs: bookworm's
criu 3.17 cannot start on it, criu 4.1.1 (built for bookworm, /opt/criu-4.1.1: vmtest/newest.py)
runs on both. The guest boots 6.12 (the first jump's target) with systemd; the heartbeat workload
(cgroup /workload) and tcpserver.service, talking with the host every 50 ms, are carried.

1. With bookworm's criu (paths.criu unset) `kupgrade check` exits 3 and names the blocker: that
   criu cannot run on 7.3.4 (the dump would work here, the restore could not even start).
2. paths.criu = /opt/criu-4.1.1/sbin/criu: `kupgrade check` finds no blocker and says which
   criu runs on both kernels.
3. A failure after the snapshot (KUPGRADE_FAULT=kexec-load): the rollback finds criu 4's lock
   table, named after the dump's run id (criu 3 named it after the tree's root PID), deletes it
   and takes the socket out of repair mode; the conversation goes on.
4. `kupgrade run` to 7.3.4: the heartbeat workload with its PIDs and memory, the same TCP
   connection and server PID, addresses and routes back; the record says criu 4.1.1 dumped the
   snapshot and criu 4.1.1 restored it.
Downtime: the largest gap in the server's lines as the host received them (as in tcp)."""

from __future__ import annotations

import json
import re

from ..newest import CRIU_IN_GUEST, CRIU_VERSION
from ..scenario import Result, booted, kupgrade_config, stage_of, workload_running, write_config
from . import tcp

NAME = "newest"
DESCRIPTION = (f"the second jump, 6.12 -> the newest Debian kernel (7.3.4) with criu {CRIU_VERSION}: check blocks "
               "bookworm's criu; a TCP conversation survives a failed kexec load and the switch")
INIT = "systemd"
NIC = tcp.NIC
SECOND_JUMP = True      # boots the image's KERNEL_TO; kernel_to is the newest


def _check(vm, name: str) -> tuple[int, dict]:
    """`kupgrade check --json`: its exit code and preflight's details (kept as NAME.json)."""
    r = vm.sh("kupgrade", "check", "--json", check=False, timeout=300)
    (vm.workdir / f"{name}.json").write_text(r["stdout"] + r["stderr"])
    try:
        return r["rc"], stage_of(json.loads(r["stdout"]), "preflight").get("details", {})
    except ValueError:
        return r["rc"], {"unreadable": (r["stdout"] + r["stderr"])[-1500:]}


def criu_checked(vm, res: Result, config: str, kernel: str) -> None:
    """Bookworm's criu is a blocker for this target; criu 4.1.1 is not (and check says which runs)."""
    write_config(vm, config)
    rc, details = _check(vm, "check-criu3")
    said = [b["message"] for b in details.get("blockers", [])]
    res.check(rc == 3 and any(m.startswith(f"criu 3.17.1 cannot run on {kernel}") for m in said),
              f"check with bookworm's criu: exit 3, a blocker says it cannot run on {kernel}", json.dumps(said)[-1500:])
    write_config(vm, config + f'\n[paths]\ncriu = "{CRIU_IN_GUEST}"\n')
    rc, details = _check(vm, "check-criu4")
    res.check(rc == 0 and details.get("criu") == {"program": CRIU_IN_GUEST, "version": CRIU_VERSION},
              f"check with criu {CRIU_VERSION} (paths.criu): no blocker, it names the criu that runs",
              json.dumps({"rc": rc, "criu": details.get("criu"), "blockers": details.get("blockers")})[-1500:])


def criu_recorded(vm, res: Result, rec: dict) -> None:
    """The restore's record: which criu dumped, which restored."""
    used = stage_of(rec, "restore").get("details", {}).get("criu", {})
    res.data["criu"] = used
    res.check(used.get("dumped_by", {}).get("version") == CRIU_VERSION
              and used.get("restored_by", {}).get("version") == CRIU_VERSION
              and used["restored_by"].get("program") == CRIU_IN_GUEST,
              f"the record: criu {CRIU_VERSION} ({CRIU_IN_GUEST}) dumped and restored", json.dumps(used))


def run(vm, image, res: Result) -> None:
    booted(vm, res)
    res.check(res.data["kernel_before"] == image.kernel_from, f"booted {image.kernel_from}", res.data["kernel_before"])
    before, net = tcp.start_server(vm, res)
    wl, wl_before = workload_running(vm, cgroup="/workload")
    criu_checked(vm, res, kupgrade_config(image.kernel_to, cgroups=["/workload"], units=[tcp.UNIT]), image.kernel_to)
    peer = tcp.Peer()
    try:
        peer.lines(20)
        first = peer.stat()
        tcp.failed_attempt(vm, res, peer, first)
        summary = res.data["rollback"].get("summary", "")
        res.check(re.search(r"criu's lock \(table inet CRIU-[0-9a-f-]{21}\) deleted", summary) is not None,
                  "rollback: criu 4's lock table, named after the dump's run id, found and deleted", summary[-800:])

        if (done := tcp.switched(vm, image, res, peer, first, (wl, wl_before), (before, net))) is None:
            return
        rec, t_switch, last_before = done
        criu_recorded(vm, res, rec)
        tcp.downtime(vm, res, image.kernel_to, wl, last_before, peer, t_switch)
    finally:
        peer.close()
