"""The run() wrapper's bounded capture (programs we do not control: device hooks)."""

import time

import pytest

from kupgrade.errors import CommandError
from kupgrade.system.run import STDERR_KEEP, run


def test_bounded_capture_keeps_the_head_of_stdout_and_the_tail_of_stderr():
    p = run(["sh", "-c", "head -c 100000 /dev/zero; head -c 100000 /dev/zero >&2; printf END >&2; exit 3"],
            keep=10, check=False)
    assert p.returncode == 3 and p.stdout == b"\0" * 11
    assert len(p.stderr) == STDERR_KEEP and p.stderr.endswith(b"END")


def test_bounded_capture_feeds_stdin():
    assert run(["cat"], input=b"hello", keep=100).stdout == b"hello"


def test_bounded_capture_times_out_when_a_child_left_behind_holds_the_pipes():
    t0 = time.monotonic()
    with pytest.raises(CommandError) as e:
        run(["sh", "-c", "sleep 3 & echo started"], keep=100, timeout=0.5)
    assert e.value.returncode is None and time.monotonic() - t0 < 2.5
