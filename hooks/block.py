"""block: no disk I/O in flight at the freeze; md arrays paused before the switch and back,
assembled, mounted and resyncing, before the workloads in the new kernel.

Disks (every block device of type disk): save — the workloads frozen, md frozen, the flush
stage's sync done, just before the snapshot is packed — waits until no request is in flight on
any of them (/sys/block/X/inflight all zero in one sample), at most DRAIN_S, else it fails and
the upgrade is rolled back. (Waiting at quiesce instead would race the write-back the flush
stage is about to do: a busy write-back keeps requests in flight for longer than any bound.)
quiesce only notes what is in flight when the workloads stopped.

md arrays: a resync, recovery or check keeps the members busy and moves its position on. At
quiesce the hook writes `frozen` to md/sync_action: md stops the sync thread and writes the
position it reached into the superblock (resync_start), which is where the new kernel resumes
("resuming resync of mdX from checkpoint"). What it records per array: UUID, level, members,
array_state, the action it froze and the checkpoint, the sync speed limits the admin set on the
array (sysfs `(local)`: lost in a new boot otherwise), and the filesystems mounted from it.

In the new kernel, before the workloads (whose open files may live on the array), restore
assembles the array unless the initramfs or udev did (found by UUID), waits for all its members
rather than starting it degraded, makes it read-write if it was, puts the speed limits and a
frozen action back, and mounts its filesystems where they were. verify checks it is there, not
more degraded, mounted, and not left frozen; its reply says where the resync resumed. resume
(rollback) un-freezes what quiesce froze. A reshape blocks the upgrade at preflight: resuming
one can need mdadm's backup file (mdadm --grow --continue), which no boot script runs for us.
"""

from __future__ import annotations

import time
from pathlib import Path

from kupgrade.hooks import Problem, each_saved
from kupgrade.system.run import run

SYS_BLOCK = Path("/sys/block")
MOUNTINFO = Path("/proc/self/mountinfo")
DRAIN_S = 10.0              # how long quiesce waits for the disks' in-flight requests to complete
WAIT_S = 10.0               # how long restore waits for an array's members to appear
REDUNDANT = ("raid1", "raid4", "raid5", "raid6", "raid10")
PERSONALITY = {"raid4": "raid456", "raid5": "raid456", "raid6": "raid456"}   # level -> module
RW_STATES = ("clean", "active", "active-idle", "write-pending")

_froze: dict[str, str] = {}     # array name -> the action quiesce froze (same process: resume)


def describe() -> dict:
    return {"name": "block", "points": ["preflight", "quiesce", "save", "restore", "verify", "resume"],
            "match": [{"subsystem": "block", "devtype": "disk"}], "critical": False, "timeout": 120,
            "description": "disks drained at the freeze; md arrays: resync paused, reassembled, remounted, resumed"}


# --- the commands (tests replace IO with a fake) ---

class Io:
    def mdadm(self, *args: str, check: bool = True) -> str:
        return run(["mdadm", *args], timeout=60, check=check).stdout.decode(errors="replace")

    def modprobe(self, module: str) -> None:
        run(["modprobe", "--", module], timeout=30, check=False)

    def mount(self, fstype: str, options: str, source: str, target: str) -> None:
        run(["mount", "-t", fstype, "-o", options, source, target], timeout=60)


IO = Io()


# --- what sysfs and /proc say ---

