"""systemd sandboxing of a unit's processes: what the snapshot carries and what it does not.

Measured with criu 3.17.1 on Debian bookworm (kernel 6.1), each option alone and combined, the
unit's main process dumped as kupgrade dumps it and restored as kupgrade restores it: by the
unit's own start, whose ExecStart runs with full privileges ("+": systemd applies none of the
unit's sandboxing to kupgrade-restore and criu, see systemd.dropin).

Carried (dumped and restored, same PID, same unit):
- ProtectHostname: the UTS namespace of the tree root is dumped and recreated by criu;
- SystemCallFilter, RestrictNamespaces, MemoryDenyWriteExecute, and any other seccomp filter:
  criu restores the filters (Seccomp: 2 again). Inside the sandbox criu itself could not
  restore them: RestrictNamespaces "Can't fork for PID: Function not implemented",
  MemoryDenyWriteExecute "Can't map restorer code: Operation not permitted",
  SystemCallFilter=@system-service killed by SIGSYS.
- NoNewPrivileges (no_new_privs of the tree root): criu 3.17 does not restore it (restored
  with NoNewPrivs 0), so the restore runs criu under `setpriv --no-new-privs` and the restored
  tasks inherit it (criu.restore_argv; restored with NoNewPrivs 1 and Seccomp 2).

Not carried (`blockers`):
- a mount namespace of its own (PrivateTmp, ProtectSystem, ProtectHome, PrivateDevices,
  DynamicUser and every other option that gives the service its own view of the file
  systems) is carried by mountns.py; what it cannot carry (RootDirectory, a mount bound from a
  host mount that is gone) blocks. Before it, criu 3.17's dump failed on the first mount that
  is a slave of the host's ("mnt: Mount 133 ./run/systemd/incoming (master_id: 5 shared_id: 0)
  has unreachable sharing"), with or without --enable-external-masters;
- a user namespace of its own (PrivateUsers): the dump succeeds, the restore fails ("Unable
  to open the proc file system: Operation not permitted"); with ProtectHostname as well the
  dump fails ("Can't setns 7/uts: Operation not permitted", then criu crashes);
- no_new_privs set by a task below a tree root without it: criu 3.17 does not restore it, and
  it cannot be inherited from criu for that task alone.

The truth is read from /proc (the namespaces, NoNewPrivs); the unit's properties only name the
options that cause it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kupgrade.output.record import Blocker, Workload
from kupgrade.system import criu, procfs
from kupgrade.system.procfs import PROC, status
from kupgrade.userspace import mountns

# Options that give the service a mount namespace of its own (systemd 252's
# exec_needs_mount_namespace()), with the values that leave it off; a path list is on when it is
# not empty.
MOUNT_OPTIONS: dict[str, tuple[str, ...]] = {
    "PrivateTmp": ("no",), "ProtectSystem": ("no",), "ProtectHome": ("no",), "PrivateDevices": ("no",),
    "DynamicUser": ("no",), "PrivateMounts": ("no",), "PrivateIPC": ("no",), "ProtectKernelTunables": ("no",),
    "ProtectKernelModules": ("no",), "ProtectKernelLogs": ("no",), "ProtectControlGroups": ("no",),
    "ProtectProc": ("default",), "ProcSubset": ("all",), "MountFlags": ("", "shared"), "LogNamespace": ("",),
    "RootDirectory": ("",), "RootImage": ("",), "ReadOnlyPaths": ("",), "ReadWritePaths": ("",),
    "InaccessiblePaths": ("",), "ExecPaths": ("",), "NoExecPaths": ("",), "TemporaryFileSystem": ("",),
    "BindPaths": ("",), "BindReadOnlyPaths": ("",),
}
PROPS = ("PrivateUsers", *MOUNT_OPTIONS)

def set_options(props: dict[str, str], options: dict[str, tuple[str, ...]]) -> list[str]:
    """The options of `options` that are on in the unit's `systemctl show` properties."""
    return [k for k, off in options.items() if k in props and props[k].strip() not in off]


