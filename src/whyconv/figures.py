"""The study's figures: one colour and one name per family in all of them, each PNG written atomically.

Each function draws from tables or arrays it is given, and none reads a model: the report stage
draws every figure but one from the aggregate tables, and the probe stage draws the first-layer
weights from the kernels it has taken out of the trained models.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from whyconv.atomic import atomic_path  # noqa: E402

FAMILY_LABELS = {"mlp": "MLP (neither prior)", "lcn": "LCN (local, not shared)",
                 "gconv": "GConv (shared, not local)", "cnn": "CNN (local, shared)",
                 "cnn_gap": "CNN + global average pool"}
FAMILY_NAMES = {"mlp": "MLP", "lcn": "LCN", "gconv": "GConv", "cnn": "CNN", "cnn_gap": "CNN+GAP"}
# One colour per family in every figure, from a colour-blind-safe palette.
FAMILY_COLORS = dict(zip(FAMILY_LABELS, sns.color_palette("colorblind", len(FAMILY_LABELS))))


def save_figure(fig: plt.Figure, path: Path, dpi: int = 130) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


def notice_figure(path: Path, text: str) -> None:
    """A figure that only says why there is nothing to plot: the file is a declared output, and an
    earlier run's figure left in its place would look current."""
    fig, ax = plt.subplots(figsize=(7, 1.5))
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, wrap=True)
    save_figure(fig, path)


def band_figure(summary: pd.DataFrame, x: str, path: Path, title: str, xlabel: str, log_x: bool = False) -> None:
    """Mean test accuracy against `x`, one line per family, with its 95% band over seeds."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for family, label in FAMILY_LABELS.items():
        rows = summary[summary["family"] == family].sort_values(x)
        if rows.empty:
            continue
        color = FAMILY_COLORS[family]
        ax.plot(rows[x], 100 * rows["test_acc_mean"], marker="o", color=color, label=label)
        # Accuracy cannot leave [0, 100]; a t interval over few seeds can.
        ax.fill_between(rows[x], (100 * rows["test_acc_low"]).clip(0, 100),
                        (100 * rows["test_acc_high"]).clip(0, 100), color=color, alpha=0.2, linewidth=0)
    if log_x:
        ax.set_xscale("log")
    else:  # the linear axis is the shift, in whole pixels: no ticks between them
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title}\n(mean over seeds, band: 95% interval)")
    ax.legend(loc="best", fontsize=9)
    save_figure(fig, path)


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
    save_figure(fig, path, dpi=110)


def connectivity_figure(path: Path, kernel: int = 3) -> None:
    """What two first-layer units see, per family: which pixels, with which weights.

    An illustration on a small image, 8x8 for a 3x3 kernel and larger for a larger one (weights
    drawn at random, colour = weight): the MLP's units
    see every pixel with weights of their own; the LCN's see a k x k patch with weights of their
    own; the GConv's see every pixel through one shared filter, moved with the unit; the CNN's
    see a k x k patch with the same weights. Blank pixels are not connected.
    """
    rng = np.random.default_rng(0)
    size = max(8, kernel + 5)
    units = [(1, 1), (size - kernel - 1, size - kernel)]  # top-left corner of each unit's patch, both inside
    shared = rng.normal(size=(kernel, kernel))
    shared_global = rng.normal(size=(size, size))
    families = ["mlp", "lcn", "gconv", "cnn"]
    panels = {}
    for family in families:
        maps = []
        for row, col in units:
            weights = np.full((size, size), np.nan)
            if family == "mlp":
                weights = rng.normal(size=(size, size))
            elif family == "gconv":  # the same image-sized filter, moved (circularly) with the unit
                weights = np.roll(shared_global, (row, col), axis=(0, 1))
            else:
                patch = shared if family == "cnn" else rng.normal(size=(kernel, kernel))
                weights[row:row + kernel, col:col + kernel] = patch
            maps.append(weights)
        panels[family] = maps
    sns.set_theme(style="white", context="notebook")
    fig, axes = plt.subplots(2, len(families), figsize=(12, 6.2))
    for column, family in enumerate(families):
        label = FAMILY_LABELS[family]
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
    save_figure(fig, path, dpi=100)


def factorial_figure(factorial: pd.DataFrame, budget: int, path: Path) -> None:
    """The 2x2 as an interaction plot: accuracy without and with locality, one line per sharing level.

    Parallel lines would mean no interaction; the vertical bars are the cells' 95% intervals.
    """
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(6, 4))
    if not factorial.empty:
        at = factorial.set_index("term")
        for shared, (without, with_) in ((False, ("mlp", "lcn")), (True, ("gconv", "cnn"))):
            rows = at.loc[[without, with_]]
            color = FAMILY_COLORS["cnn" if shared else "mlp"]
            ax.errorbar([0, 1], 100 * rows["estimate"], capsize=4, marker="o", color=color,
                        yerr=[100 * (rows["estimate"] - rows["low"]), 100 * (rows["high"] - rows["estimate"])],
                        label="shared" if shared else "not shared")
            for x, family in enumerate((without, with_)):
                ax.annotate(FAMILY_NAMES[family], (x, 100 * rows.loc[family, "estimate"]), xytext=(8, -4),
                            textcoords="offset points", color=color)
        ax.legend(loc="upper left", fontsize=9)
    ax.set_xticks([0, 1], ["global", "local"])
    ax.set_xlim(-0.3, 1.5)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Locality x sharing at {budget:,} parameters\n(bars: 95% interval over seeds)")
    save_figure(fig, path)


def priors_figure(factorials: dict[int, pd.DataFrame], budget: int, path: Path) -> None:
    """What each prior buys against training-set size: the 2x2's effects on each size, with their
    95% intervals (the x positions nudged apart so that the bars do not hide each other)."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = np.array(sorted(factorials))
    terms = {"locality": (FAMILY_COLORS["lcn"], 0.93), "sharing": (FAMILY_COLORS["gconv"], 1.0),
             "interaction": ("0.35", 1.07)}
    for term, (color, nudge) in terms.items():
        effect = np.array([factorials[size].set_index("term").loc[term, ["estimate", "low", "high"]].to_numpy(float)
                           for size in sizes])
        ax.errorbar(sizes * nudge, 100 * effect[:, 0], capsize=4, marker="o", color=color, label=term,
                    yerr=[100 * (effect[:, 0] - effect[:, 1]), 100 * (effect[:, 2] - effect[:, 0])])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{size:,}" for size in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("effect on test accuracy (points)")
    ax.set_title(f"What each prior buys at {budget:,} parameters, by training-set size\n(bars: 95% interval over seeds)")
    ax.legend(loc="upper left", fontsize=9)
    save_figure(fig, path)


