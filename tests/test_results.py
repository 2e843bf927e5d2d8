"""Aggregation statistics and the wording that follows them."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from whyconv.report import skeleton_sentence
from whyconv.results import (at_chance_as_diverged, difference_interval, mean_interval, results_table, skeleton_table,
                             summarize)


def test_mean_interval_is_the_student_t_interval():
    values = np.array([0.90, 0.91, 0.93])
    mean, low, high = mean_interval(values)
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert mean == pytest.approx(0.91333333)
    assert (low, high) == pytest.approx((mean - half, mean + half))
    assert math.isnan(mean_interval(np.array([0.9]))[1])  # one seed: no interval claimed


def record(comparison, family, width, seed, acc, status="ok"):
    return {"dataset": "d", "comparison": comparison, "family": family, "budget": 1000 if comparison == "budget" else None,
            "width": width, "params": 100 * width if family == "cnn" else 1000 * width, "seed": seed,
            "status": status, "epochs": 2, "val_acc": acc, "test_acc": acc, "val_loss": 1.0,
            "test_loss": 1.0, "train_seconds": 1.0, "images_per_second": 10.0, "diverged_epoch": None}


def test_summary_excludes_diverged_seeds_and_counts_them():
    records = [record("budget", "cnn", 4, s, a) for s, a in enumerate([0.8, 0.82, 0.84])]
    records.append(record("budget", "cnn", 4, 3, float("nan"), status="diverged"))
    summary = summarize(results_table(records), ["family", "budget"])
    row = summary.iloc[0]
    assert (row["seeds"], row["diverged"]) == (3, 1)
    assert row["test_acc_mean"] == pytest.approx(0.82)


def test_a_run_that_ends_giving_every_image_one_answer_counts_as_diverged():
    # Seed 1 as the GConv at 400k trained at learning rate 0.01: a good first epoch, then a
    # uniform guess's loss, ln(10), to the end, and chance accuracy.
    healthy = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.44, 0.61, 0.52]})
    dead = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.66, 2.3114, 2.3026]})
    dead_run = record("budget", "gconv", 30, 1, 0.1) | {"val_loss": 2.30259, "val_acc": 0.0928, "epochs": 3}
    marked = at_chance_as_diverged(dead_run, dead, num_classes=10)
    assert (marked["status"], marked["diverged_epoch"], marked["test_acc"]) == ("diverged", 2, 0.1)
    records = [record("budget", "gconv", 30, 0, 0.87), marked]
    row = summarize(results_table(records), ["family", "budget"]).iloc[0]
    assert (row["seeds"], row["diverged"], row["test_acc_mean"]) == (1, 1, 0.87)
    # A model that learned something, however little, or that stopped before the end, stays as it is.
    for run, curve in [(record("budget", "gconv", 30, 0, 0.87), healthy),
                       (dead_run | {"val_loss": 2.25, "val_acc": 0.19}, healthy),
                       (record("budget", "gconv", 30, 0, float("nan"), status="diverged"), dead)]:
        assert at_chance_as_diverged(run, curve, num_classes=10) == run


def skeleton_rows(lcn_accs, cnn_accs):
    records = [record("skeleton", "lcn", 4, s, a) for s, a in enumerate(lcn_accs)]
    records += [record("skeleton", "cnn", 4, s, a) for s, a in enumerate(cnn_accs)]
    return skeleton_table(results_table(records)).iloc[0]


def test_skeleton_wording_follows_the_data():
    worse = skeleton_rows([0.80, 0.81, 0.80], [0.85, 0.86, 0.85])
    assert worse["param_ratio"] == 10
    assert "the LCN is less accurate than the CNN" in skeleton_sentence(worse, depth=2)
    better = skeleton_rows([0.85, 0.86, 0.85], [0.80, 0.81, 0.80])  # the ordering flips: so does the text
    assert "the LCN is more accurate than the CNN" in skeleton_sentence(better, depth=2)
    tie = skeleton_rows([0.80, 0.86, 0.83], [0.81, 0.85, 0.83])
    assert "no detectable difference" in skeleton_sentence(tie, depth=2)
    assert skeleton_sentence(tie, depth=2).startswith("- 4/8 channels:")  # each layer's channels, c then 2c
    assert skeleton_sentence(tie, depth=1).startswith("- 4 channels:")
    assert skeleton_sentence(tie, depth=3).startswith("- 4/8/16 channels:")


def test_difference_interval_matches_welch():
    a, b = np.array([0.8, 0.82, 0.81]), np.array([0.7, 0.75, 0.72, 0.71])
    diff, low, high = difference_interval(a, b)
    welch = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert (low, high) == pytest.approx((welch.low, welch.high))