own_namespace = procfs.own_namespace


_CLEARED = {k for k, off in MOUNT_OPTIONS.items() if "" in off}     # turned off by an empty assignment
_OFF = {"ProtectProc": "default", "ProcSubset": "all"}


def _off_hint(w: Workload, opts: list[str], fallback: str) -> str:
    """A drop-in that turns the options off (path lists are cleared with an empty assignment)."""
    if not w.unit or not opts:
        return fallback
    lines = " ".join(f"{o}=" if o in _CLEARED else f"{o}={_OFF.get(o, 'no')}" for o in opts)
    return (f"turn {', '.join(opts)} off for it in a drop-in (`systemctl edit {w.unit}`: [Service] {lines}), "
            "restart it and run check again; or leave it out of the workloads")


def blockers(w: Workload, props: dict[str, str] | None = None, proc: Path = PROC) -> list[Blocker]:
    """What of the tree's sandboxing the snapshot would not carry. `props`: the unit's `systemctl
    show` properties (PROPS), which name the options; the namespaces and no_new_privs are read
    from /proc (a workload selected by PID or cgroup can be sandboxed too)."""
    props = props or {}
    name = w.unit or w.selector
    out = []
    if own_namespace(w.root_pid, "mnt", proc):
        try:
            mountns.plan(w.root_pid, w.pids, proc=proc)
        except (mountns.NotCarried, OSError) as e:
            opts = set_options(props, MOUNT_OPTIONS)
            out.append(Blocker(
                f"{name} runs in a mount namespace of its own ({', '.join(opts) or 'not set up by kupgrade'}) that "
                f"cannot be carried: {e}", _off_hint(w, opts, "start it in kupgrade's mount namespace (the host's)"
                                                     if not w.unit else f"see `systemctl cat {w.unit}` for what "
                                                     "gives it a mount namespace")))
    else:
        try:
            mountns.foreign(w.pids, proc=proc)
        except mountns.NotCarried as e:
            out.append(Blocker(f"{name}: {e}: criu cannot dump a file whose mount its namespace does not have",
                               "have the program close it, or leave it out of the selection"))
    if own_namespace(w.root_pid, "user", proc):
        out.append(Blocker(
            f"{name} runs in a user namespace of its own{' (PrivateUsers=yes)' if w.unit else ''}: criu cannot "
            "restore it (it mounts /proc inside the new user namespace, which the kernel refuses to one that does "
            "not own the PID namespace: \"Unable to open the proc file system\", criu 3.17 and 4.1.1; with a UTS "
            "namespace too the dump fails: \"Can't setns …/uts\")",
            _off_hint(w, ["PrivateUsers"] if w.unit else [], "start it without a user namespace")))
    out += _no_new_privs(w, proc)
    return out


def _no_new_privs(w: Workload, proc: Path) -> list[Blocker]:
    """no_new_privs is carried for a tree whose root has it (the restore runs criu with it, and
    every task inherits it); a task that set it below a root without it is not."""
    nnp = [p for p in w.pids if _status(p, proc).get("NoNewPrivs") == "1"]
    name = w.unit or w.selector
    if not nnp:
        return []
    if nnp[0] == w.root_pid:
        if shutil.which(criu.SETPRIV):
            return []
        return [Blocker(f"{name} runs with no_new_privs and setpriv is not installed: the restore needs it to give "
                        "it back (criu 3.17 does not)", "apt-get install util-linux")]
    shown = ", ".join(map(str, nnp[:5])) + (" …" if len(nnp) > 5 else "")
    return [Blocker(f"{name}: PID {shown} set no_new_privs, its tree root PID {w.root_pid} did not: criu 3.17 does "
                    "not restore it, the restored process(es) would run without it",
                    "restart the program so that the tree root sets it (or none), or leave it out of the workloads")]


def _status(pid: int, proc: Path) -> dict[str, str]:
    try:
        return status(pid, proc)
    except (FileNotFoundError, ProcessLookupError):
        return {}
