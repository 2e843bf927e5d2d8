"""Training: identical numbers on rerun, seeds that differ, divergence caught at once."""

import math

import jax
import numpy as np
import pytest

from conftest import synthetic_images
from whyconv.data import Meta, Splits
from whyconv.models import build_model
from whyconv import training
from whyconv.training import (VAL_EVALUATIONS, TrainConfig, epoch_order, evaluate, evaluates_val,
                              make_steps, train_seed)


def tiny_splits(n_train: int = 512) -> Splits:
    def split(n, seed):
        images, labels = synthetic_images(n, seed)
        return images[..., None], labels.astype(np.int32)

    meta = Meta("synthetic", (28, 28, 1), [str(i) for i in range(10)], 0.2, 0.3,
                {"train": n_train, "val": 128, "test": 128})
    return Splits(meta, {"train": split(n_train, 0), "val": split(128, 1), "test": split(128, 2)})


CONFIG = TrainConfig(epochs=2, batch_size=64, learning_rate=3e-3, weight_decay=0.05, warmup_epochs=0.5)


# (Not cnn_gap: the synthetic classes differ only in where the square is, which pooling discards.)
@pytest.mark.parametrize("family, width", [("mlp", 16), ("lcn", 2), ("gconv", 2), ("cnn", 4)])
def test_same_seed_gives_identical_results_and_learns(family, width):
    model = build_model(family, width, 10, dropout=0.3)
    first = train_seed(model, tiny_splits(), CONFIG, seed=3)
    again = train_seed(model, tiny_splits(), CONFIG, seed=3)
    assert first.status == "ok" and first.epochs == 2
    assert first.history == again.history
    assert (first.test_acc, first.test_loss) == (again.test_acc, again.test_loss)
    assert first.test_acc > 0.3  # well above chance (0.1) on the synthetic classes


def test_different_seeds_differ_in_init_and_data_order():
    model = build_model("mlp", 16, 10)
    a, b = (train_seed(model, tiny_splits(), CONFIG, seed=s) for s in (0, 1))
    assert a.history[0]["train_loss"] != b.history[0]["train_loss"]
    assert not np.array_equal(epoch_order(0, 1, 512, 64), epoch_order(1, 1, 512, 64))
    order = epoch_order(0, 1, 500, 64)
    assert order.shape == (7, 64) and len(np.unique(order)) == 7 * 64  # no repeats, remainder dropped


def test_absurd_learning_rate_is_recorded_as_diverged():
    config = TrainConfig(epochs=3, batch_size=64, learning_rate=1e30, weight_decay=0.0, warmup_epochs=0)
    result = train_seed(build_model("mlp", 16, 10), tiny_splits(), config, seed=0)
    assert result.status == "diverged"
    assert result.diverged_epoch == 1
    assert math.isnan(result.test_acc)


def test_evaluate_counts_every_example_once_despite_padding():
    model = build_model("mlp", 8, 10)
    splits = tiny_splits()
    eval_step = make_steps(model, 0.2, 0.3).eval
    import jax
    import jax.numpy as jnp

    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    images, labels = (jnp.asarray(a) for a in splits.arrays["val"])
    # 128 examples in batches of 50 (padded to 150) and in one batch of 128: same answer.
    assert evaluate(eval_step, params, images, labels, 50) == pytest.approx(
        evaluate(eval_step, params, images, labels, 128), rel=1e-5)


def test_shift_augmentation_changes_training_and_keeps_the_final_parameters():
    import dataclasses

    model = build_model("cnn", 4, 10)
    plain = train_seed(model, tiny_splits(), CONFIG, seed=0)
    shifted = train_seed(model, tiny_splits(), dataclasses.replace(CONFIG, augment_shift=2), seed=0)
    assert shifted.status == "ok" and shifted.history[0]["train_loss"] != plain.history[0]["train_loss"]
    assert set(shifted.params) == {"Conv_0", "Conv_1", "Dense_0"}  # what the probes read
    assert "params" not in plain.record() and "history" not in plain.record()


def test_long_runs_evaluate_val_at_most_ten_times_and_always_last():
    assert [e for e in range(1, 11) if evaluates_val(e, 10)] == list(range(1, 11))
    chosen = [e for e in range(1, 144) if evaluates_val(e, 143)]
    assert len(chosen) <= VAL_EVALUATIONS + 1 and chosen[-1] == 143 and chosen[0] == 15


def test_val_is_recorded_only_on_evaluated_epochs():
    config = TrainConfig(epochs=12, batch_size=256, learning_rate=3e-3, weight_decay=0.05, warmup_epochs=0.5)
    result = train_seed(build_model("mlp", 8, 10), tiny_splits(), config, seed=0)
    evaluated = [row["epoch"] for row in result.history if "val_acc" in row]
    assert evaluated == [2, 4, 6, 8, 10, 12]
    assert result.val_acc == result.history[-1]["val_acc"]


def test_seeds_after_the_first_compile_nothing():
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **kw: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None)
    model = build_model("mlp", 8, 10)
    train_seed(model, tiny_splits(), CONFIG, seed=0)
    first = len(compiles)
    for seed in (1, 2):
        train_seed(model, tiny_splits(), CONFIG, seed=seed)
    assert first > 0 and len(compiles) == first


@pytest.mark.parametrize("family, width", [("mlp", 16), ("lcn", 2), ("gconv", 2), ("cnn", 4), ("cnn_gap", 4)])
def test_many_steps_per_call_train_exactly_as_one_step_per_call(family, width, monkeypatch):
    # 64 steps an epoch: one call of 50 steps, then one of 14. The loop must be the same
    # arithmetic as calling the step 64 times, to the bit: the study's results do not depend on it.
    config = TrainConfig(epochs=2, batch_size=8, learning_rate=3e-3, weight_decay=0.05, warmup_epochs=0.5)
    model = build_model(family, width, 10, dropout=0.3)
    looped = train_seed(model, tiny_splits(), config, seed=0)
    monkeypatch.setattr(training, "STEPS_PER_CALL", 1)
    training.make_steps.cache_clear()
    stepped = train_seed(model, tiny_splits(), config, seed=0)
    assert training.make_steps(model, 0.2, 0.3, None, 0).per_call == 1  # the steps it trained with
    training.make_steps.cache_clear()  # none of them for later tests
    assert looped.history == stepped.history
    assert (looped.test_acc, looped.test_loss) == (stepped.test_acc, stepped.test_loss)
    for a, b in zip(jax.tree.leaves(looped.params), jax.tree.leaves(stepped.params), strict=True):
        np.testing.assert_array_equal(a, b)
