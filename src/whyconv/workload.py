"""How much arithmetic each training stage does, so that the sweep can start the largest first.

Workers that take the training stages in dvc.yaml's order leave a core idle at the end when a long
cell is listed late: in `make crossings` the GConv at 400k, a third of all the training, comes after
every MLP and LCN cell. Started largest first, the stages that finish last are short ones.

The estimate is analytic, known before anything trains: a training step's FLOPs
(`compute.train_flops`) times the steps the cell takes, times its seeds. It misjudges how fast each
family's arithmetic runs (the GConv's FFTs run at a few percent of the matmul peak, the CNN's
products at most of it), but it only has to put the few long cells first.

    python -m whyconv.workload    # {stage: training FLOPs} as JSON, for dvc.yaml's training stages
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from whyconv.capacity import Skeleton, solve_width
from whyconv.compute import train_flops
from whyconv.config import Params, load_params, skeleton_for

TRAINING_SCRIPT = "pipelines/train.py"
PREPARED = Path("data/prepared")


def stage_work(cmd: str, params: Params, skeleton: Skeleton, train_images: int) -> float | None:
    """The training FLOPs of the cell a stage command trains (None for a command that trains none).

    The command is pipelines/train.py's: a family, then --budget, --channels or --subset, and
    perhaps --permuted (which trains as much as the same budget on natural pixels).
    """
    words = shlex.split(cmd)
    if TRAINING_SCRIPT not in words:
        return None
    family, *options = [w for w in words[words.index(TRAINING_SCRIPT) + 1:] if w != "--permuted"]
    option = {name: int(value) for name, value in zip(options[::2], options[1::2])}
    train, batch = params.train, params.train.batch_size
    steps = train.epochs * (train_images // batch)
    if "--channels" in option:
        width = option["--channels"]
    else:
        budget = option.get("--budget", params.controls.matched_budget)
        if "--subset" in option:  # a small subset trains for more epochs, to at least min_steps
            steps = max(train.epochs * (option["--subset"] // batch), params.controls.subsets.min_steps)
        width = solve_width(family, budget, skeleton, params.study.tolerance).width
    return float(steps * len(train.seeds) * train_flops(family, width, skeleton, batch))


def training_work(params: Params, skeleton: Skeleton, train_images: int, repo: Path = Path(".")) -> dict[str, float]:
    """{stage: training FLOPs} for every stage of the repository's dvc.yaml that trains a cell."""
    from dvc.repo import Repo

    work = {stage.addressing: stage_work(stage.cmd, params, skeleton, train_images)
            for stage in Repo(str(repo)).index.stages}
    return {stage: flops for stage, flops in work.items() if flops is not None}


def main() -> None:
    meta = json.loads((PREPARED / "meta.json").read_text())
    params = load_params()
    skeleton = skeleton_for(params, meta["image_shape"], len(meta["class_names"]))
    print(json.dumps(training_work(params, skeleton, meta["sizes"]["train"])))


if __name__ == "__main__":
    main()
