"""One training cell of the study: a family at a width, trained for every seed.

A cell is what one DVC stage instance runs. Its folder holds `result.json` (one record per
seed) and, per seed, the dvclive per-epoch curves.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dvclive import Live

from whyconv.atomic import atomic_path
from whyconv.capacity import param_count, solve_width
from whyconv.checkpoint import CheckpointStore
from whyconv.config import Params, check_budgets, skeleton_for
from whyconv.data import Splits
from whyconv.models import build_model
from whyconv.resources import check_memory, estimate_bytes
from whyconv.training import TrainConfig, train_seed

BUDGET_RUNS = Path("runs/budget")
SKELETON_RUNS = Path("runs/skeleton")
CHECKPOINTS = Path("runs/checkpoints")


def cell_dir(comparison: str, family: str, size: int) -> Path:
    """runs/budget/<family>-<budget> or runs/skeleton/<family>-<channels>."""
    root = {"budget": BUDGET_RUNS, "skeleton": SKELETON_RUNS}[comparison]
    return root / f"{family}-{size}"


def train_cell(params: Params, splits: Splits, family: str, *, budget: int | None = None,
               channels: int | None = None) -> Path:
    """Train one cell (by parameter budget, or by channels for the same-skeleton comparison).

    Each finished epoch is checkpointed under runs/checkpoints, so a killed cell resumes where
    it stopped; the cell's folder appears only once every seed is done.
    """
    skeleton = skeleton_for(params, splits.meta.image_shape, splits.num_classes)
    if budget is not None:
        check_budgets(params, skeleton)
        width = solve_width(family, budget, skeleton, params.study.tolerance).width
        comparison, size = "budget", budget
    else:
        width, comparison, size = channels, "skeleton", channels
    out = cell_dir(comparison, family, size)
    model = build_model(family, width, splits.num_classes, params.model.depth,
                        params.model.kernel_size, params.model.stride, params.model.dropout)
    config = TrainConfig(**params.train.model_dump(exclude={"seeds"}))
    check_memory(out.name, estimate_bytes(family, width, skeleton, config.batch_size, splits))
    cell = {
        "dataset": splits.meta.dataset, "comparison": comparison, "family": family,
        "budget": budget, "width": width, "params": param_count(family, width, skeleton),
    }
    store = CheckpointStore(CHECKPOINTS / f"{comparison}-{out.name}", {
        **cell, "model": params.model.model_dump(), "train": dataclasses.asdict(config),
        "data": dataclasses.asdict(splits.meta)})
    records = []
    for seed in params.train.seeds:
        result = train_seed(model, splits, config, seed, label=out.name, store=store)
        records.append((result, {**cell, **dataclasses.asdict(result)}))
    with atomic_path(out) as tmp:
        for result, record in records:
            write_curves(tmp / f"seed{result.seed}", result.history)
            record.pop("history")
        (tmp / "result.json").write_text(json.dumps([r for _, r in records], indent=2) + "\n")
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

