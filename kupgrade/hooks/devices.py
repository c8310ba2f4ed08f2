"""The machine's devices as frozen records, and udev-style matching of hook match specs.

Why records and not pyudev objects: hooks get the devices they handle as JSON, the CLI
prints them, and tests fake them. pyudev is imported only inside `enumerate_devices`, so the
new kernel's lean restore path pays for it only when it asks for devices.

Driver: udev's DRIVER is the device's own driver; class devices (net/eth0, drm/card0) have
none, and what matters for them is the driver of the device they belong to (virtio_net,
amdgpu). A Device keeps both; matching on "driver" uses `effective_driver` (own, else the
nearest ancestor's), like udev's DRIVERS key walking up to the first bound parent.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field

# A few sysfs attributes worth carrying (hooks and `hooks list` use them; reading all is slow),
# plus "iommu_group": the number its sysfs link names (a vfio device's node is /dev/vfio/<group>).
ATTRIBUTES = ("address", "mtu", "operstate", "type", "vendor", "device", "class", "model", "size")
MATCH_KEYS = ("subsystem", "driver", "devtype", "sys_name", "sys_path", "attributes")


@dataclass(frozen=True)
class Device:
    sys_path: str                   # /sys/devices/...
    subsystem: str
    sys_name: str = ""              # eth0, card0, 0000:00:03.0
    driver: str = ""                # its own driver ("" for class devices)
    parent_driver: str = ""         # the nearest ancestor's driver
    devtype: str = ""
    devnode: str = ""
    attributes: dict = field(default_factory=dict)

    @property
    def effective_driver(self) -> str:
        return self.driver or self.parent_driver

    @property
    def virtual(self) -> bool:
        return self.sys_path.startswith("/sys/devices/virtual/")

    def to_json(self) -> dict:
        return {"sys_path": self.sys_path, "subsystem": self.subsystem, "sys_name": self.sys_name,
                "driver": self.driver, "parent_driver": self.parent_driver, "devtype": self.devtype,
                "devnode": self.devnode, "attributes": dict(self.attributes)}

    @classmethod
    def from_json(cls, d: dict) -> Device:
        return cls(d["sys_path"], d["subsystem"], d.get("sys_name", ""), d.get("driver", ""),
                   d.get("parent_driver", ""), d.get("devtype", ""), d.get("devnode", ""),
                   dict(d.get("attributes", {})))


def _text(v) -> str:
    if v is None:
        return ""
    return v.decode(errors="replace").strip() if isinstance(v, bytes) else str(v)


def enumerate_devices(subsystems: tuple[str, ...] = ()) -> list[Device]:
    """All devices udev knows (or those of `subsystems`), sorted by sys_path."""
    import pyudev  # lazily: see the module docstring

    ctx = pyudev.Context()
    found = []
    for subsystem in subsystems or (None,):
        devices = ctx.list_devices(subsystem=subsystem) if subsystem else ctx.list_devices()
        for d in devices:
            parent, parent_driver = d.parent, ""
            while parent is not None and not parent_driver:
                parent_driver, parent = _text(parent.driver), parent.parent
            attrs = {}
            for name in ATTRIBUTES:
                try:
                    value = d.attributes.get(name)
                except (OSError, KeyError, UnicodeDecodeError):   # unreadable attributes exist
                    value = None
                if value is not None:
                    attrs[name] = _text(value)
            try:
                attrs["iommu_group"] = os.path.basename(os.readlink(os.path.join(d.sys_path, "iommu_group")))
            except OSError:                                          # no IOMMU, or not a bus device
                pass
            found.append(Device(d.sys_path, _text(d.subsystem), _text(d.sys_name), _text(d.driver),
                                parent_driver, _text(d.device_type), _text(d.device_node), attrs))
    return sorted(found, key=lambda d: d.sys_path)


def check_match(spec: dict) -> str | None:
    """What is wrong with a match spec (None: fine). Values are strings, globs allowed."""
    if not isinstance(spec, dict) or not spec:
        return f"a match must be a non-empty object, got {spec!r}"
    unknown = set(spec) - set(MATCH_KEYS)
    if unknown:
        return f"unknown match key(s) {', '.join(sorted(unknown))} (known: {', '.join(MATCH_KEYS)})"
    for k, v in spec.items():
        if k == "attributes":
            if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
                return "`attributes` must be an object of strings"
        elif not isinstance(v, str):
            return f"match key `{k}` must be a string, got {v!r}"
    return None


def matches(spec: dict, dev: Device) -> bool:
    """True if every key of the spec matches (fnmatch globs, like udev rules)."""
    values = {"subsystem": dev.subsystem, "driver": dev.effective_driver, "devtype": dev.devtype,
              "sys_name": dev.sys_name, "sys_path": dev.sys_path}
    for key, pattern in spec.items():
        if key == "attributes":
            for name, want in pattern.items():
                if name not in dev.attributes or not fnmatch.fnmatchcase(dev.attributes[name], want):
                    return False
        elif not fnmatch.fnmatchcase(values[key], pattern):
            return False
    return True


def matches_any(specs, dev: Device) -> bool:
    return any(matches(s, dev) for s in specs)
