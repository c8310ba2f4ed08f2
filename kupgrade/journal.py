"""The undo state of a run as JSON (kupgrade/inflight.py keeps it in /run) and back: what the
rollback needs, and nothing it does not. `kupgrade recover` rebuilds a Context from it."""

from __future__ import annotations

import os
from pathlib import Path

from kupgrade.config import Config
from kupgrade.context import Context, Plan
from kupgrade.hooks import HookResult
from kupgrade.output.record import UpgradeRecord, Workload
from kupgrade.system.kexec import Method
from kupgrade.userspace import tcp


def state(ctx: Context) -> dict:
    return {"pid": os.getpid(), "record": ctx.record.to_json(), "config": ctx.config.to_json(),
            "rehearsal": ctx.rehearsal,
            "frozen_cgroups": list(ctx.frozen_cgroups),
            "stopped": [w.to_json() for w in ctx.stopped],
            "dumping": [w.to_json() for w in ctx.dumping],
            "tcp": {k: [s.to_json() for s in v] for k, v in ctx.tcp.items()},
            "locks": {k: list(v) for k, v in ctx.locks.items()},     # criu 4's lock is named after its run
            "oom": {str(pid): adj for pid, adj in ctx.oom.items()},
            "snapshot_mounted": ctx.snapshot_mounted, "snapshot_dir": str(ctx.snapshot_dir),
            "kexec_loaded": ctx.kexec_loaded,
            "method": {"name": ctx.plan.method.name, "why": ctx.plan.method.why} if ctx.plan.method else None,
            "hooks_touched": sorted({r.hook for r in ctx.hook_results if r.point in ("quiesce", "save")}),
            "unpacked": ctx.unpacked, "replaced": ctx.replaced, "restore_dir": str(ctx.restore_dir),
            "stopped_units": list(ctx.stopped_units)}


def context(d: dict) -> Context:
    """The Context a rollback of that run needs (the device hooks are loaded by the caller)."""
    ctx = Context(Config.from_json(d["config"]), UpgradeRecord.from_json(d["record"]),
                  rehearsal=d.get("rehearsal", False),
                  frozen_cgroups=list(d.get("frozen_cgroups", [])),
                  stopped=[Workload.from_json(w) for w in d.get("stopped", [])],
                  dumping=[Workload.from_json(w) for w in _listed(d.get("dumping"))],
                  tcp={k: [tcp.Sock.from_json(s) for s in v] for k, v in d.get("tcp", {}).items()},
                  locks={k: list(v) for k, v in d.get("locks", {}).items()},
                  oom={int(pid): adj for pid, adj in d.get("oom", {}).items()},
                  snapshot_mounted=d.get("snapshot_mounted", False),
                  kexec_loaded=d.get("kexec_loaded", False),
                  plan=Plan(method=Method(**d["method"]) if d.get("method") else None),
                  unpacked=d.get("unpacked", False), replaced=d.get("replaced", False),
                  restore_dir=Path(d.get("restore_dir") or str(Context.restore_dir)),
                  stopped_units=list(d.get("stopped_units", [])))
    ctx.workloads = list(ctx.record.workloads)
    ctx.hook_results = [HookResult(name, "quiesce", True, 0.0) for name in d.get("hooks_touched", [])]
    return ctx


def _listed(v) -> list:
    """A journal's trees being dumped: a list (a journal of an older kupgrade: one, or none)."""
    return v if isinstance(v, list) else [v] if v else []
