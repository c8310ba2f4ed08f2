"""The stages, in pipeline order. Each module has NAME, plan(ctx) -> list of actions (changes
nothing) and run(ctx) -> StageResult. The pipeline (kupgrade/pipeline.py) times them, records
them and rolls back on failure before the point of no return."""

from . import preflight, freeze, flush, snapshot, kexec, restore

UPGRADE = (preflight, freeze, flush, snapshot, kexec)
ALL = UPGRADE + (restore,)
