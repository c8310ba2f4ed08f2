"""Device records, udev-style matching, coverage and the unsafe-device blockers."""

import json

from hookfakes import CARD0, DEVICES, DISK, ETH0, GPU, PyHook

from kupgrade.coverage import Coverage, coverage, interesting, unsafe_blockers
from kupgrade.devices import Device, check_match, matches


def test_device_json_round_trip():
    assert Device.from_json(json.loads(json.dumps(CARD0.to_json()))) == CARD0


def test_driver_matches_own_else_parent_driver():
    assert matches({"subsystem": "net", "driver": "virtio_net"}, ETH0)
    assert matches({"driver": "amdgpu"}, GPU) and matches({"driver": "amdgpu"}, CARD0)
    assert not matches({"subsystem": "net", "driver": "e1000e"}, ETH0)


def test_globs_attributes_and_other_keys():
    assert matches({"sys_name": "eth*", "attributes": {"address": "02:fc:*"}}, ETH0)
    assert not matches({"attributes": {"address": "aa:*"}}, ETH0)
    assert not matches({"attributes": {"mtu": "*"}}, ETH0)          # absent attribute: no match
    assert matches({"subsystem": "block", "devtype": "disk"}, DISK)
    assert matches({"sys_path": "/sys/devices/pci0000:00/0000:00:02.0*"}, CARD0)


def test_check_match():
    assert check_match({"subsystem": "net"}) is None
    assert "unknown" in check_match({"vendor": "0x10de"})
    assert "non-empty" in check_match({})


def test_coverage_and_unsafe_table():
    rows = {c.device.sys_name: c for c in coverage(DEVICES, [PyHook("network").hook()])}
    assert rows["eth0"].hooks == ("network",) and not rows["eth0"].unsafe
    assert "GPU memory" in rows["0000:00:02.0"].unsafe and rows["0000:00:02.0"].blocking
    assert rows["card0"].unsafe == ""              # the PCI function carries the verdict, once
    assert "RDMA" in rows["mlx5_0"].unsafe
    assert rows["vda"] == Coverage(DISK, (), "", False) and not rows["vda"].blocking
    assert Coverage.from_json(json.loads(json.dumps(rows["mlx5_0"].to_json()))) == rows["mlx5_0"]


def test_unsafe_blockers_unless_hooked_or_allowed():
    blockers = unsafe_blockers(DEVICES, [])
    assert [b.message.split()[0] for b in blockers] == ["0000:00:02.0", "mlx5_0"]
    assert GPU.sys_path in blockers[0].hint
    gpu_hook = PyHook("gpu", match=({"subsystem": "pci", "driver": "amdgpu"},)).hook()
    assert [b.message.split()[0] for b in unsafe_blockers(DEVICES, [gpu_hook])] == ["mlx5_0"]
    assert unsafe_blockers(DEVICES, [], allow=("infiniband", GPU.sys_path.removeprefix("/sys"))) == []


def test_vfio_and_accel_are_unsafe():
    vfio = Device("/sys/devices/pci0000:00/0000:00:07.0", "pci", "0000:00:07.0", "vfio-pci")
    accel = Device("/sys/devices/pci0000:00/0000:00:08.0/accel/accel0", "accel", "accel0", "", "habanalabs")
    assert len(unsafe_blockers([vfio, accel], [])) == 2


def test_interesting_hides_driverless_virtual_nodes():
    plain = Device("/sys/devices/virtual/misc/cpu_dma_latency", "misc", "cpu_dma_latency")
    assert not interesting(coverage([plain], [])[0])
    assert interesting(coverage([DISK], [])[0]) is False     # a class device: its driver is its parent's
    assert interesting(coverage([GPU], [])[0])
