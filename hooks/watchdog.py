"""watchdog: an armed hardware watchdog neither resets the machine during the switch nor is
left disarmed after it.

Who pets it: a daemon (systemd's RuntimeWatchdogSec, watchdog(8), an HA agent) holding
/dev/watchdogN open. That daemon is not a workload: criu cannot checkpoint an open watchdog
(3.17 dumps character devices only for ttys, /dev/null and its kin, tun and autofs), and it has nothing worth
carrying. It keeps petting in the old kernel until `kexec -e`; in the new boot its service
starts again and opens the device, as in any boot. The hook covers the gap in between:

- quiesce: the watchdog's timeout is raised to a *bridge* that covers the expected pause
  (3 x the downtime estimate + 60 s, at least 300 s, at most the hardware's max_timeout), so a
  driver that keeps the hardware counting across kexec does not reset a healthy switch, while a
  hung switch is still reset. The fd is borrowed from the daemon (pidfd_getfd, Linux >= 5.6):
  the watchdog core allows one opener, and only an opener can ioctl.
- restore (new kernel, before the workloads): the new driver starts it disarmed; the hook loads
  the driver's module, opens the device, sets the bridge, pings and closes it *without* the
  magic character, so it stays armed ("watchdog did not stop!" in the kernel log is that) and
  the daemon can open it. The daemon sets its own timeout when it starts; if it never comes, the
  watchdog resets the machine when the bridge runs out: what a watchdog is for.
  In a rehearsal (no switch) the daemon still holds it with the bridge: restore puts its
  timeout back.
- verify: armed again; the timeout is the daemon's (if it took over already) or the bridge.
- resume (rollback): the original timeout back on the daemon's open file.

Only watchdogs userspace armed (sysfs state "active") are touched: opening a stopped one would
start it. Devices are matched across kernels by their parent device (the PCI function), else
by identity: names (watchdog0) follow probe order.
"""

from __future__ import annotations

import fcntl
import math
import os
import struct
import time
from contextlib import contextmanager
from pathlib import Path

from kupgrade.hooks import Problem, each_saved
from kupgrade.system.procfs import getfd
from kupgrade.system.run import run

SYS_CLASS = Path("/sys/class/watchdog")
SYS_MODULE = Path("/sys/module")
PROC = Path("/proc")
BRIDGE_MIN_S = 300          # never bridge less: the first estimate on a machine is a guess (measured
                            # under QEMU TCG: 78 s from the last ping to the re-arm; estimate 8.9 s)
BRIDGE_FACTOR = 3
BRIDGE_MARGIN_S = 60
WAIT_S = 10.0               # restore: how long to wait for the device after loading its driver
WDIOC_KEEPALIVE = 0x80045705
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707

_original: dict[str, int] = {}      # sys_path -> timeout before quiesce raised it (same process: resume)


def describe() -> dict:
    return {"name": "watchdog", "points": ["preflight", "quiesce", "save", "restore", "verify", "resume"],
            "match": [{"subsystem": "watchdog"}], "critical": False, "timeout": 60,
            "description": "an armed watchdog: timeout raised to bridge the switch, re-armed in the new kernel"}


# --- the system calls (tests replace IO with a fake) ---

class Io:
    def borrow(self, pid: int, fd: int) -> int:
        """A duplicate of another process's fd: the same open file, so ioctls are allowed."""
        return getfd(pid, fd)

    def open(self, node: str) -> int:
        return os.open(node, os.O_WRONLY | os.O_CLOEXEC)

    def close(self, fd: int) -> None:
        os.close(fd)

    def _int(self, fd: int, request: int, value: int = 0) -> int:
        return struct.unpack("i", fcntl.ioctl(fd, request, struct.pack("i", value)))[0]

    def get_timeout(self, fd: int) -> int:
        return self._int(fd, WDIOC_GETTIMEOUT)

    def set_timeout(self, fd: int, seconds: int) -> int:
        """The timeout the driver actually set (it may round)."""
        return self._int(fd, WDIOC_SETTIMEOUT, seconds)

    def keepalive(self, fd: int) -> None:
        self._int(fd, WDIOC_KEEPALIVE)

    def load_driver(self, module: str) -> None:
        """modprobe; the driver's probe registers the device (sysfs, devtmpfs) before it returns."""
        run(["modprobe", "--", module], timeout=30)


IO = Io()


# --- what sysfs and /proc say ---

def _attr(d: Path, name: str) -> str:
    try:
        return (d / name).read_text().strip()
    except OSError:
        return ""


def _int_or_none(text: str) -> int | None:
    return int(text) if text.lstrip("-").isdigit() else None


