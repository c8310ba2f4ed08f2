"""The block hook against a fake /sys/block, a fake mountinfo and a fake mdadm: an md RAID1
(vdb + vdc) in its initial resync, ext4 on it mounted on /var/lib/workload, as in the md
vm-test; mdadm's output as 4.2 prints it."""

import json

import pytest

from kupgrade.hooks import parse_spec
from kupgrade_hooks import block

UUID = "5d8f2a1c:9b3e4f70:a1b2c3d4:e5f60718"
DETAIL = f"MD_LEVEL=raid1\nMD_DEVICES=2\nMD_METADATA=1.2\nMD_UUID={UUID}\nMD_DEVNAME=0\nMD_NAME=kupgrade-guest:0\n"
EXAMINE = f"ARRAY /dev/md/0  level=raid1 metadata=1.2 num-devices=2 UUID={UUID} name=kupgrade-guest:0\n" \
          "   devices=/dev/vdc,/dev/vdb\n"
MOUNTINFO = ("22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
             "40 22 9:0 / /var/lib/workload rw,relatime shared:20 - ext4 /dev/md0 rw\n"
             "41 22 9:0 /sub /srv/sub rw,relatime shared:20 - ext4 /dev/md0 rw\n")


class FakeMd:
    """/sys/block with vda, vdb, vdc and md0; mdadm and mount that act on it."""

    def __init__(self, tmp):
        self.sys, self.calls, self.assembled_as = tmp / "block", [], None
        self.mountinfo = tmp / "mountinfo"
        self.mountinfo.write_text(MOUNTINFO)
        for disk in ("vda", "vdb", "vdc"):
            self.disk(disk)
        self.md("md0")

    def disk(self, name, inflight="0 0"):
        d = self.sys / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "inflight").write_text(f"{inflight}\n")
        return d

    def md(self, name, action="resync", completed="262144 / 524288", speed_max="1000 (local)", state="active"):
        d = self.disk(name)
        (d / "dev").write_text("9:0\n")
        md = d / "md"
        md.mkdir()
        for attr, value in (("level", "raid1"), ("raid_disks", 2), ("degraded", 0), ("array_state", state),
                            ("sync_action", action), ("sync_completed", completed), ("resync_start", "none"),
                            ("sync_speed_min", "1000 (system)"), ("sync_speed_max", speed_max)):
            (md / attr).write_text(f"{value}\n")
        (d / "slaves").mkdir()
        for m in ("vdb", "vdc"):
            (d / "slaves" / m).touch()
        return md

    def mdadm(self, *args, check=True):
        self.calls.append(("mdadm",) + args)
        if args[:2] == ("--detail", "--export"):
            return DETAIL if (self.sys / args[2].removeprefix("/dev/") / "md").is_dir() else ""
        if args[0] == "--examine":
            return EXAMINE
        if args[0] == "--assemble":
            self.assembled_as = args[1]
            md = self.md(args[1].removeprefix("/dev/"), completed="270000 / 524288", speed_max="200000 (system)")
            (md / "resync_start").write_text("262144\n")
        return ""

    def modprobe(self, module):
        self.calls.append(("modprobe", module))

    def mount(self, fstype, options, source, target):
        self.calls.append(("mount", fstype, options, source, target))
        with self.mountinfo.open("a") as f:
            f.write(f"50 22 9:0 / {target} {options} - {fstype} {source} rw\n")


@pytest.fixture
def md(tmp_path, monkeypatch):
    fake = FakeMd(tmp_path)
    monkeypatch.setattr(block, "IO", fake)
    monkeypatch.setattr(block, "SYS_BLOCK", fake.sys)
    monkeypatch.setattr(block, "MOUNTINFO", fake.mountinfo)
    monkeypatch.setattr(block, "_froze", {})
    monkeypatch.setattr(block, "WAIT_S", 0.2)
    monkeypatch.setattr(block, "DRAIN_S", 0.2)
    return fake


def request(point, state=None):
    req = {"api": 1, "point": point, "hook": "block",
           "devices": [{"sys_path": f"/sys/devices/x/{n}", "subsystem": "block", "sys_name": n, "devtype": "disk"}
                       for n in ("md0", "vda", "vdb", "vdc")]}
    if state is not None:
        req["state"] = state
    return req


def attr(md, name, a):
    return (md.sys / name / "md" / a).read_text().strip()


def test_describe_covers_every_disk():
    spec = parse_spec(block.describe(), "block")
    assert spec.match == ({"subsystem": "block", "devtype": "disk"},)


def test_sysfs_parsing(md):
    a = block.read_md("md0")
    assert (a["level"], a["sync_action"], a["sync_completed"], a["resync_start"]) == ("raid1", "resync", 262144, None)
    assert (a["speed_min"], a["speed_max"], a["members"]) == (None, 1000, ["vdb", "vdc"])     # only local limits
    assert [m["mountpoint"] for m in block.mounts_of("9:0")] == ["/var/lib/workload", "/srv/sub"]
    assert block.members(UUID) == ["/dev/vdb", "/dev/vdc"] and block.uuid_of("md0") == UUID


def test_quiesce_freezes_the_resync_and_resume_unfreezes_it(md):
    reply = block.quiesce(request("quiesce"))
    assert reply["frozen"] == [{"name": "md0", "was": "resync", "at": 262144, "checkpoint": None, "action": "frozen"}]
    assert attr(md, "md0", "sync_action") == "frozen" and reply["in_flight"] == {}
    assert block.resume(request("resume")) == {"unfrozen": [{"name": "md0", "sync_action": "idle"}]}
    assert block.resume(request("resume"))["unfrozen"][0]["sync_action"] == "idle"     # twice: same