def _attr(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def inflight(disks: list[str]) -> dict[str, tuple[int, int]]:
    """Requests in flight per disk (reads, writes); disks that are gone are left out."""
    out = {}
    for name in disks:
        parts = _attr(SYS_BLOCK / name / "inflight").split()
        if len(parts) == 2:
            out[name] = (int(parts[0]), int(parts[1]))
    return out


def drain(disks: list[str], bound: float | None = None) -> dict:
    """Wait until no disk has a request in flight (one sample with all at zero), at most
    `bound` seconds (DRAIN_S)."""
    bound = DRAIN_S if bound is None else bound
    t0 = time.monotonic()
    first = busy = {k: v for k, v in inflight(disks).items() if v != (0, 0)}
    while busy:
        if time.monotonic() - t0 > bound:
            raise RuntimeError(f"I/O still in flight after {bound:g} s: " + ", ".join(
                f"{d} ({r} reads, {w} writes)" for d, (r, w) in sorted(busy.items())))
        time.sleep(0.01)
        busy = {k: v for k, v in inflight(disks).items() if v != (0, 0)}
    return {"drained_s": round(time.monotonic() - t0, 3), "in_flight_at_first_look": {k: list(v) for k, v in first.items()}}


def _position(text: str) -> int | None:
    """md's sector counts: "123 / 456" (sync_completed) or "123" (resync_start); "none" = None."""
    head = text.split("/")[0].strip()
    return int(head) if head.isdigit() else None


def _speed(text: str) -> int | None:
    """sync_speed_min/max: "500 (local)" -> 500; "1000 (system)" -> None (the default applies)."""
    parts = text.split()
    return int(parts[0]) if len(parts) == 2 and parts[1] == "(local)" and parts[0].isdigit() else None


def arrays() -> list[str]:
    return sorted(p.name for p in SYS_BLOCK.glob("md*") if (p / "md").is_dir())


def read_md(name: str) -> dict:
    md = SYS_BLOCK / name / "md"
    return {"name": name, "devnode": f"/dev/{name}", "dev": _attr(SYS_BLOCK / name / "dev"),
            "level": _attr(md / "level"), "raid_disks": int(_attr(md / "raid_disks") or 0),
            "degraded": int(_attr(md / "degraded") or 0), "array_state": _attr(md / "array_state"),
            "sync_action": _attr(md / "sync_action"), "sync_completed": _position(_attr(md / "sync_completed")),
            "resync_start": _position(_attr(md / "resync_start")),
            "speed_min": _speed(_attr(md / "sync_speed_min")), "speed_max": _speed(_attr(md / "sync_speed_max")),
            "members": sorted(p.name for p in (SYS_BLOCK / name / "slaves").iterdir())
            if (SYS_BLOCK / name / "slaves").is_dir() else []}


def export(text: str) -> dict:
    """`mdadm --detail/--examine --export`: KEY=VALUE lines."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def uuid_of(name: str) -> str:
    return export(IO.mdadm("--detail", "--export", f"/dev/{name}", check=False)).get("MD_UUID", "")


def _unescape(path: str) -> str:
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounts_of(dev: str) -> list[dict]:
    """The filesystems mounted from the block device MAJOR:MINOR, in mount order."""
    out = []
    for line in _attr(MOUNTINFO).splitlines():
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if len(f) >= 6 and len(r) >= 2 and f[2] == dev:
            out.append({"root": _unescape(f[3]), "mountpoint": _unescape(f[4]), "options": f[5], "fstype": r[0]})
    return out


def level_module(level: str) -> str:
    return PERSONALITY.get(level, level)


# --- the points ---

def _disks(request: dict) -> list[str]:
    return [d["sys_name"] for d in request.get("devices", []) if d.get("sys_name")]


def preflight(request: dict) -> dict:
    blockers, seen = [], []
    for name in arrays():
        a = read_md(name)
        seen.append({"name": name, "level": a["level"], "sync_action": a["sync_action"],
                     "mounts": [m["mountpoint"] for m in mounts_of(a["dev"])]})
        if a["sync_action"] == "reshape":
            blockers.append({"message": f"md array {name} is being reshaped",
                             "hint": "let the reshape finish (cat /proc/mdstat), then upgrade: resuming one can "
                                     "need mdadm --grow --continue with its backup file"})
        if not uuid_of(name):
            blockers.append({"message": f"cannot read md array {name}'s UUID with `mdadm --detail`: the new kernel "
                                        "could not find it again", "hint": "apt-get install mdadm"})
    return {"blockers": blockers, "arrays": seen}


def quiesce(request: dict) -> dict:
    frozen = []
    for name in arrays():
        a = read_md(name)
        if a["level"] not in REDUNDANT or a["sync_action"] in ("frozen", ""):
            continue
        _froze.setdefault(name, a["sync_action"])
        (SYS_BLOCK / name / "md" / "sync_action").write_text("frozen")   # returns once the sync thread stopped
        b = read_md(name)
        frozen.append({"name": name, "was": a["sync_action"], "at": a["sync_completed"],
                       "checkpoint": b["resync_start"], "action": b["sync_action"]})
    busy = {k: list(v) for k, v in inflight(_disks(request)).items() if v != (0, 0)}
    return {"frozen": frozen, "in_flight": busy}


def save(request: dict) -> dict:
    saved = []
    for name in arrays():
        a = read_md(name)
        saved.append({**{k: a[k] for k in ("name", "devnode", "level", "raid_disks", "degraded", "array_state",
                                             "members", "speed_min", "speed_max", "resync_start")},
                      "uuid": uuid_of(name), "action": _froze.get(name, a["sync_action"]), "at_save": a["sync_action"],
                      "mounts": [m for m in mounts_of(a["dev"]) if m["root"] == "/"],
                      "bind_mounts": [m for m in mounts_of(a["dev"]) if m["root"] != "/"]})
    return {"state": {"arrays": saved}, **drain(_disks(request))}


def find(uuid: str) -> str | None:
    """The array with this UUID in this kernel (its name may differ: md127)."""
    return next((n for n in arrays() if read_md(n)["array_state"] not in ("inactive", "clear") and uuid_of(n) == uuid),
                None)


def members(uuid: str) -> list[str]:
    """The devices holding a member superblock of this array."""
    for line in IO.mdadm("--examine", "--scan", "--verbose", check=False).replace("\n   ", " ").splitlines():
        words = dict(w.split("=", 1) for w in line.split() if "=" in w)
        if words.get("UUID") == uuid:
            return sorted(words.get("devices", "").split(",")) if words.get("devices") else []
    return []


def assemble(s: dict) -> str:
    """Assemble a saved array from all its members (never started degraded because one member
    is late); returns its name in this kernel."""
    IO.modprobe(level_module(s["level"]))
    want = s["raid_disks"] - s["degraded"]
    deadline = time.monotonic() + WAIT_S
    while len(found := members(s["uuid"])) < want and time.monotonic() < deadline:
        time.sleep(0.5)
    if len(found) < want:
        raise RuntimeError(f"{s['name']}: {len(found)} of its {want} members found ({', '.join(found) or 'none'})")
    IO.mdadm("--assemble", s["devnode"], *found)
    name = find(s["uuid"])
    if name is None:
        raise RuntimeError(f"{s['name']}: `mdadm --assemble {s['devnode']}` did not start it")
    return name


def restore(request: dict) -> dict:
    return each_saved(request, "arrays", _restore_array)


def _restore_array(s: dict) -> dict:
    name = find(s["uuid"])
    how = "already assembled" if name else "assembled"
    name = name or assemble(s)
    md = SYS_BLOCK / name / "md"
    for key, attr in (("speed_min", "sync_speed_min"), ("speed_max", "sync_speed_max")):
        if s[key] is not None:
            (md / attr).write_text(str(s[key]))
    a = read_md(name)
    if s["array_state"] in RW_STATES and a["array_state"] == "read-auto":
        IO.mdadm("--readwrite", a["devnode"])
    if s["action"] == "frozen":                 # the admin's, before the upgrade
        (md / "sync_action").write_text("frozen")
    elif a["sync_action"] == "frozen":
        (md / "sync_action").write_text("idle")
    mounted = []
    for m in s["mounts"]:
        if not any(x["mountpoint"] == m["mountpoint"] for x in mounts_of(a["dev"])):
            IO.mount(m["fstype"], m["options"], a["devnode"], m["mountpoint"])
            mounted.append(m["mountpoint"])
    a = read_md(name)
    return {"name": name, "was": s["name"], "how": how, "mounted": mounted,
            "sync_action": a["sync_action"], "sync_completed": a["sync_completed"],
            "checkpoint": s["resync_start"]}


def verify(request: dict) -> dict:
    return each_saved(request, "arrays", _verify_array)


def _verify_array(s: dict) -> dict:
    name = find(s["uuid"])
    if name is None:
        raise Problem(f"{s['name']} (UUID {s['uuid']}) is not assembled")
    a = read_md(name)
    have = {m["mountpoint"] for m in mounts_of(a["dev"])}
    missing = [m["mountpoint"] for m in s["mounts"] if m["mountpoint"] not in have]
    wrong = []
    if a["degraded"] > s["degraded"]:
        wrong.append(f"{name}: {a['degraded']} member(s) missing, {s['degraded']} before")
    if missing:
        wrong.append(f"{name}: not mounted on {', '.join(missing)}")
    if a["sync_action"] == "frozen" and s["action"] != "frozen":
        wrong.append(f"{name}: its {s['action']} is still frozen")
    if s["array_state"] in RW_STATES and a["array_state"] in ("readonly", "read-auto"):
        wrong.append(f"{name}: {a['array_state']}, was {s['array_state']}")
    if wrong:
        raise Problem("; ".join(wrong))
    return {"name": name, "sync_action": a["sync_action"], "sync_completed": a["sync_completed"],
            "checkpoint": s["resync_start"], "degraded": a["degraded"], "array_state": a["array_state"],
            "resumed_from_checkpoint": None if s["resync_start"] is None or a["sync_completed"] is None
            else a["sync_completed"] >= s["resync_start"]}


def resume(request: dict) -> dict:
    done = []
    for name, was in _froze.items():
        if (SYS_BLOCK / name / "md").is_dir() and was != "frozen":
            (SYS_BLOCK / name / "md" / "sync_action").write_text("idle")    # md restarts from its checkpoint
            done.append({"name": name, "sync_action": read_md(name)["sync_action"]})
    return {"unfrozen": done}
