"""End to end: the real `dvc repro` of a tiny study in a temporary copy of the repository."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import write_idx_dataset
from whyconv.capacity import Skeleton, param_count

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"  # what a person may want to look at after a run
TRACKED = ["src", "pipelines", "dvc.yaml", "params.yaml", ".dvc/config", ".dvc/offline-plots.html", ".dvc/plots",
           ".dvcignore", "pyproject.toml"]


def tiny_params(idx_dir: Path) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(idx_dir=str(idx_dir), val_size=200, tfds_dir="data/tfds", verify_checksums=False)
    params["train"].update(epochs=2, seeds=[0, 1], batch_size=64)
    # 9,000 parameters is a budget every family can meet within 10%: the matched budget.
    params["study"]["budgets"] = {"mlp": [4000, 9000], "lcn": [9000], "gconv": [9000], "cnn": [4000, 9000],
                                  "cnn_gap": [9000]}
    params["study"]["skeleton_channels"] = [2]
    params["controls"].update(matched_budget=9000, max_shift=2, weights=True,
                              permutation={"families": ["mlp", "cnn"], "seed": 0},
                              subsets={"families": ["mlp", "cnn"], "sizes": [300], "min_steps": 20})
    return params


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A copy of the repository, with a tiny study on small IDX data, after one `make study`:
    the training stages two at a time through DVC (whyconv.sweep), then `dvc repro`."""
    repo = tmp_path_factory.mktemp("study")
    for name in TRACKED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, repo / name)
    idx = write_idx_dataset(repo.parent / "idx", train=1200, test=300)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(idx), sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny study"], repo)
    out = run([sys.executable, "-m", "whyconv.sweep", "--jobs", "2"], repo)
    assert "training stages), 2 at a time" in out and "FAILED" not in out
    # The last check that all is up to date says so once, not once per stage, and names the report.
    assert "didn't change" not in out and "the report: reports/report.md" in out
    return repo


def dvc(repo: Path, *args: str) -> str:
    return run([str(Path(sys.executable).parent / "dvc"), *args], repo)


