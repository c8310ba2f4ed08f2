"""The host-side harness logic that decides pass/fail and measures downtime (no VM needed)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vm-tests"))

from vmtest.qemu import Line, Machine, qemu_argv  # noqa: E402
from vmtest.timeline import breakdown, marks  # noqa: E402
from vmtest.workload import Heartbeat, Workload  # noqa: E402


def beats(*pairs):
    return [Heartbeat(t, c, 30002, 30001, 0) for t, c in pairs]


def test_consecutive_and_gap():
    wl = Workload(vm=None)
    wl.beats = beats((0.0, 5), (0.1, 6), (0.2, 7), (30.2, 8), (30.3, 9))
    assert wl.consecutive()
    gap, a, b = wl.largest_gap()
    assert round(gap, 3) == 30.0 and (a.counter, b.counter) == (7, 8)
    wl.beats = beats((0.0, 5), (0.1, 6), (30.0, 6))          # duplicate after restore
    assert not wl.consecutive()
    wl.beats = beats((0.0, 5), (0.1, 6), (30.0, 1))          # restarted
    assert not wl.consecutive()
    wl.beats = []
    assert not wl.consecutive()


def test_breakdown_from_console_marks():
    class VM:
        console = [Line(9.0, "old noise"), Line(10.5, "[ 88.2] kexec_core: Starting new kernel"),
                   Line(14.0, "[ 0.0] Linux version 6.12.117+deb12-amd64 (x)"),
                   Line(20.0, "vmtest-init: kernel 6.12.117+deb12-amd64 up"),
                   Line(20.1, "vmtest-init: restore begin"), Line(25.0, "vmtest-init: restore end rc=0")]
    m = marks(VM, "6.12.117+deb12-amd64", since=10.0)
    assert set(m) == {"kexec_exec", "new_kernel_banner", "init_started", "restore_begin", "restore_end"}
    b = breakdown(10.0, 24.5, m)
    assert b["last_heartbeat->kexec_exec"] == 0.5
    assert b["new_kernel_banner->init_started"] == 6.0
    assert b["restore_begin->first_heartbeat"] == 4.4 and b["first_heartbeat->restore_end"] == 0.5
    assert all(v >= 0 for v in b.values())


def test_qemu_argv_is_one_flag_per_value(tmp_path):
    from vmtest.image import Image
    img = Image(tmp_path / "root.img", tmp_path / "vmlinuz", tmp_path / "initrd")
    argv = qemu_argv(img, tmp_path / "o.qcow2", tmp_path / "con", tmp_path / "ctl", "root=/dev/vda")
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-append") + 1] == "root=/dev/vda"
    assert "-no-reboot" in argv
    assert argv[argv.index("-accel") + 1] in ("tcg", "kvm")


def test_machine_adds_devices_disks_and_kernel_words(tmp_path):
    from vmtest.image import Image
    img = Image(tmp_path / "root.img", tmp_path / "vmlinuz", tmp_path / "initrd")
    m = Machine(args=("-device", "i6300esb"), append="watchdog.stop_on_reboot=0", disks=("64M", "64M"))
    argv = qemu_argv(img, tmp_path / "o.qcow2", tmp_path / "con", tmp_path / "ctl", "root=/dev/vda",
                     qmp=tmp_path / "qmp", machine=m, disks=(tmp_path / "d1.qcow2", tmp_path / "d2.qcow2"))
    assert argv[argv.index("-append") + 1] == "root=/dev/vda watchdog.stop_on_reboot=0"
    assert argv[argv.index("-device") + 1] == "i6300esb"
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert [d.split(",")[0] for d in drives] == [f"file={tmp_path}/o.qcow2", f"file={tmp_path}/d1.qcow2",
                                                 f"file={tmp_path}/d2.qcow2"]     # root disk stays vda
    assert argv[argv.index("-mon") + 1] == "chardev=qmp,mode=control"


def test_only_the_emulators_code_patching_race_is_retried():
    from vmtest.qemu import emulator_race
    race = ["[    2.416644] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI", "[    2.417410] RIP: 0010:sched_clock_cpu+0x9/0x190",
            "[    2.417728] Code: 00 e9 b8 fe ff ff 66 <90> e8 41 ac f0 ff"]
    assert emulator_race(race) == "[    2.416644] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI / faulting byte 90"
    assert emulator_race(race[:2] + ["[    2.4] Code: 00 <cc> 90"]) == ""       # a real int3 there: a real bug
    assert emulator_race(["[    3.0] BUG: kernel NULL pointer dereference", "Code: 00 <90>"]) == ""
    assert emulator_race([]) == ""


def test_every_result_carries_the_common_fields():
    from vmtest.scenario import COMMON, Result
    res = Result("x")
    res.data.update(kernel_before="6.1", downtime_s=1.5, extra=1)
    doc = res.to_json()
    assert all(k in doc for k in COMMON)
    assert doc["kernel_before"] == "6.1" and doc["downtime_s"] == 1.5 and doc["kernel_after"] is None
    assert doc["extra"] == 1


def test_workload_kept_checks_pids_beats_and_buffer():
    from vmtest.scenario import Result, workload_kept

    class WL(Workload):
        def state(self):
            return self.now
    wl = WL(vm=None)
    wl.beats = beats((0.0, 5), (0.1, 6), (5.0, 7))
    before = {"pid": 30001, "child": 30002, "sha256_start": "s", "counter": 5}
    wl.now = {"pid": 30001, "child": 30002, "sha256": "s", "sha256_start": "s", "counter": 7}
    res = Result("x")
    assert workload_kept(res, wl, before) == {"pids_preserved": True, "state_preserved": True}
    assert res.passed
    wl.now = {**wl.now, "sha256": "damaged"}
    wl.beats.append(Heartbeat(6.0, 8, 31000, 30001, 0))     # a beat from another child
    res = Result("x")
    assert workload_kept(res, wl, before) == {"pids_preserved": False, "state_preserved": False}
    assert [c["ok"] for c in res.checks] == [False, True, False, True]


def test_time_spent_ranks_the_guest_calls_by_host_time():
    import time
    from vmtest.qemu import Guest
    g = Guest(image=None, workdir=Path("/nonexistent"))
    now = time.monotonic()
    g._spent("kupgrade run", now - 40)
    g._spent("kupgrade check", now - 3)
    g._spent("kupgrade check", now - 4)
    g._spent("waiting for 'ready'", now - 20)
    spent = g.time_spent(top=2)
    assert list(spent) == ["kupgrade run", "waiting for 'ready'"]
    assert spent["kupgrade run"]["calls"] == 1 and spent["kupgrade run"]["s"] >= 40
    assert g.time_spent()["kupgrade check"]["calls"] == 2


def test_command_label_names_the_command_behind_env():
    from vmtest.qemu import command_label
    assert command_label(["env", "KUPGRADE_FAULT=dump", "kupgrade", "run", "--yes"]) == "kupgrade run"
    assert command_label(["kupgrade", "check", "--json"]) == "kupgrade check"
    assert command_label(["systemctl", "is-active", "x"]) == "systemctl"
    assert command_label(["env"]) == "env" and command_label([]) == "?"
    assert command_label(("kupgrade",)) == "kupgrade"
