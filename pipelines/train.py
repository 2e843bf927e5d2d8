"""Stage `train`: one cell of the study, every seed.

    python pipelines/train.py cnn --budget 100000             # matched-budget comparison
    python pipelines/train.py lcn --channels 16               # same-skeleton comparison
    python pipelines/train.py mlp --budget 25000 --permuted   # pixel-permutation control
    python pipelines/train.py gconv --subset 1000             # sample efficiency (matched budget)
"""

import argparse
from pathlib import Path

from whyconv import data, stage
from whyconv.config import load_params
from whyconv.models import FAMILIES
from whyconv.study import train_cell
from whyconv.training import join_hosts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=FAMILIES)
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--budget", type=int, help="parameter budget: the width is solved to match it")
    size.add_argument("--channels", type=int, help="first-layer channels (same-skeleton comparison)")
    size.add_argument("--subset", type=int, help="training images, at controls.matched_budget")
    parser.add_argument("--permuted", action="store_true", help="shuffle pixels (controls.permutation.seed)")
    args = parser.parse_args()
    if args.permuted and args.budget is None:
        parser.error("--permuted goes with --budget")
    join_hosts()
    out = train_cell(load_params(), data.load(Path("data/prepared")), args.family, budget=args.budget,
                     channels=args.channels, permuted=args.permuted, subset=args.subset)
    print(f"wrote {out}")


if __name__ == "__main__":
    stage.run(main)
