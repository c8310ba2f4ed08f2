"""The snapshot manifest: what was dumped, from which kernel to which, and a sha256 per file.

The new kernel verifies it before any restore: a snapshot that does not match is never fed
to criu.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import contract
from .record import Workload

NAME = contract.MANIFEST
FORMAT = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Manifest:
    id: str
    kernel_from: str
    kernel_to: str
    created: float
    workloads: tuple[Workload, ...]
    files: dict          # relative path -> {"size": int, "sha256": str}
    back: dict = field(default_factory=dict)    # how to return to the old kernel ({} = keep: no rollback)
    rollback: bool = False                      # this snapshot goes back to the old kernel (no second one)

    @property
    def total_bytes(self) -> int:
        return sum(f["size"] for f in self.files.values())

    def to_json(self) -> dict:
        return {"format": FORMAT, "id": self.id, "kernel_from": self.kernel_from,
                "kernel_to": self.kernel_to, "created": self.created,
                "workloads": [w.to_json() for w in self.workloads],
                "files": self.files, "total_bytes": self.total_bytes, "back": self.back, "rollback": self.rollback}

    @classmethod
    def from_json(cls, d: dict) -> "Manifest":
        if d.get("format") != FORMAT:
            raise ValueError(f"manifest format {d.get('format')!r}, this kupgrade reads {FORMAT}")
        return cls(d["id"], d["kernel_from"], d["kernel_to"], d["created"],
                   tuple(Workload.from_json(w) for w in d["workloads"]), d["files"], d.get("back", {}),
                   d.get("rollback", False))


def make(id: str, kernel_from: str, kernel_to: str, workloads: tuple[Workload, ...], files: dict,
         back: dict | None = None, rollback: bool = False) -> Manifest:
    """files: {relative path: {"size", "sha256"}}, as hashed while the snapshot was packed."""
    return Manifest(id, kernel_from, kernel_to, time.time(), workloads, dict(sorted(files.items())),
                    dict(back or {}), rollback)


def dumps(m: Manifest) -> bytes:
    return (json.dumps(m.to_json(), indent=1) + "\n").encode()


def read(snapshot: Path) -> Manifest:
    return Manifest.from_json(json.loads((snapshot / NAME).read_text()))


def verify(snapshot: Path, kernel_now: str, skip: tuple[str, ...] = ()) -> tuple[Manifest, list[str]]:
    """Return the manifest and the problems found (empty list = verified). Files whose path
    starts with one of `skip` are not looked at (a retry: the images of trees restored already
    were freed)."""
    try:
        m = read(snapshot)
    except FileNotFoundError:
        return None, [f"no {NAME} in {snapshot}"]  # type: ignore[return-value]
    except (ValueError, KeyError) as e:
        return None, [f"{snapshot / NAME} is unreadable: {e}"]  # type: ignore[return-value]
    problems = []
    if m.kernel_to != kernel_now:
        problems.append(f"snapshot was made for kernel {m.kernel_to}, this is {kernel_now}")
    for rel, meta in m.files.items():
        if skip and rel.startswith(skip):
            continue
        p = snapshot / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif p.stat().st_size != meta["size"]:
            problems.append(f"{rel}: size {p.stat().st_size}, manifest says {meta['size']}")
        elif sha256_file(p) != meta["sha256"]:
            problems.append(f"{rel}: sha256 mismatch")
    return m, problems
