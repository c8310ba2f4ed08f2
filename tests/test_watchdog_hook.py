"""The watchdog hook against a fake sysfs, a fake /proc and a fake watchdog core: the values
are those read from the i6300ESB in the vm-tests guest (identity, max_timeout 2046, a daemon
holding /dev/watchdog0 as fd 3)."""

import errno
import os
import shutil

import pytest

from kupgrade.hooks import parse_spec
from kupgrade_hooks import watchdog as wd

PCI = "/sys/devices/pci0000:00/0000:00:03.0"


class FakeCore:
    """The watchdog core as userspace sees it: one open file per device, opening starts it,
    closing without the magic character leaves it running; sysfs follows."""

    def __init__(self, tmp, proc):
        self.tmp, self.proc = tmp, proc
        self.fds, self.next_fd, self.loaded, self.pings, self.open_file = {}, 100, [], 0, {}
        self.parent_on_load = False

    def add(self, name="watchdog0", state="inactive", timeout=30, parent=False, identity="i6300ESB timer"):
        d = self.tmp / "class" / name
        d.mkdir(parents=True)
        for attr, value in (("identity", identity), ("state", state), ("timeout", timeout),
                            ("max_timeout", 2046), ("nowayout", 0)):
            (d / attr).write_text(f"{value}\n")
        holders = self.tmp / "module" / "watchdog" / "holders"     # i6300esb uses the watchdog core
        holders.mkdir(parents=True, exist_ok=True)
        (holders / "i6300esb").touch()
        if parent:                  # a driver that sets wdd.parent: the watchdog is below its device
            pci = self.tmp / "pci" / "0000:00:03.0"
            (pci / "driver").mkdir(parents=True, exist_ok=True)
            (self.tmp / "module" / "esb").mkdir(parents=True, exist_ok=True)
            if not (pci / "driver" / "module").exists():
                (pci / "driver" / "module").symlink_to(self.tmp / "module" / "esb")
            (d / "device").symlink_to(pci)
        return d

    def sysfs(self, node):
        return self.tmp / "class" / ("watchdog0" if node == "/dev/watchdog" else os.path.basename(node))

    def hold(self, pid, node="/dev/watchdog0", comm="petter", unit="vmtest-petter.service"):
        p = self.proc / str(pid)
        (p / "fd").mkdir(parents=True)
        (p / "fd" / "3").symlink_to(node)
        (p / "comm").write_text(comm + "\n")
        (p / "cgroup").write_text(f"0::/system.slice/{unit}\n")
        self.open_file[node] = pid

    # --- the Io interface ---
    def borrow(self, pid, fd):
        target = os.readlink(self.proc / str(pid) / "fd" / str(fd))
        return self._fd(target, owned=False)

    def open(self, node):
        if node in self.open_file:
            raise OSError(errno.EBUSY, "busy")
        self.open_file[node] = "hook"
        (self.sysfs(node) / "state").write_text("active\n")     # opening starts it
        return self._fd(node, owned=True)

    def _fd(self, node, owned):
        self.next_fd += 1
        self.fds[self.next_fd] = (node, owned)
        return self.next_fd

    def close(self, fd):
        node, owned = self.fds.pop(fd)
        if owned:
            del self.open_file[node]        # no magic close: it stays active

    def get_timeout(self, fd):
        return int((self.sysfs(self.fds[fd][0]) / "timeout").read_text())

    def set_timeout(self, fd, seconds):
        (self.sysfs(self.fds[fd][0]) / "timeout").write_text(f"{seconds}\n")
        return seconds

    def keepalive(self, fd):
        self.pings += 1

    def load_driver(self, module):
        self.loaded.append(module)
        self.add(parent=self.parent_on_load)


@pytest.fixture
def core(tmp_path, monkeypatch):
    proc = tmp_path / "proc"
    proc.mkdir()
    c = FakeCore(tmp_path, proc)
    monkeypatch.setattr(wd, "IO", c)
    monkeypatch.setattr(wd, "SYS_CLASS", tmp_path / "class")
    monkeypatch.setattr(wd, "PROC", proc)
    monkeypatch.setattr(wd, "SYS_MODULE", tmp_path / "module")
    monkeypatch.setattr(wd, "_original", {})
    monkeypatch.setattr(wd, "WAIT_S", 0.5)
    return c


