"""The shape the code keeps (DESIGN.md §8, docs/architecture.md): the layers declared for
import-linter hold, no module of the controller library outside its CLI imports ``sims``,
no module imports another's private names, and modules stay one topic long."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("narset_jax", "sims")
MAX_MODULE_LINES = 700
MAX_CLI_LINES = 1300


def _modules(*packages):
    for pkg in packages:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def _imports(path: Path):
    """``(module, names)`` for every import in the file (absolute module names)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, ()
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join([*base, mod] if mod else base)
            yield mod, tuple(a.name for a in node.names)


def test_lint_imports_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports is not installed (the dev extra has import-linter)")
    r = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_the_controller_library_never_imports_sims():
    bad = []
    for path in _modules("narset_jax"):
        if "cli" in path.relative_to(ROOT / "narset_jax").parts:
            continue
        for mod, _ in _imports(path):
            if mod == "sims" or mod.startswith("sims."):
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_no_private_names_cross_modules():
    bad = []
    for path in _modules(*PACKAGES, "tests", "benchmarks"):
        for mod, names in _imports(path):
            if mod.split(".")[0] not in PACKAGES:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            # A package's own __init__ may re-export from its private submodules.
            own = path.name == "__init__.py" and mod.startswith(
                ".".join(path.relative_to(ROOT).parts[:-1]))
            if private and not own:
                bad.append(f"{path.relative_to(ROOT)}: from {mod} import {', '.join(private)}")
    assert not bad, "\n".join(bad)


def test_modules_stay_short():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in _modules(*PACKAGES, "benchmarks")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, "\n".join(long)
    cli = sum(len(p.read_text().splitlines()) for p in (ROOT / "narset_jax" / "cli").rglob("*.py"))
    assert cli <= MAX_CLI_LINES, f"narset_jax/cli is {cli} lines (at most {MAX_CLI_LINES})"


def test_no_sys_path_edits():
    bad = [str(p.relative_to(ROOT)) for p in _modules(*PACKAGES, "tests", "benchmarks")
           if "sys.path" in p.read_text() and p.name != "test_architecture.py"]
    assert not bad, "sys.path edits in: " + ", ".join(bad)
