"""Data: image classification sets through tensorflow-datasets, cached as arrays.

Two roads lead to the same arrays:

* `fashion_mnist` and `mnist` are read by a project-owned TFDS builder (`IdxImages`) from
  IDX(.gz) files in a local folder (found where Debian's `dataset-fashion-mnist` package puts
  them, or set with `data.idx_dir`). It writes `array_record` and needs no TensorFlow and no
  network. TFDS's own `fashion_mnist` builder cannot be used offline: Debian's `.gz` files
  differ in bytes (gzip header) from upstream and fail its checksums.
* Any other TFDS catalog image-classification set (cifar10, svhn_cropped, ...) is built by TFDS
  itself. That needs the `catalog` extra (TensorFlow) and `data.download: true`; downloads are
  off by default, so a missing set fails at once with a message instead of retrying the network
  for minutes.

`prepare` turns either into uint8 arrays (train / val / test, the validation split carved from
train with a fixed seed) that training loads from disk without touching TFDS again.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Debian's packages put the IDX files here (`dpkg -L dataset-fashion-mnist`).
IDX_SEARCH_PATHS = {
    "fashion_mnist": ["/usr/share/datasets/fashion-mnist"],
    "mnist": ["/usr/share/datasets/mnist"],
}
IDX_INSTALL_HINT = {
    "fashion_mnist": "apt-get install dataset-fashion-mnist",
    "mnist": "download the four MNIST IDX files into a folder",
}
IDX_CLASS_NAMES = {
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "mnist": [str(digit) for digit in range(10)],
}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGE_SHAPE = (28, 28, 1)
# sha256 of the decompressed official files (Debian's .gz differ in header bytes only).
IDX_SHA256 = {
    "fashion_mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}


class DataError(RuntimeError):
    """The dataset is missing, unreadable or not what the study needs; the message says the fix."""


# --------------------------------------------------------------------------- IDX files


def read_bytes(path: Path) -> bytes:
    """The content of a file, decompressed if it ends in .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as err:  # gzip raises both on truncated or corrupt files
        raise DataError(f"cannot read IDX file {path}: {err}. The file is damaged or "
                        f"truncated: reinstall or download it again.") from err


