"""One training cell of the study: a family at a width, trained for every seed.

A cell is what one DVC stage instance runs. Its folder, runs/<comparison>/<family>-<size>,
holds `result.json` (one record per seed, naming the device it trained on) and per seed the dvclive per-epoch curves and the
trained parameters (`params.msgpack`, read by the probes). The comparisons:

    budget    the main sweep: the width is solved to meet a parameter budget
    skeleton  LCN and CNN at the same channels (only sharing differs)
    permuted  the matched budget, on images whose pixels are shuffled (controls.permutation)
    subset    the matched budget, on a subset of the training images (controls.subsets)
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
from dvclive import Live
from flax import serialization

from whyconv.atomic import atomic_path
from whyconv.capacity import param_count, solve_width
from whyconv.checkpoint import CheckpointStore
from whyconv.config import Params, check_budgets, skeleton_for
from whyconv.controls import permuted_splits, training_subset
from whyconv.data import Splits
from whyconv.models import build_model
from whyconv.provenance import trained_on
from whyconv.resources import check_memory, estimate_bytes
from whyconv.training import TrainConfig, train_seed

RUNS = Path("runs")
CHECKPOINTS = Path("checkpoints")
PARAMS_FILE = "params.msgpack"


def cell_dir(comparison: str, family: str, size: int) -> Path:
    """runs/<comparison>/<family>-<size>: size is the budget, the channels or the subset's images."""
    return RUNS / comparison / f"{family}-{size}"


def train_cell(params: Params, splits: Splits, family: str, *, budget: int | None = None,
               channels: int | None = None, permuted: bool = False, subset: int | None = None) -> Path:
    """Train one cell: at a parameter budget (natural or permuted pixels), at fixed channels
    (same skeleton), or at the matched budget on a training subset.

    Each finished epoch is checkpointed under checkpoints/, so a killed cell resumes where it
    stopped; the cell's folder appears only once every seed is done.
    """
    skeleton = skeleton_for(params, splits.meta.image_shape, splits.num_classes)
    config = TrainConfig(**params.train.model_dump(exclude={"seeds"}))
    fingerprint = {}
    if channels is not None:
        width, comparison, size = channels, "skeleton", channels
    else:
        check_budgets(params, skeleton)
        comparison, size = "permuted" if permuted else "budget", budget
        if subset is not None:
            budget, comparison, size = params.controls.matched_budget, "subset", subset
            splits = training_subset(splits, subset, params.data.split_seed)
            steps_per_epoch = subset // config.batch_size
            config = dataclasses.replace(config, epochs=max(
                config.epochs, math.ceil(params.controls.subsets.min_steps / steps_per_epoch)))
        if permuted:
            splits = permuted_splits(splits, params.controls.permutation.seed)
            fingerprint["permutation_seed"] = params.controls.permutation.seed
        width = solve_width(family, budget, skeleton, params.study.tolerance).width
    out = cell_dir(comparison, family, size)
    model = build_model(family, width, splits.num_classes, params.model.depth,
                        params.model.kernel_size, params.model.stride, params.model.dropout)
    check_memory(out.name, estimate_bytes(family, width, skeleton, config.batch_size, splits))
    cell = {
        "dataset": splits.meta.dataset, "comparison": comparison, "family": family,
        "budget": budget, "width": width, "params": param_count(family, width, skeleton),
        "train_size": splits.meta.sizes["train"], "trained_on": trained_on(),
    }
    store = CheckpointStore(CHECKPOINTS / f"{comparison}-{out.name}", {
        **cell, **fingerprint, "model": params.model.model_dump(), "train": dataclasses.asdict(config),
        "data": dataclasses.asdict(splits.meta)})
    results = [train_seed(model, splits, config, seed, label=out.name, store=store)
               for seed in params.train.seeds]
    if jax.process_index() != 0:  # on several hosts, each process trained the same model: one writes
        return out
    with atomic_path(out) as tmp:
        for result in results:
            folder = tmp / f"seed{result.seed}"
            write_curves(folder, result.history)
            if result.params is not None:
                (folder / PARAMS_FILE).write_bytes(serialization.to_bytes(result.params))
        records = [{**cell, **result.record()} for result in results]
        (tmp / "result.json").write_text(json.dumps(records, indent=2) + "\n")
    store.clear()
    return out


def write_curves(folder: Path, history: list[dict[str, float]]) -> None:
    """Per-epoch train / val loss and accuracy through dvclive (for `dvc plots show`)."""
    live = Live(dir=str(folder), save_dvc_exp=False, dvcyaml=None)
    for row in history:
        live.step = int(row["epoch"])
        for name, value in row.items():
            if name != "epoch":
                live.log_metric(name.replace("_", "/", 1), value)
    live.end()


def read_cell(comparison: str, family: str, size: int) -> list[dict]:
    path = cell_dir(comparison, family, size) / "result.json"
    return json.loads(path.read_text())


def read_trained_params(comparison: str, family: str, size: int, seed: int) -> dict:
    """One seed's trained parameters, as nested dicts of arrays."""
    path = cell_dir(comparison, family, size) / f"seed{seed}" / PARAMS_FILE
    return serialization.msgpack_restore(path.read_bytes())
