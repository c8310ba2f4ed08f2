"""The old kernel's side and the new kernel's side agree through kupgrade/switch/contract.py only:
these fail when a boot file or a module spells out a value of the contract itself."""

import re
from pathlib import Path

import pytest

from kupgrade import hooks
from kupgrade.hooks import early
from kupgrade.switch import boot, contract, initrd, manifest, trees
from kupgrade.system import kexec
from kupgrade.userspace import systemd

DATA = Path(boot.__file__).parents[1] / "data"
BOOT_FILES = list(boot.BOOT_FILES)
# values long and specific enough that a file spelling them out is repeating the contract
SPECIFIC = [v for k, v in contract.BOOT_VALUES.items() if k not in ("HOOKS", "EARLY_RUNNER", "CONTRACT")]


@pytest.mark.parametrize("name", BOOT_FILES)
def test_boot_file_names_the_contract_not_its_values(name):
    raw = (DATA / name).read_text()
    for value in SPECIFIC:
        assert value not in raw, f"kupgrade/data/{name} spells out {value!r}: use its @PLACEHOLDER@"
    rendered = boot.boot_file(name)
    assert not re.search(r"@[A-Z_]+@", rendered)


def test_unknown_placeholder_is_a_bug():
    with pytest.raises(KeyError, match="@NOPE@"):
        contract.render("x @NOPE@ y")


def test_rendered_scripts_carry_the_values():
    script = boot.boot_file("initramfs-script")
    assert f"dest={contract.RESTORE_DIR}" in script and f"{contract.CMDLINE_KEY}=*" in script
    assert f"snap=/{contract.ARCHIVE_ROOT}" in script
    unit = boot.boot_file("kupgrade-restore.service")
    assert f"ConditionPathExists=|{contract.RESTORE_DIR}/{contract.MANIFEST}" in unit
    assert f'"${{DESTDIR}}/{contract.BOOT_MARKER}"' in boot.boot_file("initramfs-hook")


def test_python_side_uses_the_contract():
    assert initrd.ARCHIVE_ROOT == contract.ARCHIVE_ROOT
    assert kexec.MARKER == contract.CMDLINE_KEY
    assert manifest.NAME == contract.MANIFEST
    assert trees.VERIFIED == contract.VERIFIED and trees.DONE == contract.DONE
    assert systemd.PIDFILE_DIR == contract.UNIT_PIDFILES
    assert hooks.HOOKS_SUBDIR == contract.HOOKS
    assert (early.BUNDLE, early.RUNNER) == (contract.EARLY_BUNDLE, contract.EARLY_RUNNER)
    assert boot.MARKER == contract.BOOT_MARKER


def test_no_module_repeats_a_contract_path():
    """Docstrings may mention them; string literals in code may not (contract.py aside)."""
    import ast
    root = Path(contract.__file__).parents[1]
    values = {contract.RESTORE_DIR, contract.REJECTED_DIR, contract.MANIFEST, contract.MAX_PID, contract.SIZE_KIB,
              contract.MOVE_FAILED, contract.CMDLINE_KEY, contract.EARLY_BUNDLE, contract.STATE_DIR,
              contract.BOOT_MARKER, contract.RECORD, contract.DONE}
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "contract.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                for v in values:      # the value itself, not a longer name that starts with it
                    if re.search(re.escape(v) + r"(?![\w.-])", node.value):
                        found.append(f"{path.relative_to(root)}:{node.lineno}: {v!r}")
    assert not found, "\n".join(found)
