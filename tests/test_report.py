"""The report: numbers from the tables, wording chosen by the intervals, a page that needs no network."""

import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from whyconv.figures import first_layer_figure
from whyconv.report import (budget_sentences, budget_table, compute_section, crossing_ranges, devices_line,
                            diverged_note, factorial_section, limitations, reach_sentence, reach_table,
                            shift_section, some_seed_at_smallest, write_report)
from whyconv.results import (factorial_table, params_ratio, params_to_reach, permutation_table, results_table,
                             skeleton_table, subsets_table, summarize)


def test_params_to_reach_interpolates_in_log_parameters():
    params, acc = np.array([1_000, 10_000, 100_000]), np.array([0.80, 0.86, 0.90])
    assert params_to_reach(params, acc, 0.88) == pytest.approx(10 ** 4.5)
    assert params_to_reach(params, acc, 0.70) == 1_000  # already there at the smallest model
    assert math.isnan(params_to_reach(params, acc, 0.95))  # never reached


def run_record(comparison: str, family: str, budget: int, seed: int, acc: float, train_size: int = 1000) -> dict:
    return {"dataset": "d", "comparison": comparison, "family": family, "budget": budget, "width": budget // 100,
            "params": budget, "train_size": train_size, "seed": seed, "status": "ok", "epochs": 2,
            "val_acc": acc, "test_acc": acc, "val_loss": 1.0, "test_loss": 1.0, "train_seconds": 1.0,
            "images_per_second": 1.0, "diverged_epoch": None}


def study_results(accuracy: dict[str, list[float]], noise: float = 0.004, extra: list[dict] = ()) -> pd.DataFrame:
    """Three seeds per family at 1k, 10k, 100k parameters with the given mean accuracies."""
    rng = np.random.default_rng(0)
    records = [run_record("budget", family, budget, seed, mean + noise * rng.standard_normal())
               for family, means in accuracy.items() for budget, mean in zip((1_000, 10_000, 100_000), means)
               for seed in range(3)]
    return results_table(records + list(extra))


def report_inputs(accuracy):
    results = study_results(accuracy)
    return results, summarize(results, ["family", "budget"])


def test_the_setup_names_where_the_models_trained():
    results, _ = report_inputs({"mlp": [0.80, 0.85, 0.88], "cnn": [0.86, 0.90, 0.92]})
    assert devices_line(results) == "not recorded, every model"  # tables from before it was recorded
    results["trained_on"] = "Intel(R) Xeon(R) Processor with AVX-512 (cpu)"
    assert devices_line(results) == "Intel(R) Xeon(R) Processor with AVX-512 (cpu), every model"
    results.loc[results["family"] == "cnn", "trained_on"] = "NVIDIA H200 (gpu)"
    assert devices_line(results) == ("Intel(R) Xeon(R) Processor with AVX-512 (cpu), 9 models; NVIDIA H200 (gpu), "
                                     "9 models. Compare results only between models trained on one kind of device")


def test_comparison_wording_flips_with_the_data():
    results, _ = report_inputs({"mlp": [0.80, 0.85, 0.88], "cnn": [0.86, 0.90, 0.92]})
    assert any("10,000 parameters, both priors: the CNN is more accurate than the MLP" in s
               for s in budget_sentences(results))
    flipped, _ = report_inputs({"mlp": [0.86, 0.90, 0.92], "cnn": [0.80, 0.85, 0.88]})
    assert any("10,000 parameters, both priors: the CNN is less accurate than the MLP" in s
               for s in budget_sentences(flipped))
    tied, _ = report_inputs({"mlp": [0.80, 0.85, 0.88], "cnn": [0.80, 0.85, 0.88]})
    assert all("no detectable difference" in s for s in budget_sentences(tied))
    one_seed = results[results["seed"] == 0]  # no interval: no claim either way
    assert all("no claim about the CNN against the MLP without an interval" in s for s in budget_sentences(one_seed))


