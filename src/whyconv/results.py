"""From per-cell records to the study's tables: every seed, then mean and 95% interval."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

RESULT_COLUMNS = [
    "dataset", "comparison", "family", "budget", "width", "params", "train_size", "seed", "status", "epochs",
    "val_acc", "test_acc", "val_loss", "test_loss", "train_seconds", "images_per_second",
    "diverged_epoch", "trained_on",
]
CHANCE_LOSS_TOLERANCE = 0.01  # a validation loss this close to ln(classes) is a uniform guess's
FAMILY_ORDER = ["mlp", "lcn", "gconv", "cnn", "cnn_gap"]
# The 2 x 2 factorial: (local, shared) of each core family.
FACTORIAL = {"mlp": (False, False), "lcn": (True, False), "gconv": (False, True), "cnn": (True, True)}


def results_table(records: list[dict]) -> pd.DataFrame:
    """One row per dataset x comparison x family x budget (or channels) x seed."""
    frame = pd.DataFrame.from_records(records, columns=RESULT_COLUMNS)
    frame["family"] = pd.Categorical(frame["family"], FAMILY_ORDER, ordered=True)
    return frame.sort_values(["comparison", "family", "params", "seed"]).reset_index(drop=True)


def mean_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval over seeds; with one seed the interval is unknown (nan)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean()) if len(values) else math.nan
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def summarize(results: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean test / val accuracy with 95% intervals per group; diverged seeds are counted, not averaged."""
    rows = []
    for key, group in results.groupby(by, observed=True, sort=True):
        ok = group[group["status"] == "ok"]
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row.update(width=int(group["width"].iloc[0]), params=int(group["params"].iloc[0]),
                   seeds=len(ok), diverged=int((group["status"] == "diverged").sum()))
        for metric in ("test_acc", "val_acc"):
            mean, low, high = mean_interval(ok[metric].to_numpy())
            row.update({f"{metric}_mean": mean, f"{metric}_low": low, f"{metric}_high": high})
        row["train_seconds"] = float(group["train_seconds"].sum())
        if "forward_flops" in group:
            row["forward_flops"] = int(group["forward_flops"].iloc[0])
            row["images_per_second"] = float(ok["images_per_second"].mean()) if len(ok) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


SKELETON_COLUMNS = ["channels", "lcn_params", "cnn_params", "param_ratio", "lcn_test_acc", "cnn_test_acc",
                    "lcn_minus_cnn", "lcn_minus_cnn_low", "lcn_minus_cnn_high", "seeds"]


def skeleton_table(results: pd.DataFrame) -> pd.DataFrame:
    """Same skeleton, with and without sharing: LCN minus CNN accuracy per channel count.

    Every channel count at which both an LCN and a CNN were trained counts, whether the cells
    came from a budget or from `study.skeleton_channels` (a run trained twice counts once).
    """
    spatial = results[results["family"].isin(["lcn", "cnn"]) & (results["status"] == "ok")]
    spatial = spatial.drop_duplicates(["family", "width", "seed"])
    rows = []
    for width, group in spatial.groupby("width"):
        lcn, cnn = (group[group["family"] == f] for f in ("lcn", "cnn"))
        if lcn.empty or cnn.empty:
            continue
        diff, low, high = difference_interval(lcn["test_acc"].to_numpy(), cnn["test_acc"].to_numpy())
        rows.append({
            "channels": int(width), "lcn_params": int(lcn["params"].iloc[0]),
            "cnn_params": int(cnn["params"].iloc[0]),
            "param_ratio": lcn["params"].iloc[0] / cnn["params"].iloc[0],
            "lcn_test_acc": lcn["test_acc"].mean(), "cnn_test_acc": cnn["test_acc"].mean(),
            "lcn_minus_cnn": diff, "lcn_minus_cnn_low": low, "lcn_minus_cnn_high": high,
            "seeds": min(len(lcn), len(cnn)),
        })
    # The columns even when no width has both families, so that the table reads back from its CSV.
    return pd.DataFrame(rows, columns=SKELETON_COLUMNS)


