"""How the study's layers compute, laid out for XLA's kernels (each choice measured in
docs/performance.md); the tests check each against a reference: Flax's `nn.ConvLocal`, the direct
circular sum, XLA's own convolution and its gradients.

- `LocallyConnected` (the LCN's layer, as `nn.ConvLocal`): one batched matrix product per output
  position (`per_position_product`), activations batch-last.
- `CircularConv` (the GConv's layer): one image-sized filter applied circularly through the FFT,
  activations channels-first.
- `cnn_conv` (what the CNN's `nn.Conv` calls): on a CPU, `same_conv`, a convolution whose
  gradients are written out in the layout of XLA's fast kernels; on an accelerator, XLA's own.

`whyconv.models` builds the families from them.
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """XLA's 'SAME' padding (low, high) along one axis: output size is ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def window_slices(padded: jnp.ndarray, kernel: tuple[int, int], stride: int, out_size: tuple[int, int],
                  axes: tuple[int, int]) -> list[jnp.ndarray]:
    """The patches of a padded array as one strided slice per kernel offset (i, j), in row-major
    order: slice (i, j) holds padded[i + stride * p, j + stride * q] at output position (p, q) of
    the two spatial `axes`."""
    def offset(i: int, j: int) -> jnp.ndarray:
        index = [slice(None)] * padded.ndim
        index[axes[0]] = slice(i, i + stride * (out_size[0] - 1) + 1, stride)
        index[axes[1]] = slice(j, j + stride * (out_size[1] - 1) + 1, stride)
        return padded[tuple(index)]

    return [offset(i, j) for i in range(kernel[0]) for j in range(kernel[1])]


@jax.custom_vjp
def per_position_product(kernel: jnp.ndarray, patches: jnp.ndarray) -> jnp.ndarray:
    """The LCN's arithmetic: at each output position (h, w), its own kernel (in, out) applied to
    that position's patches (in, batch), giving (h, w, out, batch)."""
    # XLA's CPU backend hands a batched product to YNNPACK, its fast small-matrix kernels, when
    # the left operand is contracted on its last axis (as the compiled HLO shows), so the kernel
    # is transposed to (h, w, out, in); the barrier keeps XLA from folding that back into the dot.
    kernel_t = jax.lax.optimization_barrier(jnp.swapaxes(kernel, 2, 3))
    return jnp.einsum("hwoi,hwib->hwob", kernel_t, patches)


def _product_forward(kernel, patches):
    return per_position_product(kernel, patches), (kernel, patches)


def _product_backward(saved, out_grad):
    # The gradients of the plain einsum, written out: derived through the transposed kernel,
    # the input's gradient would contract it on a middle axis and miss YNNPACK.
    kernel, patches = saved
    return (jnp.einsum("hwob,hwib->hwio", out_grad, patches),
            jnp.einsum("hwio,hwob->hwib", kernel, out_grad))


per_position_product.defvjp(_product_forward, _product_backward)


class LocallyConnected(nn.Module):
    """A 2-D locally connected layer: a convolution whose filters are not shared.

    Numerically equal to `flax.linen.ConvLocal` with 'SAME' padding and the same parameter
    layout (kernel: (out_h, out_w, k*k*in, out), bias: (out_h, out_w, out)), but several
    times faster on CPU: patches come from k*k strided slices and one einsum, instead of
    `conv_general_dilated_patches`.

    It takes and returns activations batch-last, (height, width, channels, batch), not
    ConvLocal's (batch, height, width, channels). The work is one batched matrix product per
    output position, and XLA wants its operands position-major with the batch last:
    (out_h, out_w, k*k*in, batch). In that layout the patches are built in place, and the
    activations flow from layer to layer with no transpose at all; `SpatialNet` transposes the
    image once on the way in and the last activations once on the way out.
    """

    features: int
    kernel_size: int = 3
    stride: int = 2

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        height, width, in_features, batch = x.shape
        k, s = self.kernel_size, self.stride
        out_h, out_w = -(-height // s), -(-width // s)
        x = jnp.pad(x, (same_padding(height, k, s), same_padding(width, k, s), (0, 0), (0, 0)))
        # One strided slice per kernel offset, stacked after the channel axis so that the patch
        # features are ordered (channel, row, column), as in lax.conv_general_dilated_patches.
        slices = window_slices(x, (k, k), s, (out_h, out_w), axes=(0, 1))
        patches = jnp.stack(slices, axis=3).reshape(out_h, out_w, in_features * k * k, batch)
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (out_h, out_w, k * k * in_features, self.features),
        )
        bias = self.param("bias", nn.initializers.zeros, (out_h, out_w, self.features))
        return per_position_product(kernel, patches) + bias[..., None]


