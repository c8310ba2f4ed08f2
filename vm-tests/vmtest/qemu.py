"""Boot the guest image in QEMU and talk to its agent.

Two serial ports, both unix sockets the host listens on: ttyS0 is the console (every line
timestamped on receipt and kept), ttyS1 carries the agent's JSON lines (requests, replies,
events such as heartbeat lines). A third socket carries QMP: QEMU's own events (a watchdog
firing, a guest reset) are kept, so when QEMU ends the host says why instead of guessing.
`panic=-1` + `-no-reboot`: a guest panic or reset ends QEMU, and the host raises LostVMError
with the QEMU events and the console tail instead of waiting out a timeout.

A scenario adds devices, disks and kernel arguments through one `Machine` (its MACHINE).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kupgrade.system.run import run

from .image import Image

log = logging.getLogger("vmtest.qemu")


INT3_CODE = re.compile(r"Code: .*<([0-9a-f]{2})>")


def emulator_race(console) -> str:
    """The one failure that is not the scenario's: a guest kernel's "Oops: int3" whose faulting
    byte is no longer an int3 when the oops prints it — TCG ran a stale translation while another
    vCPU finished patching kernel text (seen once: a kexec'ed 6.12, 2.4 s into its boot, in
    sched_clock_cpu). Returns the first oops line and the byte, or "" (any other oops, or none)."""
    lines = list(console)
    for i, text in enumerate(lines):
        if "Oops: int3" in text:
            code = next((m for t in lines[i:i + 12] if (m := INT3_CODE.search(t))), None)
            return f"{text.strip()} / faulting byte {code.group(1)}" if code and code.group(1) != "cc" else ""
    return ""


def _die_with_parent() -> None:
    """In QEMU's child before exec: SIGKILL when the harness dies (killed, it leaves no guest
    behind holding the forwarded ports)."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)       # PR_SET_PDEATHSIG, SIGKILL


class LostVMError(Exception):
    """The VM said nothing in time, or QEMU ended."""

    def __init__(self, message: str, console_tail: str) -> None:
        super().__init__(f"{message}\n--- console (last lines) ---\n{console_tail}")


def accel() -> str:
    """TCG unless KUPGRADE_VM_ACCEL=kvm: KVM dies here with 'KVM internal error' (measured).
    KUPGRADE_VM_TCG adds options to TCG's (e.g. ",tb-size=256": vm-tests/README.md)."""
    return os.environ.get("KUPGRADE_VM_ACCEL", "tcg")


# The CPU model matters under TCG: with -cpu max (ERMS/AVX2) memory copies and sha256 run ~3x
# slower than with qemu64 (measured in the guest: 128 MiB dd 2.5 s vs 0.76 s; sha256 of 64 MiB
# 3.5 s vs 1.3 s).
def cpu() -> str:
    return os.environ.get("KUPGRADE_VM_CPU", "qemu64")


SMP = 2     # guest CPUs


def nic_argv(nic: str, pcap: Path | None = None) -> list[str]:
    """"none", or "user:HOSTPORT-GUESTPORT[,HOSTPORT-GUESTPORT...]" (QEMU user networking, TCP
    ports forwarded). pcap: record the NIC's traffic there (KUPGRADE_VM_PCAP=1; evidence for
    network scenarios)."""
    if nic == "none":
        return ["-nic", "none"]
    fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in
                   (pair.split("-") for pair in nic.removeprefix("user:").split(",")))
    argv = ["-netdev", f"user,id=n0,{fwd}",
            "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"]
    if pcap is not None:
        argv += ["-object", f"filter-dump,id=dump0,netdev=n0,file={pcap}"]
    return argv


@dataclass(frozen=True)
class Machine:
    """What a scenario adds to the standard guest (module attribute MACHINE).

    args: extra QEMU flags, one flag and its value per pair ("-device", "i6300esb");
    append: extra kernel command-line words (kupgrade passes them on to the new kernel);
    disks: sizes of blank virtio disks ("512M"), created as qcow2 files in the scenario's
    artifacts dir and attached after the root disk, in order (vdb, vdc, ...);
    memory_mb: the guest's RAM (the benchmark's 1 GiB workload needs more than the default)."""
    args: tuple[str, ...] = ()
    append: str = ""
    disks: tuple[str, ...] = ()
    memory_mb: int = 2048


