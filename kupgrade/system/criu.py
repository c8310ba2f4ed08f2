"""criu command lines and calls. The binary is driven through the run() wrapper; every command
line names the criu paths.criu chooses (run.program)."""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from kupgrade.errors import KupgradeError
from kupgrade.system import procfs
from kupgrade.system.run import program, run

if TYPE_CHECKING:        # criu's restore side starts without the record's modules (restorecmd.py)
    from kupgrade.output.record import Workload

CRIU = "criu"
SETPRIV = "setpriv"     # util-linux
LOCK_TABLE = "CRIU-{root_pid}"     # nft table inet CRIU-ROOTPID: criu 3.x's connection lock
LOCK_TABLE_RUN = "inet CRIU-{run_id}"   # criu 4.x names it after the dump's run id (a UUID, in its log),
LOCK_TABLE_BUF = 32                       # written into a char[32] (criu/net.c): cut to 26 characters
RUN_ID = re.compile(r"CRIU run id = ([0-9a-f-]{36})")
DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"


def check_argv() -> list[str]:
    return [program(CRIU), "check"]


# --- which criu can run on which kernel ---
# The same criu dumps on the old kernel and restores on the new one (paths.criu, on the shared
# root): it must run on both. Known limits: (kernel from which, criu needed, why).
KERNEL_NEEDS = (
    ((6, 13), (4, 1), "from 6.13 the kernel maps its vDSO data in two parts (vvar_vclock), which criu "
                      "handles from 4.1 on (measured: criu 3.17 cannot even start on 7.3.4: "
                      "\"vdso: Unexpected rt vDSO area bounds\")"),
)


