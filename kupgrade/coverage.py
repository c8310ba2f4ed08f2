"""Which hook covers which device, which devices nobody covers, which are unsafe uncovered.

A device no hook covers is handed to the new kernel's driver, which starts it from scratch:
for most devices that is fine (a disk, a serial port), for some it silently destroys work that
CRIU cannot carry (device memory, contexts on the device). Those are listed in UNSAFE with the
reason; preflight blocks on them unless a hook covers them or `hooks.allow` names them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .devices import Device, matches
from .hooks import Hook
from .record import Blocker

_GPU = ("GPU memory and compute contexts (CUDA, ROCm, OpenCL, Level Zero) live on the device; CRIU "
        "cannot dump them and the new kernel's driver resets the GPU: programs using it lose their work")

# (match spec, reason). Matched on the device itself: the PCI function for a GPU (driver on
# the device), the class device for accel/infiniband (driver on its parent).
UNSAFE: tuple[tuple[dict, str], ...] = (
    ({"subsystem": "pci", "driver": "nvidia"}, _GPU),
    ({"subsystem": "pci", "driver": "amdgpu"}, _GPU),
    ({"subsystem": "pci", "driver": "i915"}, _GPU),
    ({"subsystem": "pci", "driver": "xe"}, _GPU),
    ({"subsystem": "accel"}, ("AI accelerator contexts and device memory (habanalabs, ivpu, qaic) are not "
                              "saved by CRIU; the new kernel's driver resets the accelerator")),
    ({"subsystem": "pci", "driver": "vfio-pci"}, ("passed through to a VM or userspace driver: its state "
                                                  "belongs to that guest, and the new kernel resets the device "
                                                  "under it")),
    ({"subsystem": "infiniband"}, ("RDMA queue pairs and memory registrations live in the adapter; CRIU cannot "
                                   "dump them and the new driver drops them")),
)


@dataclass(frozen=True)
class Coverage:
    device: Device
    hooks: tuple[str, ...]          # names of the hooks whose match covers it
    unsafe: str = ""                # why it is unsafe without a hook ("" = not known to be)
    allowed: bool = False           # named in hooks.allow

    @property
    def blocking(self) -> bool:
        return bool(self.unsafe) and not self.hooks and not self.allowed

    def to_json(self) -> dict:
        return {"device": self.device.to_json(), "hooks": list(self.hooks), "unsafe": self.unsafe,
                "allowed": self.allowed, "blocking": self.blocking}

    @classmethod
    def from_json(cls, d: dict) -> Coverage:
        return cls(Device.from_json(d["device"]), tuple(d["hooks"]), d.get("unsafe", ""), d.get("allowed", False))


def unsafe_reason(dev: Device) -> str:
    return next((why for spec, why in UNSAFE if matches(spec, dev)), "")


def is_allowed(dev: Device, allow: tuple[str, ...]) -> bool:
    """hooks.allow entries are udev subsystems ("infiniband") or sys paths (with or without /sys)."""
    for a in allow:
        if a == dev.subsystem or a in (dev.sys_path, dev.sys_path.removeprefix("/sys")):
            return True
    return False


def coverage(devices: list[Device], hooks: list[Hook], allow: tuple[str, ...] = ()) -> list[Coverage]:
    out = []
    for dev in devices:
        names = tuple(h.name for h in hooks if any(matches(m, dev) for m in h.spec.match))
        out.append(Coverage(dev, names, unsafe_reason(dev), is_allowed(dev, allow)))
    return out


def interesting(c: Coverage) -> bool:
    """What `hooks list` shows without --all: covered, unsafe, or bound to a driver of its own
    (hardware whose state the new driver resets); not the hundreds of driverless sysfs nodes."""
    return bool(c.hooks or c.unsafe or (c.device.driver and not c.device.virtual))


def unsafe_blockers(devices: list[Device], hooks: list[Hook], allow: tuple[str, ...] = ()) -> list[Blocker]:
    """Preflight: one Blocker per unsafe device that no hook covers and `allow` does not name."""
    return [Blocker(f"{c.device.sys_name or c.device.sys_path} ({c.device.subsystem}, driver "
                    f"{c.device.effective_driver or 'none'}) has no hook: {c.unsafe}",
                    f"install a hook for it (see `kupgrade hooks list`), or, if nothing uses it, allow it: "
                    f'hooks.allow = ["{c.device.sys_path}"] in the config')
            for c in coverage(devices, hooks, allow) if c.blocking]