def test_one_seed_and_one_budget_are_worded_as_such():
    shift = pd.DataFrame([{"family": "cnn", "budget": 10_000, "seed": s, "shift": k, "test_acc": 0.9 - 0.1 * k}
                          for s in range(2) for k in range(3)])
    assert "(paired over seeds)." in shift_section(shift, 2, "zero")
    assert "(circular: what is pushed off one edge comes back at the other;" in shift_section(shift, 2, "circular")
    one_seed = shift_section(shift[shift["seed"] == 0], 2, "zero")
    assert "falls by 20.00 points, interval unknown with one seed." in one_seed and "paired" not in one_seed
    gains = shift.assign(test_acc=0.8 + 0.01 * shift["shift"] + 0.001 * shift["seed"])  # trained with shifts, say
    rise = shift_section(gains, 2, "zero")
    assert "accuracy rises by 2.00 points, 95% CI" in rise and "by -" not in rise
    results, summary = report_inputs({"mlp": [0.80, 0.85, 0.88]})
    setup = {"dataset": "d", "sizes": {"train": 10}, "augment_shift": 0, "seeds": [0], "epochs": 2,
             "learning_rate": 0.1, "weight_decay": 0.0, "dropout": 0.3, "params": {"controls": {"matched_budget": 10_000}}}
    assert "MLP 1,000 to 100,000." in limitations(results, summary, setup)
    assert "MLP 10,000 only." in limitations(results, summary[summary["budget"] == 10_000], setup)


def test_parameters_needed_names_the_thriftier_family_from_the_data():
    results, summary = report_inputs({"mlp": [0.80, 0.85, 0.88], "cnn": [0.86, 0.89, 0.92]})
    table, sentences = reach_table(results, summary)
    assert "MLP parameters" in table and "CNN parameters" in table
    assert any("To reach 88% test accuracy, the MLP needs" in s and "the parameters of the CNN" in s
               for s in sentences)
    results, summary = report_inputs({"mlp": [0.86, 0.89, 0.92], "cnn": [0.80, 0.85, 0.88]})
    _, sentences = reach_table(results, summary)
    assert any(re.search(r"To reach \d+% test accuracy, the CNN needs .* the parameters of the MLP", s)
               for s in sentences)


def test_a_need_below_the_smallest_model_is_a_bound_not_a_finding():
    # At 86% (the MLP's best, floored) the LCN's smallest model, 1,000 parameters, is already
    # there: the LCN needs at most that many, so the MLP needs at least so many times the LCN's.
    results = study_results({"mlp": [0.80, 0.84, 0.865], "lcn": [0.87, 0.88, 0.915]}, noise=0.0)
    table, sentences = reach_table(results, summarize(results, ["family", "budget"]))
    assert "at most 1,000" in table
    at_86 = [s for s in sentences if "86%" in s]
    assert len(at_86) == 1 and "the MLP needs at least about" in at_86[0]
    assert "the LCN's smallest model already reaches 86%" in at_86[0] and "95% CI" not in at_86[0]
    # Both families at 88% with their smallest models: nothing to compare.
    results = study_results({"mlp": [0.885, 0.886, 0.887], "lcn": [0.89, 0.893, 0.897]}, noise=0.0)
    _, sentences = reach_table(results, summarize(results, ["family", "budget"]))
    assert any("88%" in s and "need no more than their smallest models" in s for s in sentences)


def test_a_crossing_is_placed_between_the_budgets_whose_intervals_clear_the_level():
    def curve(family, *points):  # (parameters, mean, low, high) per budget, accuracies in %
        return [{"family": family, "budget": n, "params": n, "test_acc_mean": m / 100, "test_acc_low": lo / 100,
                 "test_acc_high": hi / 100} for n, m, lo, hi in points]

    summary = pd.DataFrame(
        curve("mlp", (1_000, 85.0, 84.5, 85.5), (10_000, 87.5, 86.5, 88.5), (100_000, 89.04, 88.7, 89.4),
              (400_000, 89.4, 88.9, 89.9))  # flat at 89%: every budget from 10,000 on is inside or near
        # up to 89% and back under it: the budget past its best does not count as the last one below
        + curve("gconv", (25_000, 88.6, 88.46, 88.73), (50_000, 88.89, 88.79, 88.98),
                (100_000, 89.08, 88.93, 89.22), (200_000, 89.04, 88.88, 89.2), (400_000, 88.8, 88.7, 88.9))
        + curve("cnn", (1_000, 88.9, 88.7, 89.1), (10_000, 90.5, 90.2, 90.8), (100_000, 91.6, 91.5, 91.7)))
    table = crossing_ranges(summary)
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in table.splitlines()[2:]}
    assert list(rows) == ["89%", "91%"]  # the levels of the reach table: each family's best, floored
    # MLP: 89% inside both of its top intervals
    assert rows["89%"] == ["over 10,000, if reached", "over 50,000, if reached", "under 10,000"]
    assert rows["91%"] == ["not reached", "not reached", "10,000 to 100,000"]


