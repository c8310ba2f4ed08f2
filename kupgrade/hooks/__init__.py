"""Device hooks: the contract (points, declaration, request/reply, results) and the runner.

kexec hands the machine to a new kernel whose drivers start from scratch; a hook saves and
restores what userspace relied on for the devices it declares. Two ways to provide one, one
contract (docs/hooks.md): a Python object (entry point group `kupgrade.hooks`, or a module of
the built-in package `kupgrade_hooks`) or an executable in /etc/kupgrade/hooks.d called as
`HOOK POINT` with the JSON request on stdin and the JSON reply on stdout. Loading lives in
hookload.py, the initramfs side (early-restore) in early.py.

Failure policy (`run_point`): before the point of no return (preflight, quiesce, save) the
first failure stops the point and raises HookError, so the caller rolls back. After it
(early-restore, restore, verify) every hook runs and failures are recorded; if a hook marked
critical failed, HookError is raised once all have run. `resume` (rollback after quiesce/save)
never raises. This module imports neither typer, rich, psutil nor pyudev: the new kernel's
restore path uses it.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kupgrade.errors import CommandError, HookError
from kupgrade.hooks.devices import Device, check_match, matches_any
from kupgrade.output.record import Blocker, write_private
from kupgrade.switch import contract
from kupgrade.system.run import run

API = 1
POINTS = ("preflight", "quiesce", "save", "early-restore", "restore", "verify", "resume")
BEFORE_NO_RETURN = ("preflight", "quiesce", "save")
AFTER_NO_RETURN = ("early-restore", "restore", "verify")
NAME_RE = re.compile(r"[A-Za-z0-9_-]+")       # run-parts' rule
DEFAULT_TIMEOUT = 30.0
MAX_REPLY = 1 << 20                            # bytes of JSON a hook may reply
KILL_AFTER = 2                                 # s between TERM and KILL on timeout
HOOKS_SUBDIR = contract.HOOKS                  # SNAPSHOT/hooks/NAME/ belongs to hook NAME
SAVED = "saved.json"                           # SNAPSHOT/hooks/saved.json: the save results


@dataclass(frozen=True)
class HookSpec:
    """What a hook declares (`describe`): its name, devices, points, criticality, timeout."""
    name: str
    points: tuple[str, ...]
    match: tuple[dict, ...] = ()               # udev match dicts; () = machine-wide, always runs
    critical: bool = False
    timeout: float = DEFAULT_TIMEOUT
    description: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "points": list(self.points), "match": [dict(m) for m in self.match],
                "critical": self.critical, "timeout": self.timeout, "description": self.description}

    @classmethod
    def from_json(cls, d: dict) -> HookSpec:
        return cls(d["name"], tuple(d["points"]), tuple(d.get("match", ())), d.get("critical", False),
                   d.get("timeout", DEFAULT_TIMEOUT), d.get("description", ""))


class BadSpec(ValueError):
    """A declaration (`describe`) that does not follow the contract; the hook is skipped."""


def parse_spec(d: object, name: str) -> HookSpec:
    """Validate a `describe` reply. `name` is the file or module name, which the declaration may
    repeat but not contradict. Raises ValueError saying what is wrong."""
    if not isinstance(d, dict):
        raise BadSpec(f"describe must return a JSON object, got {type(d).__name__}")
    if d.get("name", name) != name:
        raise BadSpec(f"describe says name {d.get('name')!r} but the hook is named {name!r}")
    if not NAME_RE.fullmatch(name):
        raise BadSpec(f"name {name!r} may only contain A-Z a-z 0-9 _ -")
    points = d.get("points")
    if not isinstance(points, list) or not points or not all(p in POINTS for p in points):
        raise BadSpec(f"`points` must be a non-empty list of {', '.join(POINTS)}, got {points!r}")
    match = d.get("match", [])
    if not isinstance(match, list):
        raise BadSpec(f"`match` must be a list of match objects, got {match!r}")
    for m in match:
        if problem := check_match(m):
            raise BadSpec(problem)
    critical, timeout = d.get("critical", False), d.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(critical, bool):
        raise BadSpec(f"`critical` must be true or false, got {critical!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
        raise BadSpec(f"`timeout` must be a number of seconds in (0, 3600], got {timeout!r}")
    return HookSpec(name, tuple(p for p in POINTS if p in points), tuple(match), critical, float(timeout),
                    str(d.get("description", "")))


class Problem(RuntimeError):
    """What one saved item's check found wrong: `each_saved` reports it and goes on to the next."""


