"""Shared test helpers: small IDX datasets written on the spot."""

from __future__ import annotations

import gzip
import socket
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write `array` (uint8) as an IDX file, as the Fashion-MNIST files are laid out."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 images whose class (0-9) is a bright 6x6 square at one of ten places, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        row, col = 3 + 11 * (label // 5), 1 + 5 * (label % 5)
        images[i, row : row + 6, col : col + 6] = 220
    return images, labels


def write_idx_dataset(folder: Path, train: int = 1000, test: int = 200, compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", train, 0), ("t10k", test, 1)):
        images, labels = synthetic_images(n, seed)
        write_idx(folder / f"{split}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels, compress)
    return folder


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    return write_idx_dataset(tmp_path / "idx")


@pytest.fixture
def unused_tcp_port() -> int:
    """A local TCP port nothing listens on (for a coordinator process)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]
