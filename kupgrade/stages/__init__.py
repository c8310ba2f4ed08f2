"""The stages, in pipeline order: preflight, prepare, freeze, flush, snapshot, kexec, then
restore in the new kernel (a rehearsal runs handover + restore on the running kernel instead of
the switch). Each module has NAME, plan(ctx) -> list of actions (changes nothing) and
run(ctx) -> (summary, its result: a frozen dataclass of kupgrade/output/results.py), optionally
SKIPPABLE (why --step may skip it).
kupgrade/pipeline.py orders them, times them, records them and rolls back on failure before
the point of no return.

This package imports nothing itself: the new kernel's restore path loads only what it needs
(every import costs time inside the downtime)."""