def driver_modules(parent: str) -> list[str]:
    """The modules to load for this watchdog in a new kernel: its parent device's driver's, if
    the driver set a parent (many, i6300esb among them, do not: their watchdog is under
    /sys/devices/virtual), else every loaded module using the watchdog core (its holders)."""
    link = Path(parent, "driver", "module") if parent else None
    if link is not None and link.is_symlink():
        return [os.path.basename(os.path.realpath(link))]
    holders_dir = SYS_MODULE / "watchdog" / "holders"
    return sorted(p.name for p in holders_dir.iterdir()) if holders_dir.is_dir() else []


def read(sys_path: str | Path) -> dict:
    """One watchdog as sysfs shows it (CONFIG_WATCHDOG_SYSFS)."""
    d = Path(sys_path)
    name = d.name
    parent = os.path.realpath(d / "device") if (d / "device").exists() else ""
    return {"name": name, "sys_path": str(d.resolve()) if d.exists() else str(d), "parent": parent,
            "modules": driver_modules(parent), "identity": _attr(d, "identity"), "state": _attr(d, "state"),
            "timeout": _int_or_none(_attr(d, "timeout")), "max_timeout": _int_or_none(_attr(d, "max_timeout")),
            "nowayout": _attr(d, "nowayout") == "1",
            "nodes": [f"/dev/{name}"] + (["/dev/watchdog"] if name == "watchdog0" else [])}


def present() -> list[dict]:
    return [read(p) for p in sorted(SYS_CLASS.glob("watchdog*"))] if SYS_CLASS.is_dir() else []


def holders(nodes: list[str]) -> list[dict]:
    """The processes holding one of the nodes open: {"pid", "fd", "comm", "unit"}. The watchdog
    core allows one open file, which a fork may share: any of them reaches it."""
    found = []
    me = os.getpid()
    for pid_dir in sorted(PROC.glob("[0-9]*"), key=lambda p: int(p.name)):
        if int(pid_dir.name) == me:
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target in nodes:
                found.append({"pid": int(pid_dir.name), "fd": int(fd.name), "comm": _attr(pid_dir, "comm"),
                              "unit": _unit(pid_dir)})
                break
    return found


def _unit(pid_dir: Path) -> str:
    """The systemd unit a process runs in ("" if none): its cgroup v2 path's last part."""
    if pid_dir.name == "1":
        return "PID 1"
    for line in _attr(pid_dir, "cgroup").splitlines():
        if line.startswith("0::"):
            last = line[3:].rstrip("/").rsplit("/", 1)[-1]
            return last if last.endswith((".service", ".scope")) else ""
    return ""


def armed(w: dict) -> bool:
    return w["state"] == "active"


def bridge(timeout: int, estimate: float | None, max_timeout: int | None) -> int:
    """The timeout that covers the switch: 3 x the estimated downtime + 60 s, at least 300 s,
    capped at the hardware's maximum; never lower than the one already set."""
    want = max(BRIDGE_MIN_S, math.ceil(BRIDGE_FACTOR * (estimate or 0)) + BRIDGE_MARGIN_S)
    if max_timeout:
        want = min(want, max_timeout)
    return max(want, timeout)


@contextmanager
def handle(w: dict):
    """An fd to ioctl on: borrowed from the process that holds the watchdog open, else opened
    (which starts a stopped watchdog: callers open only armed ones or mean to arm). Closing
    ours never disarms it: only a close after writing 'V' does."""
    held = holders(w["nodes"])
    fd = IO.borrow(held[0]["pid"], held[0]["fd"]) if held else IO.open(w["nodes"][0])
    try:
        yield fd, (held[0] if held else None)
    finally:
        IO.close(fd)


def _label(w: dict) -> str:
    return f"{w['name']} ({w['identity'] or 'unknown identity'})"


def _holder_text(h: dict | None) -> str:
    if not h:
        return "nobody"
    return f"PID {h['pid']} ({h['comm']}{', ' + h['unit'] if h.get('unit') else ''})"


# --- the points ---

def _mine(request: dict) -> list[dict]:
    return [read(d["sys_path"]) for d in request.get("devices", [])]


def preflight(request: dict) -> dict:
    blockers, seen = [], []
    workload_pids = set(request.get("workload_pids", []))
    for w in _mine(request):
        if not armed(w):
            seen.append({"name": w["name"], "armed": False})
            continue
        held = holders(w["nodes"])
        if not held:
            blockers.append({"message": f"watchdog {_label(w)} is armed but no process holds it open: it resets "
                                        f"the machine within {w['timeout']} s",
                             "hint": "start its daemon again (or stop the watchdog with its daemon's clean stop) "
                                     "before upgrading"})
            continue
        inside = [h for h in held if h["pid"] in workload_pids]
        if inside:
            blockers.append({"message": f"watchdog {_label(w)} is held open by {_holder_text(inside[0])}, which is "
                                        "selected as a workload: criu cannot checkpoint an open watchdog",
                             "hint": "leave the watchdog daemon out of the workloads: it pets until the switch, "
                                     "the watchdog hook bridges the switch, and its service starts again in the "
                                     "new boot"})
            continue
        try:
            with handle(w) as (fd, _):
                timeout = IO.get_timeout(fd)
        except OSError as e:
            blockers.append({"message": f"watchdog {_label(w)}: cannot reach the open watchdog of "
                                        f"{_holder_text(held[0])}: {e}",
                             "hint": "kupgrade borrows the daemon's file with pidfd_getfd (Linux >= 5.6, root, "
                                     "ptrace allowed: kernel.yama.ptrace_scope < 3)"})
            continue
        seen.append({"name": w["name"], "armed": True, "timeout": timeout, "holder": _holder_text(held[0]),
                     "bridge": bridge(timeout, request.get("downtime_estimate_s"), w["max_timeout"])})
    return {"blockers": blockers, "watchdogs": seen}