def request(core, point, **extra):
    devices = [{"sys_path": str(p), "subsystem": "watchdog", "sys_name": p.name}
               for p in sorted((core.tmp / "class").glob("watchdog*"))] if (core.tmp / "class").exists() else []
    return {"api": 1, "point": point, "hook": "watchdog", "devices": devices, "downtime_estimate_s": 20.0, **extra}


def state(core, name="watchdog0"):
    d = core.tmp / "class" / name
    return (d / "state").read_text().strip(), int((d / "timeout").read_text())


def test_describe_follows_the_contract():
    spec = parse_spec(wd.describe(), "watchdog")
    assert spec.match == ({"subsystem": "watchdog"},) and "early-restore" not in spec.points


def test_bridge_covers_the_pause_within_the_hardware():
    assert wd.bridge(10, 20.0, 2046) == 300                 # the floor: a first estimate is a guess
    assert wd.bridge(10, 150.0, 2046) == 510                # 3 x 150 + 60
    assert wd.bridge(10, 150.0, 100) == 100                 # capped at max_timeout
    assert wd.bridge(900, 50.0, 2046) == 900                # never lowered
    assert wd.bridge(10, None, None) == 300


def test_sysfs_record_knows_its_driver_module_and_legacy_node(core):
    core.add(state="active", timeout=10)        # like the i6300ESB: a virtual device, no parent
    w = wd.read(core.tmp / "class" / "watchdog0")
    assert w["identity"] == "i6300ESB timer" and w["timeout"] == 10 and w["max_timeout"] == 2046
    assert w["modules"] == ["i6300esb"] and w["parent"] == "" and wd.armed(w)     # the watchdog core's holders
    assert w["nodes"] == ["/dev/watchdog0", "/dev/watchdog"]
    core.add("watchdog1", parent=True)
    w1 = wd.read(core.tmp / "class" / "watchdog1")
    assert w1["modules"] == ["esb"] and w1["parent"].endswith("0000:00:03.0")    # its parent's driver


def test_holders_name_the_daemon_and_its_unit(core):
    core.add(state="active")
    core.hold(4321, node="/dev/watchdog")
    assert wd.holders(["/dev/watchdog0", "/dev/watchdog"]) == [
        {"pid": 4321, "fd": 3, "comm": "petter", "unit": "vmtest-petter.service"}]


def test_quiesce_raises_through_the_daemons_file_and_resume_puts_it_back(core):
    core.add(state="active", timeout=10)
    core.hold(4321)
    reply = wd.quiesce(request(core, "quiesce"))
    assert reply["raised"] == [{"name": "watchdog0", "timeout": 10, "bridge": 300,
                                "holder": "PID 4321 (petter, vmtest-petter.service)"}]
    assert state(core) == ("active", 300) and core.pings == 1
    assert core.open_file == {"/dev/watchdog0": 4321} and core.fds == {}     # borrowed and given back
    saved = wd.save(request(core, "save"))["state"]["watchdogs"]
    assert [(s["timeout"], s["bridge"], s["modules"], s["holder"]) for s in saved] == [
        (10, 300, ["i6300esb"], {"comm": "petter", "unit": "vmtest-petter.service"})]
    assert wd.resume(request(core, "resume"))["restored"] == [{"name": "watchdog0", "timeout": 10}]
    assert wd.resume(request(core, "resume"))["restored"] == [{"name": "watchdog0", "timeout": 10}]   # twice: same
    assert state(core) == ("active", 10)


def test_a_stopped_watchdog_is_never_opened(core):
    core.add(state="inactive", timeout=30)
    assert wd.quiesce(request(core, "quiesce")) == {"raised": []}
    assert wd.save(request(core, "save")) == {"state": {"watchdogs": []}}
    assert state(core) == ("inactive", 30) and not core.fds and not core.open_file


def test_preflight_blocks_an_orphaned_watchdog_and_a_daemon_selected_as_workload(core):
    core.add("watchdog0", state="active", timeout=10)
    core.add("watchdog1", state="active", timeout=10, parent=False, identity="Software Watchdog")
    core.hold(4321, node="/dev/watchdog1", comm="mydaemon", unit="")
    reply = wd.preflight(request(core, "preflight", workload_pids=[4321, 4322]))
    messages = [b["message"] for b in reply["blockers"]]
    assert messages[0].startswith("watchdog watchdog0 (i6300ESB timer) is armed but no process holds it open")
    assert "PID 4321 (mydaemon), which is selected as a workload: criu cannot checkpoint" in messages[1]
    assert state(core, "watchdog1") == ("active", 10)          # preflight changes nothing


