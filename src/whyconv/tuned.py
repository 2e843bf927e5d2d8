"""Each family at its own best recipe: the study's findings with every cell tuned on validation.

The study trains every family and size one way, tuned for none, and the families want different
learning rates (README, **How far the findings depend on the recipe**). Given runs of the study at
several recipes, this picks for each cell (family and budget, for the sample-efficiency
control's cells the training-set size too, and for the same-skeleton cells the channels) the recipe
whose seeds reach the highest mean validation accuracy, and states the findings again with every
cell at its pick:

    python -m whyconv.tuned 0.001=reports/learning-rate/0.001/results.csv \\
        0.003=reports/results.csv 0.01=reports/learning-rate/0.01/results.csv

Each argument is LABEL=RESULTS: a name for the recipe and the results.csv of a run with it. A
label given again adds another run at that recipe (say, one that trained more cells).
The choice reads validation accuracy only, so the test accuracies reported for it are not the ones
it was chosen by. A recipe counts for a cell only where every one of its seeds trained to the end:
one that diverges is not a recipe for that cell. A cell trained at one recipe only is left out, as
there is nothing to choose. A grid of a few recipes is a coarse tuning: a pick at either end of
the recipes its cell was trained at says the best may lie beyond it, so give the recipes in order
(of learning rate, say), and the output names the picks at an end. Where every run has the
translation probe's shift.csv beside its results.csv, the output ends with each pick's accuracy on
shifted test images.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml

from whyconv.agreement import BOUND, NOT_REACHED, RUN_KEY, AgreementError, findings, levels_of, read_results
from whyconv.figures import FAMILY_NAMES
from whyconv.report import interval
from whyconv.results import FAMILY_ORDER, mean_interval

# A cell: a family at a budget, trained on the full split ("budget") or on a subset of it, or a
# family on a skeleton of c channels ("skeleton", no budget: its width sets it).
CELL = ["family", "budget", "comparison", "train_size", "width"]
TUNABLE = ["budget", "subset", "skeleton"]
NO_BUDGET = -1
TUNED = "each cell at its pick"


def cell_runs(runs: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The budget, subset and skeleton cells of every run, one row per model, with its run's
    `recipe` label (a skeleton cell's budget NO_BUDGET)."""
    for label, frame in runs.items():
        if "val_acc" not in frame:
            raise AgreementError(f"run {label!r} has no val_acc column, which the choice reads. Fix: give a "
                                 "study's results.csv (reports/results.csv, written by the aggregate stage).")
    frames = [frame[frame["comparison"].isin(TUNABLE)].assign(recipe=label) for label, frame in runs.items()]
    combined = pd.concat(frames, ignore_index=True)
    if combined.empty:
        raise AgreementError("no run has a budget, subset or skeleton cell. Fix: give the results.csv of runs "
                             "of the study.")
    combined["budget"] = combined["budget"].fillna(NO_BUDGET)
    combined[["budget", "train_size", "width"]] = combined[["budget", "train_size", "width"]].astype(int)
    return combined


def cell_key(row: tuple) -> tuple:
    """A cell's key (CELL's values) from a row of `in_study_order`."""
    return tuple(getattr(row, column) for column in CELL)


def cell_name(family: str, budget: int, comparison: str, train_size: int, width: int) -> str:
    if comparison == "skeleton":
        return f"{FAMILY_NAMES.get(family, family)} on the c = {width} skeleton"
    name = f"{FAMILY_NAMES.get(family, family)} at {budget:,}"
    return name + (f" on {train_size:,} images" if comparison == "subset" else "")


def in_study_order(picks: pd.DataFrame) -> list:
    """The rows of a table of cells as tuples, by family as the study orders them, then size
    (the skeleton cells after the budgets)."""
    order = {family: k for k, family in enumerate(FAMILY_ORDER)}
    return sorted(picks.itertuples(), key=lambda r: (order.get(r.family, len(order)), r.comparison == "skeleton",
                                                     r.budget, r.train_size, r.width))


