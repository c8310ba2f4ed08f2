"""The stages' side of the device hooks (docs/hooks.md): load them once, build the request,
call a point, keep every result for the record and for the rollback.

Where each point runs: preflight (preflight stage), quiesce (freeze, after the freeze), save
(snapshot, after the dumps, before packing; then the early-restore bundle), resume (pipeline
rollback, for the hooks whose quiesce/save ran), early-restore (the initramfs; collected by the
restore stage), restore and verify (restore stage, before and after criu). Lean: the new
kernel's restore path imports this; pyudev only when devices are enumerated.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from kupgrade import hooks as hk
from kupgrade.context import Context
from kupgrade.errors import HookError

log = logging.getLogger("kupgrade.hooks")
TOUCHING = ("quiesce", "save")          # points whose hooks get `resume` on a rollback


def devices(subsystems: tuple[str, ...] = ()) -> tuple[list, str]:
    """The machine's devices (of `subsystems`, or all), and why there are none ("" if enumerated)."""
    from kupgrade.hooks import devices as dv
    try:
        return dv.enumerate_devices(subsystems), ""
    except Exception as e:  # noqa: BLE001 -- no pyudev, no /sys: hooks still get their saved state
        log.warning("cannot enumerate the devices: %s", e)
        return [], f"cannot enumerate the devices with pyudev: {type(e).__name__}: {e}"


def subsystems(hooks: list) -> tuple[str, ...] | None:
    """The udev subsystems the hooks' match specs name (() = none: all are machine-wide), or
    None when one needs every device (a spec without a plain subsystem)."""
    out = set()
    for h in hooks:
        for m in h.spec.match:
            sub = m.get("subsystem", "")
            if not sub or any(c in sub for c in "*?["):
                return None
            out.add(sub)
    return tuple(sorted(out))


def load(ctx: Context, narrow: bool = False) -> None:
    """Load the hooks and enumerate the devices, once per upgrade (preflight, or the new kernel).
    narrow (new kernel, inside the downtime): only the subsystems the hooks match, none if no
    hook matches any (preflight needs them all: unsafe devices are looked for there)."""
    if ctx.hooks is not None:
        return
    from kupgrade.hooks import hookload
    t0 = time.monotonic()
    ctx.hooks, skipped = hookload.load_hooks(Path(ctx.config.hooks_dir))
    ctx.hooks_skipped = [s.to_json() for s in skipped]
    wanted = subsystems(ctx.hooks) if narrow else None
    if wanted == ():
        ctx.devices, ctx.devices_error = [], ""
    else:
        ctx.devices, ctx.devices_error = devices(wanted or ())
    ctx.hooks_load_s = round(time.monotonic() - t0, 4)
    log.info("loaded %d hook(s), %d device(s) in %.3f s", len(ctx.hooks), len(ctx.devices), ctx.hooks_load_s)


def installed(cfg) -> bool:
    """Any executable hook installed (built-ins and entry points are checked by loading)."""
    d = Path(cfg.hooks_dir)
    return d.is_dir() and any(d.iterdir())


def has_state(snap: Path) -> bool:
    """The snapshot carries hook state (save results or an early-restore bundle)."""
    return (snap / hk.HOOKS_SUBDIR).is_dir()


def extra(ctx: Context) -> dict:
    """What every request carries besides the hook's own fields (docs/hooks.md)."""
    pre = ctx.record.stage("preflight")
    estimate = ctx.plan.downtime_estimate_s
    if estimate is None and pre is not None:        # the new kernel: from the old kernel's record
        estimate = pre.details.downtime_estimate_s
    return {"upgrade_id": ctx.record.id, "kernel_from": ctx.record.kernel_from or ctx.kernel_from,
            "kernel_to": ctx.plan.target.version if ctx.plan.target else ctx.record.kernel_to,
            "downtime_estimate_s": estimate,
            "workload_pids": sorted({p for w in (ctx.workloads or ctx.record.workloads) for p in w.pids})}


def results_json(results: list) -> list[dict]:
    return [r.to_json() for r in results]


def call(ctx: Context, point: str, snapshot_dir: Path | None = None) -> list[dict]:
    """Run `point` for the loaded hooks; the results (JSON) for the stage details. A HookError
    carries `details["hooks"]` so the failed stage records what ran."""
    if not ctx.hooks:
        return []
    saved = hk.load_saved(snapshot_dir) if point not in hk.BEFORE_NO_RETURN else {}
    try:
        results = hk.run_point(point, ctx.hooks, ctx.devices, extra(ctx), snapshot_dir=snapshot_dir, saved=saved)
    except HookError as e:
        ctx.hook_results += e.results
        raise e.with_details({"hooks": results_json(e.results)}) from e
    ctx.hook_results += results
    if point == "save" and snapshot_dir is not None:
        hk.store_saved(snapshot_dir, results)
    return results_json(results)


def resume(ctx: Context) -> list[str]:
    """Rollback: `resume` for the hooks whose quiesce or save ran (the failed one included), in
    reverse name order. Never raises; one line per call for the rollback's summary."""
    names = {r.hook for r in ctx.hook_results if r.point in TOUCHING}
    touched = [h for h in ctx.hooks or [] if h.name in names]
    if not touched:
        return []
    results = hk.run_point("resume", touched, ctx.devices, extra(ctx))
    ctx.hook_results += results
    return [f"hook {r.hook} resume: " + ("ok" if r.ok else f"FAILED: {r.error}") for r in results]


def plan_line(ctx: Context, point: str) -> list[str]:
    """For a stage's plan: which hooks will run at `point` (nothing when none declares it)."""
    names = [h.name for h, _ in hk.selected(ctx.hooks or [], point, ctx.devices, {})]
    return [f"device hooks at {point}: {', '.join(names)}"] if names else []


def restore(ctx: Context, snap: Path) -> list[dict]:
    """New kernel, the snapshot verified, before criu: the early-restore results the initramfs
    left, then `restore`. Every hook runs; a critical failure raises HookError afterwards (the
    caller then restores no workload and keeps the snapshot). Nothing is loaded when neither
    the snapshot carries hook state nor hooks are installed (boot-path import cost)."""
    if ctx.hooks is None and not (has_state(snap) or installed(ctx.config)):
        return []
    from kupgrade.hooks import early
    out, first = [], None
    if not ctx.rehearsal:       # a rehearsal never went through an initramfs
        try:
            early_results = early.collect(snap)
        except HookError as e:
            early_results, first = e.results, e
        ctx.hook_results += early_results
        out += results_json(early_results)
    load(ctx, narrow=True)
    try:
        out += call(ctx, "restore", snap)
    except HookError as e:
        out += e.details["hooks"]
        first = first or e
    if first is not None:
        raise first.with_details({"hooks": out}) from first
    return out


def verify(ctx: Context, snap: Path, details: dict) -> HookError | None:
    """New kernel, after criu: `verify`, results appended to details["hooks"]. A critical
    failure is returned (not raised) so the caller records the workloads' results first."""
    try:
        details.setdefault("hooks", []).extend(call(ctx, "verify", snap))
    except HookError as e:
        details.setdefault("hooks", []).extend(e.details["hooks"])
        return HookError(e.message, "the workloads were restored and are running; check the device "
                         "(`kupgrade report` shows each hook's result)", e.results, details=details)
    return None
