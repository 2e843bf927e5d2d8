"""How closely two runs of the study agree, seed by seed.

The same params and seeds train to the same results only on the same kernels: another CPU
instruction set, a GPU (whose float32 products are TF32 by default), or a layer rewritten to
add in another order changes the rounding, and training carries it into the accuracies. This
puts a number on it, for a study rerun against the committed outputs, say:

    git show HEAD:reports/results.csv > /tmp/committed.csv
    python -m whyconv.agreement /tmp/committed.csv reports/results.csv

Test accuracy is a count over the test images, so "same" below is exact, not a tolerance. Last,
the study's findings (the 2x2, the permuted-pixel drops, the CNN's lead over the MLP, the CNN+GAP's
over the CNN and the 2x2 at each training-set size, the LCN against the CNN on the same skeleton,
the parameters each family needs to reach the report's accuracies) as each run's own seeds give
them, to see which of them moved.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from whyconv.figures import FAMILY_NAMES
from whyconv.report import factorials_by_train_size, leads_by_train_size, points, reach_levels, some_seed_at_smallest
from whyconv.results import FAMILY_ORDER, factorial_table, params_ratio, permutation_table, skeleton_table

# What names one trained model: a run of the study has one row for each.
RUN_KEY = ["dataset", "comparison", "family", "budget", "width", "train_size", "seed"]
CELL_KEY = RUN_KEY[:-1]
NOT_REACHED = "not reached by every seed"
BOUND = "a bound (a smallest model is there already)"


class AgreementError(ValueError):
    """The two tables cannot be compared (unreadable, or no trained model in common)."""


def read_results(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise AgreementError(f"cannot read {path}: {err}. Fix: give a study's results.csv.") from err
    missing = [column for column in [*RUN_KEY, "params", "status", "test_acc"] if column not in frame]
    if missing:
        raise AgreementError(f"{path} lacks the columns {missing}. Fix: give a study's results.csv "
                             "(reports/results.csv, written by the aggregate stage).")
    return frame


def paired_runs(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """The models both tables trained, one row each: both test accuracies and both statuses, and
    `difference`, second minus first in points, where both trained to the end ("ok")."""
    # A skeleton cell has no budget: fill the gaps so that the join matches them.
    columns = [*RUN_KEY, "status", "test_acc"]
    pairs = first[columns].fillna({"budget": -1}).merge(
        second[columns].fillna({"budget": -1}), on=RUN_KEY, suffixes=("_first", "_second"))
    if pairs.empty:
        raise AgreementError("the two tables have no trained model in common (dataset, cell and seed). "
                             "Fix: compare runs of the same params.yaml.")
    both_ok = (pairs["status_first"] == "ok") & (pairs["status_second"] == "ok")
    pairs["difference"] = (100 * (pairs["test_acc_second"] - pairs["test_acc_first"])).where(both_ok)
    return pairs


def by_family(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per family: models compared, how many have the same test accuracy, and the largest and
    median absolute difference in points; then the same over every family."""
    def agreement(group: pd.DataFrame) -> dict:
        compared = group["difference"].dropna()
        return {"models": len(compared), "same": int((compared.abs() < 1e-9).sum()),
                "largest": compared.abs().max(), "median": compared.abs().median()}
    families = [family for family in FAMILY_ORDER if family in set(pairs["family"])]
    rows = [{"family": family, **agreement(pairs[pairs["family"] == family])} for family in families]
    return pd.DataFrame([*rows, {"family": "all", **agreement(pairs)}])


