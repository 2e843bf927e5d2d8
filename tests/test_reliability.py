"""Interruptions, damaged data and memory: a run never loses work or dies without a word."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import psutil
import pytest
import yaml
from flax import serialization

from conftest import write_idx_dataset
from whyconv import data, resources
from whyconv.checkpoint import CheckpointStore
from whyconv.config import parse
from whyconv.stage import StudyError
from whyconv.study import train_cell

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"train_seconds", "images_per_second"}


def make_workdir(folder: Path, epochs: int = 6) -> Path:
    """A working folder with params.yaml and prepared synthetic data, as `dvc repro` leaves it."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(idx_dir=str(folder / "idx"), val_size=200, verify_checksums=False)
    params["train"].update(epochs=epochs, seeds=[0, 1], batch_size=32)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    write_idx_dataset(folder / "idx", train=4000, test=300)
    splits = data.prepare("fashion_mnist", folder / "tfds", 200, 0, idx_dir=str(folder / "idx"), verify=False)
    data.save(splits, folder / "data/prepared")
    return folder


def train_process(workdir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "pipelines/train.py"), "cnn", "--budget", "10000"],
                            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def final_metrics(workdir: Path) -> list[dict]:
    records = json.loads((workdir / "runs/budget/cnn-10000/result.json").read_text())
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.mark.slow
def test_killed_training_resumes_to_bit_identical_results(tmp_path):
    reference = make_workdir(tmp_path / "uninterrupted")
    assert train_process(reference).wait() == 0

    work = make_workdir(tmp_path / "killed")
    checkpoint = work / "checkpoints/budget-cnn-10000/seed0.msgpack"
    process = train_process(work)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # kill -9: no chance to clean up
    process.wait()
    saved = serialization.msgpack_restore(checkpoint.read_bytes())
    assert 1 <= len(saved["history"]) < 6, "the kill must land mid-run"
    assert not (work / "runs/budget/cnn-10000").exists()  # no half-written cell folder

    resumed = train_process(work)
    assert resumed.wait() == 0, resumed.stderr.read().decode()
    assert final_metrics(work) == final_metrics(reference)
    assert not checkpoint.exists()  # checkpoints go once the cell is complete


def test_checkpoint_from_other_settings_is_never_reused(tmp_path):
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int32(7)}
    history = [{"epoch": 1, "train_loss": 0.5}]
    CheckpointStore(tmp_path, {"lr": 0.1}).save(0, state, history, seconds=2.5)
    template = jax.tree.map(jnp.zeros_like, state)
    restored = CheckpointStore(tmp_path, {"lr": 0.1}).load(0, template)
    np.testing.assert_array_equal(restored.state["w"], state["w"])
    assert restored.history == history and restored.seconds == 2.5
    assert CheckpointStore(tmp_path, {"lr": 0.2}).load(0, template) is None  # other params
    assert CheckpointStore(tmp_path, {"lr": 0.1}).load(1, template) is None  # other seed
    (tmp_path / "seed0.msgpack").write_bytes(b"garbage")
    assert CheckpointStore(tmp_path, {"lr": 0.1}).load(0, template) is None  # unreadable


def test_cell_that_cannot_fit_in_memory_stops_with_its_estimate(tmp_path, monkeypatch):
    work = make_workdir(tmp_path, epochs=1)
    monkeypatch.chdir(work)
    monkeypatch.setattr(resources, "free_memory", lambda: (2**20, "this machine"))
    params = parse(yaml.safe_load(Path("params.yaml").read_text()))
    with pytest.raises(StudyError, match=r"cell cnn-10000 needs about .* GiB .*activations of a batch of 32.*"
                                         r"is free on this machine"):
        train_cell(params, data.load(Path("data/prepared")), "cnn", budget=10000)
    assert not Path("runs/budget").exists()


def test_free_memory_is_the_accelerators_own_where_training_runs_on_one(monkeypatch):
    if jax.default_backend() == "cpu":  # JAX reports no memory of a CPU's own: the host's counts
        free, where = resources.free_memory()
        assert where == "this machine" and 0 < free <= psutil.virtual_memory().total

    class Device:  # what JAX reports for a GPU: its memory limit and what is in use
        device_kind = "NVIDIA H200"

        def memory_stats(self):
            return {"bytes_limit": 16 * 2**30, "bytes_in_use": 2**30}

    monkeypatch.setattr(resources.jax, "local_devices", lambda: [Device()])
    assert resources.free_memory() == (15 * 2**30, "the NVIDIA H200")


def test_memory_estimate_counts_parameters_and_activations():
    from whyconv.capacity import Skeleton

    skeleton = Skeleton((28, 28, 1), 10)
    splits = data.Splits(data.Meta("d", (28, 28, 1), ["a"], 0.0, 1.0, {}), {"train": (np.zeros((10, 28, 28, 1), np.uint8), np.zeros(10, np.int32))})
    small = resources.estimate_bytes("lcn", 2, skeleton, 128, splits)
    large = resources.estimate_bytes("lcn", 32, skeleton, 128, splits)
    assert large["parameters and optimizer"] == 5 * 4 * 1_000_394
    assert large["activations of a batch of 128"] > small["activations of a batch of 128"]


def test_damaged_or_foreign_data_fails_the_checksum_with_the_fix(tmp_path):
    idx = write_idx_dataset(tmp_path / "idx", train=100, test=20)
    with pytest.raises(data.DataError, match="sha256 mismatch.*dataset-fashion-mnist.*verify_checksums: false"):
        data.prepare("fashion_mnist", tmp_path / "tfds", 10, 0, idx_dir=str(idx))


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs dataset-fashion-mnist")
def test_the_installed_fashion_mnist_matches_the_official_digests():
    data.verify_checksums("fashion_mnist", Path("/usr/share/datasets/fashion-mnist"))
