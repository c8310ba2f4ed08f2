"""One module per scenario: NAME, DESCRIPTION and run(vm, image, result)."""

from . import abort, basic, rehearse, tui

SCENARIOS = {m.NAME: m for m in (basic, rehearse, tui, abort)}
