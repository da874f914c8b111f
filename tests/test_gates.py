"""The gates `.ci/run` runs before the test suite (``make lint``): each one stops CI on its kind
of fault, and the clean tree passes them all.

A copy of the checkout gets one fault at a time (a new module under ``lawn_monitor/``, removed
again before the next) and ``make lint`` runs in it with this environment's ruff and mypy (``-o``
keeps make from reinstalling the environment). mypy's cache is copied along when the checkout has
one, so only the project's modules are checked again.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FAULT = Path("lawn_monitor") / "_gate_fault.py"

# (fault, module text, what the failing tool says)
FAULTS = {
    "lint error": ("import os\n", "F401"),  # an unused import (pyflakes)
    "formatting difference": ("x = [1,2]\n", "would be reformatted"),
    "type error": ('x: int = "one"\n', "Incompatible types in assignment"),
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("ruff", "mypy"):
        assert (BIN / tool).exists(), f"{tool} is not installed beside {sys.executable}: pip install -e '.[dev]'"
    root = tmp_path_factory.mktemp("gates") / "repo"
    skip = shutil.ignore_patterns(
        ".git", ".venv", "runs", "data", "build", "dist", "__pycache__", ".pytest_cache", "*.egg-info"
    )
    shutil.copytree(REPO, root, ignore=skip)
    return root


def make_lint(root: Path) -> subprocess.CompletedProcess:
    command = ["make", "--no-print-directory", "lint", f"VENV={BIN.parent}", "-o", f"{BIN}/.installed-dev"]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=1200)


def test_ci_runs_the_gates_before_the_tests():
    steps = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("make ")]
    assert steps == ["make lint", "make test"]


def test_the_clean_tree_passes(checkout: Path):
    result = make_lint(checkout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_fails_the_gate(checkout: Path, fault: str):
    text, message = FAULTS[fault]
    (checkout / FAULT).write_text(text)
    try:
        result = make_lint(checkout)
    finally:
        (checkout / FAULT).unlink()
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"make lint passed with a {fault}:\n{output}"
    assert message in output and "_gate_fault.py" in output, output
