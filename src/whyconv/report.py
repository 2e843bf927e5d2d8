"""The report a reader opens: reports/report.md and a self-contained reports/index.html.

Everything in it is generated from the aggregate tables; every comparison sentence carries an
effect size with its 95% interval, and its wording is chosen by that interval (a difference is
claimed only when the interval excludes zero). Its figures are drawn by `whyconv.figures`.
"""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import markdown
import numpy as np
import pandas as pd
import yaml

from whyconv.atomic import write_text
from whyconv.figures import (FAMILY_LABELS, FAMILY_NAMES, band_figure, connectivity_figure, curves_figure,
                             factorial_figure, notice_figure, permutation_figure, priors_figure)
from whyconv.provenance import CODE_PATHS, code_version, git
from whyconv.results import (FACTORIAL, difference_interval, factorial_table, mean_interval, params_ratio,
                             params_to_reach)

# Why a control's section is empty: its switch in params.yaml, as the section and its figure say.
SWITCHED_OFF = {"permutation": "controls.permutation.families is empty", "shift": "controls.max_shift is 0",
                "subsets": "controls.subsets.sizes or .families is empty", "weights": "controls.weights is false"}


def figure_link(alt: str, name: str, shown: bool) -> str:
    """The markdown of a figure in reports/figures, or nothing where its section has nothing to show."""
    return f"![{alt}](figures/{name})\n\n" if shown else ""


def report_version() -> str:
    """The code version the report is stamped with: `code_version()`, but where params.yaml is the
    only change (a `dvc exp run -S` variant of committed code) it says so, rather than suggesting
    the code itself differs. The report quotes those params whole under Setup."""
    # Here, not in provenance.code_version: provenance.py is a dependency of every training stage,
    # and how the report words its stamp should not retrain the study.
    version = code_version()
    if version.endswith(" with uncommitted changes"):
        code = [path for path in CODE_PATHS if path != "params.yaml"]
        if not git("status", "--porcelain", "--", *code):
            return version.replace(" with uncommitted changes", " with params.yaml changed")
    return version


def percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def interval(mean: float, low: float, high: float) -> str:
    if math.isnan(mean):
        return "n/a (no seed finished)"
    if math.isnan(low):
        return f"{percent(mean)} (one seed)"
    return f"{percent(mean)} [{percent(low)}, {percent(high)}]"


def budget_table(summary: pd.DataFrame) -> str:
    table = pd.DataFrame({
        "family": summary["family"].map(FAMILY_NAMES),
        "budget": summary["budget"].map("{:,}".format),
        "width": summary["width"],
        "parameters": summary["params"].map("{:,}".format),
        "test accuracy % [95% CI]": [interval(*r) for r in summary[["test_acc_mean", "test_acc_low", "test_acc_high"]].to_numpy()],
        "val accuracy %": summary["val_acc_mean"].map(percent),
        "seeds": summary["seeds"],
        "diverged": summary["diverged"],
    })
    return table.to_markdown(index=False)


def channel_multiples(depth: int) -> str:
    """Each spatial layer's channels as multiples of c: "c", "c and 2c", "c, 2c and 4c", then
    "c, 2c, ..., 8c" from four layers on."""
    multiples = ["c", *(f"{2**layer}c" for layer in range(1, depth))]
    if depth == 1:
        return "c"
    if depth <= 3:
        return f"{', '.join(multiples[:-1])} and {multiples[-1]}"
    return f"c, 2c, ..., {multiples[-1]}"


def channels_per_layer(channels: int, depth: int) -> str:
    """Each spatial layer's channels, first to last: "4/8" for 4 first-layer channels at depth 2."""
    return "/".join(str(channels * 2**layer) for layer in range(depth))


def skeleton_markdown(skeleton: pd.DataFrame, depth: int) -> str:
    table = pd.DataFrame({
        "channels": skeleton["channels"].map(lambda c: channels_per_layer(c, depth)),
        "LCN parameters": skeleton["lcn_params"].map("{:,}".format),
        "CNN parameters": skeleton["cnn_params"].map("{:,}".format),
        "ratio": skeleton["param_ratio"].map("{:.0f}x".format),
        "LCN test %": skeleton["lcn_test_acc"].map(percent),
        "CNN test %": skeleton["cnn_test_acc"].map(percent),
        "LCN - CNN (points) [95% CI]": [
            interval(*r) for r in skeleton[["lcn_minus_cnn", "lcn_minus_cnn_low", "lcn_minus_cnn_high"]].to_numpy()],
    })
    return table.to_markdown(index=False)


def verdict(diff: float, low: float, high: float, a: str, b: str, more: str = "more accurate") -> str:
    """Words for `a` minus `b`: a direction only when the interval excludes zero, none without one."""
    if math.isnan(low):
        return f"no claim about the {a} against the {b} without an interval"
    if low <= 0 <= high:
        return f"there is no detectable difference between the {a} and the {b}"
    less = "less" + more.removeprefix("more")
    return f"the {a} is {more if diff > 0 else less} than the {b}"


def points(diff: float, low: float, high: float) -> str:
    if math.isnan(low):
        return f"{100 * diff:+.2f} points, interval unknown with one seed"
    return f"{100 * diff:+.2f} points, 95% CI [{100 * low:+.2f}, {100 * high:+.2f}]"


