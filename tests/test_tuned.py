"""Each cell at its best recipe, chosen on validation (whyconv.tuned)."""

import math
import shlex
from pathlib import Path

import pandas as pd
import pytest

from whyconv import tuned
from whyconv.results import factorial_table

BUDGET = 25000
ROOT = Path(__file__).resolve().parents[1]


def run(cells: dict[tuple[str, int], list[tuple[float, float]]]) -> pd.DataFrame:
    """A results table: (family, budget) -> (validation, test) accuracy per seed; nan is a diverged seed."""
    return pd.DataFrame([
        {"dataset": "fashion_mnist", "comparison": "budget", "family": family, "budget": budget, "width": 1,
         "params": budget, "train_size": 55000, "seed": seed, "status": "diverged" if math.isnan(val) else "ok",
         "val_acc": val, "test_acc": test}
        for (family, budget), seeds in cells.items() for seed, (val, test) in enumerate(seeds)])


def four_families(accuracy: dict[str, float]) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """The 2x2 at BUDGET, two seeds each, validation = test + 0.01, seeds 0.002 apart."""
    return {(family, BUDGET): [(acc + 0.01 - 0.001, acc - 0.001), (acc + 0.01 + 0.001, acc + 0.001)]
            for family, acc in accuracy.items()}


def test_the_pick_is_read_from_validation_not_test():
    slow = run({("cnn", BUDGET): [(0.92, 0.89), (0.92, 0.89)]})  # the better validation, the worse test
    fast = run({("cnn", BUDGET): [(0.91, 0.93), (0.91, 0.93)]})
    best = tuned.best_recipes(tuned.cell_runs({"slow": slow, "fast": fast}))
    assert best.to_dict("records") == [{"family": "cnn", "budget": BUDGET, "comparison": "budget", "train_size": 55000,
                                        "width": 1, "recipe": "slow", "compared": "slow, fast", "not_finished": "", "at_end": True}]


def test_a_recipe_with_a_diverged_seed_is_not_a_pick_and_a_tie_goes_to_the_first_given():
    steady = run({("gconv", BUDGET): [(0.88, 0.88), (0.88, 0.88)], ("mlp", BUDGET): [(0.87, 0.86)] * 2})
    bold = run({("gconv", BUDGET): [(0.95, 0.95), (math.nan, math.nan)], ("mlp", BUDGET): [(0.87, 0.88)] * 2})
    best = tuned.best_recipes(tuned.cell_runs({"steady": steady, "bold": bold})).set_index("family")
    assert best.loc["gconv", ["recipe", "compared", "not_finished"]].tolist() == ["steady", "steady", "bold"]
    assert best.loc["mlp", "recipe"] == "steady"
    table = tuned.cells_table(tuned.cell_runs({"steady": steady, "bold": bold}), best.reset_index(), "bold")
    assert "steady (bold diverged)" in table


def test_picks_at_an_end_of_the_recipes_are_named_and_a_diverged_one_beyond_brackets():
    labels = ["0.001", "0.003", "0.01", "0.03"]
    validation = {"cnn": [0.91, 0.91, 0.91, 0.91],        # a tie: the first given, at an end
                  "lcn": [0.90, 0.92, 0.91, 0.90],        # 0.003, between two
                  "mlp": [0.90, 0.91, 0.95, math.nan]}    # 0.01, below a 0.03 that diverged
    runs = {label: run({(family, BUDGET): [(accs[k], 0.9)] * 2 for family, accs in validation.items()})
            for k, label in enumerate(labels)}
    best = tuned.best_recipes(tuned.cell_runs(runs)).set_index("family")
    assert best["recipe"].to_dict() == {"cnn": "0.001", "lcn": "0.003", "mlp": "0.01"}
    assert best["at_end"].to_dict() == {"cnn": True, "lcn": False, "mlp": False}
    assert "might do better: CNN at 25,000 (0.001)." in tuned.summary(runs, BUDGET)
    assert tuned.picks_at_an_end(best.reset_index().assign(at_end=False)).startswith("Every pick lies between")


