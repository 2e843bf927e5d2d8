"""Training: one jitted step, a Python loop around it, one seed at a time.

Seeds run one after another rather than vmapped together: measured on a 2-core CPU, a vmapped
step over 3 seeds was 1.1x (MLP), 2x (LCN) and 3.6x (CNN) slower than three plain steps,
because XLA lowers a vmapped convolution to a grouped one. Each seed has its own
initialization (`jax.random.key(seed)`) and its own data order (`default_rng([seed, epoch])`),
so a rerun with the same params and seeds gives the same numbers on the same machine.

The training loop is a Python loop over one jitted step, not `lax.scan`: convolutions inside a
loop body run 10-20x slower on XLA CPU (jax-ml/jax#12868).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from whyconv.checkpoint import CheckpointStore
from whyconv.controls import random_shifts
from whyconv.data import Splits


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_epochs: float
    augment_shift: int = 0  # random shift of each training image, in pixels (0: none)
    eval_batch_size: int = 1000


# The validation set is evaluated after at most this many epochs of a run (evenly spaced, always
# the last): a 143-epoch run on 1,000 images would otherwise spend most of its time evaluating.
VAL_EVALUATIONS = 10


# XLA's CPU backend hands convolutions, reductions and elementwise work to YNNPACK by default;
# with only the matrix products going there, and convolutions to XLA's own (Eigen) kernels, the
# CNNs train 1.2-1.6x faster on two threads and up to 1.4x on one core (README, "Performance").
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def compiler_options() -> dict[str, str] | None:
    """XLA options for the jitted steps on this backend (CPU only; accelerators take the defaults)."""
    return CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None


def evaluates_val(epoch: int, epochs: int) -> bool:
    """Whether `epoch` (1-based) of an `epochs`-long run evaluates the validation set."""
    return epoch == epochs or epoch % math.ceil(epochs / VAL_EVALUATIONS) == 0


@dataclass
class SeedResult:
    seed: int
    status: str  # "ok" or "diverged"
    epochs: int  # epochs completed
    train_seconds: float
    images_per_second: float
    val_acc: float = math.nan
    val_loss: float = math.nan
    test_acc: float = math.nan
    test_loss: float = math.nan
    diverged_epoch: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    params: Any = field(default=None, repr=False)  # the trained parameters (None if diverged)

    def record(self) -> dict:
        """The seed's numbers, without its curves and parameters (those are written apart)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("history", "params")}


# Cached: the optimizer is part of the train state's structure, so a new (if equal) one per seed
# would make jit compile the train step again for every seed.
@functools.cache
def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """AdamW with a linear warmup and a cosine decay to zero over the whole run."""
    total = config.epochs * steps_per_epoch
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup, decay_steps=total)
    return optax.adamw(schedule, weight_decay=config.weight_decay)


def normalize(images: jnp.ndarray, mean: float, std: float) -> jnp.ndarray:
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def join_hosts() -> None:
    """Join a multi-host run when WHYCONV_DISTRIBUTED=1 (before any other JAX call).

    `jax.distributed.initialize` finds the coordinator and this process's rank on a cluster it
    knows (SLURM, Open MPI, Kubernetes, Cloud TPU); elsewhere set JAX_COORDINATOR_ADDRESS
    (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID. Every process then runs the
    same stage command; `batch_mesh` spans all their devices and process 0 writes the outputs.
    """
    if os.environ.get("WHYCONV_DISTRIBUTED") != "1":
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; GPUs and TPUs use their own
    count, rank = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(num_processes=int(count) if count else None,
                               process_id=int(rank) if rank else None)


def batch_mesh() -> Mesh | None:
    """A mesh over every device along the batch axis (data parallelism); None for one device.

    The same code then runs on one CPU, several GPUs or a TPU host: parameters and data are
    replicated, each batch is split over the devices, and XLA averages the gradients. After
    `join_hosts()` (jax.distributed) the devices of every host are in it.
    """
    devices = jax.devices()
    return Mesh(np.array(devices), ("batch",)) if len(devices) > 1 else None