def skeleton_sentence(row: pd.Series, depth: int) -> str:
    diff, low, high = row["lcn_minus_cnn"], row["lcn_minus_cnn_low"], row["lcn_minus_cnn_high"]
    return (f"- {channels_per_layer(int(row['channels']), depth)} channels: {verdict(diff, low, high, 'LCN', 'CNN')} "
            f"({points(diff, low, high)}), with {row['param_ratio']:.0f}x the parameters.")


def skeleton_section(skeleton: pd.DataFrame, depth: int) -> str:
    if skeleton.empty:
        return ("Not run: it needs an LCN and a CNN with the same channels, from study.skeleton_channels "
                "or from budgets at which both families get the same width.")
    return skeleton_markdown(skeleton, depth) + "\n\n" + "\n".join(
        skeleton_sentence(r, depth) for _, r in skeleton.iterrows())


def diverged_note(results: pd.DataFrame) -> str:
    """Name every diverged run: they are excluded from means and intervals, and the reader is told."""
    diverged = results[results["status"] == "diverged"]
    if diverged.empty:
        return "Every run finished with a finite loss."
    runs = "; ".join(f"{FAMILY_NAMES[r.family]} {r.comparison} {r.width if r.comparison == 'skeleton' else int(r.budget)}"
                     f" seed {r.seed} (epoch {int(r.diverged_epoch)}"
                     f"{'' if math.isnan(r.test_acc) else f', then at chance: {percent(r.test_acc)}% test accuracy'})"
                     for r in diverged.itertuples())
    return (f"**{len(diverged)} run(s) diverged** and are excluded from every mean and interval: their training loss "
            "became non-finite, or rose to a uniform guess's and stayed there (the model then gives every image the "
            f"same answer). A lower `train.learning_rate` usually avoids both. {runs}.")


# What each pair of families isolates, in the study's terms.
PRIOR_PAIRS = [("lcn", "mlp", "locality without sharing"), ("gconv", "mlp", "sharing without locality"),
               ("cnn", "lcn", "sharing on top of locality"), ("cnn", "gconv", "locality on top of sharing"),
               ("cnn", "mlp", "both priors")]


def budget_sentences(results: pd.DataFrame) -> list[str]:
    """At every budget two families share, their test-accuracy difference with a Welch interval."""
    runs = results[(results["comparison"] == "budget") & (results["status"] == "ok")]
    lines = []
    for budget, group in runs.groupby("budget"):
        for a, b, meaning in PRIOR_PAIRS:
            acc_a = group.loc[group["family"] == a, "test_acc"].to_numpy()
            acc_b = group.loc[group["family"] == b, "test_acc"].to_numpy()
            if len(acc_a) and len(acc_b):
                diff, low, high = difference_interval(acc_a, acc_b)
                lines.append(f"- {int(budget):,} parameters, {meaning}: "
                             f"{verdict(diff, low, high, FAMILY_NAMES[a], FAMILY_NAMES[b])} ({points(diff, low, high)}).")
    return lines


def reach_levels(summary: pd.DataFrame) -> list[float]:
    """The whole percentages just below each family's best mean accuracy: every family reaches its own."""
    best = summary.groupby("family", observed=True)["test_acc_mean"].max()
    return sorted({math.floor(100 * acc) / 100 for acc in best if not math.isnan(acc)})


def reached_at_smallest(params: np.ndarray, accuracy: np.ndarray, level: float) -> bool:
    """Whether the smallest model trained already reaches `level`: `params_to_reach` is then only
    an upper bound on the parameters the family needs."""
    return bool(np.asarray(accuracy, float)[np.argmin(params)] >= level)


def some_seed_at_smallest(results: pd.DataFrame, family: str, level: float) -> bool:
    """Whether some seed's smallest budget model of `family` already reaches `level`: that seed's
    need is then a bound, and a ratio's interval over seeds would treat it as a value."""
    runs = results[(results["comparison"] == "budget") & (results["status"] == "ok") & (results["family"] == family)]
    return any(reached_at_smallest(g["params"].to_numpy(), g["test_acc"].to_numpy(), level)
               for _, g in runs.groupby("seed"))


def reach_table(results: pd.DataFrame, summary: pd.DataFrame) -> tuple[str, list[str]]:
    """Parameters each family needs to reach given accuracies, and how many times the fewest.

    A family whose smallest model is already at an accuracy may need fewer parameters than that
    model has: its count is shown as a bound ("at most"), and so is any ratio it enters.
    """
    families = [f for f in FAMILY_LABELS if f in set(summary["family"])]
    rows, sentences = [], []
    for level in reach_levels(summary):
        needs, bounded = {}, set()
        for family in families:
            rows_f = summary[summary["family"] == family]
            params, accuracy = rows_f["params"].to_numpy(), rows_f["test_acc_mean"].to_numpy()
            needs[family] = params_to_reach(params, accuracy, level)
            if reached_at_smallest(params, accuracy, level):
                bounded.add(family)
        reached = {f: n for f, n in needs.items() if not math.isnan(n)}
        thriftiest = min(reached, key=reached.get)
        rows.append({"test accuracy": f"{100 * level:.0f}%",
                     **{f"{FAMILY_NAMES[f]} parameters": "not reached" if math.isnan(n)
                        else f"at most {n:,.0f}" if f in bounded else f"{n:,.0f}" for f, n in needs.items()}})
        sentences += [reach_sentence(level, family, thriftiest, reached, bounded,
                                     params_ratio(results, family, thriftiest, level),
                                     some_seed_at_smallest(results, family, level)
                                     or some_seed_at_smallest(results, thriftiest, level))
                      for family in reached if family != thriftiest]
    return pd.DataFrame(rows).to_markdown(index=False), sentences


