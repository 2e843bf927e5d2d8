"""The report a reader opens: reports/report.md and a self-contained reports/index.html.

Everything in it is generated from the aggregate tables; every comparison sentence carries an
effect size with its 95% interval, and its wording is chosen by that interval (a difference is
claimed only when the interval excludes zero).
"""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import markdown  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import yaml  # noqa: E402

from whyconv.atomic import atomic_path, write_text  # noqa: E402
from whyconv.results import difference_interval, params_ratio, params_to_reach  # noqa: E402

FAMILY_LABELS = {"mlp": "MLP (fully connected)", "lcn": "LCN (local, not shared)",
                 "cnn": "CNN (local, shared)"}
# One colour per family in every figure, from a colour-blind-safe palette.
FAMILY_COLORS = dict(zip(FAMILY_LABELS, sns.color_palette("colorblind", 3)))


def accuracy_vs_params_figure(summary: pd.DataFrame, path: Path, dataset: str) -> None:
    """Mean test accuracy against parameter count (log x), one line per family, 95% bands."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for family, label in FAMILY_LABELS.items():
        rows = summary[summary["family"] == family].sort_values("params")
        if rows.empty:
            continue
        color = FAMILY_COLORS[family]
        ax.plot(rows["params"], 100 * rows["test_acc_mean"], marker="o", color=color, label=label)
        # Accuracy cannot leave [0, 100]; a t interval over few seeds can.
        ax.fill_between(rows["params"], (100 * rows["test_acc_low"]).clip(0, 100),
                        (100 * rows["test_acc_high"]).clip(0, 100), color=color, alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset}: accuracy at matched parameter budgets\n(mean over seeds, band: 95% interval)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)


def percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def interval(mean: float, low: float, high: float) -> str:
    if math.isnan(low):
        return f"{percent(mean)} (one seed)"
    return f"{percent(mean)} [{percent(low)}, {percent(high)}]"


def budget_table(summary: pd.DataFrame) -> str:
    table = pd.DataFrame({
        "family": summary["family"].str.upper(),
        "budget": summary["budget"].map("{:,}".format),
        "width": summary["width"],
        "parameters": summary["params"].map("{:,}".format),
        "test accuracy % [95% CI]": [interval(*r) for r in summary[["test_acc_mean", "test_acc_low", "test_acc_high"]].to_numpy()],
        "val accuracy %": summary["val_acc_mean"].map(percent),
        "seeds": summary["seeds"],
        "diverged": summary["diverged"],
    })
    return table.to_markdown(index=False)


def skeleton_markdown(skeleton: pd.DataFrame) -> str:
    table = pd.DataFrame({
        "channels": skeleton["channels"].map(lambda c: f"{c}/{2 * c}"),
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
    """Words for `a` minus `b`: a direction only when the interval excludes zero."""
    if math.isnan(low) or low <= 0 <= high:
        return f"there is no detectable difference between the {a} and the {b}"
    less = "less" + more.removeprefix("more")
    return f"the {a} is {more if diff > 0 else less} than the {b}"


def points(diff: float, low: float, high: float) -> str:
    if math.isnan(low):
        return f"{100 * diff:+.2f} points, interval unknown with one seed"
    return f"{100 * diff:+.2f} points, 95% CI [{100 * low:+.2f}, {100 * high:+.2f}]"


def skeleton_sentence(row: pd.Series) -> str:
    c = int(row["channels"])
    diff, low, high = row["lcn_minus_cnn"], row["lcn_minus_cnn_low"], row["lcn_minus_cnn_high"]
    return (f"- {c}/{2 * c} channels: {verdict(diff, low, high, 'LCN', 'CNN')} "
            f"({points(diff, low, high)}), with {row['param_ratio']:.0f}x the parameters.")


def diverged_note(results: pd.DataFrame) -> str:
    """Name every diverged run: they are excluded from means and intervals, and the reader is told."""
    diverged = results[results["status"] == "diverged"]
    if diverged.empty:
        return "Every run finished with a finite loss."
    runs = "; ".join(f"{r.family.upper()} {r.comparison} {int(r.budget) if r.comparison == 'budget' else r.width}"
                     f" seed {r.seed} (epoch {int(r.diverged_epoch)})" for r in diverged.itertuples())
    return (f"**{len(diverged)} run(s) diverged** (non-finite training loss) and are excluded from "
            f"every mean and interval: {runs}.")


# What each pair of families isolates, in the study's terms.
PRIOR_PAIRS = [("lcn", "mlp", "locality without sharing"), ("cnn", "lcn", "sharing on top of locality"),
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
                             f"{verdict(diff, low, high, a.upper(), b.upper())} ({points(diff, low, high)}).")
    return lines


def reach_levels(summary: pd.DataFrame) -> list[float]:
    """The whole percentages just below each family's best mean accuracy: every family reaches its own."""
    best = summary.groupby("family", observed=True)["test_acc_mean"].max()
    return sorted({math.floor(100 * acc) / 100 for acc in best if not math.isnan(acc)})


