"""Which hook covers which device, which devices nobody covers, which are unsafe uncovered.

A device no hook covers is handed to the new kernel's driver, which starts it from scratch:
for most devices that is fine (a disk, a serial port), for some it silently destroys work that
CRIU cannot carry (device memory, contexts on the device). Those classes are listed in UNSAFE
with the reason. What is lost is the state programs keep on the device, so an unsafe-class
device blocks preflight only while it is in use (some process holds one of its device nodes
open), unless a hook covers it or `hooks.allow` names it. An idle Intel iGPU does not block.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from kupgrade.hooks import Hook
from kupgrade.hooks.devices import Device, matches
from kupgrade.output.record import Blocker
from kupgrade.system import procfs

Holder = tuple[int, str]            # (pid, comm) of a process holding a device node open

_GPU = ("GPU memory and compute contexts (CUDA, ROCm, OpenCL, Level Zero) live on the device; CRIU "
        "cannot dump them and the new kernel's driver resets the GPU: programs using it lose their work")

# (match spec, device nodes, reason). Matched on the device itself: the PCI function for a GPU
# (driver on the device), the class device for accel/infiniband (driver on its parent). A device
# is in use when a process holds open its own node, a node of a device below it in sysfs (a GPU's
# drm card/renderD nodes), or one of the listed nodes: fnmatch globs, "{name}" filled from its
# attributes (nvidia's and InfiniBand's nodes are not below the device; vfio's is its IOMMU group).
UNSAFE: tuple[tuple[dict, tuple[str, ...], str], ...] = (
    ({"subsystem": "pci", "driver": "nvidia"}, ("/dev/nvidia*",), _GPU),
    ({"subsystem": "pci", "driver": "amdgpu"}, ("/dev/kfd",), _GPU),
    ({"subsystem": "pci", "driver": "i915"}, (), _GPU),
    ({"subsystem": "pci", "driver": "xe"}, (), _GPU),
    ({"subsystem": "accel"}, (), ("AI accelerator contexts and device memory (habanalabs, ivpu, qaic) are not "
                                  "saved by CRIU; the new kernel's driver resets the accelerator")),
    ({"subsystem": "pci", "driver": "vfio-pci"}, ("/dev/vfio/{iommu_group}",),
     ("passed through to a VM or userspace driver: its state belongs to that guest, and the new kernel "
      "resets the device under it")),
    ({"subsystem": "infiniband"}, ("/dev/infiniband/*",),
     ("RDMA queue pairs and memory registrations live in the adapter; CRIU cannot dump them and the new "
      "driver drops them")),
)


@dataclass(frozen=True)
class Coverage:
    device: Device
    hooks: tuple[str, ...]          # names of the hooks whose match covers it
    unsafe: str = ""                # why its class is unsafe without a hook ("" = not known to be)
    allowed: bool = False           # named in hooks.allow
    holders: tuple[Holder, ...] = ()    # processes holding its nodes open (looked up for unsafe ones only)

    @property
    def blocking(self) -> bool:
        return bool(self.unsafe) and bool(self.holders) and not self.hooks and not self.allowed

    def to_json(self) -> dict:
        return {"device": self.device.to_json(), "hooks": list(self.hooks), "unsafe": self.unsafe,
                "allowed": self.allowed, "holders": [{"pid": p, "comm": c} for p, c in self.holders],
                "blocking": self.blocking}

    @classmethod
    def from_json(cls, d: dict) -> Coverage:
        return cls(Device.from_json(d["device"]), tuple(d["hooks"]), d.get("unsafe", ""), d.get("allowed", False),
                   tuple((h["pid"], h["comm"]) for h in d.get("holders", ())))


def _unsafe(dev: Device) -> tuple[dict, tuple[str, ...], str] | None:
    return next((row for row in UNSAFE if matches(row[0], dev)), None)


def unsafe_reason(dev: Device) -> str:
    row = _unsafe(dev)
    return row[2] if row else ""


def device_nodes(dev: Device, devices: list[Device]) -> tuple[str, ...]:
    """The nodes (paths or globs) through which programs use `dev`: its own, those of the devices
    below it in sysfs (`devices` is the full list), and its UNSAFE row's extra ones."""
    below = tuple(d.devnode for d in devices if d.devnode and d.sys_path.startswith(dev.sys_path + "/"))
    own = ((dev.devnode,) if dev.devnode else ()) + below
    row = _unsafe(dev)
    extra = []
    for pattern in row[1] if row else ():
        try:
            extra.append(pattern.format_map(dev.attributes))
        except KeyError:            # the attribute is unknown (vfio without iommu_group): skip it
            pass
    return own + tuple(extra)