def qemu_argv(image: Image, overlay: Path, con: Path, ctl: Path, append: str,
              nic: str = "none", qmp: Path | None = None, machine: Machine = Machine(),
              disks: tuple[Path, ...] = ()) -> list[str]:
    extra_drives = [a for d in disks for a in ("-drive", f"file={d},if=virtio,format=qcow2,cache=unsafe")]
    qmp_args = ["-chardev", f"socket,id=qmp,path={qmp}", "-mon", "chardev=qmp,mode=control"] if qmp else []
    return [
        "qemu-system-x86_64",
        "-accel", accel() + (os.environ.get("KUPGRADE_VM_TCG", "") if accel() == "tcg" else ""),
        "-cpu", cpu(),
        "-m", str(machine.memory_mb),
        "-smp", str(SMP),
        "-display", "none",
        "-monitor", "none",
        "-no-reboot",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", " ".join(filter(None, (append, machine.append))),
        "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe",
        *extra_drives,
        *nic_argv(nic, con.parent / "nic.pcap" if os.environ.get("KUPGRADE_VM_PCAP") else None),
        "-chardev", f"socket,id=con,path={con}",
        "-serial", "chardev:con",
        "-chardev", f"socket,id=ctl,path={ctl}",
        "-serial", "chardev:ctl",
        *qmp_args,
        *machine.args,
    ]


# cryptomgr.notests: the kernel's crypto self-tests, milliseconds on hardware, take seconds under
# TCG (a kexec'ed 6.12 with a 330 MB snapshot: one test held a CPU for an RCU stall report).
# Measured in `basic` (kernel clock, kexec'ed 6.12): its initramfs' first script at 10.4 s
# without them, 16.7-25.8 s with them earlier the same day. kupgrade passes the command line
# on: both kernels of a switch, and the bench's floor and reboot, skip them alike.
# tsc=unstable: a cold boot under TCG finds the TSC unstable and keeps time with the HPET; a
# kexec'ed kernel trusted it ("Fast TSC calibration using PIT", or none at all) until its clocksource
# watchdog disagreed, and flipping to the HPET then re-patches kernel text on running CPUs: under TCG
# that oopsed on a stale int3 (`Oops: int3` in sched_clock_cpu, the new 6.12 panicked on the third of
# three plain kexecs; probe 2026-12-06), and a kexec'ed 6.12 unpacked an 83 MB initrd in 13.6 s
# against 6.2 s with it (one probe each). With it every kernel of a session keeps the HPET from
# its start: six plain kexecs 10.8-15.2 s, none failed; the suite 61 -> 38 minutes (CI runs).
# The command line is passed on, so both kernels of every switch, and the bench's floor and
# reboot, run alike. Under KVM the TSC is the host's: left as it is.
GUEST_APPEND = "root=/dev/vda rw console=ttyS0 loglevel=6 panic=-1 cryptomgr.notests"
TCG_APPEND = " tsc=unstable"
# PID 1 in the guest: our small Python init (fast boot), or systemd as on a real server (the
# vmtest agent is then a unit of its own, see guest/vmtest-agent.service).
INITS = {"vmtest": " init=/usr/local/lib/vmtest/init", "systemd": " systemd.show_status=1"}


@dataclass
class Line:
    t: float
    text: str


