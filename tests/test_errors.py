"""Errors carry their details from construction: adding a stage's details builds a new error of
the same type (exit code, payload), the first one stays as it was."""
import signal

import pytest

from kupgrade.errors import BlockedError, CommandError, ConfigError, HookError, RestoreError, StageError
from kupgrade.inflight import Interrupted
from kupgrade.output.record import Blocker

ERRORS = [
    ConfigError("bad", "fix it", details={"own": 1}),
    StageError("bad", "fix it", details={"own": 1}),
    RestoreError("bad", "fix it", details={"own": 1}),
    BlockedError([Blocker("blocked", "unblock")], details={"own": 1}),
    CommandError(["criu", "dump"], 1, "Error (criu): no", "see the log", details={"own": 1}),
    HookError("hook failed", "see it", ["result"], details={"own": 1}),
    Interrupted(signal.SIGTERM, details={"own": 1}),
]


@pytest.mark.parametrize("e", ERRORS, ids=lambda e: type(e).__name__)
def test_details_make_a_new_error_of_the_same_kind(e):
    stage = e.in_stage({"own": 0, "stage": 2})
    more = e.with_details({"own": 3})
    assert type(stage) is type(e) and stage is not e and stage.exit_code == e.exit_code
    assert (stage.message, stage.hint) == (e.message, e.hint)
    assert stage.details == {"own": 1, "stage": 2}          # the error's own keys win over the stage's
    assert more.details == {"own": 3}                         # given ones win
    assert e.details == {"own": 1}                            # the first error is never changed
    for attr in ("blockers", "argv", "returncode", "stderr_tail", "results", "signum"):
        assert getattr(stage, attr, None) == getattr(e, attr, None)
