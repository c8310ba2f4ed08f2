"""Host-side handle on the guest test workload (vm-tests/guest/workload.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .qemu import Guest

GUEST_WORKLOAD = "/usr/local/lib/vmtest/workload.py"
HEARTBEAT = "/var/lib/workload/heartbeat.log"
FIRST_PID = 30000   # start above what a fresh boot uses, so the PIDs are free after kexec


@dataclass
class Heartbeat:
    t: float            # host receipt time
    counter: int
    pid: int
    ppid: int
    offset: int


@dataclass
class Workload:
    vm: Guest
    pid: int = 0
    beats: list[Heartbeat] = field(default_factory=list)
    offset: int = 0
    env: dict = field(default_factory=dict)     # KUPGRADE_WL_DIR: a second instance; _MIB: another size

    @property
    def followed(self) -> bool:
        """Only the instance in the default directory has its heartbeats followed (one relay per guest)."""
        return "KUPGRADE_WL_DIR" not in self.env

    def start(self, cgroup: str = "", last_pid: int = FIRST_PID) -> int:
        """Start it; only the followed instance's heartbeats are relayed."""
        if self.followed:
            self.vm.on_event = self._on_event
        self.pid = self.vm.call("spawn", argv=[GUEST_WORKLOAD], log="/var/lib/workload.log",
                                cgroup=cgroup, last_pid=last_pid, env=self.env)["pid"]
        if self.followed:
            self.follow()
        return self.pid

    def attach(self, beats: int = 5, timeout: float = 120) -> dict:
        """Follow an instance started otherwise (by a unit: `pid` given) until `beats` heartbeats
        arrived; returns its state."""
        self.vm.on_event = self._on_event
        self.follow()
        self.wait_beats(beats, timeout=timeout)
        return self.state()

    def follow(self) -> None:
        """(Re)start relaying heartbeat lines from where the last one ended."""
        self.vm.call("tail", path=HEARTBEAT, offset=self.offset, timeout=60)

    def _on_event(self, e: dict) -> None:
        if e.get("ev") == "line" and e.get("path") == HEARTBEAT:
            parts = e["line"].split()
            if len(parts) == 4 and parts[0] == "hb":
                self.beats.append(Heartbeat(e["_t"], int(parts[1]), int(parts[2]), int(parts[3]), e["offset"]))
                self.offset = e["offset"]

    def wait_beats(self, n: int, timeout: float = 60, after: int = 0) -> Heartbeat:
        """Wait until n heartbeats with counter > after have arrived; return the last."""
        def enough(_e=None) -> bool:
            return sum(1 for b in self.beats if b.counter > after) >= n
        while not enough():
            self.vm.event("line", timeout, where=lambda e: enough())
        return self.beats[-1]

    def state(self) -> dict:
        r = self.vm.sh("env", *(f"{k}={v}" for k, v in self.env.items()), "python3", GUEST_WORKLOAD,
                       "--query", str(self.pid), timeout=120)
        return json.loads(r["stdout"])

    def consecutive(self) -> bool:
        """Every heartbeat exactly once, in order, no restart."""
        counters = [b.counter for b in self.beats]
        return bool(counters) and counters == list(range(counters[0], counters[0] + len(counters)))

    def span(self) -> str:
        return f"{len(self.beats)} beats, {self.beats[0].counter}..{self.beats[-1].counter}" if self.beats else "no beats"

    def largest_gap(self) -> tuple[float, Heartbeat, Heartbeat]:
        return self.largest_gap_after(-1)

    def largest_gap_after(self, counter: int) -> tuple[float, Heartbeat, Heartbeat]:
        """The largest gap between heartbeats numbered above `counter`."""
        beats = [b for b in self.beats if b.counter > counter]
        pairs = list(zip(beats, beats[1:]))
        a, b = max(pairs, key=lambda p: p[1].t - p[0].t)
        return b.t - a.t, a, b