def test_a_subset_cell_is_tuned_on_its_own_and_the_lead_at_each_size_follows_the_picks():
    def with_subsets(full: dict, small: dict) -> pd.DataFrame:
        subsets = run({(family, BUDGET): seeds for family, seeds in small.items()})
        return pd.concat([run({(family, BUDGET): seeds for family, seeds in full.items()}),
                          subsets.assign(comparison="subset", train_size=1000)], ignore_index=True)
    # On the full split the fast rate wins for both; on 1,000 images the slow one wins for the CNN.
    runs = {"slow": with_subsets({"mlp": [(0.86, 0.86)] * 2, "cnn": [(0.90, 0.90)] * 2},
                                 {"mlp": [(0.79, 0.79)] * 2, "cnn": [(0.83, 0.83), (0.83, 0.84)]}),
            "fast": with_subsets({"mlp": [(0.87, 0.87)] * 2, "cnn": [(0.91, 0.91)] * 2},
                                 {"mlp": [(0.80, 0.80)] * 2, "cnn": [(0.81, 0.81)] * 2})}
    models = tuned.cell_runs(runs)
    best = tuned.best_recipes(models).set_index(["family", "train_size"])["recipe"]
    assert best.to_dict() == {("mlp", 55000): "fast", ("cnn", 55000): "fast", ("mlp", 1000): "fast",
                              ("cnn", 1000): "slow"}
    text = tuned.summary(runs, BUDGET)
    assert "| CNN      | 25,000   | 1,000    | slow, fast         | slow " in text
    # The CNN at its pick (0.835) minus the MLP at its (0.80); on the full split 0.91 - 0.87.
    assert "| CNN minus MLP on 1,000 training images  |" in text
    tuned_row = next(line for line in text.splitlines() if line.startswith("| CNN minus MLP on 1,000"))
    assert tuned_row.rstrip(" |").split("|")[-1].strip().startswith("+3.50 points")


def test_the_tuned_2x2_is_the_2x2_of_each_cells_pick():
    low = {"mlp": 0.86, "lcn": 0.87, "gconv": 0.88, "cnn": 0.90}
    high = {"mlp": 0.85, "lcn": 0.89, "gconv": 0.87, "cnn": 0.91}
    runs = {"low": run(four_families(low)), "high": run(four_families(high))}
    models = tuned.cell_runs(runs)
    picked = tuned.tuned_runs(models, tuned.best_recipes(models))
    assert picked.groupby("family")["recipe"].first().to_dict() == {"mlp": "low", "lcn": "high", "gconv": "low",
                                                                    "cnn": "high"}
    effects = factorial_table(picked, BUDGET).set_index("term")["estimate"]
    # Locality: (LCN + CNN - MLP - GConv) / 2 at each family's better rate.
    assert effects["locality"] == pytest.approx((0.89 + 0.91 - 0.86 - 0.88) / 2)
    assert effects["interaction"] == pytest.approx((0.91 - 0.88) - (0.89 - 0.86))
    text = tuned.summary(runs, BUDGET, reference="low")
    assert "| 2x2 at 25,000 parameters: locality" in text and "each cell at its pick" in text
    assert f"+{100 * effects['locality']:.2f} points" in text


def test_a_cell_trained_at_one_recipe_only_is_left_out_and_named():
    first = run({("cnn", BUDGET): [(0.91, 0.91)] * 2, ("cnn", 4000): [(0.88, 0.88)] * 2})
    second = run({("cnn", BUDGET): [(0.92, 0.92)] * 2})
    models, left_out = tuned.with_a_choice(tuned.cell_runs({"a": first, "b": second}))
    assert set(models["budget"]) == {BUDGET} and left_out == ["CNN at 4,000"]
    assert "Left out, trained at one recipe only: CNN at 4,000." in tuned.summary({"a": first, "b": second}, BUDGET)
    with pytest.raises(tuned.AgreementError, match="nothing to choose between"):
        tuned.summary({"a": first, "b": run({("mlp", BUDGET): [(0.9, 0.9)]})}, BUDGET)


