"""params.yaml: one typed schema, checked before any work starts.

A mistake in params.yaml stops a stage with one message naming the key, the bad value and what
is allowed, before anything is written.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from whyconv.capacity import BudgetError, Skeleton, solve_width
from whyconv.models import FAMILIES

IDX_TRAIN_SIZES = {"fashion_mnist": 60000, "mnist": 60000}  # known before preparing

Positive = Annotated[int, Field(gt=0)]
Family = Literal[FAMILIES]
ShiftFill = Literal["zero", "circular"]  # what the translation probe brings in at the uncovered edge


class ParamsError(ValueError):
    """params.yaml is invalid; the message names the key, the value and what is allowed."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(Strict):
    dataset: str = Field(pattern=r"^[a-z0-9_]+(/[a-z0-9_.]+)?$")
    idx_dir: str | None = None
    tfds_dir: str = "data/tfds"
    download: bool = False
    verify_checksums: bool = True
    val_size: Positive
    split_seed: Annotated[int, Field(ge=0)]
    train_size: Positive | None = None


class ModelParams(Strict):
    depth: Positive
    kernel_size: Positive
    stride: Positive
    dropout: Annotated[float, Field(ge=0, lt=1, strict=False)]


class TrainParams(Strict):
    epochs: Positive
    batch_size: Positive
    learning_rate: Annotated[float, Field(gt=0, strict=False)]
    weight_decay: Annotated[float, Field(ge=0, strict=False)]
    warmup_epochs: Annotated[float, Field(ge=0, strict=False)]
    augment_shift: Annotated[int, Field(ge=0, le=8)] = 0
    seeds: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)

    @field_validator("seeds")
    @classmethod
    def no_duplicates(cls, seeds: list[int]) -> list[int]:
        return _no_duplicates(seeds)


def _no_duplicates(values: list[int]) -> list[int]:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"each value may appear once; repeated: {repeated}")
    return values


class Budgets(Strict):
    """Parameter budgets per family; an empty list leaves the family out."""

    mlp: list[Positive]
    lcn: list[Positive]
    gconv: list[Positive]
    cnn: list[Positive]
    cnn_gap: list[Positive]

    @field_validator(*FAMILIES)
    @classmethod
    def no_duplicates(cls, budgets: list[int]) -> list[int]:
        return _no_duplicates(budgets)


class StudyParams(Strict):
    tolerance: Annotated[float, Field(gt=0, lt=1, strict=False)]
    budgets: Budgets
    skeleton_channels: list[Positive]


class Permutation(Strict):
    families: list[Family]
    seed: Annotated[int, Field(ge=0)]


class Subsets(Strict):
    families: list[Family]
    sizes: list[Positive]
    min_steps: Annotated[int, Field(ge=0)]

    @field_validator("sizes")
    @classmethod
    def no_duplicates(cls, sizes: list[int]) -> list[int]:
        return _no_duplicates(sizes)


class ControlsParams(Strict):
    matched_budget: Positive
    permutation: Permutation
    subsets: Subsets
    max_shift: Annotated[int, Field(ge=0, le=14)]
    shift_fill: ShiftFill = "zero"
    weights: bool

    @field_validator("permutation", "subsets")
    @classmethod
    def no_repeated_family(cls, value: Permutation | Subsets) -> Permutation | Subsets:
        _no_duplicates(value.families)
        return value


class Params(Strict):
    data: DataParams
    model: ModelParams
    train: TrainParams
    study: StudyParams
    controls: ControlsParams

    @model_validator(mode="after")
    def controls_at_a_trained_budget(self) -> Params:
        """The controls compare against the main runs at the matched budget, so those must exist."""
        budget = self.controls.matched_budget
        budgets = self.study.budgets.model_dump()
        if not any(budgets.values()):
            raise ValueError("study.budgets lists no budget for any family: nothing to train")
        missing = [f for f, listed in budgets.items() if listed and budget not in listed]
        if missing:
            raise ValueError(f"controls.matched_budget={budget} must be one of the budgets of every "
                             f"trained family; add it to study.budgets.{missing[0]}")
        for name in ("permutation", "subsets"):
            untrained = [f for f in getattr(self.controls, name).families if not budgets[f]]
            if untrained:
                raise ValueError(f"controls.{name}.families lists {untrained[0]}, which has no "
                                 f"budgets in study.budgets: add controls.matched_budget there")
        return self

    @model_validator(mode="after")
    def sizes_fit_the_data(self) -> Params:
        total = IDX_TRAIN_SIZES.get(self.data.dataset)
        if total is None or self.data.idx_dir is not None:
            return self  # size unknown until the prepare stage reads the data; it checks then
        if self.data.val_size >= total:
            raise ValueError(f"data.val_size={self.data.val_size} must be smaller than the "
                             f"{total} training images of {self.data.dataset}")
        available = total - self.data.val_size
        if self.data.train_size is not None and self.data.train_size > available:
            raise ValueError(f"data.train_size={self.data.train_size} is more than the {available} "
                             f"training images left after the validation split")
        train_size = self.data.train_size or available
        if self.train.batch_size > train_size:
            raise ValueError(f"train.batch_size={self.train.batch_size} is larger than the "
                             f"training set ({train_size} images)")
        for size in self.controls.subsets.sizes:
            if not self.train.batch_size <= size < train_size:
                raise ValueError(f"controls.subsets.sizes contains {size}: a subset must hold at least one "
                                 f"batch ({self.train.batch_size}) and fewer than the {train_size} "
                                 f"training images (the full set is the main run)")
        return self

    def cells(self) -> list[tuple[str, int]]:
        """(family, budget) of every matched-budget training cell of the main sweep."""
        return [(family, budget) for family, budgets in self.study.budgets.model_dump().items()
                for budget in budgets]


def skeleton_for(params: Params, image_shape: tuple[int, int, int], num_classes: int) -> Skeleton:
    m = params.model
    return Skeleton(tuple(image_shape), num_classes, m.depth, m.kernel_size, m.stride)


def check_budgets(params: Params, skeleton: Skeleton) -> None:
    """Every budget must be reachable by its family; raise ParamsError naming the first that is not."""
    for family, budget in params.cells():
        try:
            solve_width(family, budget, skeleton, params.study.tolerance)
        except BudgetError as err:
            raise ParamsError(f"params.yaml: study.budgets.{family} contains {budget}: {err}") from None


def _did_you_mean(location: tuple[Any, ...]) -> str:
    """Suggest the nearest allowed key for an unknown one."""
    model: type[BaseModel] = Params
    for part in location[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(str(location[-1]), list(model.model_fields), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def describe(error: ValidationError) -> str:
    """One line per problem: `key = value: what is wrong`."""
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key {key}.{_did_you_mean(item['loc'])}")
        elif item["type"] == "missing":
            lines.append(f"missing key {key}.")
        else:
            message = item["msg"].removeprefix("Value error, ")
            if item["loc"]:
                lines.append(f"{key} = {item['input']!r}: {message}.")
            else:
                lines.append(f"{message}.")
    return "invalid params.yaml:\n  " + "\n  ".join(lines)


def parse(raw: Any) -> Params:
    if not isinstance(raw, dict):
        raise ParamsError("invalid params.yaml: expected a mapping of groups (data, model, train, study, controls)")
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(describe(err)) from None
    if params.data.dataset in IDX_TRAIN_SIZES:  # image shape known now: check budgets up front
        check_budgets(params, Skeleton((28, 28, 1), 10, params.model.depth,
                                       params.model.kernel_size, params.model.stride))
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read params.yaml with a safe loader and validate it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run from the repository root") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    return parse(raw)
