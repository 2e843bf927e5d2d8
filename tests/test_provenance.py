"""The code version stamped on the report and the benchmark."""

import subprocess

from whyconv.provenance import code_version


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_code_version_is_the_commit_marked_when_the_code_differs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert code_version() == "unknown (not a git checkout)"
    git(tmp_path, "init", "-q")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "layer.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("draft\n")
    git(tmp_path, "add", "src/layer.py")
    git(tmp_path, "commit", "-q", "-m", "layer")
    commit = git(tmp_path, "rev-parse", "--short", "HEAD")
    assert code_version() == commit  # an untracked file outside the code does not count
    (tmp_path / "src" / "layer.py").write_text("x = 2\n")
    assert code_version() == f"{commit} with uncommitted changes"
