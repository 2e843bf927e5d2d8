"""Matched capacity: closed-form parameter counts and the width that meets a budget.

Every count includes every weight and every bias (an LCN has a bias per output position).
Tests check each formula against the real initialized parameter tree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from whyconv.models import FAMILIES, SPATIAL


@dataclass(frozen=True)
class Skeleton:
    """The shape knobs shared by all families (see `whyconv.models`)."""

    image_shape: tuple[int, int, int]  # (height, width, channels)
    num_classes: int
    depth: int = 2
    kernel_size: int = 3
    stride: int = 2


def spatial_sizes(skeleton: Skeleton) -> list[tuple[int, int]]:
    """Output (height, width) of each spatial layer ('SAME' padding: ceil(size / stride))."""
    h, w, _ = skeleton.image_shape
    sizes = []
    for _ in range(skeleton.depth):
        h, w = -(-h // skeleton.stride), -(-w // skeleton.stride)
        sizes.append((h, w))
    return sizes


def param_count(family: str, width: int, skeleton: Skeleton) -> int:
    """Exact number of parameters of `build_model(family, width, ...)` for this skeleton."""
    h, w, c = skeleton.image_shape
    classes = skeleton.num_classes
    if family == "mlp":
        first = (h * w * c) * width + width
        hidden = (skeleton.depth - 1) * (width * width + width)
        return first + hidden + width * classes + classes
    if family not in SPATIAL:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    local, shared, pool = SPATIAL[family]
    k2 = skeleton.kernel_size**2
    total, in_channels, in_h, in_w = 0, c, h, w
    for layer, (out_h, out_w) in enumerate(spatial_sizes(skeleton)):
        out_channels = width * 2**layer
        if local:
            weights = k2 * in_channels * out_channels
            total += weights + out_channels if shared else out_h * out_w * (weights + out_channels)
        else:  # one image-sized filter per channel pair, one bias per channel
            total += in_h * in_w * in_channels * out_channels + out_channels
        in_channels, in_h, in_w = out_channels, out_h, out_w
    features = in_channels if pool else in_h * in_w * in_channels
    return total + features * classes + classes


class BudgetError(ValueError):
    """No width of a family lands within tolerance of a parameter budget."""


@dataclass(frozen=True)
class Match:
    family: str
    budget: int
    width: int
    params: int


def solve_width(family: str, budget: int, skeleton: Skeleton, tolerance: float = 0.1) -> Match:
    """The width whose parameter count is closest to `budget` (in ratio), within `tolerance`.

    Raises BudgetError when the smallest model is already too big, or when the budget falls
    in a gap between two consecutive widths.
    """
    smallest = param_count(family, 1, skeleton)
    if smallest > budget * (1 + tolerance):
        raise BudgetError(
            f"budget {budget:,} is below the minimum of family {family!r}: its smallest model "
            f"(width 1) has {smallest:,} parameters. Raise the budget to at least "
            f"{math.ceil(smallest / (1 + tolerance)):,}."
        )
    # Counts grow with width, so find the first width at or above the budget by doubling
    # and bisection, then pick the closer of it and its predecessor.
    high = 1
    while param_count(family, high, skeleton) < budget:
        high *= 2
    low = max(high // 2, 1)
    while low < high:
        mid = (low + high) // 2
        if param_count(family, mid, skeleton) < budget:
            low = mid + 1
        else:
            high = mid
    candidates = [w for w in (high - 1, high) if w >= 1]
    width = min(candidates, key=lambda w: abs(math.log(param_count(family, w, skeleton) / budget)))
    params = param_count(family, width, skeleton)
    if abs(params / budget - 1) > tolerance:
        below, above = param_count(family, high - 1, skeleton), param_count(family, high, skeleton)
        raise BudgetError(
            f"no width of family {family!r} lands within {tolerance:.0%} of budget {budget:,}: "
            f"width {high - 1} has {below:,} parameters and width {high} has {above:,}. "
            f"Choose a budget nearer one of those."
        )
    return Match(family, budget, width, params)