def test_cells_left_out_are_named_a_family_at_a_time():
    cells = pd.DataFrame([("mlp", 50000, "budget", 55000, 60), ("cnn", 4000, "budget", 55000, 4),
                          ("mlp", 25000, "subset", 3000, 30), ("mlp", 25000, "subset", 1000, 30),
                          ("cnn", tuned.NO_BUDGET, "skeleton", 55000, 16), ("mlp", 100000, "budget", 55000, 120),
                          ("mlp", 25000, "subset", 10000, 30)], columns=tuned.CELL)
    assert tuned.cells_in_words(cells) == ["MLP at 25,000 on 1,000, 3,000 and 10,000 images",
                                           "MLP at 50,000 and 100,000", "CNN at 4,000", "CNN on the c = 16 skeleton"]


def test_with_every_runs_translation_probe_beside_it_each_picks_probe_is_shown(tmp_path, capsys):
    argv = []
    for label, (validation, shifted) in {"slow": (0.90, 0.50), "fast": (0.92, 0.60)}.items():
        folder = tmp_path / label
        folder.mkdir()
        run({("cnn_gap", BUDGET): [(validation, 0.86)] * 2}).to_csv(folder / "results.csv", index=False)
        pd.DataFrame([{"family": "cnn_gap", "budget": BUDGET, "seed": seed, "shift": shift,
                       "test_acc": 0.86 if shift == 0 else shifted + 0.01 * seed}
                      for seed in range(2) for shift in range(3)]).to_csv(folder / "shift.csv", index=False)
        argv.append(f"{label}={folder / 'results.csv'}")
    tuned.main([*argv, "--budget", str(BUDGET)])
    out = capsys.readouterr().out
    assert "| CNN+GAP  | 25,000   | fast     | 86.00  | 60.50  | 60.50  |" in out
    assert "None from these cells" in out  # one family: no 2x2, no ratio
    # Without a probe beside every run, no translation table (a pick could lack its probe).
    (tmp_path / "slow" / "shift.csv").unlink()
    tuned.main([*argv, "--budget", str(BUDGET)])
    assert "moved by s pixels" not in capsys.readouterr().out


def test_a_skeleton_cell_is_tuned_by_its_channels_and_the_same_skeleton_finding_follows_the_picks():
    def skeleton(lcn: float, cnn: float) -> pd.DataFrame:
        frame = run({("lcn", 0): [(lcn, lcn)] * 2, ("cnn", 0): [(cnn, cnn)] * 2})
        frame = frame.assign(comparison="skeleton", budget=math.nan, width=16)
        return frame.assign(params=frame["family"].map({"lcn": 274410, "cnn": 20490}))
    runs = {"low": pd.concat([run({("cnn", BUDGET): [(0.90, 0.90)] * 2}), skeleton(0.90, 0.89)]),
            "high": pd.concat([run({("cnn", BUDGET): [(0.91, 0.91)] * 2}), skeleton(0.89, 0.92)])}
    best = tuned.best_recipes(tuned.cell_runs(runs)).set_index(["family", "comparison"])["recipe"]
    assert best.to_dict() == {("cnn", "budget"): "high", ("lcn", "skeleton"): "low", ("cnn", "skeleton"): "high"}
    text = tuned.summary(runs, BUDGET)
    assert "| LCN      | skeleton, c = 16 |" in text
    row = next(line for line in text.splitlines() if line.startswith("| LCN minus CNN on the same skeleton, c = 16"))
    assert row.split("|")[-2].strip().startswith("-2.00 points")  # each cell at its pick: 0.90 against 0.92


