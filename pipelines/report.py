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
    setup = {"dataset": meta["dataset"], "sizes": meta["sizes"], **params.train.model_dump()}
    summary = pd.read_csv(REPORTS / "summary.csv")
    skeleton = pd.read_csv(REPORTS / "skeleton.csv")
    write_report(summary, skeleton, setup, REPORTS)
    print(f"wrote {REPORTS / 'report.md'}")


if __name__ == "__main__":
    stage.run(main)