def reach_table(results: pd.DataFrame, summary: pd.DataFrame) -> tuple[str, list[str]]:
    """Parameters each family needs to reach given accuracies, and how many times the fewest."""
    families = [f for f in FAMILY_LABELS if f in set(summary["family"])]
    rows, sentences = [], []
    for level in reach_levels(summary):
        needs = {}
        for family in families:
            rows_f = summary[summary["family"] == family]
            needs[family] = params_to_reach(rows_f["params"].to_numpy(), rows_f["test_acc_mean"].to_numpy(), level)
        reached = {f: n for f, n in needs.items() if not math.isnan(n)}
        thriftiest = min(reached, key=reached.get)
        rows.append({"test accuracy": f"{100 * level:.0f}%",
                     **{f"{f.upper()} parameters": "not reached" if math.isnan(n) else f"{n:,.0f}"
                        for f, n in needs.items()}})
        for family in reached:
            if family == thriftiest:
                continue
            r = params_ratio(results, family, thriftiest, level)
            versus = f"{reached[family]:,.0f} vs {reached[thriftiest]:,.0f}"
            if math.isnan(r["low"]):  # some seed never reaches the level: the mean curves only
                sentences.append(
                    f"- To reach {100 * level:.0f}% test accuracy, the {family.upper()} needs about "
                    f"{reached[family] / reached[thriftiest]:.1f}x the parameters of the {thriftiest.upper()} "
                    f"({versus}, from the mean curves; not every seed reaches {100 * level:.0f}% within "
                    f"the budgets, so there is no interval).")
            elif r["low"] <= 1 <= r["high"]:
                sentences.append(
                    f"- To reach {100 * level:.0f}% test accuracy, there is no detectable difference between "
                    f"the parameters the {family.upper()} and the {thriftiest.upper()} need ({versus}; "
                    f"ratio {r['ratio']:.1f}x, 95% CI over seeds [{r['low']:.1f}x, {r['high']:.1f}x]).")
            else:
                sentences.append(
                    f"- To reach {100 * level:.0f}% test accuracy, the {family.upper()} needs {r['ratio']:.1f}x "
                    f"the parameters of the {thriftiest.upper()} ({versus}; 95% CI over seeds "
                    f"[{r['low']:.1f}x, {r['high']:.1f}x]).")
    return pd.DataFrame(rows).to_markdown(index=False), sentences