def recipe_scores(models: pd.DataFrame) -> pd.DataFrame:
    """Per cell and recipe: whether every seed trained to the end, and their mean validation accuracy."""
    return models.groupby([*CELL, "recipe"], sort=False).agg(
        finished=("status", lambda status: bool((status == "ok").all())), val_acc=("val_acc", "mean")).reset_index()


def best_recipes(models: pd.DataFrame) -> pd.DataFrame:
    """Per cell: the recipe with the highest mean validation accuracy among those whose seeds all
    finished (the first given, on a tie), the recipes it was chosen from, and whether it is the
    first or last recipe the cell was trained at (`at_end`; a diverged one beyond counts, as it
    did worse)."""
    scores = recipe_scores(models)
    rows = []
    for key, cell in scores.groupby(CELL, sort=False):
        finished = cell[cell["finished"]]
        recipe = finished.loc[finished["val_acc"].idxmax(), "recipe"] if len(finished) else None
        trained = cell["recipe"].tolist()  # in the order given
        rows.append({**dict(zip(CELL, key)), "recipe": recipe,
                     "compared": ", ".join(finished["recipe"]),
                     "not_finished": ", ".join(cell.loc[~cell["finished"], "recipe"]),
                     "at_end": recipe is not None and recipe in (trained[0], trained[-1])})
    return pd.DataFrame(rows)


def picks_at_an_end(best: pd.DataFrame) -> str:
    """A sentence naming the picks at an end of their cell's recipes, where one beyond may do better."""
    at_end = in_study_order(best[best["at_end"]])
    if not at_end:
        return "Every pick lies between two recipes its cell was trained at."
    names = [f"{cell_name(*cell_key(p))} ({p.recipe})" for p in at_end]
    return ("At an end of the recipes their cell was trained at (in the order given), so a recipe beyond "
            f"might do better: {', '.join(names)}.")


def with_a_choice(models: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The models of the cells trained at two recipes or more, and the cells left out (trained at
    one only: there is nothing to choose between, and their runs would mix an untuned point into
    the tuned curves)."""
    recipes = models.groupby(CELL)["recipe"].transform("nunique")
    return models[recipes >= 2], cells_in_words(models.loc[recipes < 2, CELL].drop_duplicates())


def cells_in_words(cells: pd.DataFrame) -> list[str]:
    """Cells named a few at a time: a family's budgets together, its training-set sizes at a
    budget together ("MLP at 25,000 on 1,000, 3,000 and 10,000 images"), and its skeletons."""
    groups: dict[tuple[str, str, int | None], list[int]] = {}
    for cell in in_study_order(cells):
        if cell.comparison == "subset":
            groups.setdefault((cell.family, cell.comparison, cell.budget), []).append(cell.train_size)
        elif cell.comparison == "skeleton":
            groups.setdefault((cell.family, cell.comparison, None), []).append(cell.width)
        else:
            groups.setdefault((cell.family, cell.comparison, None), []).append(cell.budget)
    names = []
    for (family, comparison, budget), sizes in groups.items():
        name = FAMILY_NAMES.get(family, family)
        if comparison == "subset":
            names.append(f"{name} at {budget:,} on {in_words([f'{size:,}' for size in sizes])} images")
        elif comparison == "skeleton":
            names.append(f"{name} on the c = {in_words([str(width) for width in sizes])} "
                         + ("skeletons" if len(sizes) > 1 else "skeleton"))
        else:
            names.append(f"{name} at {in_words([f'{size:,}' for size in sizes])}")
    return names


def in_words(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else items[0]


def tuned_runs(models: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """The models of each cell's chosen recipe: a results table as one run of the study would give."""
    chosen = best.dropna(subset=["recipe"])[[*CELL, "recipe"]]
    return models.merge(chosen, on=[*CELL, "recipe"])


def cells_table(models: pd.DataFrame, best: pd.DataFrame, reference: str | None) -> str:
    """Each cell's pick, its validation and test accuracy, and its test accuracy at `reference`."""
    rows = []
    subsets = (best["comparison"] == "subset").any()
    cells = models.groupby(CELL)
    for pick in in_study_order(best):
        budget = f"skeleton, c = {pick.width}" if pick.comparison == "skeleton" else f"{pick.budget:,}"
        row = {"family": FAMILY_NAMES.get(pick.family, pick.family), "budget": budget,
               **({"images": f"{pick.train_size:,}"} if subsets else {}),
               "recipes compared": pick.compared + (f" ({pick.not_finished} diverged)" if pick.not_finished else "")}
        cell = cells.get_group(cell_key(pick))
        chosen = cell[cell["recipe"] == pick.recipe]
        row |= {"chosen": pick.recipe or "none finished",
                "val %": f"{100 * chosen['val_acc'].mean():.2f}" if len(chosen) else "",
                "test % [95% CI]": interval(*mean_interval(chosen["test_acc"].to_numpy())) if len(chosen) else ""}
        if reference is not None:
            at_reference = cell[(cell["recipe"] == reference) & (cell["status"] == "ok")]["test_acc"].to_numpy()
            row[f"test % at {reference}"] = interval(*mean_interval(at_reference)) if len(at_reference) else ""
        rows.append(row)
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)  # labels as given


