"""Make `kupgrade_hooks` this checkout's hooks/, even when the installed (editable) kupgrade
maps it elsewhere: it predates the package-dir mapping, or it was installed from another
checkout (testing a git worktree with the main checkout's venv)."""

import importlib.util
import sys
from pathlib import Path

HOOKS = Path(__file__).resolve().parents[1] / "hooks"

try:
    import kupgrade_hooks
    mine = Path(kupgrade_hooks.__file__).resolve().parent == HOOKS
except ImportError:
    mine = False
if not mine:
    for name in [m for m in sys.modules if m == "kupgrade_hooks" or m.startswith("kupgrade_hooks.")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location("kupgrade_hooks", HOOKS / "__init__.py",
                                                  submodule_search_locations=[str(HOOKS)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["kupgrade_hooks"] = module
    spec.loader.exec_module(module)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _private_run_state(tmp_path, monkeypatch):
    """A run's lock and journal (kupgrade/inflight.py) and the kept initrd listings
    (kupgrade/switch/boot.py) in the test's own directory, not /run and /var/cache."""
    from kupgrade import inflight
    from kupgrade.switch import boot
    monkeypatch.setattr(inflight, "LOCK", tmp_path / "kupgrade.lock")
    monkeypatch.setattr(inflight, "JOURNAL", tmp_path / "kupgrade.journal.json")
    monkeypatch.setattr(boot, "LISTINGS", tmp_path / "initrd-listings")
    boot._listing.cache_clear()


@pytest.fixture(autouse=True)
def _durable_files_only_where_asked(request, monkeypatch):
    """Tests resolve real processes whose files (pytest's tmp_path, the checkout) may be on a
    tmpfs on some runner: the files-the-new-boot-lacks blocker is tested in test_volatile.py."""
    if request.module.__name__.endswith("test_volatile"):
        return
    from kupgrade.userspace import volatile
    monkeypatch.setattr(volatile, "blockers", lambda pids, *a, **kw: [])


@pytest.fixture(autouse=True)
def _no_warm_up_on_the_host(monkeypatch):
    """The restore warms criu's kernel-feature cache and loads nf_tables: not on the machine
    that runs the tests (tests/test_restore_retry.py checks what it asks for)."""
    from kupgrade.system import criu
    from kupgrade.userspace import tcp
    monkeypatch.setattr(criu, "warm", lambda log=None: True)
    monkeypatch.setattr(tcp, "load_module", lambda: None)