@functools.cache  # one compilation per model, shared by its seeds
def make_steps(model: nn.Module, mean: float, std: float, mesh: Mesh | None = None,
               augment_shift: int = 0) -> tuple[Callable, Callable]:
    """The jitted train step and eval step of `model`.

    The train step takes the whole split as a device array and the epoch's whole batch order
    (sent once per epoch), and picks its batch inside, so the host sends nothing per step but the
    step number. The eval step takes one batch (see `evaluate`). With a `mesh`, each batch is
    split over its devices. With `augment_shift`, each training image is shifted at random
    by up to that many pixels (zero fill) inside the step.
    """

    def split_over_devices(x, y):
        if mesh is not None:
            x, y = (jax.lax.with_sharding_constraint(a, NamedSharding(mesh, P("batch"))) for a in (x, y))
        return x, y

    def loss_and_accuracy(params, images, labels, dropout_key=None):
        train = dropout_key is not None
        logits = model.apply({"params": params}, normalize(images, mean, std), train=train,
                             rngs={"dropout": dropout_key} if train else None)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return losses, logits.argmax(-1) == labels

    def train_step(state: train_state.TrainState, images, labels, order, step_in_epoch, dropout_key):
        def loss_fn(params):
            key = jax.random.fold_in(dropout_key, state.step)
            batch = order[step_in_epoch]
            x, y = split_over_devices(images[batch], labels[batch])
            if augment_shift:
                key, shift_key = jax.random.split(key)
                x = random_shifts(x, shift_key, augment_shift)
            losses, correct = loss_and_accuracy(params, x, y, key)
            return losses.mean(), correct.mean()

        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), loss, accuracy

    def eval_step(params, images, labels, weight):
        """Summed loss and correct count over one padded batch (`weight` masks the padding).

        It takes the batch itself, not the whole split: one compilation serves val and test.
        """
        losses, correct = loss_and_accuracy(params, *split_over_devices(images, labels))
        return (losses * weight).sum(), (correct * weight).sum()

    options = compiler_options()
    return (jax.jit(train_step, donate_argnums=0, compiler_options=options),
            jax.jit(eval_step, compiler_options=options))


def evaluate(eval_step: Callable, params, images, labels, batch_size: int) -> tuple[float, float]:
    """Mean loss and accuracy over a whole split, in fixed-size (padded) batches."""
    n = len(labels)
    batches = math.ceil(n / batch_size)
    index = np.zeros(batches * batch_size, dtype=np.int32)
    index[:n] = np.arange(n)
    weight = (np.arange(batches * batch_size) < n).astype(np.float32)
    loss_sum, correct = 0.0, 0.0
    for b in range(batches):
        window = slice(b * batch_size, (b + 1) * batch_size)
        batch = jnp.asarray(index[window])
        batch_loss, batch_correct = eval_step(params, images[batch], labels[batch], weight[window])
        loss_sum += float(batch_loss)
        correct += float(batch_correct)
    return loss_sum / n, correct / n


def epoch_order(seed: int, epoch: int, n: int, batch_size: int) -> np.ndarray:
    """This seed's shuffled batches for one epoch: (steps, batch_size); the remainder is dropped."""
    steps = n // batch_size
    return np.random.default_rng([seed, epoch]).permutation(n)[: steps * batch_size].reshape(steps, batch_size)


def run_epoch(train_step: Callable, state, images, labels, order: np.ndarray, dropout_key,
              progress: tqdm, epoch_label: str) -> tuple[object, float, float]:
    """One pass over `order`'s batches: the new state, mean train loss and accuracy.

    The loss is read back every 50 steps (for the progress bar); a non-finite value ends the
    epoch at once, and the caller sees a non-finite mean.
    """
    batch_size = order.shape[1]
    order = jnp.asarray(order)  # once per epoch: a slice per step would cost a dispatch per step
    losses, accuracies = [], []
    start = time.perf_counter()
    for i in range(len(order)):
        state, loss, accuracy = train_step(state, images, labels, order, i, dropout_key)
        losses.append(loss)
        accuracies.append(accuracy)
        progress.update(1)
        if (i + 1) % 50 == 0 or i + 1 == len(order):
            recent = float(jnp.mean(jnp.stack(losses[-50:])))
            if not math.isfinite(recent):
                break
            progress.set_postfix(
                epoch=epoch_label, loss=f"{recent:.3f}",
                acc=f"{float(jnp.mean(jnp.stack(accuracies[-50:]))):.3f}",
                img_s=f"{(i + 1) * batch_size / (time.perf_counter() - start):,.0f}", refresh=False)
    return state, float(jnp.mean(jnp.stack(losses))), float(jnp.mean(jnp.stack(accuracies)))