def test_a_seed_already_there_at_its_smallest_model_leaves_no_interval():
    records = [run_record("budget", family, budget, seed, acc)
               for family, accs in {"mlp": [0.80, 0.86, 0.90], "cnn": [0.845, 0.89, 0.92]}.items()
               for budget, acc in zip((1_000, 10_000, 100_000), accs) for seed in range(3)]
    records[9]["test_acc"] = 0.851  # the CNN's seed 0 at 1,000 parameters: at 85% already
    results = results_table(records)
    assert some_seed_at_smallest(results, "cnn", 0.85) and not some_seed_at_smallest(results, "cnn", 0.86)
    needs = {"mlp": 9_000.0, "cnn": 1_100.0}
    sentence = reach_sentence(0.85, "mlp", "cnn", needs, set(), params_ratio(results, "mlp", "cnn", 0.85), True)
    assert "the MLP needs about 8.2x" in sentence and "some seed's smallest model already reaches 85%" in sentence
    assert "95% CI" not in sentence
    one_seed = results_table([r for r in records if r["seed"] == 1])
    sentence = reach_sentence(0.88, "mlp", "cnn", needs, set(), params_ratio(one_seed, "mlp", "cnn", 0.88), False)
    assert "(9,000 vs 1,100, from the mean curves; one seed, so there is no interval)" in sentence


def test_factorial_wording_follows_the_interaction():
    # Locality adds 6 points with sharing (CNN - GConv) and 2 without (LCN - MLP): interaction +4.
    results = study_results({"mlp": [0.80, 0.80, 0.80], "lcn": [0.82, 0.82, 0.82],
                             "gconv": [0.81, 0.81, 0.81], "cnn": [0.87, 0.87, 0.87]}, noise=0.002)
    table = factorial_table(results, 10_000).set_index("term")
    assert table.loc["interaction", "estimate"] == pytest.approx(0.04, abs=0.01)
    assert table.loc["locality", "estimate"] == pytest.approx((0.82 + 0.87 - 0.80 - 0.81) / 2, abs=0.01)
    text = factorial_section(table.reset_index(), 10_000)
    assert "the priors help more together than apart" in text and "locality raises accuracy" in text
    assert "| local     | LCN" in text
    assert factorial_section(factorial_table(study_results({"mlp": [0.8] * 3}), 10_000), 10_000).startswith("Not run")


def full_tables() -> dict[str, pd.DataFrame]:
    """Every table the report reads, for a small made-up study with all four families and every control."""
    families = ("mlp", "lcn", "gconv", "cnn", "cnn_gap")
    extra = [run_record("permuted", f, 10_000, s, 0.8 + 0.01 * s) for f in ("mlp", "cnn") for s in range(3)]
    extra += [run_record("subset", f, 10_000, s, 0.7 + 0.01 * k + 0.01 * s, train_size=100)
              for k, f in enumerate(("mlp", "lcn", "gconv", "cnn")) for s in range(3)]
    results = study_results({"mlp": [0.80, 0.85, 0.88], "lcn": [0.83, 0.87, 0.89], "gconv": [0.81, 0.86, 0.88],
                             "cnn": [0.86, 0.89, 0.92], "cnn_gap": [0.84, 0.88, 0.90]}, extra=extra)
    budget = results[results["comparison"] == "budget"]
    curves = pd.DataFrame([{"comparison": "budget", "family": f, "size": 100_000, "seed": 0, "epoch": e,
                            "train_loss": 1 / e, "train_acc": 0.8, "val_loss": 1 / e, "val_acc": 0.8}
                           for f in families for e in (1, 2)])
    shift = pd.DataFrame([{"family": f, "budget": 10_000, "seed": s, "shift": k, "test_acc": 0.9 - 0.1 * k + 0.01 * s}
                          for f in families for s in range(3) for k in range(3)])
    weights = pd.DataFrame([{"family": f, "budget": 10_000, "seed": s, "weights": w, "locality": 0.5 + 0.01 * s,
                             "sharing": float("nan") if f == "mlp" else 0.3} for f in families for s in range(3)
                            for w in ("init", "trained")])
    return {"results": results, "summary": summarize(budget, ["family", "budget"]), "skeleton": skeleton_table(results),
            "curves": curves, "factorial": factorial_table(results, 10_000),
            "permutation": permutation_table(results, 10_000), "subsets": subsets_table(results, 10_000),
            "shift": shift, "weights": weights}


