"""Training: jitted calls of up to `STEPS_PER_CALL` steps each, one seed at a time.

Seeds run one after another rather than vmapped together: measured on a 2-core CPU, a vmapped
step over 3 seeds was 1.1x (MLP), 2x (LCN) and 3.6x (CNN) slower than three plain steps,
because XLA lowers a vmapped convolution to a grouped one. On one H200 (reports/benchmarks-gpu.md)
vmapped seeds paid for the MLP, LCN and GConv (1.2-3.2x) but still slowed the CNNs (0.44-0.65x).
Each seed has its own initialization (`jax.random.key(seed)`) and its own data order
(`default_rng([seed, epoch])`), so a rerun with the same params and seeds gives the same numbers
on the same machine.

The training loop is a Python loop over one jitted call, which runs up to `STEPS_PER_CALL` steps
in a loop of its own: the host pays one dispatch per call, not per step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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


# Training steps per jitted call. A call costs the host 0.1-0.3 ms (dispatch, arguments), a third
# of a small MLP's step on one core; a loop of steps inside one call pays it once. Measured on
# one core, 100-step runs: MLP (h = 5-349) 1.08-1.51x, LCN (c = 1-20) 1.05-1.33x, GConv
# (c = 2-14) 1.03-1.13x faster, and bit-identical. The CNNs too, once their gradients were written
# out for XLA's CPU kernels (whyconv.layers.same_conv): `make bench`'s CNN and CNN+GAP 1.00-1.11x
# on one core, 1.05-1.41x on two. 50 is also how often the loss is read back.
STEPS_PER_CALL = 50


def loop_steps(step: Callable, per_call: int) -> Callable:
    """`steps(state, first, count)`: `count` (at most `per_call`) applications of
    `step(state, i) -> (state, metrics)`, for i = first, first + 1, ..., in one loop. Returns the
    state and each metric stacked over `per_call` steps (past `count`: zeros). With `per_call` 1,
    the step itself, with no loop around it (the reference a test trains the loop against)."""

    def steps(state, first, count):
        if per_call == 1:
            state, metrics = step(state, first)
            return state, jax.tree.map(lambda m: m[None], metrics)

        def body(i, carry):
            state, stacked = carry
            state, metrics = step(state, first + i)
            return state, jax.tree.map(lambda all_, m: all_.at[i].set(m), stacked, metrics)

        shapes = jax.eval_shape(step, state, first)[1]
        stacked = jax.tree.map(lambda m: jnp.zeros((per_call, *m.shape), m.dtype), shapes)
        return jax.lax.fori_loop(0, count, body, (state, stacked))

    return steps


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


class Steps(NamedTuple):
    train: Callable  # (state, images, labels, order, first, count, dropout_key) -> (state, (losses, accuracies))
    eval: Callable  # (params, images, labels, weight) -> (summed loss, correct count)
    per_call: int  # the most training steps one call of `train` takes


@functools.cache  # one compilation per model, shared by its seeds
def make_steps(model: nn.Module, mean: float, std: float, mesh: Mesh | None = None,
               augment_shift: int = 0) -> Steps:
    """The jitted training steps and eval step of `model`.

    A call of `train` takes steps `first` to `first + count - 1` of the epoch (see `loop_steps`).
    It takes the whole split as a device array and the epoch's whole batch order (sent once per
    epoch), and picks each batch inside, so the host sends nothing per call but two numbers. The
    eval step takes one batch (see `evaluate`). With a `mesh`, each batch is split over its
    devices. With `augment_shift`, each training image is shifted at random by up to that many
    pixels (zero fill) inside the step.
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
        return state.apply_gradients(grads=grads), (loss, accuracy)

    per_call = STEPS_PER_CALL

    def train_steps(state: train_state.TrainState, images, labels, order, first, count, dropout_key):
        step = lambda state, i: train_step(state, images, labels, order, i, dropout_key)
        return loop_steps(step, per_call)(state, first, count)

    def eval_step(params, images, labels, weight):
        """Summed loss and correct count over one padded batch (`weight` masks the padding).

        It takes the batch itself, not the whole split: one compilation serves val and test.
        """
        losses, correct = loss_and_accuracy(params, *split_over_devices(images, labels))
        return (losses * weight).sum(), (correct * weight).sum()

    options = compiler_options()
    return Steps(jax.jit(train_steps, donate_argnums=0, compiler_options=options),
                 jax.jit(eval_step, compiler_options=options), per_call)


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


def run_epoch(steps: Steps, state, images, labels, order: np.ndarray, dropout_key,
              progress: tqdm, epoch_label: str) -> tuple[object, float, float]:
    """One pass over `order`'s batches: the new state, mean train loss and accuracy.

    The loss is read back every `STEPS_PER_CALL` steps (for the progress bar); a non-finite value
    ends the epoch at once, and the caller sees a non-finite mean.
    """
    batch_size, total = order.shape[1], len(order)
    order = jnp.asarray(order)  # once per epoch: a slice per step would cost a dispatch per step
    losses, accuracies = [], []  # per call: the loss and accuracy of each of its steps
    start = time.perf_counter()
    for first in range(0, total, steps.per_call):
        count = min(steps.per_call, total - first)
        state, (call_losses, call_accuracies) = steps.train(state, images, labels, order, first, count, dropout_key)
        if count < steps.per_call:
            call_losses, call_accuracies = call_losses[:count], call_accuracies[:count]
        losses.append(call_losses)
        accuracies.append(call_accuracies)
        done = first + count
        progress.update(count)
        if done % STEPS_PER_CALL == 0 or done == total:
            recent = float(jnp.mean(jnp.concatenate(losses[-STEPS_PER_CALL:])[-STEPS_PER_CALL:]))
            if not math.isfinite(recent):
                break
            progress.set_postfix(
                epoch=epoch_label, loss=f"{recent:.3f}",
                acc=f"{float(jnp.mean(jnp.concatenate(accuracies[-STEPS_PER_CALL:])[-STEPS_PER_CALL:])):.3f}",
                img_s=f"{done * batch_size / (time.perf_counter() - start):,.0f}", refresh=False)
    return state, float(jnp.mean(jnp.concatenate(losses))), float(jnp.mean(jnp.concatenate(accuracies)))


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
    steps_of_model = make_steps(model, splits.meta.mean, splits.meta.std, mesh, config.augment_shift)
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
            state, train_loss, train_acc = run_epoch(steps_of_model, state, train_images, train_labels,
                                                     order, dropout_key, progress, f"{epoch}/{config.epochs}")
            if not math.isfinite(train_loss):
                result.status, result.diverged_epoch = "diverged", epoch
                break
            row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc}
            if evaluates_val(epoch, config.epochs):
                row["val_loss"], row["val_acc"] = evaluate(steps_of_model.eval, state.params, val_images, val_labels,
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
        result.test_loss, result.test_acc = evaluate(steps_of_model.eval, state.params, test_images, test_labels,
                                                     config.eval_batch_size)
        result.params = jax.device_get(state.params)
    return result