@dataclass
class Guest:
    image: Image
    workdir: Path
    init: str = "vmtest"            # or "systemd"
    nic: str = "none"               # or "user:HOSTPORT-GUESTPORT"
    machine: Machine = Machine()    # the scenario's extra devices, disks, kernel arguments
    console: list[Line] = field(default_factory=list)
    qmp_events: list[dict] = field(default_factory=list)   # QEMU's events, each with "_t" (host time)
    events: "queue.Queue[dict]" = field(default_factory=queue.Queue)
    proc: subprocess.Popen | None = None
    started_at: float = 0.0         # host clock when QEMU was started (the benchmark's reboot baseline)
    _replies: dict = field(default_factory=dict)
    _qmp_replies: dict = field(default_factory=dict)
    _qmp_ids: "itertools.count" = field(default_factory=lambda: itertools.count(1))
    _qmp_sock: socket.socket | None = None
    _next_id: int = 1
    _ctl: socket.socket | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    spent: dict = field(default_factory=dict)    # where the scenario's time went: {what: [calls, seconds]}

    def _spent(self, what: str, t0: float) -> None:
        entry = self.spent.setdefault(what, [0, 0.0])
        entry[0] += 1
        entry[1] += time.monotonic() - t0

    def time_spent(self, top: int = 8) -> dict:
        """The commands (by program, kupgrade's by subcommand) and waits that took the most host
        time, largest first: {what: {"calls", "s"}} (the suite's length, per scenario)."""
        ranked = sorted(self.spent.items(), key=lambda kv: -kv[1][1])[:top]
        return {k: {"calls": n, "s": round(s, 1)} for k, (n, s) in ranked}

    def start(self, fresh: bool = True) -> "Guest":
        """Boot; fresh=False boots the disks as the last run left them (after a power cut)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        overlay = self.workdir / "overlay.qcow2"
        disks = tuple(self.workdir / f"disk{i + 1}.qcow2" for i in range(len(self.machine.disks)))
        if fresh:
            overlay.unlink(missing_ok=True)
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.image.disk), "-F", "raw", str(overlay)])
            for path, size in zip(disks, self.machine.disks):
                path.unlink(missing_ok=True)
                run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size])
        con_path, ctl_path, qmp_path = self.workdir / "con.sock", self.workdir / "ctl.sock", self.workdir / "qmp.sock"
        listeners = []
        for p in (con_path, ctl_path, qmp_path):
            p.unlink(missing_ok=True)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(str(p))
            s.listen(1)
            listeners.append(s)
        append = GUEST_APPEND + (TCG_APPEND if accel() == "tcg" else "") + INITS[self.init]
        argv = qemu_argv(self.image, overlay, con_path, ctl_path, append, nic=self.nic,
                         qmp=qmp_path, machine=self.machine, disks=disks)
        (self.workdir / "qemu.argv").write_text("\n".join(argv) + "\n")
        self._qemu_log = open(self.workdir / "qemu.log", "wb")
        self.started_at = time.time()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._qemu_log, stderr=self._qemu_log,
                                     preexec_fn=_die_with_parent)
        for s in listeners:
            s.settimeout(30)
        con, _ = listeners[0].accept()
        self._ctl, _ = listeners[1].accept()
        qmp, _ = listeners[2].accept()
        for s in listeners:
            s.close()
        threading.Thread(target=self._read_console, args=(con,), daemon=True).start()
        threading.Thread(target=self._read_ctl, daemon=True).start()
        threading.Thread(target=self._read_qmp, args=(qmp,), daemon=True).start()
        return self

    # --- readers -------------------------------------------------------------------------
    def _read_console(self, sock: socket.socket) -> None:
        buf = b""
        with open(self.workdir / "console.log", "ab") as out:
            while data := sock.recv(65536):
                now = time.time()
                out.write(data)
                out.flush()
                buf += data
                *lines, buf = buf.split(b"\n")
                for l in lines:
                    self.console.append(Line(now, l.decode(errors="replace").rstrip("\r")))

    def qmp(self, command: str, timeout: float = 30, **arguments) -> dict:
        """A QMP command; its "return" (a QMP "error" raises RuntimeError)."""
        rid = f"vmtest-{next(self._qmp_ids)}"
        self._qmp_sock.sendall(json.dumps({"execute": command, "arguments": arguments, "id": rid}).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while rid not in self._qmp_replies:
            if time.monotonic() > deadline:
                raise RuntimeError(f"QMP {command}: no answer in {timeout} s")
            time.sleep(0.02)
        reply = self._qmp_replies.pop(rid)
        if "error" in reply:
            raise RuntimeError(f"QMP {command}: {reply['error']}")
        return reply.get("return", {})

    def _read_qmp(self, sock: socket.socket) -> None:
        """QMP: answer the greeting with qmp_capabilities, then keep every event (and the
        answers to qmp())."""
        self._qmp_sock = sock
        sock.sendall(b'{"execute": "qmp_capabilities"}\n')
        buf = b""
        with open(self.workdir / "qmp.log", "ab") as out:
            while data := sock.recv(65536):
                now = time.time()
                buf += data
                *lines, buf = buf.split(b"\n")
                for l in lines:
                    out.write(b"%.3f " % now + l.strip() + b"\n")
                    out.flush()
                    try:
                        msg = json.loads(l)
                    except ValueError:
                        continue
                    if "event" in msg:
                        msg["_t"] = now
                        self.qmp_events.append(msg)
                    elif isinstance(msg.get("id"), str):
                        self._qmp_replies[msg["id"]] = msg

    def events_of(self, name: str) -> list[dict]:
        """QEMU's events of this name so far (e.g. "WATCHDOG": a guest watchdog fired)."""
        return [e for e in self.qmp_events if e.get("event") == name]

    def qemu_events_summary(self) -> str:
        return ", ".join(e["event"] + "".join(f" {k}={v}" for k, v in e.get("data", {}).items())
                         for e in self.qmp_events) or "none"

    def _read_ctl(self) -> None:
        buf = b""
        while data := self._ctl.recv(65536):
            now = time.time()
            buf += data
            *lines, buf = buf.split(b"\n")
            for l in lines:
                l = l.strip()
                if not l.startswith(b"{"):
                    continue
                try:
                    msg = json.loads(l)
                except ValueError:
                    continue
                msg["_t"] = now
                if "id" in msg:
                    with self._cond:
                        self._replies[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    self.on_event(msg)      # as it arrives: heartbeats are recorded even while
                    self.events.put(msg)    # the scenario waits for something else

    # --- talking to the agent --------------------------------------------------------------
    def console_tail(self, n: int = 40) -> str:
        return "\n".join(l.text for l in self.console[-n:])

    def _alive(self) -> None:
        if self.proc.poll() is not None:
            time.sleep(0.2)     # let the QMP reader take QEMU's last events
            why = " (the guest's watchdog fired: QEMU reset it)" if self.events_of("WATCHDOG") else ""
            raise LostVMError(f"QEMU exited with {self.proc.returncode}{why}; QEMU events: "
                              f"{self.qemu_events_summary()}", self.console_tail())

    def send(self, op: str, **kw) -> int:
        rid = self._next_id
        self._next_id += 1
        self._ctl.sendall((json.dumps({"id": rid, "op": op, **kw}) + "\n").encode())
        return rid

    def reply(self, rid: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while rid not in self._replies:
                self._alive()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LostVMError(f"no reply to request {rid} within {timeout:.0f} s", self.console_tail())
                self._cond.wait(min(left, 0.5))
            msg = self._replies.pop(rid)
        if "error" in msg and op_failed(msg):
            raise RuntimeError(f"guest agent: {msg['error']}")
        return msg

    def call(self, op: str, timeout: float = 300, **kw) -> dict:
        return self.reply(self.send(op, **kw), timeout)

    def sh(self, *argv: str, timeout: float = 300, check: bool = True, input: str = "") -> dict:
        t0 = time.monotonic()
        try:
            r = self.call("run", timeout=timeout + 30, argv=list(argv), timeout_s=timeout, input=input)
        finally:
            self._spent(command_label(argv), t0)
        if check and r["rc"] != 0:
            raise RuntimeError(f"guest: {' '.join(argv)} exited {r['rc']}\n{r['stdout']}\n{r['stderr']}")
        return r

    def event(self, kind: str, timeout: float, where=lambda e: True) -> dict:
        """The next event of this kind (others are kept in `seen`)."""
        t0 = time.monotonic()
        try:
            return self._event(kind, timeout, where)
        finally:
            self._spent(f"waiting for '{kind}'", t0)

    def _event(self, kind: str, timeout: float, where) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            self._alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise LostVMError(f"no '{kind}' event within {timeout:.0f} s", self.console_tail())
            try:
                e = self.events.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if e.get("ev") == kind and where(e):
                return e

    def wait_switch(self, rid: int, timeout: float) -> dict:
        """After sending `kupgrade run`: the new kernel's 'ready' event, or the command's reply
        if it came back (it failed before the switch)."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        try:
            while True:
                with self._cond:
                    if rid in self._replies:
                        return self._replies.pop(rid)
                left = deadline - time.monotonic()
                try:
                    return self._event("ready", min(1.0, max(left, 0.01)), lambda e: True)
                except LostVMError:
                    if time.monotonic() >= deadline or self.proc.poll() is not None:
                        raise
        finally:
            self._spent("waiting for the switch", t0)    # once per switch, apart from the boots

    def on_event(self, e: dict) -> None:
        """Called by the reader thread for every event; scenarios replace it to collect heartbeats."""
        pass

    def read(self, path: str) -> str:
        r = self.call("read", path=path, timeout=120)
        if "error" in r:
            raise RuntimeError(f"guest: cannot read {path}: {r['error']}")
        return r["data"]

    def power_cut(self) -> None:
        """Pull the plug (QEMU killed: RAM gone, disks as written so far) and power on again."""
        self.stop()
        self.console.clear()
        self._replies.clear()
        self.events = queue.Queue()
        self.start(fresh=False)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._ctl:
            self._ctl.close()

    def __enter__(self) -> "Guest":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def command_label(argv) -> str:
    """What time_spent files a guest command under: its program, kupgrade's with the subcommand;
    through `env VAR=...`, the command it runs."""
    words = list(argv)
    if words[:1] == ["env"]:
        words = [w for w in words[1:] if "=" not in w and not w.startswith("-")] or ["env"]
    if not words:
        return "?"
    return " ".join(words[:2]) if words[0] == "kupgrade" else words[0]


def op_failed(msg: dict) -> bool:
    return set(msg) - {"id", "_t", "error"} == set()
