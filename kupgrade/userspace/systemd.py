"""systemd services as workloads.

Old kernel: a unit resolves to its main process (the tree criu dumps) and its cgroup (what the
freezer freezes). New kernel: `kupgrade-restore --generator` runs as a systemd generator, the
earliest point of the boot, and for each unit in the snapshot writes a drop-in into the
generator.early directory (this boot only, it is in /run) that turns the unit's start into the
restore of its snapshot:

  Type=forking + PIDFile: `kupgrade-restore --unit UNIT` (the unit's only ExecStart) restores
  the tree with criu, which writes the restored main PID (the old one) into the PID file and
  exits; systemd adopts that PID as the unit's main process. The restored tasks are in the
  unit's own cgroup (criu puts them back into the cgroup they were dumped from, which is the
  unit's), so systemd tracks them as the unit's, `systemctl stop` stops them, and nothing kills
  them when a helper ends. ExecStartPre/Post are cleared: the process was set up already.
  The restore runs with full privileges ("+"): none of the unit's sandboxing applies to criu
  (User=, seccomp, namespaces); the restored process gets its own back from the images (its
  seccomp filters, its UTS namespace; sandbox.py says what is not carried). Measured with criu
  3.17 inside the sandbox: RestrictNamespaces "Can't fork for PID: Function not implemented",
  MemoryDenyWriteExecute "Can't map restorer code: Operation not permitted",
  SystemCallFilter=@system-service: criu killed by SIGSYS.

With a way back, each restored tree stays stopped until all are back (commit.py): the generator
also writes kupgrade-commit.service, ordered after every unit of the snapshot, which continues
them together or goes back to the old kernel.

Why a generator: it runs before any unit is loaded, so the unit is never started fresh, and its
ordering (After=network-online.target, mounts, ...) still applies to the restore.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from kupgrade.errors import CommandError
from kupgrade.output.record import Blocker
from kupgrade.switch import contract
from kupgrade.system import sched
from kupgrade.system.run import run
from kupgrade.userspace import sandbox

PROPS = ("MainPID", "ControlGroup", "ActiveState", "Type", "TriggeredBy", "Transient", "PIDFile", "SyslogIdentifier",
         "ExecStart", *sandbox.PROPS)
DROPIN = "zz-kupgrade-restore.conf"
PIDFILE_DIR = contract.UNIT_PIDFILES   # below the restore dir
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
             "/usr/lib/systemd/system", "/lib/systemd/system")


def show(unit: str) -> dict[str, str]:
    """`systemctl show` of the properties kupgrade needs."""
    out = run(["systemctl", "show", "--property=" + ",".join(PROPS), unit], timeout=60,
              hint="is systemd running?").stdout.decode()
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


_IDENT = re.compile(r"[A-Za-z0-9_.@:+-]{1,64}")


def identifier(props: dict[str, str]) -> str:
    """The name the unit's output has in the journal: its SyslogIdentifier=, else the file name
    of its ExecStart's program (what systemd names the stream after). "" when it cannot be
    written back plainly into a unit file (the drop-in then leaves systemd's default)."""
    ident = props.get("SyslogIdentifier", "")
    if not ident:
        m = re.search(r"\bpath=(\S+)", props.get("ExecStart", ""))
        ident = os.path.basename(m.group(1)) if m else ""
    return ident if _IDENT.fullmatch(ident) else ""


def reached_us(target: str = "sysinit.target") -> str:
    """When this boot reached a target (µs of CLOCK_MONOTONIC; "" without systemd as init, "0"
    while it is not reached)."""
    if not Path("/run/systemd/system").is_dir():
        return ""
    try:
        return run(["systemctl", "show", "--property=ActiveEnterTimestampMonotonic", "--value", target],
                   timeout=30).stdout.decode().strip()
    except CommandError:
        return ""


def describe(unit: str) -> tuple[dict[str, str], str]:
    """(properties, problem): problem is "" when the unit can be a workload."""
    try:
        props = show(unit)
    except CommandError as e:
        return {}, f"cannot ask systemd about {unit}: {e.message}"
    if props.get("ActiveState") != "active":
        return props, f"unit {unit} is not active ({props.get('ActiveState') or 'unknown'})"
    if int(props.get("MainPID") or 0) <= 1:
        return props, f"unit {unit} has no main process (Type={props.get('Type')})"
    if not props.get("ControlGroup"):
        return props, f"unit {unit} has no cgroup"
    return props, ""


def running_services() -> list[str]:
    """Every service unit with running processes (`systemctl list-units`)."""
    out = run(["systemctl", "list-units", "--type=service", "--state=running", "--no-legend", "--plain",
               "--no-pager"], timeout=60, hint="is systemd running?").stdout.decode()
    return [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0].endswith(".service")]


def dependents(unit: str) -> set[str]:
    """The units `systemctl stop UNIT` stops too (they require it, are bound to it or part of it)."""
    out = run(["systemctl", "show", "--property=RequiredBy,BoundBy,ConsistsOf", unit], timeout=60,
              hint="is systemd running?").stdout.decode()
    return {u for line in out.splitlines() if "=" in line for u in line.split("=", 1)[1].split()}