def findings_by_recipe(models: pd.DataFrame, tuned: pd.DataFrame, budget: int) -> str:
    """The study's findings (`agreement.findings`: the 2x2 at `budget`, the leads and the 2x2 on
    each training-set size, the same skeleton, the parameter ratios) at each recipe alone and with
    each cell at its pick, the ratios at the accuracies the tuned cells reach."""
    levels = levels_of(tuned)
    found = {label: findings(frame, levels, budget) for label, frame in models.groupby("recipe", sort=False)}
    found[TUNED] = findings(tuned, levels, budget)

    def estimated(value: str) -> bool:
        return value != NOT_REACHED and BOUND not in value

    # The findings some recipe, or the picks, give an estimate of (not only a bound, or nothing).
    rows = [{"finding": name, **{label: run.get(name, "") for label, run in found.items()}} for name in found[TUNED]
            if any(estimated(run.get(name, NOT_REACHED)) for run in found.values())]
    if not rows:
        return ("None from these cells: the 2x2 needs the MLP, LCN, GConv and CNN at the budget, and a "
                "parameter ratio a family's accuracy over several budgets.")
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)  # labels as given


def summary(runs: dict[str, pd.DataFrame], budget: int, reference: str | None = None,
            shifts: dict[str, pd.DataFrame] | None = None) -> str:
    """The tuning as markdown: each cell's pick, then the findings at each recipe and tuned, and
    where `shifts` has every recipe's translation probe, the accuracy under translation at the picks."""
    models, left_out = with_a_choice(cell_runs(runs))
    if models.empty:
        raise AgreementError("no cell was trained at two recipes or more: nothing to choose between. "
                             "Fix: give runs of the same budgets at different recipes.")
    best = best_recipes(models)
    tuned = tuned_runs(models, best)
    return "\n".join([
        "Each cell at the recipe with the highest mean validation accuracy over its seeds (a recipe "
        "counts only where every seed trained to the end):", "",
        cells_table(models, best, reference), "",
        picks_at_an_end(best), "",
        *([f"Left out, trained at one recipe only: {'; '.join(left_out)}.", ""] if left_out else []),
        f"The findings at each recipe alone and with each cell at its pick (the 2x2 at {budget:,} "
        "parameters; 95% intervals over seeds):", "",
        findings_by_recipe(models, tuned, budget),
        *(["", "Test accuracy % (mean over seeds) with every test image moved by s pixels along both axes "
           "(the translation probe's shift.csv), each cell at its pick:", "", shift_table(shifts, best)]
          if shifts else [])])


