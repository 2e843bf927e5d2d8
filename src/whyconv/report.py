"""The study's figure and markdown report, generated from the aggregate tables only."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from whyconv.atomic import atomic_path, write_text  # noqa: E402

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
        ax.fill_between(rows["params"], 100 * rows["test_acc_low"], 100 * rows["test_acc_high"],
                        color=color, alpha=0.2, linewidth=0)
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


def skeleton_sentence(row: pd.Series) -> str:
    """The wording follows the interval: a difference is claimed only when it excludes zero."""
    c = int(row["channels"])
    if math.isnan(row["lcn_minus_cnn_low"]) or row["lcn_minus_cnn_low"] <= 0 <= row["lcn_minus_cnn_high"]:
        verdict = "no detectable difference between LCN and CNN"
    elif row["lcn_minus_cnn"] > 0:
        verdict = "the LCN is more accurate than the CNN"
    else:
        verdict = "the LCN is less accurate than the CNN"
    return (f"- {c}/{2 * c} channels: {verdict} ({100 * row['lcn_minus_cnn']:+.2f} points, 95% CI "
            f"[{100 * row['lcn_minus_cnn_low']:+.2f}, {100 * row['lcn_minus_cnn_high']:+.2f}]), "
            f"with {row['param_ratio']:.0f}x the parameters.")


def diverged_note(results: pd.DataFrame) -> str:
    """Name every diverged run: they are excluded from means and intervals, and the reader is told."""
    diverged = results[results["status"] == "diverged"]
    if diverged.empty:
        return "Every run finished with a finite loss."
    runs = "; ".join(f"{r.family.upper()} {r.comparison} {int(r.budget) if r.comparison == 'budget' else r.width}"
                     f" seed {r.seed} (epoch {int(r.diverged_epoch)})" for r in diverged.itertuples())
    return (f"**{len(diverged)} run(s) diverged** (non-finite training loss) and are excluded from "
            f"every mean and interval: {runs}.")


def write_report(results: pd.DataFrame, summary: pd.DataFrame, skeleton: pd.DataFrame, setup: dict,
                 folder: Path) -> None:
    """reports/report.md and reports/figures/accuracy_vs_params.png."""
    figure = folder / "figures" / "accuracy_vs_params.png"
    accuracy_vs_params_figure(summary, figure, setup["dataset"])
    best = summary.loc[summary.groupby("family", observed=True)["test_acc_mean"].idxmax()]
    best_lines = "\n".join(
        f"- {r.family.upper()}: {percent(r.test_acc_mean)}% at {r.params:,} parameters (budget {r.budget:,})"
        for r in best.itertuples())
    text = f"""# whyconv: why do convolutional networks work?

Generated by `dvc repro` from `reports/summary.csv` and `reports/skeleton.csv`; do not edit.

## Setup

- Dataset: `{setup['dataset']}` ({setup['sizes']['train']:,} train, {setup['sizes']['val']:,} validation, {setup['sizes']['test']:,} test images)
- Training: {setup['epochs']} epochs, batch {setup['batch_size']}, AdamW (peak learning rate {setup['learning_rate']}, weight decay {setup['weight_decay']}), warmup then cosine decay, dropout {setup['dropout']} before the classifier; no augmentation
- Seeds: {', '.join(map(str, setup['seeds']))}. Intervals are 95% Student-t intervals over seeds.
- Families: MLP with two hidden layers of width h; LCN and CNN share one skeleton (two 3x3 stride-2
  layers with c and 2c channels, ReLU, dense classifier) and differ only in weight sharing.

## Accuracy at matched parameter budgets

![test accuracy against parameters](figures/accuracy_vs_params.png)

Best mean test accuracy per family:

{best_lines}

{budget_table(summary)}

{diverged_note(results)}

## Same skeleton, with and without sharing

LCN and CNN with identical kernels, strides and channels. The LCN has one filter per output
position, so it has many times the parameters; the accuracy difference is what those buy.

{skeleton_markdown(skeleton)}

{chr(10).join(skeleton_sentence(r) for _, r in skeleton.iterrows())}
"""
    write_text(folder / "report.md", text)