def test_an_array_the_admin_froze_stays_frozen_after_resume(md):
    (md.sys / "md0" / "md" / "sync_action").write_text("frozen\n")
    assert block.quiesce(request("quiesce"))["frozen"] == []
    assert block.resume(request("resume")) == {"unfrozen": []}
    assert block.save(request("save"))["state"]["arrays"][0]["action"] == "frozen"


def test_drain_waits_for_in_flight_requests_and_fails_after_its_bound(md, monkeypatch):
    md.disk("vdb", "2 1")
    reads = iter(["2 1\n", "0 1\n", "0 0\n"])
    real = block._attr
    monkeypatch.setattr(block, "_attr", lambda p: next(reads, "0 0") if p == md.sys / "vdb" / "inflight" else real(p))
    assert block.drain(["vda", "vdb"])["in_flight_at_first_look"] == {"vdb": [2, 1]}
    monkeypatch.setattr(block, "_attr", real)
    assert block.quiesce(request("quiesce"))["in_flight"] == {"vdb": [2, 1]}     # noted, not waited for
    with pytest.raises(RuntimeError, match=r"I/O still in flight after 0.2 s: vdb \(2 reads, 1 writes\)"):
        block.save(request("save"))


def test_save_records_what_the_new_kernel_needs(md):
    block.quiesce(request("quiesce"))
    (md.sys / "md0" / "md" / "resync_start").write_text("262144\n")     # md's checkpoint once frozen
    [s] = block.save(request("save"))["state"]["arrays"]
    assert (s["uuid"], s["action"], s["at_save"], s["resync_start"], s["speed_max"], s["members"]) == (
        UUID, "resync", "frozen", 262144, 1000, ["vdb", "vdc"])
    assert s["mounts"] == [{"root": "/", "mountpoint": "/var/lib/workload", "options": "rw,relatime", "fstype": "ext4"}]
    assert [m["mountpoint"] for m in s["bind_mounts"]] == ["/srv/sub"]
    json.dumps(s)


def new_kernel(md, tmp_path):
    """What the new kernel's restore sees: the members, no array, nothing mounted from it."""
    import shutil
    shutil.rmtree(md.sys / "md0")
    md.mountinfo.write_text(MOUNTINFO.splitlines()[0] + "\n")


def test_restore_assembles_from_all_members_mounts_and_resumes(md, tmp_path):
    block.quiesce(request("quiesce"))
    (md.sys / "md0" / "md" / "resync_start").write_text("262144\n")
    state = block.save(request("save"))["state"]
    new_kernel(md, tmp_path)
    reply = block.restore(request("restore", state))
    assert ("modprobe", "raid1") in md.calls
    assert ("mdadm", "--assemble", "/dev/md0", "/dev/vdb", "/dev/vdc") in md.calls
    assert ("mount", "ext4", "rw,relatime", "/dev/md0", "/var/lib/workload") in md.calls
    assert attr(md, "md0", "sync_speed_max") == "1000"                     # the admin's limit is back
    assert reply["arrays"] == [{"name": "md0", "was": "md0", "how": "assembled", "mounted": ["/var/lib/workload"],
                                "sync_action": "resync", "sync_completed": 270000, "checkpoint": 262144}]
    v = block.verify(request("verify", state))["arrays"][0]
    assert v["resumed_from_checkpoint"] is True and v["sync_action"] == "resync"


def test_restore_never_starts_it_degraded_because_a_member_is_late(md, tmp_path, monkeypatch):
    state = block.save(request("save"))["state"]
    new_kernel(md, tmp_path)
    monkeypatch.setattr(block, "members", lambda uuid: ["/dev/vdb"])
    with pytest.raises(RuntimeError, match="md0: 1 of its 2 members found .*/dev/vdb"):
        block.restore(request("restore", state))
    assert not any(c[:2] == ("mdadm", "--assemble") for c in md.calls)


def test_restore_takes_an_array_udev_assembled_read_auto_under_another_name(md, tmp_path):
    state = block.save(request("save"))["state"]
    new_kernel(md, tmp_path)
    md.md("md127", state="read-auto", action="idle", completed="none")
    reply = block.restore(request("restore", state))
    assert reply["arrays"][0]["how"] == "already assembled" and reply["arrays"][0]["name"] == "md127"
    assert ("mdadm", "--readwrite", "/dev/md127") in md.calls
    assert ("mount", "ext4", "rw,relatime", "/dev/md127", "/var/lib/workload") in md.calls


def test_verify_fails_for_a_missing_mount_or_a_frozen_resync(md):
    block.quiesce(request("quiesce"))
    state = block.save(request("save"))["state"]
    md.mountinfo.write_text(MOUNTINFO.splitlines()[0] + "\n")
    with pytest.raises(RuntimeError, match="md0: not mounted on /var/lib/workload; md0: its resync is still frozen"):
        block.verify(request("verify", state))


def test_preflight_blocks_a_reshape(md):
    (md.sys / "md0" / "md" / "sync_action").write_text("reshape\n")
    reply = block.preflight(request("preflight"))
    assert [b["message"] for b in reply["blockers"]] == ["md array md0 is being reshaped"]
    assert reply["arrays"] == [{"name": "md0", "level": "raid1", "sync_action": "reshape",
                                "mounts": ["/var/lib/workload", "/srv/sub"]}]
