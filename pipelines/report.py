"""Stage `report`: the aggregate tables -> reports/report.md and its figure."""

import json
from pathlib import Path

import pandas as pd

from whyconv import stage
from whyconv.config import load_params
from whyconv.report import write_report

REPORTS = Path("reports")


def main() -> None:
    params = load_params()
    meta = json.loads(Path("data/prepared/meta.json").read_text())
    setup = {"dataset": meta["dataset"], "sizes": meta["sizes"], "dropout": params.model.dropout,
             **params.train.model_dump()}
    tables = [pd.read_csv(REPORTS / f"{name}.csv") for name in ("results", "summary", "skeleton")]
    write_report(*tables, setup, REPORTS)
    print(f"wrote {REPORTS / 'report.md'}")


if __name__ == "__main__":
    stage.run(main)
