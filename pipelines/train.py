"""Stage `train`: one cell of the study, every seed.

    python pipelines/train.py cnn --budget 100000   # matched-budget comparison
    python pipelines/train.py lcn --channels 16     # same-skeleton comparison
"""

import argparse
from pathlib import Path

from whyconv import data, stage
from whyconv.config import load_params
from whyconv.models import FAMILIES
from whyconv.study import train_cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=FAMILIES)
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--budget", type=int, help="parameter budget: the width is solved to match it")
    size.add_argument("--channels", type=int, help="first-layer channels (same-skeleton comparison)")
    args = parser.parse_args()
    out = train_cell(load_params(), data.load(Path("data/prepared")), args.family,
                     budget=args.budget, channels=args.channels)
    print(f"wrote {out}")


if __name__ == "__main__":
    stage.run(main)
