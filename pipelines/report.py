"""Stage `report`: the aggregate tables -> reports/report.md, reports/index.html and their figures."""

import json
import subprocess
from pathlib import Path

import pandas as pd
import yaml

from whyconv import stage
from whyconv.config import load_params
from whyconv.report import write_report

REPORTS = Path("reports")
TABLES = ("results", "summary", "skeleton", "curves", "factorial", "permutation", "subsets", "shift", "weights")


def code_version() -> str:
    """The git commit, marked when the code or params differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "src", "pipelines", "params.yaml",
                                  "dvc.yaml"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit} with uncommitted changes" if changed else commit


def main() -> None:
    params = load_params()
    meta = json.loads(Path("data/prepared/meta.json").read_text())
    setup = {"dataset": meta["dataset"], "sizes": meta["sizes"], "dropout": params.model.dropout,
             "model": params.model.model_dump(), "version": code_version(),
             "params": yaml.safe_load(Path("params.yaml").read_text()), **params.train.model_dump()}
    tables = {name: pd.read_csv(REPORTS / f"{name}.csv") for name in TABLES}
    write_report(tables, setup, REPORTS)
    print(f"wrote {REPORTS / 'report.md'} and {REPORTS / 'index.html'}")


if __name__ == "__main__":
    stage.run(main)