def test_labels_are_printed_as_given():
    runs = {"1e-3": run(four_families({"mlp": 0.86, "lcn": 0.87, "gconv": 0.88, "cnn": 0.90})),
            "3e-3": run(four_families({"mlp": 0.85, "lcn": 0.89, "gconv": 0.87, "cnn": 0.91}))}
    text = tuned.summary(runs, BUDGET, reference="3e-3")
    assert "| 1e-3, 3e-3 " in text and "test % at 3e-3" in text and "0.001" not in text


def test_a_label_given_again_adds_a_run_at_that_recipe_and_a_model_counts_once(tmp_path, capsys):
    paths = {}
    for name, cells in {"a": {("cnn", BUDGET): [(0.90, 0.9)] * 2}, "b": {("cnn", BUDGET): [(0.91, 0.9)] * 2},
                        "b_more": {("cnn", 4000): [(0.88, 0.9)] * 2}, "a_more": {("cnn", 4000): [(0.89, 0.9)] * 2}}.items():
        paths[name] = tmp_path / f"{name}.csv"
        run(cells).to_csv(paths[name], index=False)
    tuned.main([f"a={paths['a']}", f"b={paths['b']}", f"b={paths['b_more']}", f"a={paths['a_more']}",
                "--budget", str(BUDGET)])
    table = capsys.readouterr().out
    assert "| CNN      | 4,000    | a, b " in table and "| CNN      | 25,000   | a, b " in table
    with pytest.raises(SystemExit) as stopped:
        tuned.main([f"a={paths['a']}", f"b={paths['b']}", f"a={paths['a']}", "--budget", str(BUDGET)])
    assert stopped.value.code == 2
    assert "recipe 'a' has 2 models in more than one of its files (the first: cnn at 25000, seed 0)" in capsys.readouterr().err


def test_bad_arguments_get_one_message(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tuned.main(["0.001", "b=x.csv"])
    assert "is not LABEL=RESULTS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tuned.main(["a=x.csv", "a=y.csv"])
    assert "two recipes or more, each recipe with its own label (got only 'a')" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        tuned.main(["a=missing.csv", f"b={tmp_path / 'missing.csv'}", "--budget", "25000"])
    assert stopped.value.code == 2 and "cannot read missing.csv" in capsys.readouterr().err
    no_validation = tmp_path / "old.csv"
    run({("cnn", BUDGET): [(0.9, 0.9)]}).drop(columns="val_acc").to_csv(no_validation, index=False)
    with pytest.raises(SystemExit):
        tuned.main([f"a={no_validation}", f"b={no_validation}", "--budget", "25000"])
    assert "run 'a' has no val_acc column" in capsys.readouterr().err


def test_the_output_opens_with_the_command_that_gives_it(tmp_path, capsys):
    paths = {}
    for label, accuracy in {"a": 0.86, "b": 0.88}.items():
        paths[label] = tmp_path / f"{label}.csv"
        run(four_families(dict.fromkeys(["mlp", "lcn", "gconv", "cnn"], accuracy))).to_csv(paths[label], index=False)
    argv = [f"{label}={path}" for label, path in paths.items()] + ["--budget", str(BUDGET), "--reference", "a"]
    tuned.main(argv)
    first, output = capsys.readouterr().out.split("\n", 1)
    assert first == f"Written by `python -m whyconv.tuned {' '.join(argv)}`."
    tuned.main(first.split("`")[1].split()[3:])
    assert capsys.readouterr().out.split("\n", 1)[1] == output


@pytest.mark.parametrize("path", sorted(ROOT.glob("reports/**/tuned.md")), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_committed_tuned_md_is_what_its_first_line_gives(path, capsys, monkeypatch):
    text = path.read_text()
    command = shlex.split(text.splitlines()[0].removeprefix("Written by `").removesuffix("`."))
    assert command[:3] == ["python", "-m", "whyconv.tuned"]
    monkeypatch.chdir(ROOT)
    tuned.main(command[3:])
    assert capsys.readouterr().out == text

