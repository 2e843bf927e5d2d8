"""The same three families in PyTorch, for the benchmark only (the `bench` extra).

Same layer sizes and parameter counts as `whyconv.models`; padding is symmetric (PyTorch has
no 'SAME'), which changes no shape here. The LCN is unfold + einsum, the usual PyTorch way.
"""

from __future__ import annotations

import torch
from torch import nn

from whyconv.capacity import Skeleton, spatial_sizes


class LocallyConnected(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, in_size: tuple[int, int],
                 out_size: tuple[int, int], kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride, self.out_size = kernel, stride, out_size
        self.padding = ((out_size[0] - 1) * stride + kernel - in_size[0] + 1) // 2
        positions = out_size[0] * out_size[1]
        self.weight = nn.Parameter(torch.randn(positions, in_channels * kernel**2, out_channels)
                                   / (in_channels * kernel**2) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(out_channels, *out_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = nn.functional.unfold(x, self.kernel, padding=self.padding, stride=self.stride)
        y = torch.einsum("bip,pio->bop", patches, self.weight)
        return y.reshape(x.shape[0], -1, *self.out_size) + self.bias


def build_torch_model(family: str, width: int, skeleton: Skeleton) -> nn.Module:
    h, w, c = skeleton.image_shape
    if family == "mlp":
        layers, size = [nn.Flatten()], h * w * c
        for _ in range(skeleton.depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        return nn.Sequential(*layers, nn.Linear(size, skeleton.num_classes))
    layers, in_channels, in_size = [], c, (h, w)
    for layer, out_size in enumerate(spatial_sizes(skeleton)):
        out_channels = width * 2**layer
        if family == "cnn":
            layers.append(nn.Conv2d(in_channels, out_channels, skeleton.kernel_size,
                                    stride=skeleton.stride, padding=skeleton.kernel_size // 2))
        else:
            layers.append(LocallyConnected(in_channels, out_channels, in_size, out_size,
                                           skeleton.kernel_size, skeleton.stride))
        layers.append(nn.ReLU())
        in_channels, in_size = out_channels, out_size
    features = in_channels * in_size[0] * in_size[1]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(features, skeleton.num_classes))
