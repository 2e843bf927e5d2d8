"""The fast locally connected layer against Flax's reference, and the sharing switch."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from whyconv.models import LocallyConnected, SpatialNet, build_model


@pytest.mark.parametrize("shape, features, kernel, stride", [
    ((2, 28, 28, 1), 4, 3, 2),
    ((3, 14, 14, 5), 6, 3, 2),
    ((2, 7, 7, 3), 2, 3, 2),   # odd size: asymmetric 'SAME' padding
    ((2, 9, 10, 2), 3, 3, 1),  # stride 1, non-square
    ((1, 12, 12, 2), 2, 5, 3),
])
def test_locally_connected_equals_flax_conv_local(shape, features, kernel, stride):
    x = jax.random.normal(jax.random.key(0), shape)
    reference = nn.ConvLocal(features, (kernel, kernel), strides=stride, padding="SAME")
    params = reference.init(jax.random.key(1), x)
    params = jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape), params)  # non-zero bias too
    fast = LocallyConnected(features, kernel, stride)
    np.testing.assert_allclose(fast.apply(params, x), reference.apply(params, x), atol=1e-5, rtol=1e-5)
    # Same parameter layout, so the two are interchangeable.
    assert jax.tree.map(np.shape, fast.init(jax.random.key(1), x)) == jax.tree.map(np.shape, params)


def test_shared_switch_is_the_only_difference_between_lcn_and_cnn():
    lcn, cnn = build_model("lcn", 4, 10), build_model("cnn", 4, 10)
    assert isinstance(lcn, SpatialNet) and isinstance(cnn, SpatialNet)
    assert (lcn.shared, cnn.shared) == (False, True)
    assert dataclasses.replace(lcn, shared=True) == cnn


def test_cnn_is_translation_equivariant_and_lcn_is_not():
    """Sharing is what makes a spatial layer commute with shifts (away from the border)."""
    x = np.zeros((1, 16, 16, 1), np.float32)
    x[0, 6, 6, 0] = 1.0
    shifted = np.roll(x, 2, axis=2)
    for shared, equivariant in ((True, True), (False, False)):
        layer = nn.Conv(2, (3, 3), padding="SAME") if shared else LocallyConnected(2, 3, 1)
        params = layer.init(jax.random.key(0), x)
        params = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), p.shape), params)
        y, y_shifted = layer.apply(params, x), layer.apply(params, shifted)
        same = np.allclose(np.roll(y, 2, axis=2)[0, 4:10, 4:12], y_shifted[0, 4:10, 4:12], atol=1e-5)
        assert same == equivariant


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown model family 'rnn'"):
        build_model("rnn", 4, 10)
