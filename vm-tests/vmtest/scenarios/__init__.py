"""One module per scenario: NAME, DESCRIPTION and run(vm, image, result)."""

from . import abort, basic

SCENARIOS = {m.NAME: m for m in (basic, abort)}
