"""The floors hold: each package imports only from the floors below it, and no modules import each other in a
cycle. The contracts are in pyproject.toml ([tool.importlinter]); docs/architecture.md draws them."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import REPO_ROOT


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_import_contracts_hold():
    # lint-imports reads the real import graph (grimp), imports inside functions and under TYPE_CHECKING
    # included, so a cycle hidden in a function body breaks it too.
    lint_imports = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_shipped_package_is_under_contract():
    pyproject = _pyproject()
    shipped = {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    checked = set(pyproject["tool"]["importlinter"]["root_packages"])
    assert shipped == checked
    acyclic = next(c for c in pyproject["tool"]["importlinter"]["contracts"] if c["type"] == "acyclic_siblings")
    assert set(acyclic["ancestors"]) == checked
