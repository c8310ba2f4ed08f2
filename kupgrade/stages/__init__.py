"""The stages, in pipeline order: preflight, freeze, flush, snapshot, kexec, then restore in
the new kernel. Each module has NAME, plan(ctx) -> list of actions (changes nothing) and
run(ctx) -> (summary, details). kupgrade/pipeline.py times them, records them and rolls back
on failure before the point of no return.

This package imports nothing itself: the new kernel's restore path loads only what it needs
(every import costs time inside the downtime)."""

ORDER = ("preflight", "freeze", "flush", "snapshot", "kexec", "restore")
