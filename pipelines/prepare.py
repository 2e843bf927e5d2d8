"""Stage `prepare`: the dataset through TFDS -> uint8 arrays in data/prepared (see whyconv.data)."""

from pathlib import Path

from whyconv import data, stage
from whyconv.atomic import atomic_path
from whyconv.config import load_params

OUT = Path("data/prepared")


def main() -> None:
    p = load_params().data
    splits = data.prepare(p.dataset, Path(p.tfds_dir), p.val_size, p.split_seed,
                          idx_dir=p.idx_dir, download=p.download, train_size=p.train_size,
                          verify=p.verify_checksums)
    with atomic_path(OUT) as tmp:
        data.save(splits, tmp)
    print(f"prepared {p.dataset}: {splits.meta.sizes} -> {OUT}")


if __name__ == "__main__":
    stage.run(main)
