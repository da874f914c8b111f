"""Where the page's numbers come from: the versions it was written with, and whether the runs'
training code (the git commits they recorded) is this checkout's."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

PROJECT_DIR = Path(__file__).resolve().parents[2]
# What a run computes with: the library and the trainers, but not this package (it only plans and reports).
TRAINING_CODE = ["lawn_monitor", "trainers", ":!trainers/reproduce"]
PAGE = "docs/reproduction.md"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=PROJECT_DIR, capture_output=True, text=True, check=True).stdout


def versions() -> str:
    try:
        commit = _git("rev-parse", "--short", "HEAD").strip()
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", f":!{PAGE}").strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"
    return (
        f"torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}, "
        f"{platform.platform()}, git commit {commit}"
    )


def same_code(commits: list[str]) -> str:
    """Whether the training code at each commit the runs recorded is this checkout's; where not,
    which files differ (a reader can judge whether they touch what was measured)."""
    differ: dict[str, list[str]] = {}
    for commit in commits:
        try:
            names = _git("diff", "--name-only", commit, "--", *TRAINING_CODE).split()
        except (OSError, subprocess.CalledProcessError):
            return "whether their training code is this checkout's could not be checked (no git, or an unknown commit)."
        if names:
            differ[commit[:7]] = names
    if differ:
        files = sorted({name for names in differ.values() for name in names})
        return (
            f"the training code (lawn_monitor/, trainers/ but for this page's generator) differs from this "
            f"checkout's at {', '.join(differ)}, in {', '.join(files)} (`git diff COMMIT -- FILE` shows how); "
            f"everything else is this checkout's, byte for byte."
        )
    return (
        "the training code (lawn_monitor/, trainers/ but for this page's generator) at each of them is this "
        "checkout's, byte for byte (git diff)."
    )