def each_saved(request: dict, key: str, check, reply_key: str | None = None) -> dict:
    """For hook authors, after the switch (restore, verify, resume): call `check(item)` on every
    item `save` kept as `state[key]`, all of them even when some fail, then either fail once
    naming every problem or reply `{reply_key or key: [what check returned, None left out]}`.
    A Problem, RuntimeError, CommandError or OSError fails that item only; the last two are
    prefixed with the item's "name" when it has one."""
    done, problems = [], []
    for item in request.get("state", {}).get(key, []):
        try:
            out = check(item)
        except RuntimeError as e:
            problems.append(str(e))
        except (CommandError, OSError) as e:
            problems.append(f"{item['name']}: {e}" if isinstance(item, dict) and "name" in item else str(e))
        else:
            if out is not None:
                done.append(out)
    if problems:
        raise RuntimeError("; ".join(problems))
    return {reply_key or key: done}


class HookFailed(Exception):
    """One call failed (exit status, timeout, exception, bad reply); becomes HookResult.error."""


@dataclass(frozen=True)
class Hook:
    """A loaded hook. kind: "builtin" | "entry-point" | "executable"; source: module or path."""
    spec: HookSpec
    kind: str
    source: str
    target: object = field(default=None, compare=False, repr=False)   # the Python object

    @property
    def name(self) -> str:
        return self.spec.name

    def call(self, point: str, request: dict) -> dict:
        if self.kind == "executable":
            return call_executable(Path(self.source), point, request, self.spec.timeout)
        return _call_python(self.target, point, request, self.spec.timeout)


def _reply(data: object, who: str) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HookFailed(f"{who} replied {type(data).__name__}, not a JSON object")
    return data


def check_size(size: int) -> None:
    if size > MAX_REPLY:
        raise HookFailed(f"reply larger than {MAX_REPLY >> 20} MiB")


def parse_reply(text: str, who: str) -> dict:
    """The JSON object a hook printed (nothing = {}); HookFailed saying what is wrong with it."""
    text = text.strip()
    try:
        return _reply(json.loads(text) if text else None, who)
    except json.JSONDecodeError as e:
        raise HookFailed(f"{who} printed invalid JSON ({e.msg}): {text[:200]!r}")
    except RecursionError:
        raise HookFailed(f"{who} printed JSON nested too deeply")


def _python_reply(data: object) -> dict:
    """A Python hook's reply as plain JSON data (what the record keeps), bounded like a printed one."""
    reply = _reply(data, "hook")
    try:
        text = json.dumps(reply)
        check_size(len(text))       # ASCII: characters are bytes
        return json.loads(text)
    except (TypeError, ValueError, RecursionError) as e:
        raise HookFailed(f"hook replied something that is not JSON: {type(e).__name__}: {e}")


def call_executable(path: Path, point: str, request: dict | None, timeout: float) -> dict:
    """`HOOK POINT` with the request on stdin; the reply is stdout's JSON (empty stdout = {}).

    Under coreutils `timeout`, which signals the hook's whole process group: a hook's stuck
    child would otherwise keep stdout open and the call would outlive its timeout."""
    stdin = json.dumps(request).encode() if request is not None else b""
    argv = [str(path), point]
    if shutil.which("timeout"):
        argv = ["timeout", "-k", str(KILL_AFTER), f"{timeout:g}", *argv]
    try:
        proc = run(argv, input=stdin, timeout=timeout + KILL_AFTER + 5, check=False, keep=MAX_REPLY)
    except CommandError as e:
        raise HookFailed(f"timed out after {timeout:g} s" if e.returncode is None and e.stderr_tail
                         else e.message)
    except OSError as e:        # not executable after all, a bad interpreter line...
        raise HookFailed(f"cannot run it: {e.strerror or e}")
    if proc.returncode in (124, 137) and argv[0] == "timeout":
        raise HookFailed(f"timed out after {timeout:g} s")
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise HookFailed(f"exited {proc.returncode}" + (f": {err[-1000:]}" if err else " (no stderr)"))
    check_size(len(proc.stdout))
    return parse_reply(proc.stdout.decode(errors="replace"), f"`{path.name} {point}`")