def shift_table(shifts: dict[str, pd.DataFrame], best: pd.DataFrame) -> str:
    """The translation probe of each cell's pick: its mean test accuracy at each shift."""
    probed = pd.concat([frame.assign(recipe=label) for label, frame in shifts.items()], ignore_index=True)
    means = probed.groupby(["family", "budget", "recipe", "shift"])["test_acc"].mean()
    cells = set(means.index.droplevel("shift"))
    rows = [{"family": FAMILY_NAMES.get(pick.family, pick.family), "budget": f"{pick.budget:,}", "chosen": pick.recipe,
             **{f"{shift} px": f"{100 * acc:.2f}" for shift, acc in means.loc[pick.family, pick.budget, pick.recipe].items()}}
            for pick in in_study_order(best[best["comparison"] == "budget"])
            if (pick.family, pick.budget, pick.recipe) in cells]
    if not rows:
        return "No cell's pick was probed."
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def labelled_path(text: str) -> tuple[str, Path]:
    label, separator, path = text.partition("=")
    if not separator or not label or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not LABEL=RESULTS (e.g. 0.001=reports/learning-rate/0.001/results.csv)")
    return label, Path(path)


def by_label(runs: list[tuple[str, Path]], read: Callable[[Path], pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Each label's files read and put together, in the order the labels first come."""
    return {label: pd.concat([read(path) for each, path in runs if each == label], ignore_index=True)
            for label in dict.fromkeys(label for label, _ in runs)}


def recipe_runs(runs: list[tuple[str, Path]]) -> dict[str, pd.DataFrame]:
    """Each label's results, a model given once."""
    recipes = by_label(runs, read_results)
    for label, frame in recipes.items():
        twice = frame[frame.duplicated(subset=RUN_KEY, keep=False)]
        if len(twice):
            model = twice.iloc[0]
            raise AgreementError(f"recipe {label!r} has {len(twice) // 2} models in more than one of its files "
                                 f"(the first: {model['family']} at {model['budget']}, seed {model['seed']}). "
                                 "Fix: give each model once.")
    return recipes


def read_shift(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise AgreementError(f"cannot read {path}: {err}. Fix: give runs whose shift.csv the probe stage "
                             "wrote, or move it away.") from err


def recipe_shifts(runs: list[tuple[str, Path]]) -> dict[str, pd.DataFrame] | None:
    """Each label's translation probe, from the shift.csv beside each of its results files, or None
    unless every run has one (a pick without its probe would leave gaps)."""
    beside = [(label, path.parent / "shift.csv") for label, path in runs]
    if not all(path.is_file() for _, path in beside):
        return None
    return {label: frame.drop_duplicates(subset=["family", "budget", "seed", "shift"])
            for label, frame in by_label(beside, read_shift).items()}


def matched_budget(params: Path = Path("params.yaml")) -> int:
    """The study's matched budget (controls.matched_budget), the 2x2's budget by default."""
    return int(yaml.safe_load(params.read_text())["controls"]["matched_budget"])


def command(args: argparse.Namespace) -> str:
    """The command that gives this output again."""
    options = [f"--reference {args.reference}"] if args.reference is not None else []
    return " ".join(["python -m whyconv.tuned", *(f"{label}={path}" for label, path in args.runs),
                     f"--budget {args.budget}", *options])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=labelled_path, metavar="LABEL=RESULTS",
                        help="a recipe's name and the results.csv of a run with it; two recipes or more "
                             "(a label given again adds another run at that recipe)")
    parser.add_argument("--budget", type=int, default=None,
                        help="the 2x2's budget (default: controls.matched_budget in params.yaml)")
    parser.add_argument("--reference", default=None,
                        help="a label whose test accuracy each cell shows beside its pick (say, the study's)")
    args = parser.parse_args(argv)
    labels = list(dict.fromkeys(label for label, _ in args.runs))
    if len(labels) < 2:
        parser.error(f"give runs of two recipes or more, each recipe with its own label (got only {labels[0]!r})")
    if args.reference is not None and args.reference not in labels:
        parser.error(f"--reference {args.reference!r} is none of the labels ({', '.join(labels)})")
    if args.budget is None:
        try:
            args.budget = matched_budget()
        except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as err:
            parser.error(f"no matched budget in params.yaml here ({err}): give the 2x2's budget with --budget")
    try:
        runs = recipe_runs(args.runs)
        shifts = recipe_shifts(args.runs)
        print(f"Written by `{command(args)}`.\n")
        print(summary(runs, args.budget, args.reference, shifts))
    except AgreementError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
