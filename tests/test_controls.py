"""The controls' transforms and the probes' metrics, on hand-made inputs with known answers."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from whyconv.controls import permute_pixels, pixel_permutation, random_shifts, shift_images, training_subset
from whyconv.data import Meta, Splits
from whyconv.probes import first_layer, locality, predictor, sharing, shift_accuracy


def test_permutation_is_a_bijection_fixed_by_its_seed():
    p = pixel_permutation(28, 28, seed=0)
    assert sorted(p) == list(range(784))
    assert np.array_equal(p, pixel_permutation(28, 28, seed=0))
    assert not np.array_equal(p, pixel_permutation(28, 28, seed=1))


def test_permuting_pixels_keeps_every_pixel_and_can_be_undone():
    images = np.random.default_rng(0).integers(0, 255, (5, 6, 7, 2)).astype(np.uint8)
    p = pixel_permutation(6, 7, seed=3)
    permuted = permute_pixels(images, p)
    assert not np.array_equal(permuted, images)
    assert np.array_equal(np.sort(permuted.reshape(5, -1, 2), axis=1), np.sort(images.reshape(5, -1, 2), axis=1))
    assert np.array_equal(permute_pixels(permuted, np.argsort(p)), images)


def test_shift_by_zero_is_the_identity_and_shifts_move_content_with_zero_fill():
    images = np.arange(2 * 5 * 5).reshape(2, 5, 5, 1).astype(np.float32) + 1
    assert np.array_equal(shift_images(images, 0, 0), images)
    moved = np.asarray(shift_images(images, 1, -2))
    assert np.array_equal(moved[:, 1:, :3], images[:, :4, 2:])
    assert (moved[:, 0] == 0).all() and (moved[:, :, 3:] == 0).all()


def test_circular_shifts_wrap_around_and_lose_nothing():
    images = np.arange(2 * 5 * 5).reshape(2, 5, 5, 1).astype(np.float32) + 1
    moved = np.asarray(shift_images(images, 1, -2, "circular"))
    assert np.array_equal(moved[:, 1:, :3], images[:, :4, 2:])  # where zero fill moves it too
    assert np.array_equal(moved[:, 0, :3], images[:, 4, 2:]) and np.array_equal(moved[:, 1:, 3:], images[:, :4, :2])
    assert np.array_equal(shift_images(images, 5, -5, "circular"), images)


class Extremes(nn.Module):
    """Class 1 where the brightest pixel is further above mid-grey than the darkest is below, else 0:
    it looks at two pixel values and never at where they are."""

    def __call__(self, x):
        return jnp.stack([-x.max(axis=(1, 2, 3)), x.min(axis=(1, 2, 3))], axis=-1)


def test_the_translation_probe_fills_as_asked():
    """A model blind to position keeps its accuracy under circular shifts at every distance; with
    zero fill, the background that comes in changes its answers."""
    rng = np.random.default_rng(0)
    images = rng.uniform(rng.uniform(30, 120, (300, 1, 1, 1)), rng.uniform(130, 255, (300, 1, 1, 1)), (300, 8, 8, 1))
    model, params = Extremes(), {}
    labels = np.asarray(predictor(model, 0.5, 0.25)(params, images))  # its own answers: accuracy 1 unshifted
    assert len(set(labels)) > 1
    circular = shift_accuracy(model, params, images, labels, 0.5, 0.25, max_shift=3, fill="circular")
    zero = shift_accuracy(model, params, images, labels, 0.5, 0.25, max_shift=3)
    assert circular == [1.0] * 4
    assert zero[0] == 1.0 and max(zero[1:]) < 1.0


def test_random_shifts_stay_within_range():
    import jax

    image = np.zeros((64, 9, 9, 1), np.float32)
    image[:, 4, 4] = 1
    shifted = np.asarray(random_shifts(image, jax.random.key(0), 2))
    rows, cols = np.nonzero(shifted[..., 0].sum(0))
    assert shifted.sum() == 64 and rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    assert len(set(zip(rows, cols))) > 1


def test_training_subsets_are_nested_and_leave_val_and_test_alone():
    images = np.arange(100).reshape(100, 1, 1, 1).astype(np.uint8)
    meta = Meta("toy", (1, 1, 1), ["a", "b"], 0.0, 1.0, {"train": 100, "val": 3, "test": 3})
    splits = Splits(meta, {"train": (images, np.zeros(100, np.int32)), "val": (images[:3], np.zeros(3, np.int32)),
                           "test": (images[:3], np.zeros(3, np.int32))})
    small, large = training_subset(splits, 10, seed=0), training_subset(splits, 30, seed=0)
    assert small.meta.sizes["train"] == 10 and len(small.arrays["train"][0]) == 10
    assert set(small.arrays["train"][0].ravel()) < set(large.arrays["train"][0].ravel())
    assert small.arrays["val"] is splits.arrays["val"]
    with pytest.raises(ValueError, match="more than the 100"):
        training_subset(splits, 101, seed=0)


def test_locality_of_a_perfect_k_by_k_filter_is_one_and_of_random_weights_low():
    energy = np.zeros((3, 28, 28))
    energy[:, 10:13, 4:7] = np.random.default_rng(0).random((3, 3, 3))
    assert locality(energy, 3) == pytest.approx(1.0)
    wrapped = np.zeros((1, 28, 28))
    wrapped[0, [27, 27, 0, 0], [27, 0, 27, 0]] = 1.0  # a 2 x 2 patch across the corner
    assert locality(wrapped, 2, circular=True) == pytest.approx(1.0)
    assert locality(wrapped, 2) == pytest.approx(0.25)
    random = np.random.default_rng(1).normal(size=(50, 28, 28)) ** 2
    assert locality(random, 3) < 0.05


def test_sharing_of_tiled_filters_is_one_in_any_channel_order_and_of_random_filters_low():
    rng = np.random.default_rng(0)
    filters = rng.normal(size=(9, 4))
    tiled = np.stack([[filters[:, rng.permutation(4)] for _ in range(14)] for _ in range(14)])
    assert sharing(tiled) == pytest.approx(1.0)
    assert sharing(rng.normal(size=(14, 14, 9, 4))) < 0.35


def test_first_layer_of_constrained_families_scores_as_constructed():
    rng = np.random.default_rng(0)
    cnn = {"Conv_0": {"kernel": rng.normal(size=(3, 3, 1, 4))}}
    lcn = {"LocallyConnected_0": {"kernel": rng.normal(size=(14, 14, 9, 4))}}
    gconv = {"CircularConv_0": {"kernel": rng.normal(size=(28, 28, 1, 4))}}
    for family, params in (("cnn", cnn), ("lcn", lcn)):
        energy, filters = first_layer(family, params, (28, 28, 1), (14, 14))
        assert energy.shape == (4, 28, 28) and locality(energy, 3) == pytest.approx(1.0)
    assert sharing(first_layer("cnn", cnn, (28, 28, 1), (14, 14))[1]) == pytest.approx(1.0)
    energy, filters = first_layer("gconv", gconv, (28, 28, 1), (14, 14))
    assert sharing(filters) == pytest.approx(1.0) and locality(energy, 3, circular=True) < 0.05
    mlp = {"Dense_0": {"kernel": rng.normal(size=(784, 6))}}
    energy, filters = first_layer("mlp", mlp, (28, 28, 1), (14, 14))
    assert energy.shape == (6, 28, 28) and filters is None