def permutation_figure(results: pd.DataFrame, budget: int, path: Path) -> None:
    """Test accuracy on natural and permuted pixels per family: mean bars and every seed as a dot."""
    runs = results[(results["budget"] == budget) & (results["status"] == "ok")
                   & results["comparison"].isin(["budget", "permuted"])]
    runs = runs[runs["family"].isin(set(results.loc[results["comparison"] == "permuted", "family"]))]
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(7, 4))
    families = [f for f in FAMILY_LABELS if f in set(runs["family"])]
    for offset, (comparison, hatch, label) in zip((-0.2, 0.2), (("budget", "", "natural pixels"),
                                                                ("permuted", "//", "permuted pixels"))):
        for i, family in enumerate(families):
            acc = 100 * runs.loc[(runs["family"] == family) & (runs["comparison"] == comparison), "test_acc"]
            ax.bar(i + offset, acc.mean(), width=0.38, color=FAMILY_COLORS[family], hatch=hatch,
                   edgecolor="white", label=label if i == 0 else None, alpha=0.9 if hatch == "" else 0.55)
            ax.scatter(np.full(len(acc), i + offset), acc, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(families)), [FAMILY_NAMES[f] for f in families])
    if len(runs):  # the bars start above zero: the dots show every seed
        ax.set_ylim(max(0, 100 * runs["test_acc"].min() - 3), min(100, 100 * runs["test_acc"].max() + 1))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Natural against permuted pixels at {budget:,} parameters (dots: seeds)")
    ax.legend(loc="lower right", fontsize=9)
    save_figure(fig, path)


def first_layer_figure(kernels: dict[str, np.ndarray], path: Path, units: int = 8) -> None:
    """First-layer weights of one trained model per family: full-image units, or k x k filters.

    `kernels` holds each family's first-layer kernel as `probes.first_layer_kernel` returns it.
    """
    sns.set_theme(style="white", context="notebook")
    families = [f for f in FAMILY_LABELS if f in kernels]
    fig, axes = plt.subplots(max(len(families), 1), units, figsize=(1.3 * units, 1.5 * max(len(families), 1)),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for row, family in enumerate(families):
        kernel = kernels[family]
        if family == "lcn":  # (h, w, k, k, in, out): each channel at three positions
            h, w = kernel.shape[:2]
            positions = [(h // 4, w // 4), (h // 2, w // 2), (3 * h // 4, 3 * w // 4)]
            panels = [kernel[y, x, :, :, 0, c] for c in range(kernel.shape[-1]) for y, x in positions]
        else:  # (size, size, in, units): first input channel; GConv's origin moved to the centre
            panels = [kernel[:, :, 0, i] for i in range(kernel.shape[-1])]
            if family == "gconv":
                panels = [np.fft.fftshift(panel) for panel in panels]
        for column, panel in enumerate(panels[:units]):
            ax = axes[row, column]
            limit = np.abs(panel).max() or 1.0
            ax.imshow(panel, cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(FAMILY_COLORS[family])
        axes[row, 0].set_ylabel(FAMILY_NAMES[family], color=FAMILY_COLORS[family], fontsize=11)
    fig.suptitle("First-layer weights (seed 0; red positive, blue negative). LCN: one filter at three "
                 "positions per channel; GConv: origin at the centre", fontsize=10)
    save_figure(fig, path, dpi=100)
