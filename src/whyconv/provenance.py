"""Which code produced a set of figures: the git commit, marked when the working tree differs."""

from __future__ import annotations

import subprocess

# What the study's and the benchmark's figures depend on.
CODE_PATHS = ("src", "pipelines", "params.yaml", "dvc.yaml")


def code_version() -> str:
    """The checkout's short commit, with "with uncommitted changes" when the code or params differ
    from it (run from the repository root, as the stages and `make bench` are)."""
    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", *CODE_PATHS)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit} with uncommitted changes" if changed else commit


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
