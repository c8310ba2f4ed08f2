"""The PIDs a kernel's own threads take before userspace: recorded each boot, remembered per
release and CPU count, and preflight's blocker for a workload PID the target's boot will take."""

import subprocess
from pathlib import Path

from kupgrade.config import Config
from kupgrade.context import Context, Plan, Target
from kupgrade.output.record import UpgradeRecord, Workload
from kupgrade.stages import preflight
from kupgrade.switch import bootpids, contract


def early(tmp_path, release="6.1.0-47-amd64", cpus=2, pids="1 2 3 4 10 97 98 150"):
    f = tmp_path / "early-pids"
    f.write_text(f"release {release}\ncpus {cpus}\npids {pids}\n")
    return f


def test_the_init_top_script_writes_what_read_parses(tmp_path):
    text = contract.render((Path(__file__).resolve().parents[1] / "kupgrade/data/initramfs-top").read_text())
    assert f"> {contract.EARLY_PIDS}" in text and "release %s" in text and "/proc/[0-9]*" in text
    here = bootpids.read(early(tmp_path))
    assert here == bootpids.EarlyPids("6.1.0-47-amd64", 2, (1, 2, 3, 4, 10, 97, 98, 150)) and here.highest == 150
    (tmp_path / "bad").write_text("release x\ncpus two\n")
    assert bootpids.read(tmp_path / "bad") is None and bootpids.read(tmp_path / "none") is None


def _start_above(tmp_path, pid_max, last, top, pidmax=""):
    """init-top's start_above, run against files standing in for the sysctls."""
    text = contract.render((Path(__file__).resolve().parents[1] / "kupgrade/data/initramfs-top").read_text())
    fn = text[text.index("start_above() {"):text.index("\n}\n", text.index("start_above() {")) + 3]
    sysctl, kmsg = tmp_path / "sys", tmp_path / "kmsg"
    sysctl.mkdir(exist_ok=True)
    (sysctl / "pid_max").write_text(f"{pid_max}\n")
    (sysctl / "ns_last_pid").write_text(f"{last}\n")
    kmsg.write_text("")
    script = fn.replace("/proc/sys/kernel", str(sysctl)).replace("> /dev/kmsg", f">> {kmsg}")
    subprocess.run(["sh", "-c", f'bb=""\npidmax="{pidmax}"\n{script}start_above {top}\n'], check=True)
    return int((sysctl / "pid_max").read_text()), int((sysctl / "ns_last_pid").read_text()), kmsg.read_text()


def test_init_top_raises_a_boot_pid_max_below_the_snapshots_pids_first(tmp_path):
    # the systemd-service run of 2026-12-05: 6.12 booted with pid_max 32768 (2 CPUs), the snapshot
    # had PID 40002, the write of ns_last_pid was refused and the boot's PIDs reached the snapshot's
    most, last, said = _start_above(tmp_path, 32768, 150, 40002, pidmax="4194304")
    assert (most, last) == (4194304, 40002)
    assert "pid_max raised from 32768 to 4194304" in said and "new PIDs start above 40002" in said
    assert _start_above(tmp_path, 32768, 150, 40002)[:2] == (4194304, 40002)          # no word: the limit
    assert _start_above(tmp_path, 32768, 150, 40002, pidmax="99999")[:2] == (99999, 40002)
    assert _start_above(tmp_path, 32768, 150, 30005, pidmax="4194304")[:2] == (4194304, 30005)   # room above
    # the old kernel ran with 32768 too (no systemd): kept, as the system has it
    most, last, said = _start_above(tmp_path, 32768, 150, 30005, pidmax="32768")
    assert (most, last) == (32768, 30005) and "raised" not in said
    assert _start_above(tmp_path, 32768, 150, 33000, pidmax="32768")[:2] == (4194304, 33000)      # or it fails
    most, last, said = _start_above(tmp_path, 4194304, 150, 40002, pidmax="99999")
    assert (most, last) == (4194304, 40002) and "raised" not in said
    assert _start_above(tmp_path, 32768, 150, 300)[:2] == (32768, 300)
    assert _start_above(tmp_path, 32768, 500, 300) == (32768, 500, "")


def test_a_measured_boot_of_the_target_beats_the_estimate(tmp_path):
    state = tmp_path / "state"
    here = bootpids.remember(state, early(tmp_path))
    guess = bootpids.predict(state, "6.12.117+deb12-amd64", 2, here)
    assert not guess.measured and guess.upto == 300 and "+100 % for another release" in guess.basis
    bootpids.remember(state, early(tmp_path, "6.12.117+deb12-amd64", pids="1 2 300"))
    guess = bootpids.predict(state, "6.12.117+deb12-amd64", 2, here)
    assert guess.measured and guess.upto == 300 and "an earlier boot of 6.12.117+deb12-amd64" in guess.basis
    assert not bootpids.predict(state, "6.12.117+deb12-amd64", 8, here).measured     # other CPU count
    assert bootpids.predict(state, "7.0", 2, None) is None


def test_preflight_names_a_workload_pid_the_target_boot_takes(tmp_path, monkeypatch):
    monkeypatch.setattr(bootpids, "read", lambda path=None: bootpids.EarlyPids("6.1.0-47-amd64", 2, (1, 2, 120)))
    monkeypatch.setattr(preflight.os, "cpu_count", lambda: 2)
    ctx = Context(Config(state_dir=str(tmp_path)), UpgradeRecord("U1", "run", "6.1.0-47-amd64"))
    ctx.plan = Plan(target=Target("6.12.117+deb12-amd64", Path("/boot/x"), Path("/boot/y")))
    ctx.workloads = [Workload("unit:ssh.service", 140, (140, 151, 30001), unit="ssh.service"),
                     Workload("pid:30000", 30000, (30000,))]
    blockers = []
    assert preflight._boot_pids(ctx, ctx.plan.target.version, blockers)["upto"] == 240
    assert [b.message for b in blockers] == [
        "unit:ssh.service: PID(s) [140, 151] would be taken in 6.12.117+deb12-amd64's boot before the restore "
        "(estimated from this boot of 6.1.0-47-amd64 (2 CPUs), whose threads held PIDs up to 120 before userspace "
        "ran, +100 % for another release)"]
    assert "restart that service" in blockers[0].hint
