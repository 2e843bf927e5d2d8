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

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from tqdm.auto import tqdm

from whyconv.data import Splits


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_epochs: float
    eval_batch_size: int = 1000


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


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """AdamW with a linear warmup and a cosine decay to zero over the whole run."""
    total = config.epochs * steps_per_epoch
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup, decay_steps=total)
    return optax.adamw(schedule, weight_decay=config.weight_decay)


def normalize(images: jnp.ndarray, mean: float, std: float) -> jnp.ndarray:
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def make_steps(model: nn.Module, mean: float, std: float) -> tuple[Callable, Callable]:
    """The jitted train step and eval step of `model`.

    Both take the whole split as a device array and index it inside the step, so the host
    does no per-step work beyond sending one row of indices.
    """

    def loss_and_accuracy(params, images, labels, dropout_key=None):
        train = dropout_key is not None
        logits = model.apply({"params": params}, normalize(images, mean, std), train=train,
                             rngs={"dropout": dropout_key} if train else None)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return losses, logits.argmax(-1) == labels

    def train_step(state: train_state.TrainState, images, labels, batch_index, dropout_key):
        def loss_fn(params):
            key = jax.random.fold_in(dropout_key, state.step)
            losses, correct = loss_and_accuracy(params, images[batch_index], labels[batch_index], key)
            return losses.mean(), correct.mean()

        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), loss, accuracy

    def eval_step(params, images, labels, batch_index, weight):
        """Summed loss and correct count over one padded batch (`weight` masks the padding)."""
        losses, correct = loss_and_accuracy(params, images[batch_index], labels[batch_index])
        return (losses * weight).sum(), (correct * weight).sum()

    return jax.jit(train_step, donate_argnums=0), jax.jit(eval_step)


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
        batch_loss, batch_correct = eval_step(params, images, labels, index[window], weight[window])
        loss_sum += float(batch_loss)
        correct += float(batch_correct)
    return loss_sum / n, correct / n


def epoch_order(seed: int, epoch: int, n: int, batch_size: int) -> np.ndarray:
    """This seed's shuffled batches for one epoch: (steps, batch_size); the remainder is dropped."""
    steps = n // batch_size
    return np.random.default_rng([seed, epoch]).permutation(n)[: steps * batch_size].reshape(steps, batch_size)


def train_seed(
    model: nn.Module,
    splits: Splits,
    config: TrainConfig,
    seed: int,
    label: str = "",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> SeedResult:
    """Train one seed for `config.epochs` epochs; evaluate on val every epoch, test at the end.

    A non-finite training loss stops the seed at once and marks it diverged.
    """
    train_images, train_labels = (jnp.asarray(a) for a in splits.arrays["train"])
    n = len(train_labels)
    steps = n // config.batch_size
    if steps == 0:
        raise ValueError(f"batch size {config.batch_size} is larger than the {n} training images")
    train_step, eval_step = make_steps(model, splits.meta.mean, splits.meta.std)
    sample = jnp.zeros((1, *splits.meta.image_shape), jnp.float32)
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    state = train_state.TrainState.create(
        apply_fn=model.apply,
        params=model.init(init_key, sample)["params"],
        tx=make_optimizer(config, steps),
    )
    val = tuple(jnp.asarray(a) for a in splits.arrays["val"])
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    progress = tqdm(total=config.epochs * steps, desc=f"{label} seed {seed}", unit="step",
                    leave=False, mininterval=1.0)
    result = SeedResult(seed=seed, status="ok", epochs=0, train_seconds=0.0, images_per_second=0.0)
    with progress:
        for epoch in range(1, config.epochs + 1):
            order = jnp.asarray(epoch_order(seed, epoch, n, config.batch_size))
            losses, accuracies = [], []
            epoch_start = time.perf_counter()
            for i in range(steps):
                state, loss, accuracy = train_step(state, train_images, train_labels, order[i], dropout_key)
                losses.append(loss)
                accuracies.append(accuracy)
                if (i + 1) % 50 == 0 or i + 1 == steps:
                    recent = float(jnp.mean(jnp.stack(losses[-50:])))
                    if not math.isfinite(recent):
                        break
                    progress.set_postfix(
                        epoch=f"{epoch}/{config.epochs}", loss=f"{recent:.3f}",
                        acc=f"{float(jnp.mean(jnp.stack(accuracies[-50:]))):.3f}",
                        img_s=f"{(i + 1) * config.batch_size / (time.perf_counter() - epoch_start):,.0f}",
                        refresh=False)
                progress.update(1)
            train_loss = float(jnp.mean(jnp.stack(losses)))
            if not math.isfinite(train_loss):
                result.status, result.diverged_epoch = "diverged", epoch
                break
            val_loss, val_acc = evaluate(eval_step, state.params, *val, config.eval_batch_size)
            row = {"epoch": epoch, "train_loss": train_loss,
                   "train_acc": float(jnp.mean(jnp.stack(accuracies))),
                   "val_loss": val_loss, "val_acc": val_acc}
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            result.epochs = epoch
    result.train_seconds = time.perf_counter() - start
    result.images_per_second = result.epochs * steps * config.batch_size / result.train_seconds
    result.history = history
    if result.status == "ok":
        test = tuple(jnp.asarray(a) for a in splits.arrays["test"])
        result.val_loss, result.val_acc = history[-1]["val_loss"], history[-1]["val_acc"]
        result.test_loss, result.test_acc = evaluate(eval_step, state.params, *test, config.eval_batch_size)
    return result