def curves_figure(curves: pd.DataFrame, budget: int, path: Path) -> None:
    """Train (dashed) and validation (solid) loss and accuracy per epoch, one colour per family."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    chosen = curves[(curves["comparison"] == "budget") & (curves["size"] == budget)]
    for ax, metric, ylabel in ((axes[0], "loss", "cross-entropy loss"), (axes[1], "acc", "accuracy (%)")):
        scale = 100 if metric == "acc" else 1
        for family, label in FAMILY_LABELS.items():
            rows = chosen[chosen["family"] == family]
            if rows.empty:
                continue
            mean = rows.groupby("epoch")[[f"train_{metric}", f"val_{metric}"]].mean() * scale
            ax.plot(mean.index, mean[f"train_{metric}"], "--", color=FAMILY_COLORS[family])
            ax.plot(mean.index, mean[f"val_{metric}"], "-", marker="o", markersize=3,
                    color=FAMILY_COLORS[family], label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
    axes[1].legend(loc="lower right", title="solid: validation, dashed: train", title_fontsize=9)
    fig.suptitle(f"Training curves at a budget of {budget:,} parameters (mean over seeds)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def common_budgets(summary: pd.DataFrame) -> set[int]:
    """The budgets at which every family in the summary was trained."""
    return set.intersection(*(set(g["budget"]) for _, g in summary.groupby("family", observed=True)))


def compute_section(summary: pd.DataFrame, skeleton: pd.DataFrame) -> str:
    """Parameters against arithmetic and measured speed: sharing saves the one, not the other."""
    if "forward_flops" not in summary:
        return "Not measured in this run."
    table = pd.DataFrame({
        "family": summary["family"].str.upper(),
        "parameters": summary["params"].map("{:,}".format),
        "forward MFLOPs per image": (summary["forward_flops"] / 1e6).map("{:.3f}".format),
        "training images/s": summary["images_per_second"].map("{:,.0f}".format),
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
        lines.append(f"- With {row.channels}/{2 * row.channels} channels, LCN and CNN do the same arithmetic; "
                     f"the LCN stores {row.param_ratio:.0f}x the parameters.")
    return "Forward FLOPs are analytic (multiply-adds x 2); images/s were measured while training.\n\n" + \
        table + "\n\n" + "\n".join(lines)


def connectivity_figure(path: Path, kernel: int = 3, size: int = 8) -> None:
    """What two first-layer units see, per family: which pixels, with which weights.

    An illustration on an 8x8 image (weights drawn at random, colour = weight): the MLP's units
    see every pixel with weights of their own; the LCN's see a k x k patch with weights of their
    own; the CNN's see a k x k patch with the same weights. Blank pixels are not connected.
    """
    rng = np.random.default_rng(0)
    units = [(1, 1), (4, 5)]  # top-left corner of each unit's patch
    shared = rng.normal(size=(kernel, kernel))
    panels = {}
    for family in FAMILY_LABELS:
        maps = []
        for row, col in units:
            weights = np.full((size, size), np.nan)
            if family == "mlp":
                weights = rng.normal(size=(size, size))
            else:
                patch = shared if family == "cnn" else rng.normal(size=(kernel, kernel))
                weights[row:row + kernel, col:col + kernel] = patch
            maps.append(weights)
        panels[family] = maps
    sns.set_theme(style="white", context="notebook")
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.2))
    for column, (family, label) in enumerate(FAMILY_LABELS.items()):
        for row, weights in enumerate(panels[family]):
            ax = axes[row, column]
            ax.imshow(weights, cmap="coolwarm", vmin=-2, vmax=2)
            ax.set_xticks(np.arange(-0.5, size, 1), minor=True)
            ax.set_yticks(np.arange(-0.5, size, 1), minor=True)
            ax.grid(which="minor", color="#bbbbbb", linewidth=0.5)
            ax.tick_params(which="both", bottom=False, left=False, labelbottom=False, labelleft=False)
            for spine in ax.spines.values():
                spine.set_edgecolor(FAMILY_COLORS[family])
                spine.set_linewidth(2)
            if row == 0:
                ax.set_title(label, color=FAMILY_COLORS[family], fontsize=11)
            if column == 0:
                ax.set_ylabel(f"unit {row + 1}")
    fig.suptitle("What two first-layer units see (colour: weight; blank: not connected)", fontsize=12)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def families_table(setup: dict) -> str:
    k, depth = setup["model"]["kernel_size"], setup["model"]["depth"]
    rows = [
        ("MLP", "no", "no", "every pixel of the image", f"{depth} hidden layers of width h"),
        ("LCN", "yes", "no", f"a {k}x{k} patch at its own position, with weights of its own",
         f"{depth} layers of c, 2c, ... channels, one filter per position"),
        ("CNN", "yes", "yes", f"a {k}x{k} patch, with the same filter at every position",
         f"{depth} layers of c, 2c, ... channels, one filter per layer"),
    ]
    return pd.DataFrame(rows, columns=["family", "local", "shared", "a first-layer unit sees",
                                       "width knob"]).to_markdown(index=False)


def limitations(results: pd.DataFrame, summary: pd.DataFrame, setup: dict) -> str:
    ranges = "; ".join(f"{f.upper()} {int(g['params'].min()):,} to {int(g['params'].max()):,}"
                       for f, g in summary.groupby("family", observed=True))
    seeds = len(setup["seeds"])
    return f"""- One dataset, `{setup['dataset']}`: {setup['sizes']['train']:,} training images; conclusions about
  other data (colour, larger images, more classes) need their own run (`data.dataset`).
