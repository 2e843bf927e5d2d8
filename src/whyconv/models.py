"""The model families of the study.

Two priors, two switches. The spatial network (`SpatialNet`) has both as fields: `local`
(each unit sees a k x k patch, or the whole input) and `shared` (the same filter at every
position, or one learned per position). That makes a 2 x 2 factorial:

    local, shared        CNN     nn.Conv
    local, not shared    LCN     LocallyConnected (as Flax's `nn.ConvLocal`)
    global, shared       GConv   CircularConv: one image-sized filter, applied circularly
    global, not shared   MLP     (a dense layer; built as `MLP`, on the flattened image)

The skeleton: `depth` spatial layers with channels (c, 2c, 4c, ...), each with stride s, ReLU,
then one dense classifier, or, with `pool=True` (family "cnn_gap"), a global average pool
before it: pooling, not sharing alone, is what makes a CNN's output shift-invariant. The MLP has
`depth` hidden layers of width h.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from whyconv.layers import CircularConv, LocallyConnected, cnn_conv

FAMILIES = ("mlp", "lcn", "gconv", "cnn", "cnn_gap")
# (local, shared, pool) of each spatial family.
SPATIAL = {"lcn": (True, False, False), "gconv": (False, True, False), "cnn": (True, True, False),
           "cnn_gap": (True, True, True)}
# The layout each (local, shared) layer works in, as a transpose of the image's (batch, height,
# width, channels): the LCN's batch-last (see LocallyConnected), the GConv's channels-first (see
# CircularConv); the CNN's nn.Conv takes the image's own.
LAYOUTS = {(True, False): (1, 2, 3, 0), (False, True): (0, 3, 1, 2)}


class SpatialNet(nn.Module):
    """Spatial layers then a classifier; `local` and `shared` are the two priors (see above)."""

    channels: int
    num_classes: int
    local: bool = True
    shared: bool = True
    pool: bool = False
    depth: int = 2
    kernel_size: int = 3
    stride: int = 2
    dropout: float = 0.0

    def layer(self, features: int) -> nn.Module:
        if not self.local:
            if not self.shared:
                raise ValueError("neither local nor shared is the MLP: build it with MLP")
            return CircularConv(features, self.stride)
        if self.shared:
            return nn.Conv(features, (self.kernel_size,) * 2, strides=self.stride, padding="SAME",
                           conv_general_dilated=cnn_conv)
        return LocallyConnected(features, self.kernel_size, self.stride)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        layout = LAYOUTS.get((self.local, self.shared))
        if layout:
            x = jnp.transpose(x, layout)
        for depth in range(self.depth):
            x = nn.relu(self.layer(self.channels * 2**depth)(x))
        if layout:
            x = jnp.transpose(x, np.argsort(layout))
        x = x.mean(axis=(1, 2)) if self.pool else x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
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
    if family in SPATIAL:
        local, shared, pool = SPATIAL[family]
        return SpatialNet(width, num_classes, local, shared, pool, depth=depth,
                          kernel_size=kernel_size, stride=stride, dropout=dropout)
    raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")


def count_params(params) -> int:
    """Number of scalars in a parameter tree: every weight and every bias."""
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))