def crossing_ranges(summary: pd.DataFrame) -> str:
    """Where each family's mean curve crosses each level, as far as its seeds settle it: between
    the last budget whose 95% interval lies wholly below the level and the first wholly above.

    The reach table interpolates the means, which puts every crossing at one point; where a level
    lies inside a budget's interval, a small shift of that mean (more seeds, another device's
    rounding) can move the crossing anywhere in this range, and with it a ratio.
    """
    families = [f for f in FAMILY_LABELS if f in set(summary["family"])]
    rows = []
    for level in reach_levels(summary):
        row = {"test accuracy": f"{100 * level:.0f}%"}
        for family in families:
            curve = summary[summary["family"] == family]
            below = curve.loc[curve["test_acc_high"] <= level, "params"]
            above = curve.loc[curve["test_acc_low"] >= level, "params"]
            # Only the budgets before the curve first comes within reach of the level count as
            # below it: a curve that falls back under the level past its best (the GConv's, for
            # one) has not moved its crossing to the larger budgets.
            near = curve.loc[curve["test_acc_high"] > level, "params"]
            below = below[below < near.min()] if len(near) else below
            row[FAMILY_NAMES[family]] = crossing_range(below.max() if len(below) else None,
                                                       above.min() if len(above) else None, len(below) == len(curve))
        rows.append(row)
    return pd.DataFrame(rows).to_markdown(index=False)


def crossings_note(summary: pd.DataFrame) -> str:
    """The crossing ranges with what they mean; nothing with one seed, which gives no intervals."""
    if summary["test_acc_low"].isna().all():
        return ""
    return f"""
Where the seeds place each crossing: between the last budget whose 95% interval lies wholly
below the accuracy and the first wholly above it (parameters). Where this range spans more than
the two budgets the table above interpolates between, the accuracy lies inside some budget's
interval, and a small shift of that mean moves the crossing, and the ratios, within the range.
More seeds (`train.seeds` in `params.yaml`) narrow the intervals, and with them these ranges.

{crossing_ranges(summary)}
"""


def crossing_range(below: int | None, above: int | None, never: bool) -> str:
    """A crossing between the budgets whose intervals are wholly below and wholly above the level."""
    if never:
        return "not reached"
    if below and above:
        return f"{below:,} to {above:,}"
    if below:
        return f"over {below:,}, if reached"
    if above:
        return f"under {above:,}"
    return "not settled"


def reach_sentence(level: float, family: str, reference: str, needs: dict[str, float], bounded: set[str],
                   ratio: dict, seed_bounded: bool) -> str:
    """How many times `reference`'s parameters `family` needs to reach `level`, worded by what is known:
    an interval over seeds, the mean curves only, a bound, or nothing to compare. `bounded` holds the
    families whose mean curve starts at the level; `seed_bounded` says whether some seed's curve of
    either family does (see `params_ratio` for `ratio`)."""
    goal, name, other = f"To reach {100 * level:.0f}% test accuracy", FAMILY_NAMES[family], FAMILY_NAMES[reference]
    versus = f"{needs[family]:,.0f} vs {needs[reference]:,.0f}"
    times = needs[family] / needs[reference]
    if family in bounded and reference in bounded:
        return (f"- {goal}, the {name} and the {other} need no more than their smallest models ({versus} "
                f"parameters): no budget here is small enough to compare them.")
    if bounded & {family, reference}:
        smallest = FAMILY_NAMES[family] if family in bounded else other
        return (f"- {goal}, the {name} needs {'at most' if family in bounded else 'at least'} about {times:.1f}x the "
                f"parameters of the {other} ({versus}, from the mean curves; the {smallest}'s smallest model already "
                f"reaches {100 * level:.0f}%, so it may need fewer parameters, and there is no interval).")
    if math.isnan(ratio["low"]) or seed_bounded:
        why = (f"some seed's smallest model already reaches {100 * level:.0f}%" if seed_bounded
               else f"not every seed reaches {100 * level:.0f}% within the budgets" if math.isnan(ratio["ratio"])
               else "one seed")
        return (f"- {goal}, the {name} needs about {times:.1f}x the parameters of the {other} ({versus}, from the "
                f"mean curves; {why}, so there is no interval).")
    interval = f"95% CI over seeds [{ratio['low']:.1f}x, {ratio['high']:.1f}x]"
    if ratio["low"] <= 1 <= ratio["high"]:
        return (f"- {goal}, there is no detectable difference between the parameters the {name} and the {other} "
                f"need ({versus}; ratio {ratio['ratio']:.1f}x, {interval}).")
    return f"- {goal}, the {name} needs {ratio['ratio']:.1f}x the parameters of the {other} ({versus}; {interval})."


def common_budgets(summary: pd.DataFrame) -> set[int]:
    """The budgets at which every family in the summary was trained."""
    return set.intersection(*(set(g["budget"]) for _, g in summary.groupby("family", observed=True)))