@pytest.mark.slow
def test_repro_produces_every_declared_output_with_sane_values(study):
    results = pd.read_csv(study / "reports/results.csv")
    # 7 matched-budget cells + 2 skeleton + 2 permuted + 2 subset cells, 2 seeds each.
    assert len(results) == 26
    assert set(results["family"]) == {"mlp", "lcn", "gconv", "cnn", "cnn_gap"}
    assert results.groupby("comparison").size().to_dict() == {"budget": 14, "permuted": 4, "skeleton": 4, "subset": 4}
    assert (results["status"] == "ok").all()
    assert results["trained_on"].str.endswith("(cpu)").all()
    assert results["test_acc"].between(0.2, 1.0).all()  # above chance (0.1): the synthetic classes are easy
    assert (abs(results["params"] / results["budget"] - 1) <= 0.1).where(results["comparison"] == "budget", True).all()
    summary = pd.read_csv(study / "reports/summary.csv")
    assert len(summary) == 7 and (summary["seeds"] == 2).all()
    assert (summary["test_acc_low"] <= summary["test_acc_mean"]).all()
    assert (summary["test_acc_mean"] <= summary["test_acc_high"]).all()
    skeleton = pd.read_csv(study / "reports/skeleton.csv")
    fashion = Skeleton((28, 28, 1), 10)
    expected = param_count("lcn", 2, fashion) / param_count("cnn", 2, fashion)
    assert skeleton["param_ratio"].iloc[0] == pytest.approx(expected, rel=1e-5)
    metrics = json.loads((study / "reports/metrics.json").read_text())
    assert set(metrics) == {"mlp", "lcn", "gconv", "cnn", "cnn_gap"}
    report = (study / "reports/report.md").read_text()
    assert "figures/accuracy_vs_params.png" in report and "| MLP" in report
    assert f"- Trained on: {results['trained_on'].iloc[0]}, every model" in report
    for figure in ("accuracy_vs_params", "factorial", "permutation", "shift", "subsets", "first_layer", "training_curves"):
        png = (study / f"reports/figures/{figure}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000, figure


@pytest.mark.slow
def test_controls_produce_their_tables(study):
    factorial = pd.read_csv(study / "reports/factorial.csv").set_index("term")
    assert list(factorial.index) == ["mlp", "lcn", "gconv", "cnn", "locality", "sharing", "interaction"]
    cells = factorial["estimate"]
    assert factorial.loc["interaction", "estimate"] == pytest.approx(
        (cells["cnn"] - cells["gconv"]) - (cells["lcn"] - cells["mlp"]), abs=1e-5)
    permutation = pd.read_csv(study / "reports/permutation.csv")
    assert sorted(permutation["family"]) == ["cnn", "mlp"] and (permutation["seeds"] == 2).all()
    subsets = pd.read_csv(study / "reports/subsets.csv")
    assert sorted(zip(subsets["family"], subsets["train_size"])) == [("cnn", 300), ("cnn", 1000), ("mlp", 300), ("mlp", 1000)]
    assert (subsets.query("train_size == 300")["epochs"] == 5).all()  # 20 steps of 64 images: 4 per epoch
    shift = pd.read_csv(study / "reports/shift.csv")
    assert len(shift) == 5 * 2 * 3 and shift["test_acc"].between(0, 1).all()
    weights = pd.read_csv(study / "reports/weights.csv")
    assert len(weights) == 5 * 2 * 2
    trained = weights[weights["weights"] == "trained"].set_index(["family", "seed"])
    assert np.allclose(trained.loc["cnn", ["locality", "sharing"]], 1.0)
    assert trained.loc["mlp", "sharing"].isna().all() and (trained.loc["mlp", "locality"] < 0.5).all()
    assert (study / "runs/budget/gconv-9000/seed1/params.msgpack").is_file()
    report = (study / "reports/report.md").read_text()
    for section in ("## Sharing without locality: the 2x2", "## Control: permuted pixels", "## Translation",
                    "## Sample efficiency", "## What the networks learn", "## Cost of each part"):
        assert section in report
    curves = study / "runs/budget/cnn-4000/seed1/plots/metrics/val/acc.tsv"
    assert len(curves.read_text().strip().splitlines()) == 1 + 2  # header + one row per epoch


@pytest.mark.slow
def test_dvc_plots_show_renders_without_the_network(study, tmp_path):
    dvc(study, "plots", "show", "-o", str(tmp_path / "plots"))
    page = (tmp_path / "plots/index.html").read_text()
    assert "vegaEmbed(" in page and "accuracy_vs_params.png" in page
    assert not re.search(r"<script[^>]+src=", page)  # Vega is inlined, not loaded from a CDN


@pytest.mark.slow
def test_rerunning_a_cell_gives_identical_results(study):
    timing = ["train_seconds", "images_per_second"]
    before = pd.read_csv(study / "reports/results.csv").drop(columns=timing)
    out = dvc(study, "repro", "--force", "--single-item", "train-cnn@4000")
    assert "Running stage 'train-cnn@4000'" in out
    dvc(study, "repro")  # aggregate and report again, from the retrained cell
    pd.testing.assert_frame_equal(pd.read_csv(study / "reports/results.csv").drop(columns=timing), before)


@pytest.mark.slow
def test_repro_after_a_finished_run_does_nothing(study):
    out = dvc(study, "repro")
    assert "Running stage" not in out
    assert "dvc status" not in dvc(study, "status") or "up to date" in dvc(study, "status")


@pytest.mark.slow
def test_changing_one_budget_reruns_only_its_cells(study):
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["study"]["budgets"]["mlp"] = [9000, 25000]
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(study, "repro")
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == ["aggregate", "probe", "report", "train-mlp@25000"]
    results = pd.read_csv(study / "reports/results.csv")
    assert sorted(results.query("family == 'mlp' and comparison == 'budget'")["budget"].unique()) == [9000, 25000]


@pytest.mark.slow
def test_a_variant_through_the_sweep_is_saved_as_a_dvc_experiment(study):
    out = run([sys.executable, "-m", "whyconv.sweep", "--jobs", "2", "-S", "study.budgets.mlp=[9000]"], study)
    assert "(0 training stages)" in out and "FAILED" not in out  # dropping a budget trains nothing
    assert yaml.safe_load((study / "params.yaml").read_text())["study"]["budgets"]["mlp"] == [9000]
    results = pd.read_csv(study / "reports/results.csv")
    assert set(results.query("family == 'mlp' and comparison == 'budget'")["budget"]) == {9000}
    experiments = json.loads(dvc(study, "exp", "show", "--json"))
    saved = [exp for commit in experiments for exp in commit.get("experiments") or []]
    assert len(saved) == 1


@pytest.mark.slow
def test_switching_the_controls_off_trains_nothing_and_says_so(study):
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["controls"].update(max_shift=0, weights=False, permutation={"families": [], "seed": 0},
                              subsets={"families": [], "sizes": [], "min_steps": 20})
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(study, "repro")
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == ["aggregate", "probe", "report"]
    report = (study / "reports/report.md").read_text()
    assert report.count("Switched off") == 4
    assert not re.search(r"figures/(permutation|shift|subsets|priors_by_train_size|first_layer)\.png", report)  # no empty figures
    assert pd.read_csv(study / "reports/permutation.csv").empty


@pytest.mark.slow
def test_bad_params_stop_repro_with_one_message_and_leave_outputs_alone(study):
    before = {path: path.read_bytes() for path in (study / "reports").rglob("*") if path.is_file()}
    cells = sorted(p.name for p in (study / "runs/budget").iterdir())
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["train"]["learning_rate"] = -1
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=study, env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "error: invalid params.yaml:\n  train.learning_rate = -1: Input should be greater than 0" in done.stderr
    assert sorted(p.name for p in (study / "runs/budget").iterdir()) == cells
    assert {path: path.read_bytes() for path in (study / "reports").rglob("*") if path.is_file()} == before


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Headless, and kept off the network: the page must render from the file alone.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const decoded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  const headers = [...document.querySelectorAll("th")].map(th => th.textContent.trim());
  document.body.setAttribute("data-probe",
    `images=${decoded}/${images.length};headline=${headers.includes("MLP parameters")}`);
});
</script>"""


def chromium(*args: str, profile: Path) -> str:
    done = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)
    return done.stdout


@pytest.mark.slow
def test_report_page_is_self_contained_and_renders_in_a_real_browser(study, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium for this test")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    page = study / "reports/index.html"
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing to fetch from anywhere
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    dom = chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), profile=tmp_path / "p1")
    found = re.search(r'data-probe="images=(\d+)/(\d+);headline=(\w+)"', dom)
    assert found, dom[-2000:]
    decoded, images, headline = int(found[1]), int(found[2]), found[3]
    assert images >= 2 and decoded == images  # every figure decodes
    assert headline == "true"  # the parameters-to-reach table is there
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-first-screen.png"
    chromium("--window-size=1280,1000", f"--screenshot={shot}", page.as_uri(), profile=tmp_path / "p2")
    assert shot.read_bytes().startswith(b"\x89PNG")


def imported_modules(script: Path) -> set[str]:
    """The project's modules a script imports, directly or through another project module, read from
    the source (imports inside functions included), as paths from the repository root."""
    found, todo = set(), [script]
    while todo:
        for node in ast.walk(ast.parse(todo.pop().read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "whyconv":
                names = [f"whyconv.{a.name}" for a in node.names] if node.module == "whyconv" else [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("whyconv.")]
            else:
                continue
            for name in names:
                module = Path("src", *name.split(".")).with_suffix(".py")
                if module.as_posix() not in found:
                    found.add(module.as_posix())
                    todo.append(ROOT / module)
    return found


def test_every_stage_declares_every_module_its_script_imports():
    # DVC reruns a stage only when something it declares changes: a module the script imports but
    # the stage leaves out could change what the stage writes while `dvc repro` calls it up to date.
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    scripts = {name: re.match(r"python (pipelines/\w+\.py)", stage["cmd"]).group(1) for name, stage in stages.items()}
    imports = {script: imported_modules(ROOT / script) for script in set(scripts.values())}
    for name, stage in stages.items():
        missing = ({scripts[name]} | imports[scripts[name]]) - set(stage["deps"])
        assert not missing, f"stage {name} imports {sorted(missing)} but does not declare them in dvc.yaml"
