"""Make `kupgrade_hooks` importable from this checkout's hooks/ even when the installed
(editable) kupgrade predates the package-dir mapping, e.g. when testing a git worktree."""

import importlib.util
import sys
from pathlib import Path

HOOKS = Path(__file__).resolve().parents[1] / "hooks"

try:
    import kupgrade_hooks  # noqa: F401
except ImportError:
    spec = importlib.util.spec_from_file_location("kupgrade_hooks", HOOKS / "__init__.py",
                                                  submodule_search_locations=[str(HOOKS)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["kupgrade_hooks"] = module
    spec.loader.exec_module(module)