def init_params(model: nn.Module, seed: int, image_shape: tuple[int, ...]):
    """The initial parameters of `seed` (its first key; the second drives dropout)."""
    init_key, _ = jax.random.split(jax.random.key(seed))
    return jitted_init(model)(init_key, jnp.zeros((1, *image_shape)))["params"]


@functools.cache  # one compilation per model, shared by its seeds
def jitted_init(model: nn.Module) -> Callable:
    """`model.init` compiled: about a second faster per cell than Flax's op-by-op init on CPU."""
    return jax.jit(model.init)


def train_seed(
    model: nn.Module,
    splits: Splits,
    config: TrainConfig,
    seed: int,
    label: str = "",
    store: CheckpointStore | None = None,
) -> SeedResult:
    """Train one seed for `config.epochs` epochs; evaluate on val (see `evaluates_val`), test at the end.

    With a `store`, the state is saved after every epoch and a matching checkpoint is resumed
    from. A non-finite training loss stops the seed and marks it diverged.
    """
    mesh = batch_mesh()
    if mesh is not None and (config.batch_size % mesh.size or config.eval_batch_size % mesh.size):
        raise ValueError(f"batch sizes {config.batch_size} and {config.eval_batch_size} must be "
                         f"multiples of the {mesh.size} devices the batch is split over")
    replicate = (lambda tree: jax.device_put(tree, NamedSharding(mesh, P()))) if mesh else (lambda tree: tree)
    train_images, train_labels = (replicate(jnp.asarray(a)) for a in splits.arrays["train"])
    val_images, val_labels = (replicate(jnp.asarray(a)) for a in splits.arrays["val"])
    n = len(train_labels)
    steps = n // config.batch_size
    if steps == 0:
        raise ValueError(f"batch size {config.batch_size} is larger than the {n} training images")
    train_step, eval_step = make_steps(model, splits.meta.mean, splits.meta.std, mesh, config.augment_shift)
    _, dropout_key = jax.random.split(jax.random.key(seed))
    state = train_state.TrainState.create(apply_fn=model.apply, params=init_params(model, seed, splits.meta.image_shape),
                                          tx=make_optimizer(config, steps))
    history: list[dict[str, float]] = []
    seconds = 0.0
    restored = store.load(seed, state) if store is not None else None
    if restored is not None:
        state, history, seconds = restored.state, restored.history, restored.seconds
    state = replicate(state)
    result = SeedResult(seed=seed, status="ok", epochs=len(history), train_seconds=0.0, images_per_second=0.0)
    with tqdm(total=config.epochs * steps, initial=len(history) * steps, desc=f"{label} seed {seed}",
              unit="step", leave=False, mininterval=1.0) as progress:
        for epoch in range(len(history) + 1, config.epochs + 1):
            start = time.perf_counter()
            order = epoch_order(seed, epoch, n, config.batch_size)
            state, train_loss, train_acc = run_epoch(train_step, state, train_images, train_labels,
                                                     order, dropout_key, progress, f"{epoch}/{config.epochs}")
            if not math.isfinite(train_loss):
                result.status, result.diverged_epoch = "diverged", epoch
                break
            row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc}
            if evaluates_val(epoch, config.epochs):
                row["val_loss"], row["val_acc"] = evaluate(eval_step, state.params, val_images, val_labels,
                                                           config.eval_batch_size)
            history.append(row)
            seconds += time.perf_counter() - start
            if store is not None:
                store.save(seed, state, history, seconds)
    result.epochs, result.history, result.train_seconds = len(history), history, seconds
    result.images_per_second = len(history) * steps * config.batch_size / seconds if seconds else 0.0
    if result.status == "ok":
        test_images, test_labels = (replicate(jnp.asarray(a)) for a in splits.arrays["test"])
        result.val_loss, result.val_acc = history[-1]["val_loss"], history[-1]["val_acc"]
        result.test_loss, result.test_acc = evaluate(eval_step, state.params, test_images, test_labels,
                                                     config.eval_batch_size)
        result.params = jax.device_get(state.params)
    return result
