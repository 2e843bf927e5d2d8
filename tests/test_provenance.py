"""Where figures came from: the code version stamped on the report and the benchmark, and the
device recorded with every trained model."""

import subprocess

import jax

from whyconv import provenance
from whyconv.provenance import code_version, describe_cpu, trained_on
from whyconv.report import report_version


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_code_version_is_the_commit_marked_when_the_code_or_params_differ(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert code_version() == "unknown (not a git checkout)"
    git(tmp_path, "init", "-q")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "layer.py").write_text("x = 1\n")
    (tmp_path / "params.yaml").write_text("train: {epochs: 10}\n")
    (tmp_path / "notes.txt").write_text("draft\n")
    git(tmp_path, "add", "src/layer.py", "params.yaml")
    git(tmp_path, "commit", "-q", "-m", "study")
    commit = git(tmp_path, "rev-parse", "--short", "HEAD")
    assert code_version() == report_version() == commit  # an untracked file outside the code does not count
    (tmp_path / "params.yaml").write_text("train: {epochs: 2}\n")  # what `dvc exp run -S` does
    assert code_version() == f"{commit} with uncommitted changes"
    assert report_version() == f"{commit} with params.yaml changed"  # the report says which
    (tmp_path / "src" / "layer.py").write_text("x = 2\n")
    assert code_version() == report_version() == f"{commit} with uncommitted changes"


def test_cpu_description_names_the_vector_extensions():
    x86 = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
           "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
           "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu\n")
    assert describe_cpu(x86) == ("Intel(R) Xeon(R) Processor", ["AVX2", "AVX-512", "AMX"])
    assert describe_cpu("processor\t: 0\nFeatures\t: fp asimd sve\n") == (None, ["NEON", "SVE"])


def test_each_model_records_the_device_and_any_precision_that_is_not_the_default(monkeypatch):
    monkeypatch.setattr(provenance, "processor", lambda: ("Intel(R) Xeon(R) Processor", ["AVX2", "AMX"]))
    assert trained_on() == "Intel(R) Xeon(R) Processor with AVX2, AMX (cpu)"
    with jax.default_matmul_precision("highest"):
        assert trained_on() == "Intel(R) Xeon(R) Processor with AVX2, AMX (cpu, float32 products at highest precision)"
    monkeypatch.setattr(provenance, "processor", lambda: ("arm64", []))
    assert trained_on() == "arm64 (cpu)"