def compute_section(summary: pd.DataFrame, skeleton: pd.DataFrame, depth: int) -> str:
    """Parameters against arithmetic and measured speed: sharing saves the one, not the other."""
    if "forward_flops" not in summary:
        return "Not measured in this run."
    table = pd.DataFrame({
        "family": summary["family"].map(FAMILY_NAMES),
        "parameters": summary["params"].map("{:,}".format),
        "forward MFLOPs per image": (summary["forward_flops"] / 1e6).map("{:.3f}".format),
        "training images/s": summary["images_per_second"].map(lambda v: "n/a" if math.isnan(v) else f"{v:,.0f}"),
        "test accuracy %": summary["test_acc_mean"].map(percent),
    }).to_markdown(index=False)
    lines = []
    common = common_budgets(summary)
    if common and {"mlp", "cnn"} <= set(summary["family"]):
        budget = max(common)
        at = summary[summary["budget"] == budget].set_index("family")
        cnn, mlp = at.loc["cnn"], at.loc["mlp"]
        lines.append(f"- At {budget:,} parameters the CNN does {cnn['forward_flops'] / mlp['forward_flops']:.0f}x "
                     f"the arithmetic of the MLP per image ({cnn['forward_flops'] / 1e6:.2f} vs "
                     f"{mlp['forward_flops'] / 1e6:.2f} MFLOPs): sharing lets a small parameter budget buy "
                     f"a lot of computation.")
    for row in skeleton.itertuples():
        lines.append(f"- With {channels_per_layer(row.channels, depth)} channels, LCN and CNN do the same arithmetic; "
                     f"the LCN stores {row.param_ratio:.0f}x the parameters.")
    return "Forward FLOPs are analytic (multiply-adds x 2); images/s were measured while training.\n\n" + \
        table + "\n\n" + "\n".join(lines)