def test_preflight_reads_the_timeout_it_would_raise(core):
    core.add(state="active", timeout=10)
    core.hold(4321)
    assert wd.preflight(request(core, "preflight", workload_pids=[30001]))["watchdogs"] == [
        {"name": "watchdog0", "armed": True, "timeout": 10, "holder": "PID 4321 (petter, vmtest-petter.service)",
         "bridge": 300}]


def test_restore_loads_the_driver_and_leaves_it_armed_for_the_daemon(core):
    core.add(state="active", timeout=10)
    core.hold(4321)
    wd.quiesce(request(core, "quiesce"))
    saved = wd.save(request(core, "save"))["state"]
    # the new kernel: no driver loaded, no daemon yet
    for p in (core.tmp / "class", core.proc):
        shutil.rmtree(p)
    core.proc.mkdir()
    core.open_file.clear()
    reply = wd.restore({"point": "restore", "devices": [], "state": saved})
    assert core.loaded == ["i6300esb"]
    assert reply["rearmed"] == [{"name": "watchdog0", "was": "watchdog0", "armed_with": 300,
                                 "until": "vmtest-petter.service opens it"}]
    assert state(core) == ("active", 300) and core.open_file == {}      # armed, free for the daemon
    v = wd.verify({"point": "verify", "devices": [], "state": saved})
    assert v["watchdogs"] == [{"name": "watchdog0", "armed": True, "timeout": 300, "saved_timeout": 10,
                               "held_by": "nobody"}]


def test_restore_leaves_a_watchdog_its_daemon_already_took(core, monkeypatch):
    core.add(state="active", timeout=10)
    monkeypatch.setattr(wd.os, "getpid", lambda: 99999)    # pytest may be PID 1 (a container)
    core.hold(1, comm="systemd")
    saved = {"watchdogs": [{"name": "watchdog0", "sys_path": "x", "parent": "",
                            "modules": ["i6300esb"], "identity": "i6300ESB timer", "timeout": 10, "bridge": 300,
                            "holder": {"comm": "systemd", "unit": "PID 1"}}]}
    reply = wd.restore({"point": "restore", "devices": [], "state": saved})
    assert reply["rearmed"] == [{"name": "watchdog0", "was": "watchdog0", "armed_by": "PID 1 (systemd, PID 1)",
                                 "timeout": 10}]
    assert state(core) == ("active", 10) and not core.loaded


def test_verify_fails_when_it_is_not_armed_and_restore_when_it_is_gone(core):
    core.add(state="inactive", timeout=30)
    saved = {"watchdogs": [{"name": "watchdog0", "sys_path": "x", "parent": "", "modules": [],
                            "identity": "i6300ESB timer", "timeout": 10, "bridge": 300, "holder": {}}]}
    with pytest.raises(RuntimeError, match="not armed"):
        wd.verify({"state": saved})
    saved["watchdogs"][0]["identity"] = "Other"
    with pytest.raises(RuntimeError, match="Other.*is not there .no driver module known"):
        wd.restore({"state": saved})


def test_find_prefers_the_parent_device_then_a_unique_identity():
    a = {"parent": "/sys/devices/pci0000:00/0000:00:03.0", "identity": "i6300ESB timer"}
    b = {"parent": "/sys/devices/pci0000:00/0000:00:05.0", "identity": "i6300ESB timer"}
    assert wd.find({"parent": b["parent"], "identity": "i6300ESB timer"}, [a, b]) is b
    assert wd.find({"parent": "", "identity": "i6300ESB timer"}, [a, b]) is None     # ambiguous
    assert wd.find({"parent": "/gone", "identity": "i6300ESB timer"}, [a]) is a


def test_a_rehearsal_gets_the_daemons_timeout_back_at_restore(core):
    core.add(state="active", timeout=10)
    core.hold(4321)
    wd.quiesce(request(core, "quiesce"))
    saved = wd.save(request(core, "save"))["state"]
    reply = wd.restore({"point": "restore", "devices": [], "state": saved})     # same kernel, same daemon
    assert reply["rearmed"] == [{"name": "watchdog0", "was": "watchdog0",
                                 "armed_by": "PID 4321 (petter, vmtest-petter.service)", "timeout": 10}]
    assert state(core) == ("active", 10) and not core.loaded
