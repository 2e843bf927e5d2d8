"""The model families of the study.

Two priors, two switches. An MLP has neither. The spatial network (`SpatialNet`) is always
*local* (each unit sees a k x k patch); its `shared` field says whether the filter is the same
at every position (a CNN) or learned separately for each one (a locally connected net, LCN).
LCN and CNN are therefore one skeleton, exactly as Flax's ImageNet example builds its
`ResNetLocal` with `conv=nn.ConvLocal`.

The skeleton: `depth` spatial layers with channels (c, 2c, 4c, ...), each k x k with stride s,
ReLU, then one dense classifier. The MLP has `depth` hidden layers of width h.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FAMILIES = ("mlp", "lcn", "cnn")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """XLA's 'SAME' padding (low, high) along one axis: output size is ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class LocallyConnected(nn.Module):
    """A 2-D locally connected layer: a convolution whose filters are not shared.

    Numerically equal to `flax.linen.ConvLocal` with 'SAME' padding and the same parameter
    layout (kernel: (out_h, out_w, k*k*in, out), bias: (out_h, out_w, out)), but several
    times faster on CPU: patches come from k*k strided slices and one einsum, instead of
    `conv_general_dilated_patches`.
    """

    features: int
    kernel_size: int = 3
    stride: int = 2

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        batch, height, width, in_features = x.shape
        k, s = self.kernel_size, self.stride
        out_h, out_w = -(-height // s), -(-width // s)
        x = jnp.pad(x, ((0, 0), same_padding(height, k, s), same_padding(width, k, s), (0, 0)))
        # One strided slice per kernel offset; stacked last so that the patch features are
        # ordered (channel, row, column), as in lax.conv_general_dilated_patches.
        slices = [
            x[:, i : i + s * (out_h - 1) + 1 : s, j : j + s * (out_w - 1) + 1 : s, :]
            for i in range(k)
            for j in range(k)
        ]
        patches = jnp.stack(slices, axis=-1).reshape(batch, out_h, out_w, in_features * k * k)
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (out_h, out_w, k * k * in_features, self.features),
        )
        bias = self.param("bias", nn.initializers.zeros, (out_h, out_w, self.features))
        return jnp.einsum("bhwi,hwio->bhwo", patches, kernel) + bias


class SpatialNet(nn.Module):
    """Local layers then a dense classifier; `shared=True` is a CNN, `shared=False` an LCN."""

    channels: int
    num_classes: int
    shared: bool
    depth: int = 2
    kernel_size: int = 3
    stride: int = 2
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        for layer in range(self.depth):
            features = self.channels * 2**layer
            if self.shared:
                x = nn.Conv(features, (self.kernel_size,) * 2, strides=self.stride, padding="SAME")(x)
            else:
                x = LocallyConnected(features, self.kernel_size, self.stride)(x)
            x = nn.relu(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x.reshape(x.shape[0], -1))
        return nn.Dense(self.num_classes)(x)


class MLP(nn.Module):
    """Fully connected: `depth` hidden layers of `width` ReLU units on the flattened image."""

    width: int
    num_classes: int
    depth: int = 2
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = x.reshape(x.shape[0], -1)
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(self.width)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


def build_model(
    family: str, width: int, num_classes: int, depth: int = 2, kernel_size: int = 3,
    stride: int = 2, dropout: float = 0.0,
) -> nn.Module:
    """The one factory: `width` is the MLP's hidden width or the first spatial layer's channels.

    `dropout` applies to the classifier's input in every family alike.
    """
    if family == "mlp":
        return MLP(width, num_classes, depth, dropout)
    if family in ("lcn", "cnn"):
        return SpatialNet(width, num_classes, shared=family == "cnn", depth=depth,
                          kernel_size=kernel_size, stride=stride, dropout=dropout)
    raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")


def count_params(params) -> int:
    """Number of scalars in a parameter tree: every weight and every bias."""
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))