def by_seed_summary(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean test accuracy and its 95% interval over seeds, per group."""
    rows = []
    for key, group in frame.groupby(by, sort=True):
        mean, low, high = mean_interval(group["test_acc"].to_numpy())
        rows.append({**dict(zip(by, key)), "test_acc_mean": mean, "test_acc_low": low, "test_acc_high": high,
                     "seeds": len(group)})
    return pd.DataFrame(rows, columns=[*by, "test_acc_mean", "test_acc_low", "test_acc_high", "seeds"])


def effect_words(estimate: float, low: float, high: float, raises: str, lowers: str) -> str:
    if math.isnan(low):
        return "no claim without an interval"
    if low <= 0 <= high:
        return "no detectable effect"
    return raises if estimate > 0 else lowers


def factorial_section(factorial: pd.DataFrame, budget: int) -> str:
    """The 2 x 2 of locality x sharing at the matched budget, its main effects and interaction."""
    if factorial.empty:
        return ("Not run: the 2x2 needs MLP, LCN, GConv and CNN at the matched budget "
                f"({budget:,}) in study.budgets.")
    at = factorial.set_index("term")
    cell = {f: f"{FAMILY_NAMES[f]} {interval(*at.loc[f, ['estimate', 'low', 'high']])}" for f in
            ("mlp", "lcn", "gconv", "cnn")}
    grid = pd.DataFrame({"": ["not local", "local"], "not shared": [cell["mlp"], cell["lcn"]],
                         "shared": [cell["gconv"], cell["cnn"]]}).to_markdown(index=False)
    meaning = {
        "locality": ("Locality (mean of LCN and CNN minus mean of MLP and GConv)",
                     "locality raises accuracy", "locality lowers accuracy"),
        "sharing": ("Sharing (mean of GConv and CNN minus mean of MLP and LCN)",
                    "sharing raises accuracy", "sharing lowers accuracy"),
        "interaction": ("Interaction ((CNN - GConv) - (LCN - MLP): what locality adds with sharing, minus without)",
                        "the priors help more together than apart", "the priors help less together than apart"),
    }
    lines = []
    for term, (label, raises, lowers) in meaning.items():
        estimate, low, high = at.loc[term, ["estimate", "low", "high"]]
        lines.append(f"- {label}: {points(estimate, low, high)}: {effect_words(estimate, low, high, raises, lowers)}.")
    return (f"Test accuracy % [95% CI] at {budget:,} parameters:\n\n{grid}\n\n"
            "Effects in accuracy points (Welch-Satterthwaite intervals over independent seeds):\n\n" + "\n".join(lines))


def permutation_section(permutation: pd.DataFrame) -> str:
    if permutation.empty:
        return f"Switched off ({SWITCHED_OFF['permutation']})."
    table = pd.DataFrame({
        "family": permutation["family"].map(FAMILY_NAMES),
        "natural %": permutation["natural_acc"].map(percent),
        "permuted %": permutation["permuted_acc"].map(percent),
        "drop (points) [95% CI]": [interval(*r) for r in permutation[["drop", "drop_low", "drop_high"]].to_numpy()],
        "seeds": permutation["seeds"],
    }).to_markdown(index=False)
    lines = []
    for r in permutation.itertuples():
        words = effect_words(r.drop, r.drop_low, r.drop_high, "loses accuracy", "gains accuracy")
        lines.append(f"- {FAMILY_NAMES[r.family]}: {'no detectable change' if words == 'no detectable effect' else words} "
                     f"on permuted pixels ({points(-r.drop, -r.drop_high, -r.drop_low)}).")
    # Means in order, not a ranking: gaps of a few tenths between families are within the seeds' spread.
    def means(column: str) -> str:
        ranked = permutation.sort_values(column, ascending=False)
        return ", ".join(f"{FAMILY_NAMES[r.family]} {percent(getattr(r, column))}%" for r in ranked.itertuples())

    lines.append(f"- Mean test accuracy on permuted pixels, highest first: {means('permuted_acc')} (on natural "
                 f"pixels: {means('natural_acc')}).")
    return table + "\n\n" + "\n".join(lines)


SHIFT_FILLS = {"zero": "zero fill: what is pushed off the image is lost",
               "circular": "circular: what is pushed off one edge comes back at the other"}


def shift_section(shift: pd.DataFrame, max_shift: int, fill: str) -> str:
    if shift.empty or max_shift == 0:
        return f"Switched off ({SWITCHED_OFF['shift']})."
    summary = by_seed_summary(shift, ["family", "shift"])
    table = summary.pivot(index="family", columns="shift", values="test_acc_mean")
    table = table.reindex([f for f in FAMILY_LABELS if f in table.index])
    table.index = table.index.map(FAMILY_NAMES)
    table.columns = [f"{c} px" for c in table.columns]
    lines = []
    for family, group in shift.groupby("family", sort=False):
        per_seed = group.pivot(index="seed", columns="shift", values="test_acc")
        mean, low, high = mean_interval((per_seed[0] - per_seed[max_shift]).to_numpy())
        # A model trained with shifts can gain a little on shifted images: said as a rise, not a negative fall.
        change, size = ("falls", (mean, low, high)) if mean >= 0 else ("rises", (-mean, -high, -low))
        paired = "" if math.isnan(low) else " (paired over seeds)"
        lines.append(f"- {FAMILY_NAMES[family]}: shifted by {max_shift} pixels, accuracy {change} by "
                     f"{points(*size).replace('+', '')}{paired}.")
    return ("Test accuracy % (mean over seeds) with every test image moved by s pixels along both axes "
            f"({SHIFT_FILLS[fill]}; the mean of the four diagonal directions):\n\n"
            + (100 * table).round(2).to_markdown() + "\n\n" + "\n".join(lines))


def families_on_subsets(results: pd.DataFrame, budget: int) -> set[str]:
    """The families with a finished model at `budget` on a subset of the training split."""
    return set(results.loc[(results["comparison"] == "subset") & (results["budget"] == budget)
                           & (results["status"] == "ok"), "family"])


def models_by_train_size(results: pd.DataFrame, budget: int) -> dict[int, pd.DataFrame]:
    """The finished models at `budget` on each training-set size (the full split's and each
    subset's), each size's as budget cells, so that the study's tables for one budget read them."""
    cells = results[(results["budget"] == budget) & (results["status"] == "ok")
                    & results["comparison"].isin(["budget", "subset"])]
    return {int(size): group.assign(comparison="budget") for size, group in cells.groupby("train_size")}


def leads_by_train_size(results: pd.DataFrame, budget: int, ahead: str = "cnn",
                        behind: str = "mlp") -> dict[int, tuple[float, float, float]]:
    """`ahead`'s test accuracy minus `behind`'s at `budget` (the CNN's minus the MLP's unless told),
    with its 95% Welch interval, at each training-set size both trained at (the full split and the
    subsets), where both trained on subsets."""
    if not {ahead, behind} <= families_on_subsets(results, budget):
        return {}
    leads = {}
    for size, models in models_by_train_size(results, budget).items():
        acc = {family: group.to_numpy() for family, group in models.groupby("family")["test_acc"]}
        if {ahead, behind} <= set(acc):
            leads[size] = difference_interval(acc[ahead], acc[behind])
    return leads


def factorials_by_train_size(results: pd.DataFrame, budget: int) -> dict[int, pd.DataFrame]:
    """The 2x2 of locality x sharing at `budget` on each training-set size where all four of its
    families trained (`results.factorial_table`), where they all trained on subsets."""
    if not set(FACTORIAL) <= families_on_subsets(results, budget):
        return {}
    tables = {size: factorial_table(models, budget) for size, models in models_by_train_size(results, budget).items()}
    return {size: table for size, table in tables.items() if not table.empty}


def factorials_table(factorials: dict[int, pd.DataFrame]) -> str:
    """The 2x2's effects at each training-set size, one row each, in points with their intervals."""
    rows = []
    for size, table in factorials.items():
        effects = table.set_index("term")
        rows.append({"training images": f"{size:,}", **{
            term: points(*effects.loc[term, ["estimate", "low", "high"]]).replace(" points, 95% CI", "")
            for term in ("locality", "sharing", "interaction")}})
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def subsets_section(results: pd.DataFrame, subsets: pd.DataFrame, budget: int) -> str:
    if subsets.empty:
        return f"Switched off ({SWITCHED_OFF['subsets']})."
    table = subsets.assign(cell=[interval(*r) for r in subsets[["test_acc_mean", "test_acc_low", "test_acc_high"]].to_numpy()])
    grid = table.pivot(index="family", columns="train_size", values="cell")
    grid = grid.reindex([f for f in FAMILY_LABELS if f in grid.index])
    grid.index = grid.index.map(FAMILY_NAMES)
    grid.columns = [f"{c:,} images" for c in grid.columns]
    epochs = subsets.groupby("train_size")["epochs"].max()
    lines = [f"- {size:,} training images: CNN minus MLP {points(*lead)}."
             for size, lead in leads_by_train_size(results, budget).items()]
    factorials = factorials_by_train_size(results, budget)
    if factorials:
        lines += ["", "The 2x2 on each training-set size (what each prior buys, in accuracy points with 95% "
                  "intervals, as in the 2x2 above):", "", factorials_table(factorials)]
    return (f"Test accuracy % [95% CI] at {budget:,} parameters against training-set size. Subsets are nested "
            "and the same for every family and seed; small subsets train for more epochs ("
            + ", ".join(f"{e} at {n:,}" for n, e in epochs.items()) + ") so that every run takes at least "
            "controls.subsets.min_steps steps.\n\n" + grid.to_markdown() + "\n\n" + "\n".join(lines))


def weights_section(weights: pd.DataFrame, kernel: int) -> str:
    if weights.empty:
        return f"Switched off ({SWITCHED_OFF['weights']})."
    rows = []
    for family in [f for f in FAMILY_LABELS if f in set(weights["family"])]:
        row = {"family": FAMILY_NAMES[family]}
        for metric in ("locality", "sharing"):
            for when in ("trained", "init"):
                values = weights.loc[(weights["family"] == family) & (weights["weights"] == when), metric].to_numpy()
                row[f"{metric} {'trained' if when == 'trained' else 'at init'}"] = (
                    "n/a" if np.isnan(values).all() else interval(*mean_interval(values)).replace(" (one seed)", ""))
        rows.append(row)
    table = pd.DataFrame(rows).to_markdown(index=False)
    return (f"*Emergent locality*: the share of a first-layer unit's weight energy inside its best {kernel}x{kernel} "
            "window, in % (100 for a unit that sees only such a patch; circular windows for GConv). "
            "*Emergent sharing*: matched cosine similarity of the filters at neighbouring positions, "
            "in % (100 for identical filters; the MLP has no positions). Trained against the same "
            "model at initialization, the chance level for its shape; 95% CI over seeds.\n\n" + table)


def cost_section(results: pd.DataFrame) -> str:
    """Training time of each part of the study, measured inside the runs."""
    parts = results.assign(part=[
        {"budget": f"budget sweep, {FAMILY_NAMES[f]}", "skeleton": "same skeleton", "permuted": "permutation control",
         "subset": "sample efficiency"}[c] for c, f in zip(results["comparison"], results["family"])])
    seconds = parts.groupby("part", sort=False)["train_seconds"].agg(["sum", "count"])
    table = pd.DataFrame({"part": seconds.index, "runs": seconds["count"],
                          "training minutes": (seconds["sum"] / 60).map("{:.1f}".format)})
    total = results["train_seconds"].sum() / 60
    return ("Training time per part, summed over its runs (epochs and validation; compilation, data "
            f"loading and the probes come on top). Total: {total:.1f} minutes of training; `make study` "
            "runs one training stage per core at once, so its wall time is shorter.\n\n" + table.to_markdown(index=False))


def devices_line(results: pd.DataFrame) -> str:
    """Where the models trained: another CPU or a GPU rounds float32 differently, and training
    carries that into the accuracies (README, Determinism)."""
    counts = results["trained_on"].astype(object).fillna("not recorded").value_counts()
    if len(counts) == 1:
        return f"{counts.index[0]}, every model"
    return "; ".join(f"{device}, {n} models" for device, n in counts.items()) + \
        ". Compare results only between models trained on one kind of device"


def families_table(setup: dict) -> str:
    k, depth = setup["model"]["kernel_size"], setup["model"]["depth"]
    hidden = "1 hidden layer" if depth == 1 else f"{depth} hidden layers"
    layers = f"{depth} layer{'s' if depth > 1 else ''} of {channel_multiples(depth)} channels"
    rows = [
        ("MLP", "no", "no", "every pixel of the image", f"{hidden} of width h"),
        ("LCN", "yes", "no", f"a {k}x{k} patch at its own position, with weights of its own",
         f"{layers}, one filter per position"),
        ("GConv", "no", "yes", "the whole image, through one image-sized filter shared by every position "
         "(circular convolution)", f"{layers}, one filter per layer"),
        ("CNN", "yes", "yes", f"a {k}x{k} patch, with the same filter at every position",
         f"{layers}, one filter per layer"),
        ("CNN+GAP", "yes", "yes", "as the CNN; the classifier sees the channel means over positions",
         "as the CNN (a control for translation)"),
    ]
    return pd.DataFrame(rows, columns=["family", "local", "shared", "a first-layer unit sees",
                                       "width knob"]).to_markdown(index=False)


def limitations(results: pd.DataFrame, summary: pd.DataFrame, setup: dict) -> str:
    ranges = "; ".join(f"{FAMILY_NAMES[f]} {int(g['params'].min()):,} to {int(g['params'].max()):,}"
                       if g["params"].nunique() > 1 else f"{FAMILY_NAMES[f]} {int(g['params'].iloc[0]):,} only"
                       for f, g in summary.groupby("family", observed=True))
    seeds = len(setup["seeds"])
    return f"""- One dataset, `{setup['dataset']}`: {setup['sizes']['train']:,} training images; conclusions about
  other data (colour, larger images, more classes) need their own run (`data.dataset`).
- Translation is probed at one budget; only the CNN+GAP has a pooling head, and training uses
  {f"shift augmentation of up to {setup['augment_shift']} pixels" if setup['augment_shift'] else "no augmentation"}.
- The controls (2x2, permutation, shifts, subsets, weights) run at one matched budget,
  {setup['params']['controls']['matched_budget']:,} parameters; other budgets may differ.
- Parameters span {ranges}. Outside these ranges the curves are extrapolation.
- {seeds} seed{'s' if seeds != 1 else ''} per cell: the intervals cover initialization and data order only, not
  a resampled dataset, and with few seeds they are wide.
- One training recipe ({setup['epochs']} epoch{'s' if setup['epochs'] != 1 else ''}, AdamW at {setup['learning_rate']}, weight decay
  {setup['weight_decay']}, dropout {setup['dropout']}) for every family and size, not tuned per cell: a
  family or size that would gain from other settings is shown as trained, not at its best.
  `make learning-rate LR=...` retrains the 2x2's families at another learning rate, to see how far
  the findings depend on it, and `python -m whyconv.tuned` puts each cell at its best of such runs,
  chosen on validation accuracy (README: **Each family at its own best rate**).
- Accuracy is that of the last epoch (no early stopping on validation)."""


def inline_images(html: str, folder: Path) -> str:
    """Replace every <img src="relative.png"> by a data URI, so the page needs no other file."""
    def encode(match: re.Match) -> str:
        data = base64.b64encode((folder / match.group(2)).read_bytes()).decode()
        return f'{match.group(1)}data:image/png;base64,{data}"'
    return re.sub(r'(<img[^>]*src=")([^"]+\.png)"', encode, html)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>whyconv report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.5; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }}