def quiesce(request: dict) -> dict:
    done = []
    for w in _mine(request):
        if not armed(w):
            continue
        with handle(w) as (fd, holder):
            timeout = IO.get_timeout(fd)
            _original.setdefault(w["sys_path"], timeout)
            want = bridge(timeout, request.get("downtime_estimate_s"), w["max_timeout"])
            got = IO.set_timeout(fd, want) if want != timeout else timeout
            IO.keepalive(fd)
        done.append({"name": w["name"], "timeout": _original[w["sys_path"]], "bridge": got,
                     "holder": _holder_text(holder)})
    return {"raised": done}


def save(request: dict) -> dict:
    saved = []
    for w in _mine(request):
        if not armed(w):
            continue
        held = holders(w["nodes"])
        saved.append({"name": w["name"], "sys_path": w["sys_path"], "parent": w["parent"], "modules": w["modules"],
                      "identity": w["identity"], "timeout": _original.get(w["sys_path"], w["timeout"]),
                      "bridge": w["timeout"], "holder": {k: held[0][k] for k in ("comm", "unit")} if held else {}})
    return {"state": {"watchdogs": saved}}


def find(saved: dict, current: list[dict]) -> dict | None:
    """The saved watchdog in this kernel: same parent device, else the only one with its identity."""
    if saved["parent"]:
        same = [c for c in current if c["parent"] == saved["parent"]]
        if len(same) == 1:
            return same[0]
    same = [c for c in current if c["identity"] == saved["identity"]]
    return same[0] if len(same) == 1 else None


def _current(saved: dict) -> dict | None:
    """The saved watchdog in this kernel, its driver loaded if it was not (a MODULES=list initrd
    and an init without udev load nothing; with udev it may or may not be there yet)."""
    w = find(saved, present())
    if w is None and saved["modules"]:
        for module in saved["modules"]:
            IO.load_driver(module)
        deadline = time.monotonic() + WAIT_S
        while (w := find(saved, present())) is None and time.monotonic() < deadline:
            time.sleep(0.2)
    return w


def restore(request: dict) -> dict:
    return each_saved(request, "watchdogs", _rearm, reply_key="rearmed")


def _rearm(s: dict) -> dict:
    w = _current(s)
    if w is None:
        raise Problem(f"{s['name']} ({s['identity']}) is not there" +
                      (f" after loading {', '.join(s['modules'])}" if s["modules"] else
                       " (no driver module known: load it before kupgrade-restore runs)"))
    held = holders(w["nodes"])
    if armed(w) and held:     # its daemon got there first (systemd's own watchdog opens early)
        timeout = w["timeout"]
        if timeout == s["bridge"] != s["timeout"]:  # our bridge, still on: a rehearsal's same daemon
            with handle(w) as (fd, _):
                timeout = IO.set_timeout(fd, s["timeout"])
                IO.keepalive(fd)
        return {"name": w["name"], "was": s["name"], "armed_by": _holder_text(held[0]), "timeout": timeout}
    with handle(w) as (fd, _):      # opening it starts it
        got = IO.set_timeout(fd, s["bridge"])
        IO.keepalive(fd)
    return {"name": w["name"], "was": s["name"], "armed_with": got,
            "until": f"{s['holder'].get('unit') or s['holder'].get('comm') or 'its daemon'} opens it"}


def verify(request: dict) -> dict:
    return each_saved(request, "watchdogs", _verify_armed)


def _verify_armed(s: dict) -> dict:
    w = find(s, present())
    if w is None:
        raise Problem(f"{s['name']} ({s['identity']}) is not there")
    if not armed(w):
        raise Problem(f"{_label(w)} is not armed (state {w['state'] or 'unknown'})")
    held = holders(w["nodes"])
    return {"name": w["name"], "armed": True, "timeout": w["timeout"], "saved_timeout": s["timeout"],
            "held_by": _holder_text(held[0] if held else None)}


def resume(request: dict) -> dict:
    done = []
    for w in present():
        if w["sys_path"] not in _original or not armed(w):
            continue
        with handle(w) as (fd, _):
            got = IO.set_timeout(fd, _original[w["sys_path"]])
            IO.keepalive(fd)
        done.append({"name": w["name"], "timeout": got})
    return {"restored": done}
