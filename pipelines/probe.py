"""Stage `probe`: every trained model at the matched budget -> translation curve, first-layer metrics and figure.

Writes reports/shift.csv (test accuracy per shift), reports/weights.csv (emergent locality and
sharing, trained and at initialization) and reports/figures/first_layer.png.
"""

from pathlib import Path

import pandas as pd

from whyconv import data, stage
from whyconv.atomic import atomic_path
from whyconv.capacity import spatial_sizes
from whyconv.config import load_params, skeleton_for
from whyconv.figures import first_layer_figure
from whyconv.models import build_model
from whyconv.probes import first_layer, first_layer_kernel, locality, sharing, shift_accuracy
from whyconv.study import read_cell, read_trained_params
from whyconv.training import init_params

REPORTS = Path("reports")
COLUMNS = {"shift": ["family", "budget", "seed", "shift", "test_acc"],
           "weights": ["family", "budget", "seed", "weights", "locality", "sharing"]}


def main() -> None:
    params = load_params()
    splits = data.load(Path("data/prepared"))
    skeleton = skeleton_for(params, splits.meta.image_shape, splits.num_classes)
    budget, controls = params.controls.matched_budget, params.controls
    families = [family for family, budgets in params.study.budgets.model_dump().items() if budgets]
    images, labels = splits.arrays["test"]
    shifts, weights, examples = [], [], {}
    for family in families:
        records = [r for r in read_cell("budget", family, budget) if r["status"] == "ok"]
        model = build_model(family, records[0]["width"], splits.num_classes, skeleton.depth,
                            skeleton.kernel_size, skeleton.stride)
        for record in records:
            seed = record["seed"]
            trained = read_trained_params("budget", family, budget, seed)
            print(f"probing {family}-{budget} seed {seed}", flush=True)
            if controls.max_shift:
                curve = shift_accuracy(model, trained, images, labels, splits.meta.mean, splits.meta.std,
                                       controls.max_shift, controls.shift_fill)
                shifts += [{"family": family, "budget": budget, "seed": seed, "shift": shift, "test_acc": acc}
                           for shift, acc in enumerate(curve)]
            if not controls.weights:
                continue
            initial = init_params(model, seed, skeleton.image_shape)  # where training started: chance level
            for when, tree in (("init", initial), ("trained", trained)):
                energy, filters = first_layer(family, tree, skeleton.image_shape, spatial_sizes(skeleton)[0])
                weights.append({"family": family, "budget": budget, "seed": seed, "weights": when,
                                "locality": locality(energy, skeleton.kernel_size, circular=family == "gconv"),
                                "sharing": sharing(filters) if filters is not None else float("nan")})
            examples.setdefault(family, trained)
    for name, rows in (("shift", shifts), ("weights", weights)):
        with atomic_path(REPORTS / f"{name}.csv") as tmp:
            pd.DataFrame(rows, columns=COLUMNS[name]).to_csv(tmp, index=False, float_format="%.6g")
    kernels = {family: first_layer_kernel(family, tree, skeleton.image_shape) for family, tree in examples.items()}
    first_layer_figure(kernels, REPORTS / "figures" / "first_layer.png")
    print(f"probed {len(families)} families at {budget:,} parameters -> {REPORTS}/shift.csv, weights.csv")


if __name__ == "__main__":
    stage.run(main)
