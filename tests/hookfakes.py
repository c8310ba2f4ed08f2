"""Helpers for the hook tests: fake devices, Python hooks and executable hooks in tmp dirs."""

import json
import os
import sys
from pathlib import Path

from kupgrade.hooks import Hook, parse_spec
from kupgrade.hooks.devices import Device

ETH0 = Device("/sys/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0", "net", "eth0", "", "virtio_net",
              attributes={"address": "02:fc:00:00:00:01", "type": "1"})
GPU = Device("/sys/devices/pci0000:00/0000:00:02.0", "pci", "0000:00:02.0", "amdgpu", "",
             attributes={"vendor": "0x1002", "class": "0x030000"})
CARD0 = Device("/sys/devices/pci0000:00/0000:00:02.0/drm/card0", "drm", "card0", "", "amdgpu", devnode="/dev/dri/card0")
DISK = Device("/sys/devices/pci0000:00/0000:00:04.0/virtio3/block/vda", "block", "vda", "", "virtio_blk",
              devtype="disk", devnode="/dev/vda")
IB = Device("/sys/devices/pci0000:00/0000:00:06.0/infiniband/mlx5_0", "infiniband", "mlx5_0", "", "mlx5_core")
DEVICES = [ETH0, GPU, CARD0, DISK, IB]


class PyHook:
    """A Python hook whose behaviour per point is given: a reply dict, an exception, or a callable."""

    def __init__(self, name="fake", points=("save", "restore"), match=({"subsystem": "net"},), critical=False,
                 timeout=5, **behaviour):
        self.decl = {"name": name, "points": list(points), "match": list(match), "critical": critical,
                     "timeout": timeout}
        self.behaviour = behaviour
        self.requests = []

    def describe(self):
        return self.decl

    def __getattr__(self, attr):
        if attr not in {p.replace("-", "_") for p in self.decl["points"]}:
            raise AttributeError(attr)

        def call(request):
            self.requests.append(request)
            b = self.behaviour.get(attr, {})
            if isinstance(b, BaseException):
                raise b
            return b(request) if callable(b) else b
        return call

    def hook(self) -> Hook:
        return Hook(parse_spec(self.decl, self.decl["name"]), "entry-point", f"test {self.decl['name']}", self)


def write_exec(directory: Path, name: str, describe: dict | None = None, body: str = 'echo "{}"',
               mode: int = 0o755) -> Path:
    """An executable Python hook: `describe` prints the declaration, other points run `body` (sh)."""
    decl = describe if describe is not None else {"points": ["save", "restore"], "match": [{"subsystem": "net"}]}
    path = directory / name
    path.write_text(f"""#!/bin/sh
if [ "$1" = describe ]; then
    cat <<'JSON'
{json.dumps(decl)}
JSON
    exit 0
fi
{body}
""")
    path.chmod(mode)
    return path


def write_py_exec(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{source}")
    os.chmod(path, 0o755)
    return path