def parse_version(text: str) -> tuple[int, ...]:
    """(3, 17, 1) from `criu --version`'s "Version: 3.17.1" (or from "3.17.1"); () if none."""
    m = re.search(r"(?:Version:\s*)?(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in m.groups() if g is not None) if m else ()


def version() -> str:
    """The criu that runs (paths.criu): "3.17.1"; "" if it does not say."""
    out = run([program(CRIU), "--version"], check=False, timeout=30).stdout.decode(errors="replace")
    v = parse_version(out)
    return ".".join(map(str, v))


def identity() -> dict:
    """The criu that runs (paths.criu): {"program": its path, "version"}; {} if it is not there."""
    path = shutil.which(program(CRIU))
    return {"program": path, "version": version()} if path else {}


def unfit(criu_version: str, kernel: str) -> str:
    """Why this criu cannot run on that kernel ("" = no known reason)."""
    have, k = parse_version(criu_version), parse_version(kernel)
    for since, needs, why in KERNEL_NEEDS:
        if have and k and k[:2] >= since and have[:2] < needs:
            return (f"criu {criu_version} cannot run on {kernel}: {why}")
    return ""


def restores(dumped_by: str, restoring: str) -> str:
    """Why images dumped by criu `dumped_by` cannot be restored by criu `restoring` ("" = they can:
    criu reads the images of its own and older versions, not of newer ones)."""
    old, new = parse_version(dumped_by), parse_version(restoring)
    if old and new and new < old:
        return f"the snapshot was dumped by criu {dumped_by}, this criu is {restoring} (older: it may not read them)"
    return ""


def lock_tables(images: Path, root_pid: int) -> list[str]:
    """The names criu's connection lock of one tree may have (nft table inet NAME): criu 4.x's,
    named after the dump's run id (its log says it; measured on 4.1.1: "CRIU-0aeaf308-ac4c-4f72-a9"
    for run id 0aeaf308-ac4c-4f72-a952-2de8b6da7486), and criu 3.x's, after the tree's root."""
    names = []
    try:
        with (images / DUMP_LOG).open(errors="replace") as f:
            for line in f:
                if m := RUN_ID.search(line):
                    whole = LOCK_TABLE_RUN.format(run_id=m.group(1))[:LOCK_TABLE_BUF - 1]
                    names.append(whole.removeprefix("inet "))
                    break
    except OSError:
        pass
    return names + [LOCK_TABLE.format(root_pid=root_pid)]


PRE_DIR = "pre-{n}"              # images/TREE/pre-N/: pre-dump iteration N (the final dump's parent)
PRE_LOG = "pre-dump-{n}.log"


def freezer_args(w: Workload, cgroup_root: Path) -> list[str]:
    """criu's freezer mode for a tree in one cgroup (criu freezes it, or finds it frozen, and
    seizes its tasks). A tree selected by PID, or whose tasks are also in other cgroups (an ssh
    session's scope: workloads.other_cgroups), is seized task by task."""
    if not w.frozen:
        return []
    return ["--freeze-cgroup", str(cgroup_root / w.cgroup.lstrip("/"))]


def pre_dump_argv(w: Workload, images: Path, n: int, cgroup_root: Path = Path("/sys/fs/cgroup")) -> list[str]:
    """Pre-dump iteration n (1, 2, ...) of one tree into images/pre-N, while it runs: its memory
    (the first), or what it dirtied since iteration n-1 (soft-dirty tracking). The tasks go on."""
    argv = [program(CRIU), "pre-dump", "--tree", str(w.root_pid), "--images-dir", str(images / PRE_DIR.format(n=n)),
            "--log-file", str(images / PRE_LOG.format(n=n)), "-v4", "--track-mem"]
    if n > 1:   # relative to the images dir: the link criu leaves there stays valid wherever the tree goes
        argv += ["--prev-images-dir", "../" + PRE_DIR.format(n=n - 1)]
    return argv + freezer_args(w, cgroup_root)


def dump_argv(w: Workload, images: Path, cgroup_root: Path = Path("/sys/fs/cgroup"),
              external: list[str] = (), ext_unix: bool = False, pre: int = 0, extra=()) -> list[str]:
    """Final dump of one tree. The tasks are left stopped (not killed) so that any failure up to
    `kexec -e` can resume them untouched; kexec ends them. pre: the last pre-dump iteration
    (the dump then writes only the pages dirtied since; criu links images/parent to it). extra:
    what else criu must be told (a mount namespace's externals: mountns.Plan.dump_args)."""
    argv = [program(CRIU), "dump", "--tree", str(w.root_pid), "--images-dir", str(images),
            "--log-file", DUMP_LOG, "-v4", "--leave-stopped", "--file-locks",
            # established connections are dumped (and locked) instead of failing the dump; a
            # connection not yet accept()ed is dropped (its peer gets an RST after the switch).
            # The lock is an nftables table inet CRIU-ROOTPID: criu's unlock at restore is
            # then a library call, not two forks of iptables per connection (~2 s under TCG)
            "--tcp-established", "--skip-in-flight", "--network-lock", "nftables"]
    argv += freezer_args(w, cgroup_root)
    for res in external:    # "socket:[INO]": a stream socket whose peer is outside (journald)
        argv += ["--external", "unix[" + res.removeprefix("socket:[").rstrip("]") + "]"]
    if ext_unix:            # a datagram socket connected to a named one outside (syslog): see unixsk.py
        argv.append("--ext-unix-sk")
    if pre:
        argv += ["--track-mem", "--prev-images-dir", PRE_DIR.format(n=pre)]
    return argv + list(extra)


def restore_argv(images: Path, pidfile: Path, inherit: dict[str, int] | None = None,
                 tcp: bool = False, action_script: str = "", stopped: bool = False,
                 no_new_privs: bool = False, ext_unix: bool = False, extra=()) -> list[str]:
    """inherit: external resource ("socket:[INODE]") -> fd of ours that replaces it. tcp: the
    images hold established connections (criu refuses them without --tcp-established).
    stopped: the tasks are left stopped (SIGSTOP), to be continued by kupgrade (commit.py).
    no_new_privs: the tree root ran with it; criu 3.17 does not restore it, so criu runs with it
    (setpriv) and every task it forks inherits it (measured: restored with NoNewPrivs 1 and its
    seccomp filters; without, NoNewPrivs 0)."""
    argv = [SETPRIV, "--no-new-privs"] if no_new_privs else []
    argv += [program(CRIU), "restore", "--images-dir", str(images), "--log-file", RESTORE_LOG,
             "-v4", "--restore-detached", "--pidfile", str(pidfile), "--file-locks"]
    if stopped:
        argv.append("--leave-stopped")
    if tcp:
        argv.append("--tcp-established")
    if ext_unix:
        argv.append("--ext-unix-sk")
    if action_script:       # run by criu with `sh -c`, with CRTOOLS_SCRIPT_ACTION set
        argv += ["--action-script", action_script]
    for res, fd in sorted((inherit or {}).items()):
        argv += ["--inherit-fd", f"fd[{fd}]:{res}"]
    return argv + list(extra)


STDIO = "kupgrade-stdio.json"    # next to the images: external stdio sockets to hand over at restore
NO_NEW_PRIVS = "kupgrade-no-new-privs"  # next to the images: the tree root ran with no_new_privs


def no_new_privs(pid: int, proc: Path = Path("/proc")) -> bool:
    """The task runs with no_new_privs (NoNewPrivileges=, or prctl): inherited by every task it
    forks and never cleared, so the whole tree below it has it."""
    try:
        text = (proc / str(pid) / "status").read_text()
    except OSError:
        return False
    return any(line.split() == ["NoNewPrivs:", "1"] for line in text.splitlines())


def stdio_sockets(pids, proc: Path = Path("/proc")) -> list[str]:
    """The sockets the tree's stdin/stdout/stderr are (a systemd service's go to journald)."""
    return sorted(f"socket:[{inode}]" for inode, holders in procfs.sockets(pids, proc).items()
                  if any(fd <= 2 for _pid, fd in holders))


def wait_gone(images_root: Path, timeout: float) -> list[int]:
    """Wait until no criu process works in images_root (one whose parent was killed carries on);
    those still running after `timeout` are killed (criu then resumes the tasks it seized).
    Returns the PIDs waited for."""
    import psutil
    name = os.path.basename(program(CRIU))     # paths.criu: /opt/criu/sbin/criu runs as "criu"

    def mine() -> list[psutil.Process]:
        out = []
        for p in psutil.process_iter(["name", "cmdline"]):
            if p.info["name"] == name and any(str(images_root) in a for a in p.info["cmdline"] or ()):
                out.append(p)
        return out

    procs = mine()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=30)
    return [p.pid for p in procs]