def contrast_interval(groups: list[np.ndarray], weights: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """sum_i weights[i] * mean(groups[i]) with a Welch-Satterthwaite t interval (groups are independent seeds).

    nan interval when a group has fewer than 2 seeds.
    """
    groups = [np.asarray(g, float) for g in groups]
    if any(len(g) == 0 for g in groups):
        return math.nan, math.nan, math.nan
    estimate = float(sum(w * g.mean() for w, g in zip(weights, groups)))
    if any(len(g) < 2 for g in groups):
        return estimate, math.nan, math.nan
    parts = [w**2 * g.var(ddof=1) / len(g) for w, g in zip(weights, groups)]
    se = math.sqrt(sum(parts))
    if se == 0:
        return estimate, estimate, estimate
    dof = sum(parts) ** 2 / sum(p**2 / (len(g) - 1) for p, g in zip(parts, groups))
    half = stats.t.ppf(0.5 + level / 2, dof) * se
    return estimate, estimate - half, estimate + half


def difference_interval(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of a minus mean of b with a Welch t interval (nan when either has fewer than 2 seeds)."""
    return contrast_interval([a, b], [1.0, -1.0], level)


def accuracies(results: pd.DataFrame, comparison: str, family: str, budget: int) -> np.ndarray:
    """Test accuracy of every finished seed of one cell."""
    rows = results[(results["comparison"] == comparison) & (results["family"] == family)
                   & (results["budget"] == budget) & (results["status"] == "ok")]
    return rows["test_acc"].to_numpy()


def factorial_table(results: pd.DataFrame, budget: int) -> pd.DataFrame:
    """Locality x sharing at one budget: the four cell means, both main effects and their interaction.

    Main effect of a prior: mean accuracy of the two cells with it minus the two without.
    Interaction: what locality adds with sharing (CNN - GConv) minus what it adds without
    (LCN - MLP). Empty when a cell is missing.
    """
    groups = {family: accuracies(results, "budget", family, budget) for family in FACTORIAL}
    if any(len(g) == 0 for g in groups.values()):
        return pd.DataFrame(columns=["term", "kind", "estimate", "low", "high"])
    rows = [{"term": family, "kind": "cell", **dict(zip(("estimate", "low", "high"), mean_interval(g)))}
            for family, g in groups.items()]
    families = list(FACTORIAL)
    signs = {
        "locality": [0.5 if FACTORIAL[f][0] else -0.5 for f in families],
        "sharing": [0.5 if FACTORIAL[f][1] else -0.5 for f in families],
        "interaction": [1.0 if FACTORIAL[f][0] == FACTORIAL[f][1] else -1.0 for f in families],
    }
    for term, weights in signs.items():
        estimate, low, high = contrast_interval([groups[f] for f in families], weights)
        rows.append({"term": term, "kind": "effect", "estimate": estimate, "low": low, "high": high})
    return pd.DataFrame(rows)


def permutation_table(results: pd.DataFrame, budget: int) -> pd.DataFrame:
    """Per family: test accuracy on natural and on permuted pixels at one budget, and the drop."""
    rows = []
    for family in results.loc[results["comparison"] == "permuted", "family"].unique():
        natural, permuted = (accuracies(results, c, family, budget) for c in ("budget", "permuted"))
        drop, low, high = difference_interval(natural, permuted)
        rows.append({"family": family, "budget": budget, "natural_acc": natural.mean(),
                     "permuted_acc": permuted.mean(), "drop": drop, "drop_low": low, "drop_high": high,
                     "seeds": min(len(natural), len(permuted))})
    return pd.DataFrame(rows, columns=["family", "budget", "natural_acc", "permuted_acc", "drop", "drop_low",
                                       "drop_high", "seeds"])


def subsets_table(results: pd.DataFrame, budget: int) -> pd.DataFrame:
    """Per family trained on subsets: test accuracy against training-set size (the full set from the main run)."""
    subset_families = results.loc[results["comparison"] == "subset", "family"].unique()
    runs = results[results["family"].isin(subset_families) & (results["budget"] == budget)
                   & results["comparison"].isin(["subset", "budget"])]
    if runs.empty:
        return pd.DataFrame(columns=["family", "train_size", "epochs", "test_acc_mean", "test_acc_low",
                                     "test_acc_high", "seeds"])
    summary = summarize(runs, ["family", "train_size"])
    epochs = runs.groupby(["family", "train_size"], observed=True)["epochs"].max().rename("epochs")
    summary = summary.join(epochs, on=["family", "train_size"])
    return summary[["family", "train_size", "epochs", "params", "test_acc_mean", "test_acc_low", "test_acc_high",
                    "seeds", "diverged"]]


def headline_metrics(summary: pd.DataFrame) -> dict:
    """Per family: best mean test accuracy, and at how many parameters (for `dvc metrics show`)."""
    metrics = {}
    for family, group in summary.groupby("family", observed=True):
        best = group.loc[group["test_acc_mean"].idxmax()]
        metrics[str(family)] = {"best_test_acc": round(float(best["test_acc_mean"]), 4),
                                "at_params": int(best["params"])}
    return metrics


def at_chance_as_diverged(record: dict, curve: pd.DataFrame, num_classes: int) -> dict:
    """A run that ended giving every image the same answer, marked diverged like a non-finite loss.

    A learning rate too high for a model can kill it without a non-finite loss: after one bad
    step every ReLU is silent, and the model outputs its classifier's bias whatever the image. Its
    loss then settles at ln(num_classes), a uniform guess's, and its accuracy at chance. Such a run
    measures the recipe, not its family, so it is named and left out of the means like a diverged
    one; its `diverged_epoch` is the first epoch whose training loss was at that level.
    """
    at_chance_loss = math.log(num_classes) - CHANCE_LOSS_TOLERANCE
    if record["status"] != "ok" or record["val_loss"] < at_chance_loss or record["val_acc"] > 1.5 / num_classes:
        return record
    epochs = curve.loc[curve["train_loss"] >= at_chance_loss, "epoch"]
    return record | {"status": "diverged", "diverged_epoch": int(epochs.iloc[0]) if len(epochs) else record["epochs"]}


def read_curves(folder: Path) -> pd.DataFrame:
    """One seed's per-epoch curves, as dvclive wrote them: epoch, train/val loss and accuracy."""
    columns = []
    for split in ("train", "val"):
        for metric in ("loss", "acc"):
            tsv = folder / "plots" / "metrics" / split / f"{metric}.tsv"
            if not tsv.is_file():  # a seed that diverged in its first epoch has no curve
                return pd.DataFrame()
            series = pd.read_csv(tsv, sep="\t").set_index("step")[metric]
            columns.append(series.rename(f"{split}_{metric}"))
    return pd.concat(columns, axis=1).rename_axis("epoch").reset_index()


def params_to_reach(params: np.ndarray, accuracy: np.ndarray, level: float) -> float:
    """Parameters at which accuracy first reaches `level`, interpolated linearly in log(params).

    nan when the family never reaches it within the budgets trained; the smallest model's count
    when even that one is above the level (the true need may be lower).
    """
    order = np.argsort(params)
    params, accuracy = np.asarray(params, float)[order], np.asarray(accuracy, float)[order]
    if accuracy[0] >= level:
        return float(params[0])
    for i in range(1, len(params)):
        if accuracy[i] >= level > accuracy[i - 1]:
            t = (level - accuracy[i - 1]) / (accuracy[i] - accuracy[i - 1])
            return float(np.exp(np.log(params[i - 1]) + t * (np.log(params[i]) - np.log(params[i - 1]))))
    return math.nan


def params_ratio(results: pd.DataFrame, family: str, reference: str, level: float) -> dict:
    """How many times `reference`'s parameters `family` needs to reach `level`, per seed.

    Seed k's curve is its runs over the budgets; the ratio's interval is a t interval of the
    log ratio over seeds (geometric mean). nan where either family never reaches the level.
    """
    runs = results[(results["comparison"] == "budget") & (results["status"] == "ok")]
    needs = {}
    for name in (family, reference):
        rows = runs[runs["family"] == name]
        needs[name] = {seed: params_to_reach(g["params"].to_numpy(), g["test_acc"].to_numpy(), level)
                       for seed, g in rows.groupby("seed")}
    seeds = sorted(set(needs[family]) & set(needs[reference]))
    logs = np.array([math.log(needs[family][s] / needs[reference][s]) for s in seeds])
    if len(logs) == 0 or np.isnan(logs).any():
        return {"ratio": math.nan, "low": math.nan, "high": math.nan, "seeds": len(logs)}
    mean, low, high = mean_interval(logs)
    return {"ratio": math.exp(mean), "low": math.exp(low), "high": math.exp(high), "seeds": len(logs)}
