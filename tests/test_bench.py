"""The benchmark's arithmetic and its PyTorch twins (the figures themselves are not tested)."""

import pytest

from whyconv.bench import BENCH_FAMILIES, FASHION, bench_jax, markdown
from whyconv.compute import forward_flops, train_flops
from whyconv.capacity import param_count


def test_flops_follow_the_layers():
    # 784-16-16-10: 2 x (784*16 + 16*16 + 16*10) multiply-adds.
    assert forward_flops("mlp", 16, FASHION) == 2 * (784 * 16 + 16 * 16 + 16 * 10)
    # Sharing saves parameters, not arithmetic.
    assert forward_flops("lcn", 8, FASHION) == forward_flops("cnn", 8, FASHION)
    assert train_flops("cnn", 8, FASHION, 128) == 3 * 128 * forward_flops("cnn", 8, FASHION)


def test_jax_measurement_runs():
    compile_seconds, images_per_second, memory_mb = bench_jax("mlp", 4, 8, seconds=0.01)
    assert compile_seconds > 0 and images_per_second > 0 and memory_mb > 0


@pytest.mark.parametrize("family", BENCH_FAMILIES)
def test_torch_twins_have_the_same_parameter_count(family):
    torch = pytest.importorskip("torch", reason="PyTorch is the bench extra")
    from whyconv.torch_models import build_torch_model

    for width in (1, 4, 9):
        model = build_torch_model(family, width, FASHION)
        assert sum(p.numel() for p in model.parameters()) == param_count(family, width, FASHION)
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_markdown_table_lists_every_row():
    row = {"family": "cnn", "budget": 10_000, "width": 9, "params": 10_396, "compile_seconds": 1.0,
           "images_per_second": 1000, "train_gflop_per_step": 0.1, "gflops": 10.0, "share_of_peak": 0.05,
           "xla_memory_mb": 12.0, "torch_images_per_second": None, "speedup_vs_torch": None}
    result = {"machine": {"devices": ["cpu"], "jax": "x"}, "batch_size": 128, "matmul_peak_gflops": 100.0,
              "rows": [row], "seeds_at_100k_images_per_second": {"cnn": {"together": 1, "one_by_one": 2}}}
    text = markdown(result)
    assert "| CNN | 10,000 | 9 | 10,396 |" in text and "n/a" in text