- No data augmentation and no pooling: nothing here is built to be shift invariant.
- Parameters span {ranges}. Outside these ranges the curves are extrapolation.
- {seeds} seed{'s' if seeds != 1 else ''} per cell: the intervals cover initialization and data order only, not
  a resampled dataset, and with few seeds they are wide.
- One training recipe ({setup['epochs']} epochs, AdamW at {setup['learning_rate']}, weight decay
  {setup['weight_decay']}, dropout {setup['dropout']}) for every family and size, not tuned per cell: a
  family or size that would gain from other settings is shown as trained, not at its best.
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


def write_report(results: pd.DataFrame, summary: pd.DataFrame, skeleton: pd.DataFrame,
                 curves: pd.DataFrame, setup: dict, folder: Path) -> None:
    """reports/report.md, reports/index.html and the figures they show."""
    accuracy_vs_params_figure(summary, folder / "figures" / "accuracy_vs_params.png", setup["dataset"])
    connectivity_figure(folder / "figures" / "connectivity.png", setup["model"]["kernel_size"])
    common = common_budgets(summary)
    curve_budget = int(max(common) if common else summary["budget"].max())
    curves_figure(curves, curve_budget, folder / "figures" / "training_curves.png")
    best = summary.loc[summary.groupby("family", observed=True)["test_acc_mean"].idxmax()]
    best_lines = "\n".join(
        f"- {r.family.upper()}: {percent(r.test_acc_mean)}% "
        f"[{percent(r.test_acc_low)}, {percent(r.test_acc_high)}] at {r.params:,} parameters "
        f"(budget {r.budget:,})" for r in best.itertuples())
    reach, reach_lines = reach_table(results, summary)
    budgets = "; ".join(f"{f.upper()} {', '.join(f'{b:,}' for b in sorted(g['budget']))}"
                        for f, g in summary.groupby("family", observed=True))
    params_yaml = yaml.safe_dump(setup["params"], sort_keys=False).strip()
    text = f"""# whyconv: why do convolutional networks work?

Generated by `dvc repro` (code version `{setup['version']}`) from the tables in `reports/`; do not edit.

## The question

Convolutional networks are said to work because of two priors: **locality** (a unit looks at a
small patch, not the whole image) and **weight sharing** (the same filter at every position).
This study trains three families at matched parameter counts and asks what each prior buys.

{families_table(setup)}

![what a first-layer unit sees in each family](figures/connectivity.png)

## Setup

- Dataset: `{setup['dataset']}` ({setup['sizes']['train']:,} train, {setup['sizes']['val']:,} validation, {setup['sizes']['test']:,} test images)
- Training: {setup['epochs']} epochs, batch {setup['batch_size']}, AdamW (peak learning rate {setup['learning_rate']}, weight decay {setup['weight_decay']}), warmup then cosine decay, dropout {setup['dropout']} before the classifier; no augmentation
- Budgets (target parameter counts): {budgets}
- Seeds: {', '.join(map(str, setup['seeds']))}. Intervals are 95% Student-t intervals over seeds;
  differences between families use Welch intervals.

<details><summary>The exact params.yaml</summary>

```yaml
{params_yaml}
```

</details>

## Headline: accuracy against parameters

![test accuracy against parameters](figures/accuracy_vs_params.png)

Best mean test accuracy per family [95% CI]:

{best_lines}

### Parameters needed to reach an accuracy

Interpolated between budgets in log(parameters), from the mean over seeds; the ratios use each
seed's own curve.

{reach}

{chr(10).join(reach_lines)}

## Accuracy at matched budgets

{budget_table(summary)}

{diverged_note(results)}

What each prior buys at equal parameter counts (test accuracy, first family minus second):

{chr(10).join(budget_sentences(results))}

## Same skeleton, with and without sharing

LCN and CNN with identical kernels, strides and channels. The LCN has one filter per output
position, so it has many times the parameters; the accuracy difference is what those buy.

{skeleton_markdown(skeleton)}

{chr(10).join(skeleton_sentence(r) for _, r in skeleton.iterrows())}

## Compute, not only parameters

{compute_section(summary, skeleton)}

## Training curves

![training curves](figures/training_curves.png)

## Limitations

{limitations(results, summary, setup)}
"""
    write_text(folder / "report.md", text)
    body = markdown.markdown(text, extensions=["tables", "fenced_code", "md_in_html"])
    write_text(folder / "index.html", PAGE.format(body=inline_images(body, folder)))