def cell_shifts(pairs: pd.DataFrame) -> pd.DataFrame:
    """Each cell's mean test accuracy in both runs, in percent (seeds trained to the end in both),
    and its shift in points, largest shift first."""
    compared = pairs.dropna(subset=["difference"])
    cells = compared.groupby(CELL_KEY, sort=False).agg(
        seeds=("seed", "size"), first=("test_acc_first", "mean"), second=("test_acc_second", "mean"),
        shift=("difference", "mean")).reset_index()
    cells[["first", "second"]] *= 100
    cells["budget"] = cells["budget"].astype("Int64").astype(str).replace("-1", "")
    return cells.reindex(cells["shift"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def summary(first: pd.DataFrame, second: pd.DataFrame, cells: int = 5) -> str:
    """The agreement as markdown: by family, the cells whose means moved most, and what one table
    has that the other lacks or where only one run diverged."""
    pairs = paired_runs(first, second)
    shifts = cell_shifts(pairs)
    moved = shifts[shifts["shift"].abs() > 1e-9].head(cells)
    lines = [f"First run trained on: {devices(first)}.", f"Second run trained on: {devices(second)}.", "",
             "Test accuracy, second run minus first, in points (models trained to the end in both):", "",
             by_family(pairs).to_markdown(index=False, floatfmt=".2f"), "",
             *([f"The {len(moved)} cells whose mean test accuracy (%) moved most:", "",
                moved.to_markdown(index=False, floatfmt=".2f")] if len(moved) else
               [f"No cell's mean test accuracy moved (all {len(shifts)} compared)."])]
    status = pairs[pairs["status_first"] != pairs["status_second"]]
    if len(status):
        lines += ["", f"{len(status)} models trained to the end in one run only:", "",
                  status[[*RUN_KEY, "status_first", "status_second"]].to_markdown(index=False)]
    only = {"first": len(first) - len(pairs), "second": len(second) - len(pairs)}
    if any(only.values()):
        lines += ["", f"Models in one table only: {only['first']} in the first, {only['second']} in the second."]
    lines += ["", "The findings as each run's seeds give them (95% intervals over seeds):", "",
              findings_table(first, second)]
    return "\n".join(lines)


def findings(results: pd.DataFrame, levels: list[float], budget: int | None = None,
             reference: str = "cnn") -> dict[str, str]:
    """The study's findings in one run, each worded with its 95% interval over seeds: at `budget`
    (by default the matched budget, the permuted cells') the 2x2, the permuted-pixel drops and, on
    each training-set size, the CNN's lead over the MLP, the CNN+GAP's over the CNN and the 2x2;
    the LCN against the CNN on each skeleton both trained on; and how many times `reference`'s
    parameters each family needs to reach each of `levels`."""
    found = {}
    permuted = results.loc[results["comparison"] == "permuted", "budget"].dropna()
    if budget is None and len(permuted):
        budget = int(permuted.iloc[0])
    if budget is not None:
        for row in factorial_table(results, budget).query("kind == 'effect'").itertuples():
            found[f"2x2 at {budget:,} parameters: {row.term}"] = points(row.estimate, row.low, row.high)
        for row in permutation_table(results, budget).itertuples():
            found[f"drop on permuted pixels: {FAMILY_NAMES[row.family]}"] = points(
                row.drop, row.drop_low, row.drop_high)
        # What both priors buy over neither, and what pooling buys over the CNN, by amount of data.
        for ahead, behind in (("cnn", "mlp"), ("cnn_gap", "cnn")):
            for size, lead in leads_by_train_size(results, budget, ahead, behind).items():
                found[f"{FAMILY_NAMES[ahead]} minus {FAMILY_NAMES[behind]} on {size:,} training images"] = points(*lead)
        subset_sizes = set(results.loc[results["comparison"] == "subset", "train_size"])
        for size, table in factorials_by_train_size(results, budget).items():
            if size in subset_sizes:  # the full split's 2x2 is the first finding
                for row in table.query("kind == 'effect'").itertuples():
                    found[f"2x2 on {size:,} training images: {row.term}"] = points(row.estimate, row.low, row.high)
    # The LCN against the CNN on the same skeleton: models trained on the full split, as the
    # report's table has them (a subset or permuted model of the same width is another question).
    same_skeleton = skeleton_table(results[results["comparison"].isin(["budget", "skeleton"])])
    for row in same_skeleton.itertuples():
        found[f"LCN minus CNN on the same skeleton, c = {row.channels} ({row.param_ratio:.0f}x the parameters)"] = (
            points(row.lcn_minus_cnn, row.lcn_minus_cnn_low, row.lcn_minus_cnn_high))
    for level in levels:
        for family in [f for f in FAMILY_ORDER if f != reference and f in set(results["family"])]:
            found[f"{FAMILY_NAMES[family]} / {FAMILY_NAMES[reference]} parameters to reach {100 * level:.0f}%"] = (
                times(params_ratio(results, family, reference, level), some_seed_at_smallest(results, family, level)
                      or some_seed_at_smallest(results, reference, level)))
    return found


def times(ratio: dict, bounded: bool) -> str:
    """A ratio of parameters as the report words it: a bound where some seed's smallest model is
    already at the level, no interval from one seed, nothing where a seed never gets there."""
    if math.isnan(ratio["ratio"]):
        return NOT_REACHED
    if bounded:
        return f"{ratio['ratio']:.1f}x, {BOUND}"
    if math.isnan(ratio["low"]):
        return f"{ratio['ratio']:.1f}x (one seed)"
    return f"{ratio['ratio']:.1f}x, 95% CI [{ratio['low']:.1f}x, {ratio['high']:.1f}x]"


def levels_of(results: pd.DataFrame) -> list[float]:
    """The accuracies a run's report asks each family's parameters for (`report.reach_levels`),
    from the means of its budget cells' finished seeds."""
    budget_runs = results[(results["comparison"] == "budget") & (results["status"] == "ok")]
    means = budget_runs.groupby(["family", "budget"], as_index=False)["test_acc"].mean()
    return reach_levels(means.rename(columns={"test_acc": "test_acc_mean"}))


def findings_table(first: pd.DataFrame, second: pd.DataFrame) -> str:
    """Both runs' findings side by side, at the accuracies the first run's report names."""
    levels = levels_of(first)
    found = {"first": findings(first, levels), "second": findings(second, levels)}
    names = list(dict.fromkeys([*found["first"], *found["second"]]))
    rows = [{"finding": name, **{run: found[run].get(name, "") for run in found}} for name in names
            if {found["first"].get(name), found["second"].get(name)} != {NOT_REACHED}]
    return pd.DataFrame(rows, columns=["finding", "first", "second"]).to_markdown(index=False)


def devices(results: pd.DataFrame) -> str:
    """The devices a table's models trained on (`trained_on`; tables before it was kept lack it)."""
    names = sorted(results["trained_on"].dropna().unique()) if "trained_on" in results else []
    return "; ".join(names) or "not recorded"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path, help="a study's results.csv (say, the committed one)")
    parser.add_argument("second", type=Path, help="another run's results.csv")
    parser.add_argument("--cells", type=int, default=5, help="how many of the most-moved cells to list")
    args = parser.parse_args(argv)
    try:
        print(summary(read_results(args.first), read_results(args.second), args.cells))
    except AgreementError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