def _call_python(target: object, point: str, request: dict, timeout: float) -> dict:
    """Python hooks run in-process, in a daemon thread: on timeout the call is abandoned (the
    thread cannot be killed) and reported as failed."""
    fn = getattr(target, point.replace("-", "_"), None)
    if not callable(fn):
        raise HookFailed(f"declares `{point}` but has no callable `{point.replace('-', '_')}`")
    box: dict = {}

    def work() -> None:
        try:
            box["reply"] = fn(request)
        except Exception as e:  # noqa: BLE001 -- a hook's bug is its failure, not kupgrade's crash
            box["error"] = f"{type(e).__name__}: {e}"
        except BaseException as e:  # noqa: BLE001 -- SystemExit & co. would end only this thread, silently
            box["error"] = f"raised {e!r}"

    t = threading.Thread(target=work, name=f"hook-{point}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise HookFailed(f"timed out after {timeout:g} s (the Python call was abandoned)")
    if "reply" not in box:
        raise HookFailed(box.get("error", "ended without returning"))
    return _python_reply(box["reply"])


@dataclass(frozen=True)
class HookResult:
    hook: str
    point: str
    ok: bool
    seconds: float
    reply: dict = field(default_factory=dict)     # the hook's JSON reply (save: {"state": {...}})
    error: str = ""
    critical: bool = False

    @property
    def state(self) -> dict:
        return self.reply.get("state", {}) if self.point == "save" else {}

    def to_json(self) -> dict:
        return {"hook": self.hook, "point": self.point, "ok": self.ok, "seconds": round(self.seconds, 4),
                "reply": self.reply, "error": self.error, "critical": self.critical}

    @classmethod
    def from_json(cls, d: dict) -> HookResult:
        return cls(d["hook"], d["point"], d["ok"], d["seconds"], d.get("reply", {}), d.get("error", ""),
                   d.get("critical", False))


def check_reply(point: str, reply: dict) -> None:
    """The parts of a reply kupgrade itself reads must have the documented shape."""
    if point == "preflight":
        b = reply.get("blockers", [])
        if not isinstance(b, list) or not all(isinstance(x, dict) and isinstance(x.get("message"), str) for x in b):
            raise HookFailed('preflight reply: `blockers` must be a list of {"message": ..., "hint": ...}')
    if point == "save" and not isinstance(reply.get("state", {}), dict):
        raise HookFailed("save reply: `state` must be a JSON object")


def state_dir(snapshot_dir: Path | None, name: str) -> Path | None:
    return snapshot_dir / HOOKS_SUBDIR / name if snapshot_dir else None


def store_saved(snapshot_dir: Path, results: list[HookResult]) -> None:
    """The save results, carried in the snapshot (SNAPSHOT/hooks/saved.json)."""
    write_private(snapshot_dir / HOOKS_SUBDIR / SAVED, json.dumps([r.to_json() for r in results], indent=2) + "\n")


def load_saved(snapshot_dir: Path | None) -> dict[str, HookResult]:
    """The save results carried in the snapshot, by hook name ({} when there are none)."""
    if snapshot_dir is None:
        return {}
    path = snapshot_dir / HOOKS_SUBDIR / SAVED
    if not path.exists():
        return {}
    return {r.hook: r for r in (HookResult.from_json(d) for d in json.loads(path.read_text()))}


def request_for(hook: Hook, point: str, devices: list[Device], request_extra: dict,
                snapshot_dir: Path | None, saved: dict[str, HookResult]) -> dict:
    sd = state_dir(snapshot_dir, hook.name)
    req = {**request_extra, "api": API, "point": point, "hook": hook.name,
           "devices": [d.to_json() for d in devices], "state_dir": str(sd) if sd else None}
    if point not in BEFORE_NO_RETURN:
        req["state"] = saved[hook.name].state if hook.name in saved else {}
    return req


def selected(hooks: list[Hook], point: str, devices: list[Device], saved: dict[str, HookResult]):
    """(hook, its devices) in run order: name order (run-parts), reversed for `resume`. A hook
    runs at a point it declares if it matches a device, declares no match (machine-wide), or,
    after the save, if it saved state (its device may be gone or renamed: it should say so)."""
    out = []
    for h in sorted(hooks, key=lambda h: h.name, reverse=(point == "resume")):
        if point not in h.spec.points:
            continue
        mine = [d for d in devices if matches_any(h.spec.match, d)]
        if mine or not h.spec.match or (point not in BEFORE_NO_RETURN and h.name in saved):
            out.append((h, mine))
    return out


def call_one(hook: Hook, point: str, request: dict) -> HookResult:
    t0 = time.monotonic()
    try:
        reply = hook.call(point, request)
        check_reply(point, reply)
        return HookResult(hook.name, point, True, time.monotonic() - t0, reply, critical=hook.spec.critical)
    except HookFailed as e:
        return HookResult(hook.name, point, False, time.monotonic() - t0, error=str(e),
                          critical=hook.spec.critical)


def run_point(point: str, hooks: list[Hook], devices: list[Device], request_extra: dict,
              snapshot_dir: Path | None = None, saved: dict[str, HookResult] | None = None) -> list[HookResult]:
    """Run every selected hook at `point`; apply the failure policy (module docstring).

    snapshot_dir: the old kernel's snapshot dir (save: SNAPSHOT/hooks/NAME/ is created for each
    hook, its `state_dir`) or the new kernel's restore dir. saved: after the point of no return,
    the save results the snapshot carried (`load_saved`; the caller stores them, `store_saved`):
    each hook gets the state it saved, and a hook that saved runs even without devices now."""
    if point not in POINTS or point == "early-restore":
        raise ValueError(f"run_point: {point!r} (early-restore runs in the initramfs: see early.py)")
    saved = saved or {}
    results: list[HookResult] = []
    for hook, mine in selected(hooks, point, devices, saved):
        if point == "save" and snapshot_dir is not None:
            state_dir(snapshot_dir, hook.name).mkdir(parents=True, exist_ok=True, mode=0o700)
        r = call_one(hook, point, request_for(hook, point, mine, request_extra, snapshot_dir, saved))
        results.append(r)
        if not r.ok and point in BEFORE_NO_RETURN:
            raise HookError(f"hook {r.hook} failed at {point}: {r.error}",
                            f"nothing was switched; the upgrade is rolled back. Fix the hook ({hook.source}) "
                            "or its device, then try again (`kupgrade hooks list` shows the hooks)", results)
    raise_critical(point, results)
    return results


def raise_critical(point: str, results: list[HookResult]) -> None:
    """After the point of no return: raise once, for the critical hooks that failed."""
    if point not in AFTER_NO_RETURN:
        return
    bad = [r for r in results if not r.ok and r.critical]
    if bad:
        more = f" (+{len(bad) - 1} more critical)" if len(bad) > 1 else ""
        raise HookError(f"critical hook {bad[0].hook} failed at {point}: {bad[0].error}{more}",
                        "the other hooks ran; the snapshot is kept. Fix the device, then run "
                        "`kupgrade restore` again", results)


def blockers(results: list[HookResult]) -> list[Blocker]:
    """The blockers preflight hooks replied with, each naming its hook."""
    return [Blocker(f"hook {r.hook}: {b['message']}", b.get("hint", ""))
            for r in results if r.point == "preflight" for b in r.reply.get("blockers", [])]
