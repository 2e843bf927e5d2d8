"""Compute, not only parameters: the arithmetic of one example through a model.

Sharing saves parameters, not arithmetic: an LCN and a CNN of the same width do the same
multiply-adds. These counts are analytic (multiply-adds x 2, biases and activations ignored).
The global convolution is counted as it is computed, through the FFT: a real FFT of N points
taken as 2.5 N log2 N, a complex multiply-add as 8.
"""

from __future__ import annotations

import math

from whyconv.capacity import Skeleton, spatial_sizes
from whyconv.models import SPATIAL


def fft_conv_flops(height: int, width: int, in_channels: int, out_channels: int) -> float:
    """One example through `CircularConv`: forward FFTs, a product per frequency, inverse FFTs."""
    points = height * width
    fft = 2.5 * points * math.log2(points)
    frequencies = height * (width // 2 + 1)
    return fft * (in_channels + out_channels) + 8 * frequencies * in_channels * out_channels


def forward_flops(family: str, width: int, skeleton: Skeleton) -> int:
    """Multiply-adds x 2 of one example's forward pass. Sharing changes parameters, not this."""
    h, w, c = skeleton.image_shape
    if family == "mlp":
        sizes = [h * w * c] + [width] * skeleton.depth + [skeleton.num_classes]
        return sum(2 * a * b for a, b in zip(sizes, sizes[1:]))
    local, _, pool = SPATIAL[family]
    flops, in_channels, in_h, in_w = 0.0, c, h, w
    for layer, (out_h, out_w) in enumerate(spatial_sizes(skeleton)):
        out_channels = width * 2**layer
        if local:
            flops += 2 * out_h * out_w * skeleton.kernel_size**2 * in_channels * out_channels
        else:
            flops += fft_conv_flops(in_h, in_w, in_channels, out_channels)
        in_channels, in_h, in_w = out_channels, out_h, out_w
    features = in_channels if pool else in_h * in_w * in_channels
    return round(flops + 2 * features * skeleton.num_classes)


def train_flops(family: str, width: int, skeleton: Skeleton, batch: int) -> int:
    """A training step is about three forward passes (forward, and two products backward)."""
    return 3 * batch * forward_flops(family, width, skeleton)
