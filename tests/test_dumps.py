"""The snapshot stage's dumps: every tree at once (up to PARALLEL), a failed one named with
criu's first error while the others are dumped and left stopped (criu faked)."""

import threading

from kupgrade.config import Config
from kupgrade.context import Context
from kupgrade.errors import CommandError
from kupgrade.output.record import UpgradeRecord, Workload
from kupgrade.stages import snapshot


def test_trees_are_dumped_together_and_a_failure_is_theirs_alone(tmp_path, monkeypatch):
    a, b = Workload("pid:5", 5, (5,)), Workload("pid:7", 7, (7,))
    ctx = Context(Config(snapshot_dir=str(tmp_path), state_dir=str(tmp_path / "state")), UpgradeRecord("U1", "run", "6.1", workloads=(a, b)))
    ctx.workloads = [a, b]
    both = threading.Barrier(2, timeout=5)      # each criu waits for the other: they run at once

    def criu(argv, **kw):
        assert kw["new_session"]
        both.wait()
        images = argv[argv.index("--images-dir") + 1]
        if images.endswith("tree-7"):
            open(images + "/dump.log", "w").write("(00.2) Error (criu/files.c:1): cannot dump a thing\n")
            raise CommandError(argv, 1, "")
    monkeypatch.setattr(snapshot, "run_cmd", criu)
    monkeypatch.setattr(snapshot.workloads, "retree", lambda w: w)
    todo = [(w, *snapshot._markers(w, tmp_path / "images" / w.key)) for w in (a, b)]
    failed = snapshot._dump_all(ctx, todo)
    assert list(failed) == ["tree-7"] and "cannot dump a thing" in failed["tree-7"].message
    assert ctx.stopped == [a] and ctx.dumping == []
