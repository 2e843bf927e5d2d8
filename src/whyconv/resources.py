"""Will a cell fit in memory? Estimated before training, so the OS never kills a run midway."""

from __future__ import annotations

import jax
import psutil

from whyconv.capacity import Skeleton, param_count, spatial_sizes
from whyconv.data import Splits
from whyconv.models import SPATIAL
from whyconv.stage import StudyError

FLOAT = 4  # bytes per float32
RUNTIME = 512 * 2**20  # the Python, JAX and XLA runtime itself, roughly


def activation_floats(family: str, width: int, skeleton: Skeleton) -> int:
    """Floats kept per example for the backward pass (and as large again for its gradients)."""
    h, w, c = skeleton.image_shape
    if family == "mlp":
        return h * w * c + 2 * skeleton.depth * width + skeleton.num_classes
    local = SPATIAL[family][0]
    total, in_channels, in_h, in_w = h * w * c, c, h, w
    for layer, (out_h, out_w) in enumerate(spatial_sizes(skeleton)):
        out_channels = width * 2**layer
        if local:  # patches
            total += out_h * out_w * skeleton.kernel_size**2 * in_channels
        else:  # complex spectra of the input and of the product, the full-size output
            total += 2 * in_h * in_w * in_channels + 3 * in_h * in_w * out_channels
        total += 2 * out_h * out_w * out_channels  # pre- and post-ReLU
        in_channels, in_h, in_w = out_channels, out_h, out_w
    return total + skeleton.num_classes


def estimate_bytes(family: str, width: int, skeleton: Skeleton, batch_size: int, splits: Splits) -> dict[str, int]:
    """Parameters with gradients and AdamW state, activations of one batch, the resident data."""
    return {
        "parameters and optimizer": 5 * FLOAT * param_count(family, width, skeleton),
        f"activations of a batch of {batch_size}": 2 * FLOAT * batch_size * activation_floats(family, width, skeleton),
        "data": sum(images.nbytes + labels.nbytes for images, labels in splits.arrays.values()),
        "runtime": RUNTIME,
    }


def free_memory() -> tuple[int, str]:
    """Free bytes where training keeps its arrays, and where that is: an accelerator's own
    memory (a GPU's, a TPU's), or the host's on a CPU, where JAX reports no memory of its own."""
    device = jax.local_devices()[0]
    stats = device.memory_stats()
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0), f"the {device.device_kind}"
    return psutil.virtual_memory().available, "this machine"


def check_memory(cell: str, estimate: dict[str, int]) -> None:
    """Stop with a message naming the cell and the estimate when it cannot fit."""
    (free, where), need = free_memory(), sum(estimate.values())
    if need > free:
        parts = ", ".join(f"{name} {size / 2**30:.2f}" for name, size in estimate.items())
        raise StudyError(
            f"cell {cell} needs about {need / 2**30:.2f} GiB ({parts}) but only {free / 2**30:.2f} GiB "
            f"is free on {where}. Fix: lower train.batch_size or this budget, or free memory.")
