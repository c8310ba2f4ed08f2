"""The project's virtualenv for the vm-tests' commands: `vm-tests/run` and `vm-tests/bench` start
with whatever `python3` is first on PATH (their #!) and run again with .venv's (scripts/setup
makes it: psutil, pyudev and the rest are there, not in Debian's python3)."""

import os
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parents[2] / ".venv"


def use() -> None:
    """Run this command again with .venv's Python unless it runs with it; one line and exit 2 when
    there is none."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"{Path(sys.argv[0]).name}: no virtualenv at {VENV}\nhint: run `bash scripts/setup` first",
              file=sys.stderr)
        sys.exit(2)
    os.execv(python, [str(python), *sys.argv])
