"""The fast locally connected layer, the FFT circular convolution and the CNN's written-out
gradients against references; the two switches."""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from whyconv import layers
from whyconv.layers import PHASED_GRADIENT_MIN_CHANNELS, CircularConv, LocallyConnected, cnn_conv, same_conv
from whyconv.models import SpatialNet, build_model


def random_params(layer: nn.Module, x) -> dict:
    """Standard normal parameters (a non-zero bias too) of the layer's shapes, built without running
    the layer: eagerly, one op at a time, a small layer's init takes seconds."""
    shapes = jax.eval_shape(layer.init, jax.random.key(1), x)
    return jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape), shapes)


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
    params = random_params(reference, x)
    fast = batch_first_apply(LocallyConnected(features, kernel, stride))
    np.testing.assert_allclose(jax.jit(fast)(params, x), jax.jit(reference.apply)(params, x), atol=1e-5, rtol=1e-5)
    # Training uses the backward pass too: gradients with respect to the parameters and the input.
    cotangent = jax.random.normal(jax.random.key(3), jax.eval_shape(reference.apply, params, x).shape)
    grads = [jax.jit(jax.grad(lambda p, x: (apply(p, x) * cotangent).sum(), argnums=(0, 1)))(params, x)
             for apply in (fast, reference.apply)]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4), *grads)
    # Same parameter layout, so the two are interchangeable.
    own_params = jax.eval_shape(LocallyConnected(features, kernel, stride).init, jax.random.key(1), to_batch_last(x))
    assert jax.tree.map(np.shape, own_params) == jax.tree.map(np.shape, params)


def to_batch_last(x):
    return jnp.transpose(x, (1, 2, 3, 0))


def batch_first_apply(layer: LocallyConnected):
    """The layer's apply on (batch, height, width, channels) activations, as ConvLocal's."""
    return lambda params, x: jnp.transpose(layer.apply(params, to_batch_last(x)), (3, 0, 1, 2))


def to_channels_first(x):
    """(batch, height, width, channels) -> CircularConv's (batch, channels, height, width)."""
    return np.transpose(x, (0, 3, 1, 2))


def direct_circular_conv(x, kernel, bias, stride: int, xp=np):
    """The definition: out[p, q] = sum_ij x[(p - i) mod H, (q - j) mod W] k[i, j], every term
    gathered and summed. With `xp=jnp`, in JAX, to differentiate."""
    _, height, width, _ = x.shape
    rows = (np.arange(height)[:, None] - np.arange(height)) % height  # rows[p, i] = (p - i) mod H
    columns = (np.arange(width)[:, None] - np.arange(width)) % width
    windows = x[:, rows[:, :, None, None], columns[None, None]]  # (batch, p, i, q, j, channels)
    out = xp.einsum("bpiqjc,ijco->bpqo", windows, kernel)
    return out[:, ::stride, ::stride] + bias


# One input channel takes the broadcast product, more the real product. Each axis that the stride
# divides is folded before the inverse FFT: (28, 28) and (9, 12) both, (8, 9) and (9, 8) one, (7, 7) none.
@pytest.mark.parametrize("shape, features, stride", [((2, 28, 28, 1), 3, 2), ((2, 14, 14, 3), 2, 2), ((2, 7, 9, 3), 2, 1),
                                                     ((1, 9, 12, 2), 3, 3), ((1, 7, 7, 2), 4, 2), ((1, 8, 9, 2), 3, 2), ((1, 9, 8, 1), 2, 2)])
def test_circular_conv_equals_direct_circular_convolution(shape, features, stride):
    x = np.asarray(jax.random.normal(jax.random.key(0), shape), np.float64)
    layer = CircularConv(features, stride)
    params = random_params(layer, to_channels_first(x))
    expected = direct_circular_conv(x, np.asarray(params["params"]["kernel"], np.float64),
                                    np.asarray(params["params"]["bias"], np.float64), stride)
    np.testing.assert_allclose(jax.jit(layer.apply)(params, to_channels_first(x.astype(np.float32))),
                               to_channels_first(expected), atol=1e-4, rtol=1e-4)