def open_devnodes(proc: Path = Path("/proc")) -> dict[str, list[Holder]]:
    """Which processes hold which device nodes open: {"/dev/dri/renderD128": [(4242, "python3")]}.
    One pass over proc/*/fd; processes that exit meanwhile or deny access (not root) are skipped.
    Paths are as the holder sees them (a container with its own /dev layout can hide a holder)."""
    held: dict[str, list[Holder]] = {}
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            comm = (pid_dir / "comm").read_text().strip()
        except OSError:
            continue
        nodes = {target for target in procfs.fds(int(pid_dir.name), proc).values() if target.startswith("/dev/")}
        for node in nodes:
            held.setdefault(node, []).append((int(pid_dir.name), comm))
    return held


def holders(nodes: tuple[str, ...], open_nodes: dict[str, list[Holder]]) -> tuple[Holder, ...]:
    """The processes holding any of `nodes` (paths or globs) open, each once, by pid."""
    found = {h for node, hs in open_nodes.items() if any(fnmatch.fnmatchcase(node, n) for n in nodes) for h in hs}
    return tuple(sorted(found))


def is_allowed(dev: Device, allow: tuple[str, ...]) -> bool:
    """hooks.allow entries are udev subsystems ("infiniband") or sys paths (with or without /sys)."""
    for a in allow:
        if a == dev.subsystem or a in (dev.sys_path, dev.sys_path.removeprefix("/sys")):
            return True
    return False


def coverage(devices: list[Device], hooks: list[Hook], allow: tuple[str, ...] = (),
             open_nodes: dict[str, list[Holder]] | None = None) -> list[Coverage]:
    """One row per device. `open_nodes` is open_devnodes()'s answer, scanned here when None."""
    if open_nodes is None:
        open_nodes = open_devnodes()
    out = []
    for dev in devices:
        names = tuple(h.name for h in hooks if any(matches(m, dev) for m in h.spec.match))
        why = unsafe_reason(dev)
        held = holders(device_nodes(dev, devices), open_nodes) if why else ()
        out.append(Coverage(dev, names, why, is_allowed(dev, allow), held))
    return out


def interesting(c: Coverage) -> bool:
    """What `hooks list` shows without --all: covered, unsafe, or bound to a driver of its own
    (hardware whose state the new driver resets); not the hundreds of driverless sysfs nodes."""
    return bool(c.hooks or c.unsafe or (c.device.driver and not c.device.virtual))


def format_holders(held: tuple[Holder, ...], most: int = 3) -> str:
    """"PID 4242 (python3), 4300 (ollama) and 2 more"."""
    text = "PID " + ", ".join(f"{pid} ({comm})" for pid, comm in held[:most])
    return text + (f" and {len(held) - most} more" if len(held) > most else "")


def unsafe_blockers(devices: list[Device], hooks: list[Hook], allow: tuple[str, ...] = (),
                    open_nodes: dict[str, list[Holder]] | None = None) -> list[Blocker]:
    """Preflight: one Blocker per unsafe device in use that no hook covers and `allow` does not name."""
    return [Blocker(f"{c.device.sys_name or c.device.sys_path} ({c.device.subsystem}, driver "
                    f"{c.device.effective_driver or 'none'}) is in use by {format_holders(c.holders)}: {c.unsafe}",
                    f"stop those programs, or install a hook for it (see `kupgrade hooks list`), or, if their "
                    f'work on it may be lost, allow it: hooks.allow = ["{c.device.sys_path}"] in the config')
            for c in coverage(devices, hooks, allow, open_nodes) if c.blocking]