class CircularConv(nn.Module):
    """Shared but not local: one filter as large as the input, applied as a circular convolution.

    out[p, q, o] = sum over i, j, c of x[(p - i) mod H, (q - j) mod W, c] * kernel[i, j, c, o],
    then every `stride`-th row and column. Computed through the FFT (a product per frequency),
    which costs O(HW log HW) per channel instead of the direct O((HW)^2).
    kernel: (H, W, in, out), bias: (out,).

    It takes and returns activations channels-first, (batch, channels, height, width): XLA's FFT
    runs over an array's last axes, and from channels-last it would transpose every activation
    there and back. `SpatialNet` transposes the image once on the way in and the last activations
    once on the way out. The product per frequency:
    - from one input channel (a grayscale image), a broadcast multiply in that same layout;
    - else frequency-major, one (batch, in) x (in, out) product per frequency, written as a real
      product (`spectral_product`).
    The output is subsampled in the frequency domain before the inverse FFT (`strided_irfft2`).
    """

    features: int
    stride: int = 2

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        _, in_features, height, width = x.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (height, width, in_features, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        kernel_spectrum = jnp.fft.rfft2(kernel, axes=(0, 1))  # (h, w', in, out)
        if in_features == 1:
            spectrum = jnp.fft.rfft2(x) * jnp.transpose(kernel_spectrum[:, :, 0], (2, 0, 1))
        else:
            frequency_major = jnp.transpose(jnp.fft.rfft2(x), (2, 3, 0, 1))  # (h, w', batch, in)
            spectrum = jnp.transpose(spectral_product(frequency_major, kernel_spectrum), (2, 3, 0, 1))
        return strided_irfft2(spectrum, height, width, self.stride) + bias[:, None, None]


def spectral_product(spectrum: jnp.ndarray, kernel_spectrum: jnp.ndarray) -> jnp.ndarray:
    """einsum("hwbi,hwio->hwbo") of complex spectra, as one real product per frequency.

    XLA's CPU backend runs complex products at a third of the speed of real ones (the GConv's at
    c = 48: 60 against 150-200 GFLOP/s). The real and imaginary parts stacked, [re | im] of the
    input times the block kernel [[re, im], [-im, re]] is [re | im] of the output. Measured on CPUs
    only, so an accelerator takes the complex product itself, as it does the CNN's plain gradients.
    """
    if jax.default_backend() != "cpu":
        return jnp.einsum("hwbi,hwio->hwbo", spectrum, kernel_spectrum)
    outputs = kernel_spectrum.shape[-1]
    stacked = jnp.concatenate([spectrum.real, spectrum.imag], axis=-1)
    re, im = kernel_spectrum.real, kernel_spectrum.imag
    block = jnp.concatenate([jnp.concatenate([re, im], axis=-1), jnp.concatenate([-im, re], axis=-1)], axis=-2)
    product = jnp.einsum("hwbi,hwio->hwbo", stacked, block)
    return jax.lax.complex(product[..., :outputs], product[..., outputs:])


def strided_irfft2(spectrum: jnp.ndarray, height: int, width: int, stride: int) -> jnp.ndarray:
    """irfft2(spectrum, s=(height, width))[..., ::stride, ::stride] of a (..., h, w // 2 + 1) half
    spectrum, each axis that `stride` divides subsampled before the inverse.

    Keeping every s-th sample of a signal of n is averaging the s aliases k, k + n/s, ... of each
    frequency k < n/s, so the inverse FFT runs on (H/s) x (W/s) points, not H x W. Equal to the
    full inverse to float rounding (tested).
    """
    s = stride
    fold_rows, fold_columns = s > 1 and height % s == 0, s > 1 and width % s == 0
    if fold_rows:
        *lead, rows, columns = spectrum.shape
        spectrum = spectrum.reshape(*lead, s, rows // s, columns).mean(axis=-3)
    if fold_columns:
        # The half spectrum's missing frequencies (u, w // 2 + 1 ... w - 1) are the conjugates of
        # those it holds at (-u mod h, w - w // 2 - 1 ... 1).
        mirrored = jnp.roll(spectrum[..., ::-1, 1 : width - width // 2][..., ::-1], 1, axis=-2)
        full = jnp.concatenate([spectrum, jnp.conj(mirrored)], axis=-1)
        kept = width // s
        spectrum = full.reshape(*full.shape[:-1], s, kept).mean(axis=-2)[..., : kept // 2 + 1]
    signal = jnp.fft.irfft2(spectrum, s=(height // s if fold_rows else height, width // s if fold_columns else width))
    return signal[..., :: 1 if fold_rows else s, :: 1 if fold_columns else s]


# The CNN's convolutions on a CPU (`cnn_conv`) have their gradients written out, for two reasons
# measured in whole training steps (docs/performance.md), and a one-channel input's forward pass
# as slices and one product (`one_channel_conv`).
# - XLA's CPU backend runs a convolution on its fast (Eigen) kernels in one layout only: images
#   (batch, height, width, channels), kernels (height, width, in, out). Outside a loop it rewrites
#   the gradients' convolutions into that layout; inside one, as in a training call of fifty steps,
#   it does not, and the CNN's step ran 1.7-8x slower there (jax-ml/jax#12868). Written out in that
#   layout, their operands transposed behind optimization barriers (else XLA folds the transposes
#   back into the convolutions), they are the convolutions XLA runs outside a loop, to the bit, and
#   the CNNs take fifty steps per call like the other families.
# - The input gradient by phases (`phased_input_gradient`): on a Xeon with AVX-512 and AMX, on two
#   cores, 1.06-1.34x as fast a step where the second layer has 52 to 235 input channels, even or
#   slower below. On one core beside another stage, as the study's workers run, it loses (the CNN
#   at c = 52: 0.98-0.99x a step; 0.86x in a study run): XLA's own gradient is slow on more than
#   one thread, not on one. So it is taken by a process with more than one core, from 48 input
#   channels on.
PHASED_GRADIENT_MIN_CHANNELS = 48
_NHWC = ("NHWC", "HWIO", "NHWC")
_barrier = jax.lax.optimization_barrier


def usable_cores() -> int:
    """The CPU cores this process may run on (`taskset -c 0` gives 1), which XLA sizes its threads to."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _conv(x: jnp.ndarray, kernel: jnp.ndarray, stride: int) -> jnp.ndarray:
    padding = [same_padding(x.shape[axis + 1], kernel.shape[axis], stride) for axis in (0, 1)]
    if x.shape[3] == 1:
        return one_channel_conv(x, kernel, stride, padding)
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=_NHWC)


def one_channel_conv(x: jnp.ndarray, kernel: jnp.ndarray, stride: int,
                     padding: list[tuple[int, int]]) -> jnp.ndarray:
    """A convolution of a one-channel input (the grayscale image) as its k*k strided slices and one
    product with the kernel as a (k*k, out) matrix. XLA's own convolution of such an input takes
    the same time whatever the output's width (about 0.5 ms for a batch of 128 images); this
    trains the CNN 1.02-1.84x as fast on one core (fastest where it is narrowest) and 1.00-1.41x on
    two (docs/performance.md)."""
    features = kernel.shape[3]
    out_size = tuple(-(-x.shape[axis] // stride) for axis in (1, 2))
    padded = jnp.pad(x[..., 0], ((0, 0), *padding))
    patches = jnp.stack(window_slices(padded, kernel.shape[:2], stride, out_size, axes=(1, 2)), axis=-1)
    return patches @ kernel.reshape(-1, features)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def same_conv(x: jnp.ndarray, kernel: jnp.ndarray, stride: int, phased: bool = False) -> jnp.ndarray:
    """A 'SAME' convolution of NHWC images with an HWIO kernel (of a one-channel input, by
    `one_channel_conv`), its gradients convolutions in the layout XLA's CPU kernels take (see
    above); with `phased`, the input's by phases (a 3x3, stride-2 layer of an even-sized input only)."""
    return _conv(x, kernel, stride)


def _same_conv_forward(x, kernel, stride, phased):
    return _conv(x, kernel, stride), (x, kernel)


def _same_conv_backward(stride, phased, saved, out_grad):
    x, kernel = saved
    if phased:
        input_grad = phased_input_gradient(kernel, out_grad)
    else:
        input_grad = dilated_input_gradient(x.shape, kernel, out_grad, stride)
    return input_grad, kernel_gradient(x, out_grad, kernel.shape, stride)


same_conv.defvjp(_same_conv_forward, _same_conv_backward)


def dilated_input_gradient(input_shape: tuple[int, ...], kernel: jnp.ndarray, out_grad: jnp.ndarray,
                           stride: int) -> jnp.ndarray:
    """The input's gradient as XLA computes it: the output gradient dilated by `stride` (zeros
    between its rows and columns), correlated with the kernel flipped and turned to (out, in)."""
    back = _barrier(jnp.swapaxes(kernel[::-1, ::-1], 2, 3))
    padding = []
    for axis in (0, 1):
        size, taps, out = input_shape[axis + 1], kernel.shape[axis], out_grad.shape[axis + 1]
        low = same_padding(size, taps, stride)[0]
        padding.append((taps - 1 - low, size + low - (out - 1) * stride - 1))
    return jax.lax.conv_general_dilated(out_grad, back, (1, 1), padding, lhs_dilation=(stride, stride),
                                        dimension_numbers=_NHWC)


def kernel_gradient(x: jnp.ndarray, out_grad: jnp.ndarray, kernel_shape: tuple[int, ...],
                    stride: int) -> jnp.ndarray:
    """The kernel's gradient: the input correlated with the output gradient dilated by `stride`,
    summed over the batch. As a convolution the channels stand as its batch and the batch as its
    features: (in, h, w, batch) with (h', w', batch, out) gives (in, kh, kw, out)."""
    images = _barrier(jnp.transpose(x, (3, 1, 2, 0)))
    grads = _barrier(jnp.transpose(out_grad, (1, 2, 0, 3)))
    padding = []
    for axis in (0, 1):
        size, taps, out = x.shape[axis + 1], kernel_shape[axis], out_grad.shape[axis + 1]
        low = same_padding(size, taps, stride)[0]
        padding.append((low, taps + (out - 1) * stride - size - low))
    grad = jax.lax.conv_general_dilated(images, grads, (1, 1), padding, rhs_dilation=(stride, stride),
                                        dimension_numbers=_NHWC)
    return jnp.transpose(_barrier(grad), (1, 2, 0, 3))


def phased_input_gradient(kernel: jnp.ndarray, out_grad: jnp.ndarray) -> jnp.ndarray:
    """The input's gradient of a 3x3, stride-2 'SAME' convolution of an even-sized input, by phases.

    XLA computes it as a convolution of the output gradient dilated by zeros
    (`dilated_input_gradient`), so three of every four products it takes are with zeros. Each
    phase of the input (its even or odd rows, times its even or odd columns) is instead reached by
    its own kernel taps: a stride-1 convolution of the output gradient with 2 x 2, 2 x 1, 1 x 2 and
    1 x 1 taps, nine in all, the arithmetic of the forward pass.
    """
    # Input row 2m gets output row m through tap 0 and row m - 1 through tap 2; row 2m + 1 gets
    # row m through tap 1. Columns alike. Taps listed for rows m - 1, m (hence padding low by 1).
    taps = {"even": ([2, 0], (1, 0)), "odd": ([1], (0, 0))}
    back = _barrier(jnp.swapaxes(kernel, 2, 3))  # (3, 3, out, in): from output channels to input channels

    def phase(rows: str, columns: str) -> jnp.ndarray:
        (row_taps, row_pad), (column_taps, column_pad) = taps[rows], taps[columns]
        phase_kernel = back[np.array(row_taps)][:, np.array(column_taps)]
        return jax.lax.conv_general_dilated(out_grad, phase_kernel, (1, 1), (row_pad, column_pad),
                                            dimension_numbers=_NHWC)

    even_rows = jnp.stack([phase("even", "even"), phase("even", "odd")], axis=3)
    odd_rows = jnp.stack([phase("odd", "even"), phase("odd", "odd")], axis=3)
    batch, out_h, out_w, channels = out_grad.shape[0], *even_rows.shape[1:3], kernel.shape[2]
    return jnp.stack([even_rows, odd_rows], axis=2).reshape(batch, 2 * out_h, 2 * out_w, channels)


def cnn_conv(lhs, rhs, window_strides, padding, **options) -> jnp.ndarray:
    """`lax.conv_general_dilated` as `SpatialNet`'s `nn.Conv` calls it (NHWC, square kernel and
    strides, 'SAME', no dilation). On a CPU, `same_conv`, phased where that measured faster: 3x3,
    stride 2, an even-sized input with at least `PHASED_GRADIENT_MIN_CHANNELS` channels, in a
    process with more than one core (never in the study's one-core workers). On an accelerator,
    the plain call: XLA's own gradients, in a loop or not."""
    if jax.default_backend() != "cpu":
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **options)
    stride = window_strides[0]
    phased = (usable_cores() > 1 and rhs.shape[:2] == (3, 3) and stride == 2 and lhs.shape[1] % 2 == 0
              and lhs.shape[2] % 2 == 0 and lhs.shape[3] >= PHASED_GRADIENT_MIN_CHANNELS)
    return same_conv(lhs, rhs, stride, phased)