def verify_checksums(dataset: str, folder: Path) -> None:
    """Check the IDX files of `dataset` against the official digests, where they are known."""
    for stem, expected in IDX_SHA256.get(dataset, {}).items():
        path = find_idx_file(folder, stem)
        if hashlib.sha256(read_bytes(path)).hexdigest() != expected:
            raise DataError(
                f"{path} is not the official {dataset} file (sha256 mismatch): it is damaged or "
                f"different data. Fix: {IDX_INSTALL_HINT[dataset]} (with --reinstall), or, for "
                f"your own IDX data, set data.verify_checksums: false.")


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) of unsigned bytes into an array."""
    raw = read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or padded: {len(raw)} bytes, header says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_file(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder} has no {stem}(.gz)")


def find_idx_dir(dataset: str, idx_dir: str | None) -> Path | None:
    """The folder holding the four IDX files of `dataset`, if there is one.

    With `idx_dir` set, that folder must hold them (DataError otherwise); without it, the
    places where Debian's packages install them are searched.
    """
    candidates = [Path(idx_dir)] if idx_dir else [Path(p) for p in IDX_SEARCH_PATHS[dataset]]
    for folder in candidates:
        if all((folder / f"{stem}.gz").is_file() or (folder / stem).is_file()
               for pair in IDX_FILES.values() for stem in pair):
            return folder
    if idx_dir:
        raise DataError(
            f"data.idx_dir={idx_dir} does not hold the {dataset} IDX files "
            f"{', '.join(s for pair in IDX_FILES.values() for s in pair)} (.gz or not). "
            f"Fix: point data.idx_dir at the folder that does, or set it to null.")
    return None


# --------------------------------------------------------------------------- TFDS builder


@functools.cache  # TFDS registers a builder class once per name
def _idx_builder_class():
    """Define the TFDS builder lazily: importing TFDS costs seconds that tests and train skip."""
    import tensorflow_datasets as tfds

    class IdxImages(tfds.core.GeneratorBasedBuilder):
        """28x28 grey-scale image classification sets stored as IDX files in a manual dir."""

        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in IDX_CLASS_NAMES]
        MANUAL_DOWNLOAD_INSTRUCTIONS = "Put the four IDX(.gz) files of the set in the manual dir."

        def _info(self) -> tfds.core.DatasetInfo:
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Tensor(shape=IDX_IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=IDX_CLASS_NAMES[self.builder_config.name]),
                }),
                supervised_keys=("image", "label"),
                disable_shuffling=True,  # keep the files' order: splits stay reproducible from the IDX files alone
            )

        def _split_generators(self, dl_manager):
            folder = Path(dl_manager.manual_dir)
            return {
                split: self._generate_examples(find_idx_file(folder, images), find_idx_file(folder, labels))
                for split, (images, labels) in IDX_FILES.items()
            }

        def _generate_examples(self, images_path: Path, labels_path: Path):
            images, labels = read_idx(images_path), read_idx(labels_path)
            if images.ndim != 3 or images.shape[1:] != IDX_IMAGE_SHAPE[:2]:
                raise DataError(f"{images_path} holds images of shape {images.shape[1:]}, not 28x28")
            if len(images) != len(labels):
                raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
            for i, (image, label) in enumerate(zip(images, labels)):
                yield i, {"image": image[..., None], "label": int(label)}

    return IdxImages


def build_idx_dataset(dataset: str, idx_dir: Path, tfds_dir: Path):
    """Build (always afresh: 5 s) the `idx_images/<dataset>` TFDS set; return its data source.

    The previous build is removed first: TFDS refuses to rebuild over a prepared set
    ("Cannot override the file format when the DatasetInfo is already fully initialized").
    """
    import tensorflow_datasets as tfds

    shutil.rmtree(tfds_dir / "idx_images" / dataset, ignore_errors=True)
    builder = _idx_builder_class()(config=dataset, data_dir=str(tfds_dir))
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(idx_dir), download_mode=tfds.download.GenerateMode.FORCE_REDOWNLOAD),
    )
    return {split: builder.as_data_source(split=split) for split in IDX_FILES}, builder.info


def catalog_dataset(dataset: str, tfds_dir: Path, download: bool, hint: str = ""):
    """A TFDS catalog set's data source; downloads only when `download` is true."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(dataset, data_dir=str(tfds_dir))
    except tfds.core.registered.DatasetNotFoundError as err:
        raise DataError(f"unknown dataset {dataset!r}: not a TFDS catalog name. "
                        f"Set data.dataset to fashion_mnist, mnist or a TFDS catalog "
                        f"image-classification set such as cifar10.") from err
    if not builder.is_prepared():
        if not download:
            raise DataError(
                f"dataset {dataset!r} is not prepared in {tfds_dir} and downloads are off. Fix: "
                f"pip install -e '.[catalog]' (TensorFlow, to build it), then run with "
                f"data.download=true (e.g. dvc exp run -S data.download=true) on a machine "
                f"with network access.{hint}")
        builder.download_and_prepare(file_format="array_record")
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DataError(f"dataset {dataset!r} has no image/label features: not image classification")
    return {split: builder.as_data_source(split=split) for split in IDX_FILES}, builder.info


# --------------------------------------------------------------------------- arrays


@dataclass(frozen=True)
class Meta:
    dataset: str
    image_shape: tuple[int, int, int]
    class_names: list[str]
    mean: float  # pixel mean and std (over the training split, in [0, 1] units)
    std: float
    sizes: dict[str, int]


