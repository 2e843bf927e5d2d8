"""The controls' data: what changes in the images or the training set, and nothing else.

* `pixel_permutation` / `permute_pixels`: one fixed, seeded shuffle of pixel positions applied to
  every image of every split. Each pixel survives, spatial structure does not: whatever a prior
  gains from neighbouring pixels being related should vanish.
* `shift_images`: translate images by whole pixels (the translation probe): with zero fill, what
  is pushed off the image is lost and background comes in; with circular fill it wraps around to
  the other side, so no content is lost and only the position changes.
* `random_shifts`: each image by its own random shift, zero fill (the optional augmentation).
* `training_subset`: the first n of one seeded order of the training split, so the subsets are
  nested (1k inside 3k inside 10k) and the same for every family and seed.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from whyconv.config import ShiftFill
from whyconv.data import Splits


def pixel_permutation(height: int, width: int, seed: int) -> np.ndarray:
    """A permutation of the height * width pixel positions, fixed by `seed`."""
    return np.random.default_rng(seed).permutation(height * width)


def permute_pixels(images: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """Move pixel permutation[i] to position i in every image (N, H, W, C); channels move together."""
    n, height, width, channels = images.shape
    flat = images.reshape(n, height * width, channels)
    return flat[:, permutation].reshape(images.shape)


def permuted_splits(splits: Splits, seed: int) -> Splits:
    """Every split with the same pixel permutation (the mean and std of the pixels are unchanged)."""
    height, width, _ = splits.meta.image_shape
    permutation = pixel_permutation(height, width, seed)
    arrays = {name: (permute_pixels(images, permutation), labels)
              for name, (images, labels) in splits.arrays.items()}
    return Splits(splits.meta, arrays)


def shift_images(images: jnp.ndarray, dy: int, dx: int, fill: ShiftFill = "zero") -> jnp.ndarray:
    """Translate (N, H, W, C) images down by dy and right by dx pixels (negative: up, left).

    `fill` says what comes in at the uncovered edge: zeros (the background of the study's
    images), or, circular, what left at the opposite edge.
    """
    if fill == "circular":
        return jnp.roll(images, (dy, dx), axis=(1, 2))
    _, height, width, _ = images.shape
    pad_y, pad_x = abs(dy), abs(dx)
    padded = jnp.pad(images, ((0, 0), (pad_y, pad_y), (pad_x, pad_x), (0, 0)))
    return jax.lax.dynamic_slice_in_dim(
        jax.lax.dynamic_slice_in_dim(padded, pad_y - dy, height, axis=1), pad_x - dx, width, axis=2)


def random_shifts(images: jnp.ndarray, key: jax.Array, max_shift: int) -> jnp.ndarray:
    """Each image shifted by its own random (dy, dx) in [-max_shift, max_shift]; zero fill."""
    n, height, width, _ = images.shape
    m = max_shift
    padded = jnp.pad(images, ((0, 0), (m, m), (m, m), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * m + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


def training_subset(splits: Splits, size: int, seed: int) -> Splits:
    """The same splits with only `size` training images: a prefix of one seeded order."""
    images, labels = splits.arrays["train"]
    if size > len(labels):
        raise ValueError(f"a training subset of {size} images is more than the {len(labels)} there are")
    keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[:size])
    meta = dataclasses.replace(splits.meta, sizes={**splits.meta.sizes, "train": size})
    return Splits(meta, {**splits.arrays, "train": (images[keep], labels[keep])})
