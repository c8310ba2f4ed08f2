"""freeze: what is frozen with the cgroup freezer, and what is left to criu's seize."""

from types import SimpleNamespace

from kupgrade.output.record import Workload
from kupgrade.stages import freeze

SESSION = "/user.slice/user-0.slice/session-4.scope"


def test_an_ssh_login_since_preflight_leaves_the_unit_to_crius_seize(monkeypatch):
    # ssh.service was one cgroup at preflight; a login since then put a session (PID 30) in its tree
    w = Workload("unit:ssh.service", 10, (10,), cgroup="/system.slice/ssh.service", unit="ssh.service")
    now = Workload("unit:ssh.service", 10, (10, 30), cgroup=w.cgroup, unit="ssh.service")
    thawed = []
    monkeypatch.setattr(freeze.workloads, "retree", lambda x: now)
    monkeypatch.setattr(freeze.workloads, "other_cgroups", lambda x: (SESSION,))
    monkeypatch.setattr(freeze, "set_frozen", lambda cg, frozen: thawed.append((cg, frozen)))
    ctx = SimpleNamespace(workloads=[w], frozen_cgroups=[w.cgroup], note=lambda: None)
    took = {w.cgroup: 0.01}
    freeze._check_frozen_trees(ctx, took)
    assert thawed == [(w.cgroup, False)] and ctx.frozen_cgroups == [] and took == {}
    assert ctx.workloads[0].other_cgroups == (SESSION,) and ctx.workloads[0].pids == (10, 30)
    assert not ctx.workloads[0].frozen
