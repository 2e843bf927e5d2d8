"""Probes of trained models: accuracy under translation, and what the first layer learned.

* `shift_accuracy`: test accuracy when every test image is moved by s pixels along both axes,
  averaged over the four diagonal directions, for s = 0..max_shift. With zero fill a shift also
  pushes content off the image; with circular fill it only moves it, which tells the two apart.
* `locality`: how concentrated each first-layer unit's weights are in space: the share of its
  weight energy (squared weights) inside the best k x k window of the image, averaged over
  units. A unit that only sees a k x k patch scores 1; spread-out weights score about
  k * k / (H * W).
* `sharing`: how alike the filters at neighbouring positions are: for each pair of neighbouring
  positions, filters are paired one to one (Hungarian matching, since channel order at one
  position says nothing about the order at the next) and their cosine similarity averaged.
  Identical tiled filters score 1 (in any channel order); independent random filters score low.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.optimize import linear_sum_assignment

from whyconv.config import ShiftFill
from whyconv.controls import shift_images
from whyconv.training import compiler_options, normalize


@functools.cache
def predictor(model: nn.Module, mean: float, std: float) -> Callable:
    return jax.jit(lambda params, images: model.apply({"params": params}, normalize(images, mean, std)).argmax(-1),
                   compiler_options=compiler_options())


def accuracy(predict: Callable, params, images: jnp.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    predictions = [np.asarray(predict(params, images[i : i + batch_size])) for i in range(0, len(labels), batch_size)]
    return float((np.concatenate(predictions) == labels).mean())


def shift_accuracy(model: nn.Module, params, images: np.ndarray, labels: np.ndarray, mean: float, std: float,
                   max_shift: int, fill: ShiftFill = "zero") -> list[float]:
    """Test accuracy at shifts 0..max_shift (each the mean of the four diagonal directions)."""
    predict = predictor(model, mean, std)
    images = jnp.asarray(images)
    curve = [accuracy(predict, params, images, labels)]
    for s in range(1, max_shift + 1):
        curve.append(float(np.mean([accuracy(predict, params, shift_images(images, dy, dx, fill), labels)
                                    for dy in (-s, s) for dx in (-s, s)])))
    return curve


def locality(energy: np.ndarray, k: int, circular: bool = False) -> float:
    """Mean over units of the largest share of weight energy inside one k x k window.

    energy: (units, H, W), non-negative. `circular` lets windows wrap around the edges (for
    filters that are applied circularly).
    """
    total = energy.sum(axis=(1, 2))
    if circular:
        energy = np.pad(energy, ((0, 0), (0, k - 1), (0, k - 1)), mode="wrap")
    windows = sliding_window_view(energy, (k, k), axis=(1, 2)).sum(axis=(-1, -2))
    return float(np.mean(windows.max(axis=(1, 2)) / total))


def sharing(filters: np.ndarray) -> float:
    """Mean matched cosine similarity of the filters at horizontally and vertically neighbouring positions.

    filters: (H, W, features, channels): the `channels` filters at each position.
    """
    unit = filters / np.maximum(np.linalg.norm(filters, axis=2, keepdims=True), 1e-12)
    scores = []
    for a, b in ((unit[:, :-1], unit[:, 1:]), (unit[:-1], unit[1:])):
        a, b = a.reshape(-1, *a.shape[2:]), b.reshape(-1, *b.shape[2:])
        for x, y in zip(a, b):
            cosine = x.T @ y
            rows, cols = linear_sum_assignment(cosine, maximize=True)
            scores.append(cosine[rows, cols].mean())
    return float(np.mean(scores))


def first_layer_kernel(family: str, params: dict, image_shape: tuple[int, int, int]) -> np.ndarray:
    """A family's first-layer weights with space made explicit (the one place that knows the layouts).

    (H, W, in, units) for the MLP and the GConv (every unit spans the image), (k, k, in, out) for
    the CNNs, and (h, w, k, k, in, out) for the LCN, one filter per output position.
    """
    height, width, channels = image_shape
    if family == "mlp":
        return np.asarray(params["Dense_0"]["kernel"]).reshape(height, width, channels, -1)
    if family == "gconv":
        return np.asarray(params["CircularConv_0"]["kernel"])
    if family == "lcn":
        kernel = np.asarray(params["LocallyConnected_0"]["kernel"])  # patch features ordered (in, row, column)
        h, w, features, out = kernel.shape
        k = int(round((features / channels) ** 0.5))
        return kernel.reshape(h, w, channels, k, k, out).transpose(0, 1, 3, 4, 2, 5)
    return np.asarray(params["Conv_0"]["kernel"])  # cnn, cnn_gap


def first_layer(family: str, params: dict, image_shape: tuple[int, int, int], out_size: tuple[int, int],
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """A family's first layer as (energy maps (units, H, W), filters per position (h, w, features, channels)).

    Filters per position are None for the MLP, which has no positions. Local units are placed
    on the image at their receptive field, so their energy maps are measured like the others.
    """
    height, width, _ = image_shape
    kernel = first_layer_kernel(family, params, image_shape)
    if family == "mlp":
        return (kernel**2).sum(axis=2).transpose(2, 0, 1), None
    if family == "lcn":
        h, w = kernel.shape[:2]
        return embed(kernel[h // 2, w // 2], height, width), kernel.reshape(h, w, -1, kernel.shape[-1])
    # Shared families: the same filter at every position.
    energy = (kernel**2).sum(axis=2).transpose(2, 0, 1) if family == "gconv" else embed(kernel, height, width)
    flat = kernel.reshape(-1, kernel.shape[-1])
    return energy, np.broadcast_to(flat, (*out_size, *flat.shape))


def embed(kernel: np.ndarray, height: int, width: int) -> np.ndarray:
    """Energy maps (out, H, W) of k x k filters (k, k, in, out) placed in the middle of the image."""
    k = kernel.shape[0]
    maps = np.zeros((kernel.shape[-1], height, width))
    top, left = (height - k) // 2, (width - k) // 2
    maps[:, top : top + k, left : left + k] = (kernel**2).sum(axis=2).transpose(2, 0, 1)
    return maps
