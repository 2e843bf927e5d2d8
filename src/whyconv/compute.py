"""Compute, not only parameters: the arithmetic of one example through a model.

Sharing saves parameters, not arithmetic: an LCN and a CNN of the same width do the same
multiply-adds. These counts are analytic (multiply-adds x 2, biases and activations ignored).
"""

from __future__ import annotations

from whyconv.capacity import Skeleton, spatial_sizes


def forward_flops(family: str, width: int, skeleton: Skeleton) -> int:
    """Multiply-adds x 2 of one example's forward pass. Sharing changes parameters, not this."""
    h, w, c = skeleton.image_shape
    if family == "mlp":
        sizes = [h * w * c] + [width] * skeleton.depth + [skeleton.num_classes]
        return sum(2 * a * b for a, b in zip(sizes, sizes[1:]))
    flops, in_channels = 0, c
    for layer, (out_h, out_w) in enumerate(spatial_sizes(skeleton)):
        out_channels = width * 2**layer
        flops += 2 * out_h * out_w * skeleton.kernel_size**2 * in_channels * out_channels
        in_channels = out_channels
    out_h, out_w = spatial_sizes(skeleton)[-1]
    return flops + 2 * out_h * out_w * in_channels * skeleton.num_classes


def train_flops(family: str, width: int, skeleton: Skeleton, batch: int) -> int:
    """A training step is about three forward passes (forward, and two products backward)."""
    return 3 * batch * forward_flops(family, width, skeleton)