@dataclass(frozen=True)
class Splits:
    meta: Meta
    arrays: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 images NHWC, int32 labels)

    @property
    def num_classes(self) -> int:
        return len(self.meta.class_names)


def source_to_arrays(source) -> tuple[np.ndarray, np.ndarray]:
    examples = source.__getitems__(list(range(len(source))))
    images = np.stack([np.asarray(e["image"], dtype=np.uint8) for e in examples])
    labels = np.asarray([e["label"] for e in examples], dtype=np.int32)
    if images.ndim == 3:  # grey-scale sets without a channel axis
        images = images[..., None]
    return images, labels


def split_validation(images: np.ndarray, labels: np.ndarray, val_size: int, seed: int):
    """Carve a seeded, fixed validation split out of the training split."""
    order = np.random.default_rng(seed).permutation(len(images))
    val, train = order[:val_size], order[val_size:]
    return (images[train], labels[train]), (images[val], labels[val])


def prepare(
    dataset: str,
    tfds_dir: Path,
    val_size: int,
    split_seed: int,
    idx_dir: str | None = None,
    download: bool = False,
    train_size: int | None = None,
    verify: bool = True,
) -> Splits:
    """Load `dataset` through TFDS and split it into train / val / test arrays.

    With `verify`, local IDX files are checked against the official digests first.
    """
    folder = find_idx_dir(dataset, idx_dir) if dataset in IDX_CLASS_NAMES else None
    if folder is not None:
        if verify:
            verify_checksums(dataset, folder)
        source, info = build_idx_dataset(dataset, folder, tfds_dir)
    else:
        hint = ""
        if dataset in IDX_CLASS_NAMES:
            hint = (f" Or, offline: {IDX_INSTALL_HINT[dataset]} (searched "
                    f"{', '.join(IDX_SEARCH_PATHS[dataset])}), or set data.idx_dir to a folder "
                    f"with its four IDX files.")
        source, info = catalog_dataset(dataset, tfds_dir, download, hint)
    train_images, train_labels = source_to_arrays(source["train"])
    test = source_to_arrays(source["test"])
    if val_size >= len(train_images):
        raise DataError(f"data.val_size={val_size} leaves no training data: "
                        f"{dataset} has {len(train_images)} training images")
    train, val = split_validation(train_images, train_labels, val_size, split_seed)
    if train_size is not None:
        if train_size > len(train[0]):
            raise DataError(f"data.train_size={train_size} is more than the {len(train[0])} "
                            f"training images left after the validation split")
        train = (train[0][:train_size], train[1][:train_size])
    pixels = train[0].astype(np.float64) / 255.0
    meta = Meta(
        dataset=dataset,
        image_shape=tuple(int(d) for d in train[0].shape[1:]),
        class_names=list(info.features["label"].names),
        mean=round(float(pixels.mean()), 6),
        std=round(float(pixels.std()), 6),
        sizes={"train": len(train[0]), "val": len(val[0]), "test": len(test[0])},
    )
    return Splits(meta, {"train": train, "val": val, "test": test})


def save(splits: Splits, folder: Path) -> None:
    """Write the arrays as .npy (byte-identical for identical data) plus meta.json."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in splits.arrays.items():
        np.save(folder / f"{split}_images.npy", images)
        np.save(folder / f"{split}_labels.npy", labels)
    (folder / "meta.json").write_text(json.dumps(asdict(splits.meta), indent=2) + "\n")


def load(folder: Path) -> Splits:
    """Read what `save` wrote; a missing cache names the stage that makes it."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"no prepared data in {folder}. Fix: run `dvc repro prepare` first.")
    raw = json.loads(meta_path.read_text())
    meta = Meta(**{**raw, "image_shape": tuple(raw["image_shape"])})
    arrays = {
        split: (np.load(folder / f"{split}_images.npy"), np.load(folder / f"{split}_labels.npy"))
        for split in ("train", "val", "test")
    }
    return Splits(meta, arrays)