def test_spectral_product_is_the_complex_product_on_every_backend(monkeypatch):
    """The CPU's real product (stacked parts, block kernel) and an accelerator's complex one."""
    rng = np.random.default_rng(0)
    spectrum, kernel = (rng.normal(size=shape) + 1j * rng.normal(size=shape) for shape in ((3, 2, 5, 4), (3, 2, 4, 6)))
    expected = np.einsum("hwbi,hwio->hwbo", spectrum, kernel)
    args = jnp.asarray(spectrum, jnp.complex64), jnp.asarray(kernel, jnp.complex64)
    np.testing.assert_allclose(layers.spectral_product(*args), expected, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
    np.testing.assert_allclose(layers.spectral_product(*args), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, features, stride", [((2, 8, 8, 1), 3, 2), ((2, 6, 7, 3), 2, 2), ((1, 6, 6, 2), 2, 3)])
def test_circular_conv_gradients_equal_the_direct_convolutions(shape, features, stride):
    """The FFT layer's gradients (through the real product and the folds) against autodiff of the
    definition, term by term, in float32."""
    def direct(params, x):
        weights = params["params"]
        return to_channels_first(direct_circular_conv(x, weights["kernel"], weights["bias"], stride, xp=jnp))

    x = jax.random.normal(jax.random.key(0), shape)
    layer = CircularConv(features, stride)
    params = random_params(layer, to_channels_first(x))
    weights = jax.random.normal(jax.random.key(3), jax.eval_shape(direct, params, x).shape)

    def gradients(apply):
        return jax.jit(jax.grad(lambda p, x: jnp.sum(apply(p, x) * weights), (0, 1)))(params, x)

    fft_grads = gradients(lambda p, x: layer.apply(p, to_channels_first(x)))
    direct_grads = gradients(direct)
    for got, want in zip(jax.tree.leaves(fft_grads), jax.tree.leaves(direct_grads), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_two_switches_make_the_spatial_families():
    lcn, gconv, cnn = (build_model(f, 4, 10) for f in ("lcn", "gconv", "cnn"))
    assert all(isinstance(m, SpatialNet) for m in (lcn, gconv, cnn))
    assert [(m.local, m.shared) for m in (lcn, gconv, cnn)] == [(True, False), (False, True), (True, True)]
    assert dataclasses.replace(lcn, shared=True) == cnn
    assert dataclasses.replace(gconv, local=True) == cnn
    assert dataclasses.replace(cnn, pool=True) == build_model("cnn_gap", 4, 10)
    with pytest.raises(ValueError, match="MLP"):
        dataclasses.replace(cnn, local=False, shared=False).init(jax.random.key(0), np.zeros((1, 8, 8, 1)))


def test_pooled_cnn_is_invariant_to_circular_shifts_and_gconv_equivariant():
    """Global average pooling after shared layers ignores where things are (circular shifts, stride 1)."""
    x = np.asarray(jax.random.normal(jax.random.key(0), (1, 12, 12, 1)))
    shifted = np.roll(x, (3, 5), axis=(1, 2))
    layer = CircularConv(2, 1)
    params = layer.init(jax.random.key(1), to_channels_first(x))
    np.testing.assert_allclose(np.roll(layer.apply(params, to_channels_first(x)), (3, 5), axis=(2, 3)),
                               layer.apply(params, to_channels_first(shifted)), atol=1e-5)
    gconv_pool = SpatialNet(2, 3, local=False, shared=True, pool=True, stride=1)
    params = gconv_pool.init(jax.random.key(1), x)
    np.testing.assert_allclose(gconv_pool.apply(params, x), gconv_pool.apply(params, shifted), atol=1e-5)


def conv_gradients(conv, x, kernel, seed=2):
    """The output of `conv(x, kernel)` and its gradients for a random output gradient."""
    out, vjp = jax.vjp(conv, x, kernel)
    return out, *vjp(jax.random.normal(jax.random.key(seed), out.shape))


def xla_conv(stride):
    return lambda x, k: jax.lax.conv_general_dilated(x, k, (stride, stride), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("shape, kernel_size, stride", [((2, 28, 28, 1), 3, 2), ((3, 14, 14, 9), 3, 2),
                                                         ((2, 13, 13, 4), 3, 2), ((2, 6, 10, 4), 3, 1),
                                                         ((2, 12, 12, 3), 5, 3),  # odd, non-square, wider
                                                         ((2, 13, 13, 1), 3, 2), ((2, 7, 10, 1), 5, 3)])
def test_written_out_gradients_are_xlas_to_the_bit(shape, kernel_size, stride):
    """The gradients bit for bit; the output too, but of a one-channel input, whose slices and one
    product (`one_channel_conv`) round differently: within float rounding of XLA's."""
    x = jax.random.normal(jax.random.key(0), shape)
    kernel = jax.random.normal(jax.random.key(1), (kernel_size, kernel_size, shape[3], 6))
    want = conv_gradients(xla_conv(stride), x, kernel)
    got = conv_gradients(lambda x, k: same_conv(x, k, stride), x, kernel)
    (want_out, *want_grads), (got_out, *got_grads) = want, got
    if shape[3] == 1:
        np.testing.assert_allclose(got_out, want_out, rtol=0, atol=1e-6 * float(jnp.abs(want_out).max()))
    else:
        np.testing.assert_array_equal(got_out, want_out)
    for name, a, b in zip(("input gradient", "kernel gradient"), want_grads, got_grads, strict=True):
        np.testing.assert_array_equal(b, a, err_msg=name)


@pytest.mark.parametrize("shape, features", [((2, 28, 28, 1), 3), ((3, 14, 14, 9), 18), ((2, 14, 14, 52), 104),
                                             ((2, 6, 10, 4), 5)])  # non-square
def test_phased_input_gradient_equals_xlas(shape, features):
    x = jax.random.normal(jax.random.key(0), shape)
    kernel = jax.random.normal(jax.random.key(1), (3, 3, shape[3], features))
    reference = conv_gradients(xla_conv(2), x, kernel)
    phased = conv_gradients(lambda x, k: same_conv(x, k, 2, True), x, kernel)
    for name, want, got in zip(("output", "input gradient", "kernel gradient"), reference, phased, strict=True):
        scale = float(jnp.abs(want).max())
        np.testing.assert_allclose(got, want, atol=1e-6 * scale, rtol=0, err_msg=name)


@pytest.mark.parametrize("family", ["cnn", "cnn_gap"])
@pytest.mark.parametrize("cores", [1, 2])
def test_cnn_training_loop_keeps_every_convolution_in_the_layout_of_xlas_cpu_kernels(family, cores, monkeypatch):
    """Inside a loop XLA's CPU backend leaves a gradient's convolution in the layout it was written
    in, and any layout but (batch, h, w, c) images with (h, w, in, out) kernels runs on a slow
    generic kernel (jax-ml/jax#12868). Checked in the optimized program of ten steps in a loop."""
    monkeypatch.setattr(layers, "usable_cores", lambda: cores)  # 2: the phased gradient at c = 48
    model = build_model(family, 48, 10)
    x = jnp.zeros((8, 28, 28, 1))
    params = model.init(jax.random.key(0), x)

    def steps(params):
        grad = jax.grad(lambda p: model.apply(p, x).sum())
        return jax.lax.fori_loop(0, 10, lambda i, p: jax.tree.map(lambda a, g: a - 1e-3 * g, p, grad(p)), params)

    text = jax.jit(steps).lower(params).compile().as_text()
    labels = re.findall(r"convolution\(.*?dim_labels=([^,\s]+)", text)
    # The second layer's forward, both kernel gradients and its input's (phased: 4); the first
    # layer's forward is a product (one_channel_conv).
    assert len(labels) == (7 if cores > 1 else 4)
    assert set(labels) == {"b01f_01io->b01f"}


def test_cnn_takes_the_phased_gradient_only_where_it_measured_faster(monkeypatch):
    """Narrow layers, and every layer in a one-core process (the study's workers), have XLA's
    gradients bit for bit; a wide layer with more cores has them by phases, to float rounding."""
    wide = PHASED_GRADIENT_MIN_CHANNELS
    for cores, channels, phased in ((2, wide - 1, False), (2, wide, True), (1, wide, False)):
        monkeypatch.setattr(layers, "usable_cores", lambda: cores)
        x = jax.random.normal(jax.random.key(0), (2, 14, 14, channels))
        layer, plain = (nn.Conv(8, (3, 3), strides=2, padding="SAME", conv_general_dilated=conv)
                        for conv in (cnn_conv, jax.lax.conv_general_dilated))
        params = layer.init(jax.random.key(1), x)
        loss = lambda apply: lambda p, x: (apply(p, x) ** 2).sum()
        (got_p, got_x), (want_p, want_x) = (jax.grad(loss(m.apply), (0, 1))(params, x) for m in (layer, plain))
        text = jax.jit(jax.grad(loss(layer.apply), (0, 1))).lower(params, x).as_text()
        phased = phased and jax.default_backend() == "cpu"  # accelerators take XLA's own gradient
        assert text.count("convolution(") == (6 if phased else 3)  # forward, kernel and input gradients
        if phased:
            np.testing.assert_allclose(got_x, want_x, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(got_x, want_x)
            np.testing.assert_array_equal(got_p["params"]["kernel"], want_p["params"]["kernel"])


def test_cnn_is_translation_equivariant_and_lcn_is_not():
    """Sharing is what makes a spatial layer commute with shifts (away from the border)."""
    x = np.zeros((1, 16, 16, 1), np.float32)
    x[0, 6, 6, 0] = 1.0
    shifted = np.roll(x, 2, axis=2)
    for shared, equivariant in ((True, True), (False, False)):
        layer = nn.Conv(2, (3, 3), padding="SAME") if shared else LocallyConnected(2, 3, 1)
        params = layer.init(jax.random.key(0), x if shared else to_batch_last(x))
        params = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), p.shape), params)
        apply = layer.apply if shared else batch_first_apply(layer)
        y, y_shifted = apply(params, x), apply(params, shifted)
        same = np.allclose(np.roll(y, 2, axis=2)[0, 4:10, 4:12], y_shifted[0, 4:10, 4:12], atol=1e-5)
        assert same == equivariant


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown model family 'rnn'"):
        build_model("rnn", 4, 10)