def blockers(unit: str, props: dict[str, str], selector: str) -> list[Blocker]:
    """What about the unit itself (not its processes) keeps it from being restored as itself.
    A transient unit's is about no workload (Blocker.workload ""): it cannot start fresh either."""
    out = []
    if props.get("Transient") == "yes":
        out.append(Blocker(f"{unit} is a transient unit (systemd-run): the new boot has no such unit to restore "
                           "it into, nor to start it again", "stop it before the upgrade, or run it from a unit file"))
    if sockets := props.get("TriggeredBy", "").split():
        out.append(Blocker(f"{unit} is socket-activated ({', '.join(sockets)}): in the new boot PID 1 listens on "
                           "its sockets before any restore, so the restored copies could not bind them",
                           "let it start fresh (workloads.on_blocked = \"fresh\")", selector))
    return out


def has_scopes() -> bool:
    """systemd is PID 1: a process can be moved out of a unit's cgroup (own_scope)."""
    return Path("/run/systemd/system").is_dir()


SYSTEM_BUS = Path("/run/dbus/system_bus_socket")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _scope(name: str, pids, why: str, slice_: str = "") -> None:
    """A transient scope unit of these PIDs (StartTransientUnit with PIDs=, as logind does for a
    session), through the system bus."""
    props = [("PIDs", "au", str(len(pids)), *map(str, pids)), ("Description", "s", why),
             ("CollectMode", "s", "inactive-or-failed")] + ([("Slice", "s", slice_)] if slice_ else [])
    run(["busctl", "--timeout=60", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
         "org.freedesktop.systemd1.Manager", "StartTransientUnit", "ssa(sv)a(sa(sv))", name, "fail",
         str(len(props)), *(x for p in props for x in p), "0"], timeout=90, hint="is the system bus up (busctl status)?")


def own_scope(pid: int, why: str, bus: Path = SYSTEM_BUS, root: Path = CGROUP_ROOT) -> str:
    """Move PID out of the unit whose cgroup it is in: into a transient scope of its own
    (`kupgrade-PID.scope`) when the system bus is there; without dbus (busctl cannot talk to
    systemd's private socket: it says Hello to a bus) into a cgroup of its own at the root,
    `kupgrade-PID`, which systemd leaves alone (`sweep_own` removes it once empty). Returns
    where it went."""
    name = f"kupgrade-{pid}"
    if bus.exists():
        _scope(f"{name}.scope", [pid], why)
        return f"{name}.scope"
    own = root / name
    own.mkdir(exist_ok=True)
    (own / "cgroup.procs").write_text(f"{pid}\n")
    return f"/{name}"