def report_setup(max_shift: int, kernel_size: int = 3, depth: int = 2) -> dict:
    """What the report stage passes write_report besides the tables, for a small made-up study."""
    return {"dataset": "d", "sizes": {"train": 10, "val": 2, "test": 3}, "epochs": 2, "batch_size": 8,
            "learning_rate": 0.1, "weight_decay": 0.0, "warmup_epochs": 0, "augment_shift": 0, "seeds": [0, 1, 2],
            "dropout": 0.3, "model": {"kernel_size": kernel_size, "depth": depth}, "version": "abc123", "shift_fill": "zero",
            "params": {"train": {"epochs": 2}, "controls": {"matched_budget": 10_000, "max_shift": max_shift,
                                                            "permutation": {"seed": 0}}}}


def test_report_files_are_self_contained(tmp_path):
    setup = report_setup(max_shift=2)
    kernel = np.random.default_rng(0).normal(size=(3, 3, 1, 4))
    first_layer_figure({"cnn": kernel}, tmp_path / "figures/first_layer.png")
    write_report(full_tables(), setup, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "![test accuracy against parameters](figures/accuracy_vs_params.png)" in report
    assert "code version `abc123`" in report and "## Limitations" in report
    assert "Switched off" not in report and "| CNN+GAP  |" in report
    means = next(line for line in report.splitlines() if line.startswith("- Mean test accuracy on permuted pixels"))
    assert " > " not in means and "(on natural pixels: CNN" in means  # means in order, not a ranking
    page = (tmp_path / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 9 and 'src="figures/' not in page
    assert "![what each prior buys against training-set size](figures/priors_by_train_size.png)" in report
    assert "<table>" in page and "MLP parameters" in page and "Where the seeds place each crossing" in page
    assert re.search(r"- CNN: \d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\] at 100,000 parameters", report)
    tables = full_tables()
    one_seed = tables["results"][(tables["results"]["seed"] == 0) & (tables["results"]["comparison"] == "budget")]
    write_report(tables | {"summary": summarize(one_seed, ["family", "budget"])}, setup, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert re.search(r"- CNN: \d+\.\d\d \(one seed\) at 100,000 parameters", report)
    assert "Where the seeds place each crossing" not in report  # one seed: no intervals to place it by


@pytest.mark.parametrize("kernel_size, depth, layers", [(1, 1, "1 layer of c channels"),
                                                       (5, 3, "3 layers of c, 2c and 4c channels"),
                                                       (7, 2, "2 layers of c and 2c channels"),
                                                       (3, 4, "4 layers of c, 2c, ..., 8c channels")])
def test_a_skeleton_with_another_kernel_or_depth_gets_its_whole_report(tmp_path, kernel_size, depth, layers):
    kernel = np.random.default_rng(0).normal(size=(kernel_size, kernel_size, 1, 4))
    first_layer_figure({"cnn": kernel}, tmp_path / "figures/first_layer.png")
    setup = report_setup(max_shift=2, kernel_size=kernel_size, depth=depth) | {"epochs": 1}
    write_report(full_tables(), setup, tmp_path)
    assert (tmp_path / "figures/connectivity.png").stat().st_size
    report = (tmp_path / "report.md").read_text()
    assert f"a {kernel_size}x{kernel_size} patch" in report and layers in report
    assert "1 epoch," in report and "1 epochs" not in report
    assert (tmp_path / "index.html").read_text().count("data:image/png;base64,") == 9


def test_a_control_switched_off_gets_its_words_and_no_empty_figure(tmp_path):
    setup = report_setup(max_shift=0)
    tables = full_tables()
    # Only the MLP and the CNN trained, every control off: what `make crossings` runs.
    mlp_and_cnn = tables["results"][tables["results"]["comparison"].eq("budget")
                                    & tables["results"]["family"].isin(["mlp", "cnn"])]
    tables |= {"results": mlp_and_cnn, "summary": summarize(mlp_and_cnn, ["family", "budget"]),
               "factorial": factorial_table(mlp_and_cnn, 10_000),
               "permutation": permutation_table(mlp_and_cnn, 10_000), "subsets": subsets_table(mlp_and_cnn, 10_000),
               "shift": tables["shift"].iloc[:0], "weights": tables["weights"].iloc[:0]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no figure drawn from nothing (matplotlib warns of an empty legend)
        write_report(tables, setup, tmp_path)
    report = (tmp_path / "report.md").read_text()
    for name in ("factorial", "permutation", "shift", "subsets", "priors_by_train_size", "first_layer"):
        assert f"figures/{name}.png" not in report
    assert report.count("Switched off") == 4 and "Not run: the 2x2 needs" in report
    assert "![test accuracy against parameters](figures/accuracy_vs_params.png)" in report
    # The figures are declared outputs, so they are written all the same, saying there is nothing to show.
    assert all((tmp_path / "figures" / f"{name}.png").stat().st_size
               for name in ("factorial", "permutation", "shift", "subsets", "priors_by_train_size"))
    assert (tmp_path / "index.html").read_text().count("data:image/png;base64,") == 3


def test_a_study_of_one_family_reads_back_from_its_tables_and_says_what_it_cannot_compare(tmp_path):
    tables = full_tables()
    results = tables["results"]
    gconv = results[results["comparison"].eq("budget") & results["family"].eq("gconv")]
    tables |= {"results": gconv, "summary": summarize(gconv, ["family", "budget"]), "skeleton": skeleton_table(gconv),
               "factorial": factorial_table(gconv, 10_000), "permutation": permutation_table(gconv, 10_000),
               "subsets": subsets_table(gconv, 10_000), "shift": tables["shift"].iloc[:0],
               "weights": tables["weights"].iloc[:0]}
    # Through CSV files, as the aggregate stage writes them and the report stage reads them back.
    for name, table in tables.items():
        table.to_csv(tmp_path / f"{name}.csv", index=False)
        tables[name] = pd.read_csv(tmp_path / f"{name}.csv")
    write_report(tables, report_setup(max_shift=0), tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "Not run: no two families share a budget" in report
    assert "Not run: it needs an LCN and a CNN with the same channels" in report
    assert "Not run: the 2x2 needs" in report


def test_diverged_runs_are_named_in_the_report():
    results = study_results({"cnn": [0.8, 0.85, 0.9]})
    results.loc[0, ["status", "diverged_epoch", "test_acc"]] = ["diverged", 3, float("nan")]
    results.loc[1, ["status", "diverged_epoch", "test_acc"]] = ["diverged", 2, 0.1]  # a model that ended at chance
    note = diverged_note(results)
    assert note.startswith("**2 run(s) diverged**") and "A lower `train.learning_rate`" in note
    assert "CNN budget 1000 seed 0 (epoch 3)" in note
    assert "CNN budget 1000 seed 1 (epoch 2, then at chance: 10.00% test accuracy)" in note
    results.loc[2, ["status", "diverged_epoch", "test_acc"]] = ["diverged", 2, 0.1]  # the whole cell
    summary = summarize(results.assign(forward_flops=1_000), ["family", "budget"])
    assert "| n/a (no seed finished)" in budget_table(summary)
    assert "nan" not in compute_section(summary, skeleton_table(results), depth=2)
    assert diverged_note(study_results({"cnn": [0.8, 0.85, 0.9]})) == "Every run finished with a finite loss."
