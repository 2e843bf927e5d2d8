"""Stage `aggregate`: every cell's records -> the study's tables (reports/*.csv) and metrics.json."""

import json
from pathlib import Path

import pandas as pd

from whyconv import stage
from whyconv.atomic import atomic_path, write_text
from whyconv.compute import forward_flops
from whyconv.config import Params, load_params, skeleton_for
from whyconv.results import (at_chance_as_diverged, factorial_table, headline_metrics, permutation_table, read_curves,
                             results_table, skeleton_table, subsets_table, summarize)
from whyconv.study import cell_dir, read_cell

REPORTS = Path("reports")


def requested_cells(params: Params) -> list[tuple[str, str, int]]:
    """(comparison, family, size) of every cell params.yaml asks for now (results of removed cells are ignored)."""
    budget = params.controls.matched_budget
    return ([("budget", family, b) for family, b in params.cells()]
            + [("skeleton", family, c) for family in ("lcn", "cnn") for c in params.study.skeleton_channels]
            + [("permuted", family, budget) for family in params.controls.permutation.families]
            + [("subset", family, size) for family in params.controls.subsets.families
               for size in params.controls.subsets.sizes])


def main() -> None:
    params = load_params()
    cells = requested_cells(params)
    missing = [str(cell_dir(*c)) for c in cells if not (cell_dir(*c) / "result.json").is_file()]
    if missing:
        raise stage.StudyError(f"no results for {', '.join(missing)}. Fix: run `dvc repro` (it trains them).")
    meta = json.loads(Path("data/prepared/meta.json").read_text())
    skeleton = skeleton_for(params, meta["image_shape"], len(meta["class_names"]))
    seed_curves = {(c, seed): read_curves(cell_dir(*c) / f"seed{seed}") for c in cells for seed in params.train.seeds}
    results = results_table([at_chance_as_diverged(record, seed_curves[c, record["seed"]], skeleton.num_classes)
                             for c in cells for record in read_cell(*c)])
    results.insert(results.columns.get_loc("params") + 1, "forward_flops",
                   [forward_flops(f, w, skeleton) for f, w in zip(results["family"], results["width"])])
    summary = summarize(results[results["comparison"] == "budget"], ["family", "budget"])
    curves = pd.concat([curve.assign(comparison=c[0], family=c[1], size=c[2], seed=seed)
                        for (c, seed), curve in seed_curves.items()])
    budget = params.controls.matched_budget
    tables = [("results", results), ("summary", summary), ("skeleton", skeleton_table(results)),
              ("factorial", factorial_table(results, budget)), ("permutation", permutation_table(results, budget)),
              ("subsets", subsets_table(results, budget)), ("curves", curves)]
    for name, table in tables:
        with atomic_path(REPORTS / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
    write_text(REPORTS / "metrics.json", json.dumps(headline_metrics(summary), indent=2) + "\n")
    print(f"aggregated {len(results)} runs from {len(cells)} cells -> {REPORTS}/")


if __name__ == "__main__":
    stage.run(main)
