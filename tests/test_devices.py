"""Device records, udev-style matching, coverage and the unsafe-device blockers."""

import json

from hookfakes import CARD0, DEVICES, DISK, ETH0, GPU, PyHook

from kupgrade.hooks.coverage import (
    Coverage,
    coverage,
    device_nodes,
    format_holders,
    interesting,
    open_devnodes,
    unsafe_blockers,
)
from kupgrade.hooks.devices import Device, check_match, matches


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


# What open_devnodes() would answer: someone computes on the amdgpu GPU and uses the RDMA adapter.
HELD = {"/dev/dri/card0": [(4242, "python3")], "/dev/infiniband/uverbs0": [(4300, "ib_send_bw")],
        "/dev/null": [(1, "systemd"), (4242, "python3")]}


def test_coverage_and_unsafe_table():
    rows = {c.device.sys_name: c for c in coverage(DEVICES, [PyHook("network").hook()], open_nodes=HELD)}
    assert rows["eth0"].hooks == ("network",) and not rows["eth0"].unsafe
    assert "GPU memory" in rows["0000:00:02.0"].unsafe and rows["0000:00:02.0"].blocking
    assert rows["0000:00:02.0"].holders == ((4242, "python3"),)      # through its child card0
    assert rows["card0"].unsafe == "" and rows["card0"].holders == ()   # the PCI function carries the verdict, once
    assert "RDMA" in rows["mlx5_0"].unsafe and rows["mlx5_0"].holders == ((4300, "ib_send_bw"),)
    assert rows["vda"] == Coverage(DISK, (), "", False) and not rows["vda"].blocking
    assert Coverage.from_json(json.loads(json.dumps(rows["mlx5_0"].to_json()))) == rows["mlx5_0"]


def test_unused_unsafe_devices_do_not_block():
    rows = {c.device.sys_name: c for c in coverage(DEVICES, [], open_nodes={"/dev/null": [(1, "systemd")]})}
    assert rows["0000:00:02.0"].unsafe and not rows["0000:00:02.0"].holders and not rows["0000:00:02.0"].blocking
    assert unsafe_blockers(DEVICES, [], open_nodes={}) == []


def test_in_use_blocker_names_the_holders():
    held = {"/dev/dri/renderD128": [(4242, "python3"), (4300, "ollama")], "/dev/dri/card0": [(4300, "ollama")]}
    render = Device(GPU.sys_path + "/drm/renderD128", "drm", "renderD128", "", "amdgpu", devnode="/dev/dri/renderD128")
    [b] = unsafe_blockers([GPU, CARD0, render], [], open_nodes=held)
    assert b.message.startswith("0000:00:02.0 (pci, driver amdgpu) is in use by PID 4242 (python3), 4300 (ollama): "
                                "GPU memory")
    assert "stop those programs" in b.hint and GPU.sys_path in b.hint
    many = tuple((pid, "worker") for pid in range(10, 15))
    assert format_holders(many) == "PID 10 (worker), 11 (worker), 12 (worker) and 2 more"


def test_unsafe_blockers_unless_hooked_or_allowed():
    blockers = unsafe_blockers(DEVICES, [], open_nodes=HELD)
    assert [b.message.split()[0] for b in blockers] == ["0000:00:02.0", "mlx5_0"]
    assert GPU.sys_path in blockers[0].hint
    gpu_hook = PyHook("gpu", match=({"subsystem": "pci", "driver": "amdgpu"},)).hook()
    assert [b.message.split()[0] for b in unsafe_blockers(DEVICES, [gpu_hook], open_nodes=HELD)] == ["mlx5_0"]
    allow = ("infiniband", GPU.sys_path.removeprefix("/sys"))
    assert unsafe_blockers(DEVICES, [], allow=allow, open_nodes=HELD) == []


def test_amdgpu_kfd_and_nvidia_global_nodes():
    nv = Device("/sys/devices/pci0000:00/0000:01:00.0", "pci", "0000:01:00.0", "nvidia")
    assert device_nodes(nv, [nv]) == ("/dev/nvidia*",)
    for node in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia0"):
        [b] = unsafe_blockers([nv], [], open_nodes={node: [(4300, "ollama")]})
        assert "in use by PID 4300 (ollama)" in b.message
    assert unsafe_blockers([nv], [], open_nodes={"/dev/dri/card0": [(1, "Xorg")]}) == []
    assert [c.holders for c in coverage([GPU], [], open_nodes={"/dev/kfd": [(7, "rocm")]})] == [((7, "rocm"),)]


def test_vfio_group_and_accel_nodes():
    vfio = Device("/sys/devices/pci0000:00/0000:00:07.0", "pci", "0000:00:07.0", "vfio-pci",
                  attributes={"iommu_group": "12"})
    accel = Device("/sys/devices/pci0000:00/0000:00:08.0/accel/accel0", "accel", "accel0", "", "habanalabs",
                   devnode="/dev/accel/accel0")
    qemu = [(5000, "qemu-system-x86")]
    assert unsafe_blockers([vfio, accel], [], open_nodes={"/dev/vfio/13": qemu, "/dev/vfio/vfio": qemu}) == []
    held = {"/dev/vfio/12": qemu, "/dev/accel/accel0": [(5100, "train")]}
    assert [b.message.split()[0] for b in unsafe_blockers([vfio, accel], [], open_nodes=held)] == ["0000:00:07.0",
                                                                                                  "accel0"]
    no_group = Device(vfio.sys_path, "pci", "0000:00:07.0", "vfio-pci")
    assert device_nodes(no_group, [no_group]) == ()


def test_open_devnodes_scans_each_process_once(tmp_path):
    def proc(pid, comm, fds):
        (tmp_path / pid / "fd").mkdir(parents=True)
        (tmp_path / pid / "comm").write_text(comm + "\n")
        for fd, target in fds.items():
            (tmp_path / pid / "fd" / fd).symlink_to(target)
    proc("4242", "python3", {"0": "/dev/null", "3": "/dev/dri/renderD128", "4": "/dev/dri/renderD128",
                             "5": "socket:[1234]", "6": "/home/u/model.bin"})
    proc("4300", "ollama", {"3": "/dev/dri/renderD128"})
    (tmp_path / "4400").mkdir()                           # exited between listing and reading
    (tmp_path / "sys").mkdir()                            # not a process
    held = open_devnodes(tmp_path)
    assert sorted(held["/dev/dri/renderD128"]) == [(4242, "python3"), (4300, "ollama")]
    assert set(held) == {"/dev/null", "/dev/dri/renderD128"}


def test_interesting_hides_driverless_virtual_nodes():
    plain = Device("/sys/devices/virtual/misc/cpu_dma_latency", "misc", "cpu_dma_latency")
    assert not interesting(coverage([plain], [], open_nodes={})[0])
    assert interesting(coverage([DISK], [], open_nodes={})[0]) is False     # a class device: its driver is its parent's
    assert interesting(coverage([GPU], [], open_nodes={})[0])              # unsafe class, even unused