th {{ background: #f3f3f3; }}
td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
pre {{ background: #f6f6f6; padding: 0.8rem; overflow-x: auto; font-size: 0.85rem; }}
</style></head>
<body>
{body}
</body></html>
"""


def write_report(tables: dict[str, pd.DataFrame], setup: dict, folder: Path) -> None:
    """reports/report.md, reports/index.html and the figures they show.

    `tables` holds the aggregate and probe tables by name (results, summary, skeleton, curves,
    factorial, permutation, subsets, shift, weights).
    """
    results, summary, skeleton = tables["results"], tables["summary"], tables["skeleton"]
    controls = setup["params"]["controls"]
    shift_fill = setup["shift_fill"]
    budget = controls["matched_budget"]
    figures = folder / "figures"
    band_figure(summary, "params", figures / "accuracy_vs_params.png",
                f"{setup['dataset']}: accuracy at matched parameter budgets", "parameters (log scale)", log_x=True)
    connectivity_figure(figures / "connectivity.png", setup["model"]["kernel_size"])
    common = common_budgets(summary)
    curve_budget = int(max(common) if common else summary["budget"].max())
    curves_figure(tables["curves"], curve_budget, figures / "training_curves.png")
    factorials = factorials_by_train_size(results, budget)
    # A control that is switched off (or a 2x2 missing a family) gets its section's words and no
    # figure; its figure file, a declared output, says why instead. name: (shown, draw, why not).
    control_figures = {
        "factorial": (not tables["factorial"].empty,
                      lambda path: factorial_figure(tables["factorial"], budget, path),
                      "No 2x2 in this run: it needs MLP, LCN, GConv and CNN at the matched budget."),
        "permutation": (not tables["permutation"].empty,
                        lambda path: permutation_figure(results, budget, path),
                        f"Permuted pixels: switched off ({SWITCHED_OFF['permutation']})."),
        "shift": (not tables["shift"].empty and controls["max_shift"] > 0,
                  lambda path: band_figure(by_seed_summary(tables["shift"], ["family", "shift"]), "shift", path,
                                           f"Accuracy under translation at {budget:,} parameters",
                                           f"shift along both axes (pixels; {shift_fill} fill)"),
                  f"Translation: switched off ({SWITCHED_OFF['shift']})."),
        "subsets": (not tables["subsets"].empty,
                    lambda path: band_figure(tables["subsets"], "train_size", path,
                                             f"Sample efficiency at {budget:,} parameters",
                                             "training images (log scale)", log_x=True),
                    f"Sample efficiency: switched off ({SWITCHED_OFF['subsets']})."),
        "priors_by_train_size": (bool(factorials), lambda path: priors_figure(factorials, budget, path),
                                 "No 2x2 on fewer training images in this run: it needs the MLP, LCN, GConv "
                                 "and CNN in controls.subsets.families."),
    }
    for name, (shown, draw, why_not) in control_figures.items():
        if shown:
            draw(figures / f"{name}.png")
        else:
            notice_figure(figures / f"{name}.png", why_not)
    # first_layer.png is the probe stage's.
    shown = {name: entry[0] for name, entry in control_figures.items()} | {"weights": not tables["weights"].empty}
    best = summary.loc[summary.groupby("family", observed=True)["test_acc_mean"].idxmax()]
    best_lines = "\n".join(
        f"- {FAMILY_NAMES[r.family]}: {interval(r.test_acc_mean, r.test_acc_low, r.test_acc_high)} "
        f"at {r.params:,} parameters (budget {r.budget:,})" for r in best.itertuples())
    reach, reach_lines = reach_table(results, summary)
    budgets = "; ".join(f"{FAMILY_NAMES[f]} {', '.join(f'{b:,}' for b in sorted(g['budget']))}"
                        for f, g in summary.groupby("family", observed=True))
    params_yaml = yaml.safe_dump(setup["params"], sort_keys=False).strip()
    augment = (f"each training image shifted at random by up to {setup['augment_shift']} pixels"
               if setup["augment_shift"] else "no augmentation")
    text = f"""# whyconv: why do convolutional networks work?

Generated by `dvc repro` (code version `{setup['version']}`) from the tables in `reports/`; do not edit.

## The question

Convolutional networks are said to work because of two priors: **locality** (a unit looks at a
small patch, not the whole image) and **weight sharing** (the same filter at every position).
This study trains the four combinations of the two at matched parameter counts, a 2x2 factorial,
and asks what each prior buys, then checks why with controls: shuffled pixels, shifted images,
fewer training images, and what the first layer learns.

{families_table(setup)}

![what a first-layer unit sees in each family](figures/connectivity.png)

## Setup

- Dataset: `{setup['dataset']}` ({setup['sizes']['train']:,} train, {setup['sizes']['val']:,} validation, {setup['sizes']['test']:,} test images)
- Training: {setup['epochs']} epoch{'s' if setup['epochs'] != 1 else ''}, batch {setup['batch_size']}, AdamW (peak learning rate {setup['learning_rate']}, weight decay {setup['weight_decay']}), warmup then cosine decay, dropout {setup['dropout']} before the classifier; {augment}
- Budgets (target parameter counts): {budgets}
- Seeds: {', '.join(map(str, setup['seeds']))}. Intervals are 95% Student-t intervals over seeds;
  differences between families use Welch intervals.
- Trained on: {devices_line(results)}

<details><summary>The exact params.yaml</summary>

```yaml
{params_yaml}
```

</details>

## Headline: accuracy against parameters

![test accuracy against parameters](figures/accuracy_vs_params.png)

Best mean test accuracy per family, % [95% CI]:

{best_lines}

### Parameters needed to reach an accuracy

Interpolated between budgets in log(parameters), from the mean over seeds; the ratios use each
seed's own curve. Where a family's smallest model already reaches an accuracy, what it needs is
only bounded ("at most"): a smaller model might reach it too.

{reach}

{chr(10).join(reach_lines)}
{crossings_note(summary)}
## Accuracy at matched budgets

{budget_table(summary)}

{diverged_note(results)}

What each prior buys at equal parameter counts (test accuracy, first family minus second):

{chr(10).join(budget_sentences(results)) or "Not run: no two families share a budget in study.budgets."}

## Same skeleton, with and without sharing

LCN and CNN with identical kernels, strides and channels. The LCN has one filter per output
position, so it has many times the parameters; the accuracy difference is what those buy.

{skeleton_section(skeleton, setup["model"]["depth"])}

## Sharing without locality: the 2x2

The GConv shares one filter across positions like a CNN, but its filter covers the whole image
(a circular convolution), so it has sharing without locality. With it the four families are a
2x2 factorial, compared at one matched budget.

{figure_link("locality x sharing", "factorial.png", shown["factorial"])}{factorial_section(tables["factorial"], budget)}

## Control: permuted pixels

One fixed permutation of pixel positions (seed {controls['permutation']['seed']}), applied to
every training, validation and test image, keeps every pixel but destroys spatial structure. A
prior that works because nearby pixels are related should lose its advantage; the MLP, which
has no notion of position, should not care.

{figure_link("natural against permuted pixels", "permutation.png", shown["permutation"])}{permutation_section(tables["permutation"])}

## Translation

Every model trained at {budget:,} parameters, tested on shifted images. Weight sharing makes
layers shift-*equivariant*; only pooling makes the output shift-*invariant*, hence the CNN with
a global-average-pool head (CNN+GAP).

{figure_link("accuracy against shift", "shift.png", shown["shift"])}{shift_section(tables["shift"], controls["max_shift"], shift_fill)}

## Sample efficiency

{figure_link("accuracy against training-set size", "subsets.png", shown["subsets"])}{subsets_section(results, tables["subsets"], budget)}

{figure_link("what each prior buys against training-set size", "priors_by_train_size.png", shown["priors_by_train_size"])}## What the networks learn

{figure_link("first-layer weights", "first_layer.png", shown["weights"])}{weights_section(tables["weights"], setup["model"]["kernel_size"])}

## Compute, not only parameters

{compute_section(summary, skeleton, setup["model"]["depth"])}

## Training curves

![training curves](figures/training_curves.png)

## Cost of each part

{cost_section(results)}

## Limitations

{limitations(results, summary, setup)}
"""
    write_text(folder / "report.md", text)
    body = markdown.markdown(text, extensions=["tables", "fenced_code", "md_in_html"])
    write_text(folder / "index.html", PAGE.format(body=inline_images(body, folder)))
