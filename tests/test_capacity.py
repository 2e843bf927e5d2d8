"""Closed-form parameter counts against real parameter trees, and the budget solver."""

import jax
import jax.numpy as jnp
import pytest

from whyconv.capacity import BudgetError, Skeleton, param_count, solve_width
from whyconv.models import FAMILIES, build_model, count_params

SKELETONS = [
    Skeleton((28, 28, 1), 10),
    Skeleton((32, 32, 3), 10),
    Skeleton((28, 28, 1), 10, depth=3, kernel_size=5, stride=2),
    Skeleton((15, 13, 2), 7, depth=1, kernel_size=3, stride=1),
]


def real_count(family: str, width: int, skeleton: Skeleton) -> int:
    model = build_model(family, width, skeleton.num_classes, skeleton.depth, skeleton.kernel_size, skeleton.stride)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *skeleton.image_shape)))
    return count_params(shapes["params"])


@pytest.mark.parametrize("skeleton", SKELETONS, ids=lambda s: f"{s.image_shape}-d{s.depth}k{s.kernel_size}s{s.stride}")
@pytest.mark.parametrize("family", FAMILIES)
def test_formula_matches_initialized_parameter_tree(family, skeleton):
    for width in (1, 2, 3, 7, 16, 33):
        assert param_count(family, width, skeleton) == real_count(family, width, skeleton), (family, width)


def test_known_counts():
    fashion = Skeleton((28, 28, 1), 10)
    assert param_count("mlp", 112, fashion) == 101_706   # 784-112-112-10
    assert param_count("cnn", 32, fashion) == 50_186     # 3x3 stride 2, 32/64 channels
    assert param_count("lcn", 32, fashion) == 1_000_394  # the same, unshared


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("budget", [25_000, 100_000, 400_000])
def test_solver_lands_within_tolerance_and_picks_the_closest_width(family, budget):
    skeleton = Skeleton((28, 28, 1), 10)
    match = solve_width(family, budget, skeleton, tolerance=0.1)
    assert abs(match.params / budget - 1) <= 0.1
    assert match.params == param_count(family, match.width, skeleton)
    for other in (match.width - 1, match.width + 1):
        if other >= 1:
            assert abs(param_count(family, other, skeleton) - budget) >= abs(match.params - budget) * 0.9


def test_solver_says_when_budget_is_below_the_family_minimum():
    with pytest.raises(BudgetError, match="below the minimum of family 'lcn'.*3,930"):
        solve_width("lcn", 3000, Skeleton((28, 28, 1), 10))


def test_solver_says_when_budget_falls_between_two_widths():
    # LCN widths 4 and 5 have 26,274 and 37,250 parameters: 30k is more than 10% from both.
    with pytest.raises(BudgetError, match="width 4 has 26,274 parameters and width 5 has 37,250"):
        solve_width("lcn", 30_000, Skeleton((28, 28, 1), 10))
