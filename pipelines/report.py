"""Stage `report`: the aggregate tables -> reports/report.md, reports/index.html and their figures."""

import json
from pathlib import Path

import pandas as pd
import yaml

from whyconv import stage
from whyconv.config import load_params
from whyconv.report import report_version, write_report

REPORTS = Path("reports")
TABLES = ("results", "summary", "skeleton", "curves", "factorial", "permutation", "subsets", "shift", "weights")


def main() -> None:
    params = load_params()
    meta = json.loads(Path("data/prepared/meta.json").read_text())
    setup = {"dataset": meta["dataset"], "sizes": meta["sizes"], "dropout": params.model.dropout,
             "shift_fill": params.controls.shift_fill,
             "model": params.model.model_dump(), "version": report_version(),
             "params": yaml.safe_load(Path("params.yaml").read_text()), **params.train.model_dump()}
    tables = {name: pd.read_csv(REPORTS / f"{name}.csv") for name in TABLES}
    write_report(tables, setup, REPORTS)
    print(f"wrote {REPORTS / 'report.md'} and {REPORTS / 'index.html'}")


if __name__ == "__main__":
    stage.run(main)
