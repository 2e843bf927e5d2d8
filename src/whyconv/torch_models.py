"""Every family in PyTorch, for the benchmark only (the `bench` extra).

The same functions as `whyconv.models`, layer for layer: same shapes, parameter counts and
'SAME' padding (PyTorch has none: the input is padded explicitly where it is uneven), so that
given the same weights they compute the same outputs (tests/test_bench.py checks it). Layouts
are PyTorch's own (channels first); each layer is written the usual PyTorch way: `nn.Conv2d`,
unfold + einsum for the locally connected layer, `torch.fft` for the circular one.
"""

from __future__ import annotations

import torch
from torch import nn

from whyconv.capacity import Skeleton, spatial_sizes
from whyconv.layers import same_padding
from whyconv.models import SPATIAL


class SamePad(nn.Module):
    """Zero padding as XLA's 'SAME' (more at the end when uneven)."""

    def __init__(self, in_size: tuple[int, int], kernel: int, stride: int):
        super().__init__()
        (top, bottom), (left, right) = (same_padding(n, kernel, stride) for n in in_size)
        self.pad = (left, right, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, self.pad)


class LocallyConnected(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, out_size: tuple[int, int], kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride, self.out_size = kernel, stride, out_size
        positions = out_size[0] * out_size[1]
        self.weight = nn.Parameter(torch.randn(positions, in_channels * kernel**2, out_channels)
                                   / (in_channels * kernel**2) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(out_channels, *out_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = nn.functional.unfold(x, self.kernel, stride=self.stride)  # (b, in*k*k, positions)
        y = torch.einsum("bip,pio->bop", patches, self.weight)
        return y.reshape(x.shape[0], -1, *self.out_size) + self.bias


class CircularConv(nn.Module):
    """One image-sized filter per channel pair, applied circularly through the FFT, then strided."""

    def __init__(self, in_channels: int, out_channels: int, in_size: tuple[int, int], stride: int):
        super().__init__()
        self.stride, self.in_size = stride, in_size
        fan_in = in_channels * in_size[0] * in_size[1]
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *in_size) / fan_in**0.5)
        self.bias = nn.Parameter(torch.zeros(out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spectrum = torch.einsum("bihw,oihw->bohw", torch.fft.rfft2(x), torch.fft.rfft2(self.weight))
        y = torch.fft.irfft2(spectrum, s=self.in_size)
        return y[:, :, :: self.stride, :: self.stride] + self.bias


def build_torch_model(family: str, width: int, skeleton: Skeleton) -> nn.Module:
    h, w, c = skeleton.image_shape
    if family == "mlp":
        layers, size = [nn.Flatten()], h * w * c
        for _ in range(skeleton.depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        return nn.Sequential(*layers, nn.Linear(size, skeleton.num_classes))
    local, shared, pool = SPATIAL[family]
    k, s = skeleton.kernel_size, skeleton.stride
    layers, in_channels, in_size = [], c, (h, w)
    for layer, out_size in enumerate(spatial_sizes(skeleton)):
        out_channels = width * 2**layer
        if not local:
            layers.append(CircularConv(in_channels, out_channels, in_size, s))
        elif shared:
            layers += [SamePad(in_size, k, s), nn.Conv2d(in_channels, out_channels, k, stride=s)]
        else:
            layers += [SamePad(in_size, k, s), LocallyConnected(in_channels, out_channels, out_size, k, s)]
        layers.append(nn.ReLU())
        in_channels, in_size = out_channels, out_size
    if pool:
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, skeleton.num_classes))
    features = in_channels * in_size[0] * in_size[1]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(features, skeleton.num_classes))