def adopt(cgroup: str, bus: Path = SYSTEM_BUS, root: Path = CGROUP_ROOT, scope=_scope) -> str:
    """The new boot: restored tasks that criu put back into a cgroup no unit of this boot owns
    (an ssh session's scope, user.slice/user-0.slice/session-3.scope, which the old boot's logind
    made) become a transient scope of their own in the same slice, `kupgrade-session-3.scope`:
    systemd tracks them (`systemctl status`), and a login of this boot that gets the same
    session number does not take them into its scope. The cgroup criu made goes once empty.
    Returns the scope, or why they stay where criu put them (no system bus, systemd refused)."""
    base = cgroup.rstrip("/").rsplit("/", 1)[-1]
    parent = cgroup.rstrip("/").rsplit("/", 1)[0].rsplit("/", 1)[-1]
    name = base if base.startswith("kupgrade-") else f"kupgrade-{base.removesuffix('.scope')}.scope"
    try:
        pids = [int(x) for x in (root / cgroup.lstrip("/") / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        pids = []
    if not pids:
        return f"no task in {cgroup}"
    if not bus.exists():
        return f"stay in {cgroup}: no system bus to ask systemd for a scope"
    try:
        scope(name, sorted(pids), f"kupgrade: carried from {cgroup} of the old boot",
              parent if parent.endswith(".slice") else "")
    except CommandError as e:
        return f"stay in {cgroup}: {e.message}"
    left = root / cgroup.lstrip("/")
    if emptied(left, ADOPT_WAIT_S):    # systemd answers before its job has moved them
        try:
            left.rmdir()
        except OSError:
            pass
    return name


ADOPT_WAIT_S = 10.0


def emptied(cgroup_dir: Path, timeout: float) -> bool:
    """Whether the cgroup has no task left within `timeout` seconds (gone counts as empty)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if not (cgroup_dir / "cgroup.procs").read_text().strip():
                return True
        except OSError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def sweep_own(root: Path = CGROUP_ROOT, rmdir=os.rmdir) -> None:
    """Remove the empty cgroups earlier runs stepped into (own_scope without dbus)."""
    for d in root.glob("kupgrade-*"):
        try:
            if d.is_dir() and not (d / "cgroup.procs").read_text().strip():
                rmdir(d)        # a cgroup's directory goes with its control files
        except OSError:
            pass


def stop(units: list[str]) -> None:
    """Stop these units cleanly (their ExecStop, their KillSignal), in one transaction."""
    if units:
        run(["systemctl", "stop", *units], timeout=600, hint="see `systemctl status` of the units")


def start(units: list[str]) -> None:
    if units:
        run(["systemctl", "start", *units], timeout=600, hint="see `systemctl status` of the units")


def restore_pidfile(w, pid: int) -> str:
    """The unit's own PID file (PIDFile=, usually in /run, which the new boot does not have),
    written again with the restored main PID: the unit's ExecReload and ExecStop (`nginx -s
    reload`, start-stop-daemon --pidfile) find the process as before. "" or what was done."""
    if not w.pidfile or not w.pidfile.startswith("/") or os.path.lexists(w.pidfile):
        return ""
    try:
        Path(w.pidfile).parent.mkdir(parents=True, exist_ok=True)
        Path(w.pidfile).write_text(f"{pid}\n")
    except OSError as e:
        return f"could not write {w.pidfile}: {e.strerror}"
    return f"wrote {w.pidfile}"


def pidfile(restore_dir: Path, unit: str) -> Path:
    return restore_dir / PIDFILE_DIR / f"{unit}.pid"


def dropin(unit: str, snapshot_id: str, restore_cmd: str, restore_dir: Path, ident: str = "") -> str:
    """ident (identifier()): the restored processes write into the stream systemd opens for the
    restore's command, named after it (`sh`) unless SyslogIdentifier= names it as before."""
    name = f"SyslogIdentifier={ident}\n" if ident else ""
    return f"""# Written by kupgrade's generator for this boot only (snapshot {snapshot_id}):
# starting {unit} restores its processes from the snapshot (same PIDs) instead of
# starting it fresh. A failed restore leaves the unit failed and the snapshot in {restore_dir}.
[Service]
{name}Type=forking
PIDFile={pidfile(restore_dir, unit)}
GuessMainPID=no
ExecStartPre=
ExecStart=
ExecStart=+{sched.boosted(f"{restore_cmd} --unit {unit}")}
ExecStartPost=
Restart=no
TimeoutStartSec=600
"""


COMMIT_UNIT = "kupgrade-commit.service"


def commit_unit(units: list[str], snapshot_id: str, restore_cmd: str) -> str:
    """After every unit's start (successful or not): continue the trees held stopped until all
    were back, or go back to the old kernel when one was not restored (commit.py)."""
    return f"""# Written by kupgrade's generator for this boot only (snapshot {snapshot_id}).
[Unit]
Description=kupgrade: continue the restored workloads together, or go back to the old kernel
After=kupgrade-restore.service {' '.join(units)}
Wants={' '.join(units)}

[Service]
Type=oneshot
ExecStart={restore_cmd} --commit
RemainAfterExit=yes
KillMode=process
TimeoutStartSec=900
"""


def unit_file(unit: str, dirs=UNIT_DIRS) -> Path | None:
    names = [unit]
    if "@" in unit:                           # an instance: its template
        names.append(unit.split("@", 1)[0] + "@.service")
    for d in dirs:
        for n in names:
            if (p := Path(d) / n).exists():
                return p
    return None


WANTS_DROPIN = "zz-kupgrade-wants.conf"


def _wants(early_dir: Path, names: list[str]) -> str:
    """Pull these units into multi-user.target in this boot (they may have been started by hand):
    a drop-in of the target, regular files only, so that the old kernel can write it into the
    snapshot (kupgrade/data/systemd-generator copies it)."""
    d = early_dir / "multi-user.target.d"
    d.mkdir(parents=True, exist_ok=True)
    (d / WANTS_DROPIN).write_text("# Written by kupgrade's generator for this boot only.\n[Unit]\n"
                                  f"Wants={' '.join(names)}\n")
    return str(d / WANTS_DROPIN)


def generate(early_dir: Path, snapshot_id: str, units: list[str], restore_cmd: str, restore_dir: Path,
             dirs=UNIT_DIRS, start: tuple[str, ...] = (), idents: dict[str, str] | None = None) -> list[str]:
    """Write the drop-ins (and pull each unit into multi-user.target, in case it was started by
    hand and not enabled); pull in the units that start fresh (`start`: stopped before the
    switch, selection.py) the same way. Returns what was written. The old kernel writes this
    into the snapshot (contract.GENERATED) for the new boot's generator to copy; the new boot
    runs it only for a snapshot without it (kupgrade-restore --generator). idents: each unit's
    journal identifier (identifier())."""
    done = []
    for unit in units:
        d = early_dir / f"{unit}.d"
        d.mkdir(parents=True, exist_ok=True)
        (d / DROPIN).write_text(dropin(unit, snapshot_id, restore_cmd, restore_dir, (idents or {}).get(unit, "")))
        done.append(str(d / DROPIN))
    wants = [unit for unit in (*units, *start) if unit_file(unit, dirs) is not None]
    if units:
        early_dir.mkdir(parents=True, exist_ok=True)
        (early_dir / COMMIT_UNIT).write_text(commit_unit(units, snapshot_id, restore_cmd))
        done.append(str(early_dir / COMMIT_UNIT))
        wants.append(COMMIT_UNIT)
    if wants:
        done.append(_wants(early_dir, wants))
    return done
