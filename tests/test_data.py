"""The IDX reader, the TFDS builder on IDX files the test writes, and the catalog road."""

import gzip
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
import yaml

from conftest import synthetic_images, write_idx, write_idx_dataset
from whyconv import data


def test_read_idx_round_trip_plain_and_gzipped(tmp_path):
    images, _ = synthetic_images(5, seed=0)
    for compress in (True, False):
        path = write_idx(tmp_path / f"x{compress}", images, compress)
        np.testing.assert_array_equal(data.read_idx(path), images)


def test_read_idx_refuses_truncated_and_corrupt_files(tmp_path):
    images, _ = synthetic_images(5, seed=0)
    path = write_idx(tmp_path / "x", images, compress=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(data.DataError, match="truncated"):
        data.read_idx(path)
    path.write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(data.DataError, match="magic"):
        data.read_idx(path)
    gz = tmp_path / "y.gz"
    gz.write_bytes(gzip.compress(b"\x00" * 100)[:20])
    with pytest.raises(data.DataError, match="cannot read"):
        data.read_idx(gz)


def test_prepare_builds_the_tfds_dataset_from_idx_files(tmp_path, idx_dir):
    splits = data.prepare("fashion_mnist", tmp_path / "tfds", val_size=100, split_seed=0, idx_dir=str(idx_dir), verify=False)
    train_images, train_labels = synthetic_images(1000, seed=0)
    test_images, test_labels = synthetic_images(200, seed=1)
    assert splits.meta.sizes == {"train": 900, "val": 100, "test": 200}
    assert splits.meta.image_shape == (28, 28, 1)
    assert splits.meta.class_names[0] == "T-shirt/top" and splits.num_classes == 10
    np.testing.assert_array_equal(splits.arrays["test"][0][..., 0], test_images)
    np.testing.assert_array_equal(splits.arrays["test"][1], test_labels)
    # Train and validation are a seeded partition of the original training split.
    order = np.random.default_rng(0).permutation(1000)
    np.testing.assert_array_equal(splits.arrays["val"][0][..., 0], train_images[order[:100]])
    np.testing.assert_array_equal(splits.arrays["train"][1], train_labels[order[100:]])
    assert splits.meta.mean == pytest.approx(train_images[order[100:]].mean() / 255, abs=1e-6)
    # Preparing again over the built TFDS set (a changed params.yaml) rebuilds it.
    again = data.prepare("fashion_mnist", tmp_path / "tfds", val_size=200, split_seed=0, idx_dir=str(idx_dir), verify=False)
    assert again.meta.sizes == {"train": 800, "val": 200, "test": 200}


def test_prepared_arrays_survive_save_and_load(tmp_path, idx_dir):
    splits = data.prepare("fashion_mnist", tmp_path / "tfds", 100, 0, idx_dir=str(idx_dir), train_size=500, verify=False)
    data.save(splits, tmp_path / "prepared")
    loaded = data.load(tmp_path / "prepared")
    assert loaded.meta == splits.meta and loaded.meta.sizes["train"] == 500
    for split, (images, labels) in splits.arrays.items():
        np.testing.assert_array_equal(loaded.arrays[split][0], images)
        np.testing.assert_array_equal(loaded.arrays[split][1], labels)


def test_missing_idx_files_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(data.DataError, match="does not hold the fashion_mnist IDX files"):
        data.prepare("fashion_mnist", tmp_path / "tfds", 100, 0, idx_dir=str(tmp_path / "nowhere"))
    monkeypatch.setitem(data.IDX_SEARCH_PATHS, "fashion_mnist", [str(tmp_path / "nowhere")])
    with pytest.raises(data.DataError, match="apt-get install dataset-fashion-mnist"):
        data.prepare("fashion_mnist", tmp_path / "tfds", 100, 0)


def test_validation_split_larger_than_train_is_refused(tmp_path):
    idx = write_idx_dataset(tmp_path / "idx", train=50, test=10)
    with pytest.raises(data.DataError, match="leaves no training data"):
        data.prepare("fashion_mnist", tmp_path / "tfds", 50, 0, idx_dir=str(idx), verify=False)


class FakeSource:
    """A data source of random 28x28 examples, as `builder.as_data_source(split)` returns."""

    def __init__(self, n: int, seed: int):
        images, labels = synthetic_images(n, seed)
        self.examples = [{"image": image[..., None], "label": int(label)} for image, label in zip(images, labels)]

    def __len__(self):
        return len(self.examples)

    def __getitems__(self, keys):
        return [self.examples[k] for k in keys]


def test_catalog_dataset_through_tfds_mock_data(tmp_path):
    sizes = {"train": 30, "test": 30}
    fake = lambda builder, split, **kw: FakeSource(sizes[split], seed=len(split))  # noqa: E731
    with tfds.testing.mock_data(as_data_source_fn=fake):
        # The catalog road: builder lookup, (mocked) download_and_prepare, data source.
        splits = data.prepare("mnist", tmp_path / "tfds", val_size=10, split_seed=0, download=True)
    assert splits.meta.sizes == {"train": 20, "val": 10, "test": 30}
    assert splits.arrays["train"][0].shape == (20, 28, 28, 1)
    assert splits.arrays["train"][0].dtype == np.uint8
    assert splits.num_classes == 10


def test_catalog_dataset_without_download_fails_at_once_without_network(tmp_path, monkeypatch):
    lookups = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kw: lookups.append(args) or [])
    with pytest.raises(data.DataError, match="downloads are off.*data.download=true"):
        data.prepare("mnist", tmp_path / "empty", val_size=10, split_seed=0)
    assert lookups == []  # no name resolution: never the minutes-long network retry


def test_prepare_stage_on_a_missing_catalog_set_prints_only_the_fix(tmp_path):
    root = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update(dataset="cifar10", tfds_dir=str(tmp_path / "tfds"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, root / "pipelines/prepare.py"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    # One line, the cause and the fix: nothing from TFDS's lookup ahead of it.
    assert done.stderr.startswith("error: dataset 'cifar10' is not prepared"), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "data/prepared").exists()


def test_unknown_dataset_is_named(tmp_path):
    with pytest.raises(data.DataError, match="unknown dataset 'not_a_dataset'"):
        data.prepare("not_a_dataset", tmp_path / "tfds", 10, 0)
