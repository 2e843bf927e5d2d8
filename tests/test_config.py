"""params.yaml validation: each mistake gets one message naming the key and what is allowed."""

import copy
import re
import shlex

import pytest
import yaml

from whyconv.config import ParamsError, load_params, parse

DEFAULT = yaml.safe_load(open("params.yaml"))


def with_change(path: str, value, base: dict = DEFAULT):
    raw = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[last] = value
    return raw


def makefile_overrides(variable: str) -> list[tuple[str, str]]:
    """The `-S key=value` overrides of a variable in the Makefile, as `dvc exp run` receives them."""
    text = re.sub(r"\\\n", " ", open("Makefile").read())  # join continued lines
    line = re.search(rf"^{variable} := (.*)$", text, re.MULTILINE).group(1)
    # A make variable in it ($(LR), $(TWO_BY_TWO_ONLY)) takes its value (LR ?= 0.001 is the default).
    line = re.sub(r"\$\((\w+)\)", lambda m: re.search(rf"^{m[1]} [?:]= (.*)$", text, re.MULTILINE)[1], line)
    return [tuple(override.split("=", 1)) for override in shlex.split(line) if override != "-S"]


@pytest.mark.parametrize("variable", ["QUICK", "CROSSINGS", "LEARNING_RATE", "TWO_BY_TWO"])
def test_the_makefiles_experiments_are_valid_params(variable):
    """`make quick`, `make crossings`, `make learning-rate` and `make two-by-two` must not fail on their
    own params, however params.yaml moves."""
    raw = DEFAULT
    for path, value in makefile_overrides(variable):
        raw = with_change(path, yaml.safe_load(value), raw)
    params = parse(raw)  # every budget reachable too
    assert params != parse(DEFAULT)
    if variable == "CROSSINGS":
        assert len(params.train.seeds) == 10 and {f for f, _ in params.cells()} == {"mlp", "lcn", "gconv", "cnn"}
    if variable in ("LEARNING_RATE", "TWO_BY_TWO"):
        assert params.train.learning_rate != parse(DEFAULT).train.learning_rate
        assert {f for f, _ in params.cells()} == {"mlp", "lcn", "gconv", "cnn"}
    if variable == "TWO_BY_TWO":
        assert len(params.train.seeds) == 10 and {b for _, b in params.cells()} == {params.controls.matched_budget}


def test_default_params_are_valid():
    params = load_params("params.yaml")
    assert params.data.dataset == "fashion_mnist"
    assert len(params.cells()) == sum(len(b) for b in DEFAULT["study"]["budgets"].values())


@pytest.mark.parametrize("path, value, message", [
    ("train.learning_rat", 0.1, "unknown key train.learning_rat. Did you mean 'learning_rate'"),
    ("study.budget", {}, "unknown key study.budget. Did you mean 'budgets'"),
    ("train.epochs", "ten", "train.epochs = 'ten': Input should be a valid integer"),
    ("train.epochs", 0, "train.epochs = 0: Input should be greater than 0"),
    ("train.batch_size", -8, "train.batch_size = -8: Input should be greater than 0"),
    ("train.learning_rate", 0, "train.learning_rate = 0: Input should be greater than 0"),
    ("train.learning_rate", -0.1, "train.learning_rate = -0.1"),
    ("train.seeds", [], "train.seeds = []: List should have at least 1 item"),
    ("train.seeds", [0, 0], "repeated: [0]"),
    ("study.budgets.cnn", [1000, 1000], "study.budgets.cnn = [1000, 1000]: .*repeated: [1000]"),
    ("study.budgets.rnn", [1000], "unknown key study.budgets.rnn"),
    ("study.budgets.lcn", [3000, 25000], "study.budgets.lcn contains 3000: budget 3,000 is below the minimum of family 'lcn'"),
    ("study.budgets.lcn", [25000, 30000], "no width of family 'lcn' lands within 10% of budget 30,000"),
    ("study.budgets.gconv", [4000, 25000], "no width of family 'gconv' lands within 10% of budget 4,000"),
    ("controls.matched_budget", 10000, "controls.matched_budget=10000 must be one of the budgets of every trained family; add it to study.budgets.gconv"),
    ("study.budgets.gconv", [], "controls.permutation.families lists gconv, which has no budgets"),
    ("controls.permutation.families", ["mlp", "rnn"], "controls.permutation.families.1 = 'rnn': Input should be 'mlp', 'lcn', 'gconv', 'cnn' or 'cnn_gap'"),
    ("controls.subsets.families", ["cnn", "cnn"], "repeated: ['cnn']"),
    ("controls.subsets.sizes", [1000, 55000], "controls.subsets.sizes contains 55000: a subset must hold at least one batch"),
    ("controls.subsets.sizes", [100], "controls.subsets.sizes contains 100"),
    ("controls.max_shift", 20, "controls.max_shift = 20: Input should be less than or equal to 14"),
    ("controls.shift_fill", "reflect", "controls.shift_fill = 'reflect': Input should be 'zero' or 'circular'"),
    ("train.augment_shift", -1, "train.augment_shift = -1: Input should be greater than or equal to 0"),
    ("data.dataset", "Fashion MNIST!", "data.dataset = 'Fashion MNIST!': String should match pattern"),
    ("data.val_size", 60000, "data.val_size=60000 must be smaller than the 60000 training images"),
    ("data.train_size", 59000, "data.train_size=59000 is more than the 55000 training images"),
    ("train.batch_size", 70000, "train.batch_size=70000 is larger than the training set"),
    ("study.tolerance", 1.5, "study.tolerance = 1.5: Input should be less than 1"),
    ("model.depth", 0, "model.depth = 0"),
])
def test_each_mistake_gets_a_clear_message(path, value, message):
    with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace("]", r"\]").replace(". D", r"\. D")):
        parse(with_change(path, value))


def test_every_control_can_be_switched_off():
    raw = with_change("controls.permutation.families", [])
    raw["controls"]["subsets"]["sizes"] = []
    raw["study"]["budgets"]["cnn_gap"] = []
    raw["study"]["skeleton_channels"] = []
    params = parse(raw)
    assert not params.controls.permutation.families and ("cnn_gap", 25000) not in params.cells()


def test_missing_key_and_bad_yaml(tmp_path):
    raw = copy.deepcopy(DEFAULT)
    del raw["train"]["epochs"]
    with pytest.raises(ParamsError, match="missing key train.epochs"):
        parse(raw)
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "absent.yaml")


def test_yaml_is_read_safely(tmp_path):
    unsafe = tmp_path / "params.yaml"
    unsafe.write_text("data: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(unsafe)
