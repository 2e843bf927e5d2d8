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
from whyconv.config import Params, check_budgets, skeleton_for
from whyconv.data import Splits
from whyconv.models import build_model
from whyconv.training import TrainConfig, train_seed

BUDGET_RUNS = Path("runs/budget")
SKELETON_RUNS = Path("runs/skeleton")


def cell_dir(comparison: str, family: str, size: int) -> Path:
    """runs/budget/<family>-<budget> or runs/skeleton/<family>-<channels>."""
    root = {"budget": BUDGET_RUNS, "skeleton": SKELETON_RUNS}[comparison]
    return root / f"{family}-{size}"


def train_cell(params: Params, splits: Splits, family: str, *, budget: int | None = None,
               channels: int | None = None) -> Path:
    """Train one cell (by parameter budget, or by channels for the same-skeleton comparison)."""
    skeleton = skeleton_for(params, splits.meta.image_shape, splits.num_classes)
    if budget is not None:
        check_budgets(params, skeleton)
        width = solve_width(family, budget, skeleton, params.study.tolerance).width
        comparison, size = "budget", budget
    else:
        width, comparison, size = channels, "skeleton", channels
    model = build_model(family, width, splits.num_classes, params.model.depth,
                        params.model.kernel_size, params.model.stride, params.model.dropout)
    config = TrainConfig(**params.train.model_dump(exclude={"seeds"}))
    out = cell_dir(comparison, family, size)
    cell = {
        "dataset": splits.meta.dataset, "comparison": comparison, "family": family,
        "budget": budget, "width": width, "params": param_count(family, width, skeleton),
    }
    with atomic_path(out) as tmp:
        records = []
        for seed in params.train.seeds:
            live = Live(dir=str(tmp / f"seed{seed}"), save_dvc_exp=False, dvcyaml=None)
            result = train_seed(model, splits, config, seed, label=out.name,
                                on_epoch=lambda row: _log_epoch(live, row))
            live.end()
            record = {**cell, **dataclasses.asdict(result)}
            record.pop("history")
            records.append(record)
        (tmp / "result.json").write_text(json.dumps(records, indent=2) + "\n")
    return out


def _log_epoch(live: Live, row: dict[str, float]) -> None:
    for name, value in row.items():
        if name != "epoch":
            live.log_metric(name.replace("_", "/", 1), value)
    live.next_step()


def read_cell(comparison: str, family: str, size: int) -> list[dict]:
    path = cell_dir(comparison, family, size) / "result.json"
    return json.loads(path.read_text())