def first_error(images: Path, name: str) -> str:
    """The first error line of a criu log: the cause ("Dumping FAILED" comes last)."""
    try:
        with (images / name).open(errors="replace") as f:
            for line in f:
                if "Error" in line:
                    return line.strip()
    except FileNotFoundError:
        pass
    return ""


# Any cheap feature check: criu first detects the kernel's features and caches them in
# /run/criu.kdat for the rest of the boot (KDAT_RUNDIR), which is what warm() is for.
WARM_FEATURE = "mem_dirty_track"
WARM_LOG = "criu-check.log"     # in the snapshot's directory: criu's own account of its probing, kept with its logs


def warm_argv(log: Path | None = None) -> list[str]:
    return [program(CRIU), "check", "--feature", WARM_FEATURE, *(["-v4", "--log-file", str(log)] if log else [])]


def warm(log: Path | None = None) -> bool:
    """In a new boot, have criu detect this kernel's features once, ahead of the restores: every
    criu run after this reads /run/criu.kdat instead of probing again. The probing loads the
    sock-diag modules and runs `iptables -L`, inside the pause otherwise, once per concurrent
    restore (criu 3.17 under QEMU TCG: a 64 MiB tree restored in 3.1 s without the cache, 0.3 s
    with it). A warm-up this process started early (start_warm) is waited for, not run again.
    Whether criu said yes; never raises."""
    if _early is not None:
        _early.join()
        return _early.ok
    return _probe(log)


def _probe(log: Path | None = None) -> bool:
    try:
        return run(warm_argv(log), check=False, timeout=120).returncode == 0
    except (KupgradeError, OSError, ValueError):
        return False


class _Warming(threading.Thread):
    def __init__(self, log: Path | None) -> None:
        super().__init__(name="kupgrade-criu-warm", daemon=True)
        self.ok = False
        self.log = log

    def run(self) -> None:
        self.ok = _probe(self.log)


_early: _Warming | None = None


def start_warm(log: Path | None = None) -> None:
    """kupgrade-restore's first act (restorecmd.py): the warm-up in a thread, while the process
    goes on loading the restore's modules; warm() then waits for it. log: criu's log of it."""
    global _early
    if _early is None:
        _early = _Warming(log)
        _early.start()


def check() -> None:
    run(check_argv(), timeout=120, hint="this kernel lacks what criu needs; see `criu check --all`")


def keep_logs(images: Path, dest: Path) -> list[str]:
    """Copy criu's logs (images/TREE/*.log) to dest/TREE/ on disk, root-only, before the images
    are freed; returns the paths."""
    return [keep_log(log, dest, f"{log.parent.name}/{log.name}") for log in sorted(images.glob("*/*.log"))]


def keep_log(log: Path, dest: Path, name: str) -> str:
    """One criu log copied to dest/name, root-only (dest and the file's directory too); returns the path."""
    target = dest / name
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    dest.chmod(0o700)
    target.parent.chmod(0o700)
    shutil.copyfile(log, target)
    target.chmod(0o600)
    return str(target)
