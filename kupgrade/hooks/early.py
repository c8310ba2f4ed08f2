"""early-restore: hooks that run in the new kernel's initramfs, before root and network are up.

What is realistic there: busybox and nothing else of the real root (no Python, no hooks.d,
no /usr). So an executable hook takes part in early-restore only if it is a /bin/sh script
(busybox sh runs it), and Python hooks never do. The old kernel bundles those scripts, their
JSON requests and a small sh runner into the snapshot (SNAPSHOT/hooks/early-restore.d/), so the
initrd needs no rebuild when hooks change; the init-bottom script runs the runner once the
snapshot is in /run/kupgrade; `kupgrade-restore` later turns the files it left into HookResults
with the after-the-point-of-no-return policy (critical failures raise HookError).

The runner runs before the snapshot is verified, so it checks each hook's files against the
sha256 sums the bundle holds (NAME.sha256) and runs a hook only under a timeout; otherwise it
leaves the reason in NAME.rc and the hook fails.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path, PurePosixPath

from kupgrade.errors import HookError
from kupgrade.hooks import (
    HOOKS_SUBDIR,
    MAX_REPLY,
    NAME_RE,
    Hook,
    HookFailed,
    HookResult,
    check_size,
    load_saved,
    parse_reply,
    raise_critical,
    request_for,
    selected,
)
from kupgrade.hooks.devices import Device
from kupgrade.switch import contract
from kupgrade.switch.manifest import sha256_file

BUNDLE = contract.EARLY_BUNDLE
RUNNER = contract.EARLY_RUNNER
SHELLS = ("/bin/sh", "/bin/busybox sh", "/bin/ash", "/usr/bin/env sh")
OUTPUTS = ("rc", "time", "reply.json", "stderr")      # what the runner leaves next to hook NAME: NAME.rc ...


def written_in_new_kernel(rel: str) -> bool:
    """Files the new kernel adds to the snapshot before it is verified, which the manifest cannot
    list: the runner's results in the bundle, and whatever a hook writes in its own state_dir
    (SNAPSHOT/hooks/NAME/, at early-restore or restore; only that hook reads it)."""
    parts = PurePosixPath(rel).parts
    if len(parts) < 3 or parts[0] != HOOKS_SUBDIR:
        return False
    if parts[1] != BUNDLE:
        return bool(NAME_RE.fullmatch(parts[1]))
    name, _, what = parts[2].partition(".")
    return len(parts) == 3 and bool(NAME_RE.fullmatch(name)) and what in OUTPUTS


def cannot_run_early(hook: Hook) -> str | None:
    """Why this hook cannot run in the initramfs (None: it can)."""
    if hook.kind != "executable":
        return "Python hooks cannot run in the initramfs"
    try:
        with open(hook.source, "rb") as f:
            first = f.readline(200).decode(errors="replace").strip()
    except OSError as e:
        return f"cannot read it: {e.strerror}"
    if not first.startswith("#!") or first[2:].strip() not in SHELLS:
        return f"not a /bin/sh script (first line {first[:60]!r}): the initramfs has only busybox"
    return None


def bundle(hooks: list[Hook], devices: list[Device], request_extra: dict, snapshot_dir: Path,
           restore_dir: Path = Path(contract.RESTORE_DIR)) -> list[str]:
    """Old kernel, after run_point("save"): put the early-restore hooks into the snapshot.
    Requests name paths as they will be in the initramfs (`restore_dir`), devices as they are
    now. Returns one line per hook, for the stage summary. A critical hook that cannot run there
    raises HookError (we are still before the point of no return)."""
    saved = load_saved(snapshot_dir)
    d = snapshot_dir / HOOKS_SUBDIR / BUNDLE
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    order, meta, notes = [], [], []
    for hook, mine in selected(hooks, "early-restore", devices, saved):
        why = cannot_run_early(hook)
        meta.append({"name": hook.name, "critical": hook.spec.critical, "skipped": why or ""})
        if why and hook.spec.critical:
            raise HookError(f"critical hook {hook.name} declares early-restore but {why}",
                            f"make {hook.source} a /bin/sh script, or drop early-restore from its points; "
                            "nothing was switched, the upgrade is rolled back")
        if why:
            notes.append(f"{hook.name}: early-restore skipped: {why}")
            continue
        shutil.copyfile(hook.source, d / hook.name)
        req = request_for(hook, "early-restore", mine, request_extra, restore_dir, saved)
        (d / f"{hook.name}.request.json").write_text(json.dumps(req) + "\n")
        (d / f"{hook.name}.timeout").write_text(f"{math.ceil(hook.spec.timeout)}\n")
        (d / f"{hook.name}.sha256").write_text("".join(
            f"{sha256_file(d / f)}  {f}\n" for f in (hook.name, f"{hook.name}.request.json", f"{hook.name}.timeout")))
        order.append(hook.name)
        notes.append(f"{hook.name}: bundled for early-restore")
    (d / "order").write_text("".join(n + "\n" for n in order))
    (d / "hooks.json").write_text(json.dumps(meta) + "\n")
    from importlib import resources     # here: not in the new kernel's restore (it imports tempfile, ...)
    (d / RUNNER).write_text(resources.files("kupgrade").joinpath("data", "early-restore.sh").read_text())
    return notes


def _read(path: Path, limit: int, tail: bool = False) -> bytes:
    """At most `limit` bytes of the file: its head, or its tail. b"" if it is not there."""
    try:
        with open(path, "rb") as f:
            if tail:
                f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
            return f.read(limit)
    except OSError:
        return b""


def _result(d: Path, name: str, critical: bool) -> HookResult:
    def fail(error: str) -> HookResult:
        return HookResult(name, "early-restore", False, seconds, error=error, critical=critical)

    try:
        start, end = (float(x) for x in _read(d / f"{name}.time", 100).split())
        seconds = end - start
    except ValueError:
        seconds = 0.0
    rc = _read(d / f"{name}.rc", 1000).decode(errors="replace").strip()
    if not rc:
        return fail("did not run (the initramfs did not run the early-restore runner)")
    if not rc.lstrip("-").isdigit():
        return fail(rc)         # why the runner did not run it (not verified, no timeout)
    if rc != "0":
        err = _read(d / f"{name}.stderr", 4000, tail=True).decode(errors="replace").strip()
        what = "timed out" if rc in ("124", "143") else f"exited {rc}"
        return fail(what + (f": {err[-1000:]}" if err else " (no stderr)"))
    out = _read(d / f"{name}.reply.json", MAX_REPLY + 1)
    try:
        check_size(len(out))
        reply = parse_reply(out.decode(errors="replace"), f"`{name} early-restore`")
    except HookFailed as e:
        return fail(str(e))
    return HookResult(name, "early-restore", True, seconds, reply, critical=critical)


def collect(restore_dir: Path) -> list[HookResult]:
    """New kernel: the early-restore results the runner left ([] when nothing was bundled).
    Raises HookError (after building every result) if a critical hook failed or did not run."""
    d = restore_dir / HOOKS_SUBDIR / BUNDLE
    if not (d / "hooks.json").exists():
        return []
    results = []
    for m in json.loads((d / "hooks.json").read_text()):
        if m["skipped"]:
            results.append(HookResult(m["name"], "early-restore", False, 0.0,
                                      error=f"skipped: {m['skipped']}", critical=m["critical"]))
        else:
            results.append(_result(d, m["name"], m["critical"]))
    raise_critical("early-restore", results)
    return results
