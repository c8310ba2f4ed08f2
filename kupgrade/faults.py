"""Fault injection for tests, in the spirit of CRIU's CRIU_FAULT: KUPGRADE_FAULT=name[,name]
makes the named point fail as the real step would. The rollback that follows is the real one."""

from __future__ import annotations

import os

from .errors import StageError

POINTS = ("kexec-load",)     # where point() is called


def active(name: str) -> bool:
    return name in os.environ.get("KUPGRADE_FAULT", "").split(",")


def point(name: str, message: str) -> None:
    if active(name):
        raise StageError(f"{message} (fault injected by KUPGRADE_FAULT={name})", "this is a test fault")
