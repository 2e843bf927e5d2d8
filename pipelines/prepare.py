"""Stage `prepare`: the dataset through TFDS -> uint8 arrays in data/prepared (see whyconv.data)."""

import logging
from pathlib import Path

from whyconv import data, stage
from whyconv.atomic import atomic_path
from whyconv.config import load_params

OUT = Path("data/prepared")

# TFDS logs "Variant folder ... has no dataset_info.json" whenever it looks up a set that is not
# on disk yet. data.prepare then stops with the cause and the fix; the warning, printed first,
# only hides that message. Other TFDS warnings (during a download, say) still show.
logging.getLogger("absl").addFilter(lambda record: not record.getMessage().startswith("Variant folder"))


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
