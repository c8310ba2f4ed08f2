"""What every scenario shares: the result record and its checks."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Result:
    scenario: str
    checks: list[dict] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    echo: bool = False          # the demo shows what the admin would see

    def say(self, text: str) -> None:
        if self.echo:
            print(text, flush=True)

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        self.checks.append({"check": what, "ok": bool(ok), "detail": detail})
        return bool(ok)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c["ok"] for c in self.checks) and "error" not in self.data

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "passed": self.passed, **self.data, "checks": self.checks,
                "duration_s": round(time.time() - self.started, 1)}

    def write(self, results_dir: Path) -> Path:
        results_dir.mkdir(parents=True, exist_ok=True)
        path = results_dir / f"{self.scenario}.json"
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def kupgrade_config(kernel: str, pids=(), cgroups=()) -> str:
    lines = ["[workloads]"]
    if pids:
        lines.append(f"pids = [{', '.join(str(p) for p in pids)}]")
    if cgroups:
        lines.append("cgroups = [" + ", ".join(f'"{c}"' for c in cgroups) + "]")
    lines += ["", "[target]", f'kernel = "{kernel}"', ""]
    return "\n".join(lines)


def write_config(vm, text: str) -> None:
    vm.sh("mkdir", "-p", "/etc/kupgrade")
    vm.sh("tee", "/etc/kupgrade/kupgrade.toml", input=text)


def booted(vm, res: Result, timeout: float = 240) -> dict:
    """Wait for the guest agent's first 'ready'; note the kernel it booted."""
    ready = vm.event("ready", timeout)
    res.data["kernel_before"] = ready["kernel"]
    return ready


def last_record(vm) -> dict:
    """The upgrade record kupgrade wrote last, as JSON."""
    rid = vm.read("/var/lib/kupgrade/records/last").strip()
    return json.loads(vm.read(f"/var/lib/kupgrade/records/{rid}.json"))
