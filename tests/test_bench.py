"""The benchmark's arithmetic and its PyTorch twins (the figures themselves are not tested)."""

import dataclasses
import json
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from whyconv.bench import (FASHION, Row, bench_jax, comparison, gpu_precision, jax_step,
                           lcn_products_seconds, main, markdown, memory_mb, progress_line, timed)
from whyconv.capacity import param_count, spatial_sizes
from whyconv.compute import forward_flops, train_flops
from whyconv.models import FAMILIES, build_model


def test_flops_follow_the_layers():
    # 784-16-16-10: 2 x (784*16 + 16*16 + 16*10) multiply-adds.
    assert forward_flops("mlp", 16, FASHION) == 2 * (784 * 16 + 16 * 16 + 16 * 10)
    # Sharing saves parameters, not arithmetic.
    assert forward_flops("lcn", 8, FASHION) == forward_flops("cnn", 8, FASHION)
    assert train_flops("cnn", 8, FASHION, 128) == 3 * 128 * forward_flops("cnn", 8, FASHION)


def test_jax_measurement_runs():
    compile_seconds, images_per_second, memory_mb = bench_jax("mlp", 4, 8, seconds=0.01)
    assert compile_seconds > 0 and images_per_second > 0 and memory_mb > 0


@pytest.mark.parametrize("together", [False, True])
def test_the_timed_call_updates_its_state_in_place_as_training_does(together):
    step, states, x, y, _ = jax_step("mlp", 4, 8, seeds=2, together=together)
    params, opt = states[0]
    step(params, opt, x, y)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves((params, opt)))


def test_memory_counts_a_donated_buffer_once():
    megabyte = jnp.zeros(2**18, jnp.float32)
    compiled = jax.jit(lambda a: a + 1, donate_argnums=0).lower(megabyte).compile()
    assert memory_mb(compiled.memory_analysis()) == pytest.approx(1.0, abs=0.01)


def test_lcn_products_are_timed_for_every_layer(monkeypatch):
    import whyconv.bench as bench

    shapes = []
    monkeypatch.setattr(bench, "timed", lambda call, seconds: shapes.append(jax.tree.map(np.shape, call())) or 1.0)
    assert lcn_products_seconds(3, 8, seconds=0.01) == 2.0  # one timing per spatial layer
    # (output, kernel gradient, input gradient): the image needs none; the second layer's input does.
    assert shapes == [((14, 14, 3, 8), (14, 14, 9, 3), None), ((7, 7, 6, 8), (7, 7, 27, 6), (7, 7, 27, 8))]


def torch_layout(name: str, kernel: np.ndarray, flat_from: tuple[int, ...] | None) -> np.ndarray:
    """A Flax kernel in its PyTorch twin's layout."""
    if name.startswith("Dense"):
        if flat_from is not None:  # Flax flattens (h, w, c); PyTorch (c, h, w)
            kernel = kernel.reshape(*flat_from, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)
        return kernel.T
    if name.startswith("LocallyConnected"):  # patches are ordered (channel, row, column) in both
        return kernel.reshape(-1, *kernel.shape[2:])
    return kernel.transpose(3, 2, 0, 1)  # Conv and CircularConv: (..., in, out) -> (out, in, ...)


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_twins_compute_what_the_flax_models_compute(family):
    torch = pytest.importorskip("torch", reason="PyTorch is the bench extra")
    from whyconv.torch_models import build_torch_model

    x = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
    model = build_model(family, 3, 10)
    params = model.init(jax.random.key(0), x)["params"]
    twin = build_torch_model(family, 3, FASHION)
    flat_from = None if family in ("mlp", "cnn_gap") else (*spatial_sizes(FASHION)[-1], 3 * 2 ** (FASHION.depth - 1))
    # The twin's order: spatial layers, then dense ones, each by index.
    layers = sorted(params, key=lambda name: (name.startswith("Dense"), int(name.rsplit("_", 1)[1])))
    weights = [p for p in twin.parameters()]
    assert len(weights) == 2 * len(layers)
    with torch.no_grad():
        for name, weight, bias in zip(layers, weights[::2], weights[1::2], strict=True):
            weight.copy_(torch.from_numpy(np.ascontiguousarray(torch_layout(name, np.array(params[name]["kernel"]), flat_from))))
            b = np.array(params[name]["bias"])
            bias.copy_(torch.from_numpy(b.transpose(2, 0, 1) if b.ndim == 3 else b).reshape(bias.shape))
        out = twin(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(out, np.asarray(model.apply({"params": params}, x)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_twins_have_the_same_parameter_count(family):
    torch = pytest.importorskip("torch", reason="PyTorch is the bench extra")
    from whyconv.torch_models import build_torch_model

    for width in (1, 4, 9):
        model = build_torch_model(family, width, FASHION)
        assert sum(p.numel() for p in model.parameters()) == param_count(family, width, FASHION)
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def result_row(family="cnn", budget=10_000, width=9, images_per_second=1000, torch_images_per_second=None) -> dict:
    """One row of a run's `benchmarks.json` (the figures made up)."""
    return {"family": family, "budget": budget, "width": width, "params": 10_396, "compile_seconds": 1.0,
            "images_per_second": images_per_second, "train_gflop_per_step": 0.1, "gflops": 10.0,
            "share_of_peak": 0.05, "xla_memory_mb": 12.0, "torch_images_per_second": torch_images_per_second,
            "speedup_vs_torch": torch_images_per_second and round(images_per_second / torch_images_per_second, 2)}


def test_markdown_table_lists_every_row():
    result = {"machine": {"devices": ["cpu"], "jax": "x"}, "batch_size": 128, "matmul_peak_gflops": 100.0,
              "rows": [result_row()], "seeds_at_100k_images_per_second": {"cnn": {"together": 1, "one_by_one": 2}}}
    text = markdown(result)
    assert "| CNN | 10,000 | 9 | 10,396 |" in text and "n/a" in text
    assert "Processor" not in text  # results from before the cores were recorded
    assert "products alone" not in text  # nor the LCN's products
    result["lcn_products"] = {"100000": {"width": 9, "products_ms_per_step": 1.36, "best_share_of_peak": 0.54}}
    assert "| 100,000 | 9 | 1.36 | 54% |" in markdown(result)
    result["machine"].update(processor="AMD EPYC", cores=1, machine_cores=2)
    assert "- Processor: AMD EPYC; ran on 1 of its 2 cores" in markdown(result)
    result["machine"]["vector_extensions"] = ["AVX2", "AVX-512"]
    assert "- Processor: AMD EPYC (AVX2, AVX-512); ran on 1 of its 2 cores" in markdown(result)
    assert "--seconds" not in markdown(result)  # results from before the timing was recorded
    result["seconds_per_configuration"] = 1.5
    assert "- Each configuration timed for about 1.5 s after a warm-up call (`--seconds`)." in markdown(result)
    assert "Code version" not in markdown(result)  # results from before the commit was recorded
    result["code_version"] = "abc1234"
    assert "- Code version `abc1234`." in markdown(result)
    assert "PyTorch 2" not in markdown(result) and "XLA_FLAGS" not in markdown(result)
    result["machine"].update(torch="2.13.0+cpu", xla_flags="--xla_force_host_platform_device_count=2")
    assert "- Devices: cpu; JAX x, PyTorch 2.13.0+cpu; batch 128" in markdown(result)
    assert "- XLA_FLAGS: `--xla_force_host_platform_device_count=2`." in markdown(result)
    assert "malloc" not in markdown(result)  # results from before the allocator was set
    result["machine"]["malloc_keeps_freed_memory"] = True
    assert "- glibc's malloc kept freed memory for reuse" in markdown(result)
    result["machine"]["malloc_keeps_freed_memory"] = False
    assert "- The C library is not glibc: its malloc ran as it is" in markdown(result)


def test_a_gpu_run_says_what_float32_meant_to_each_framework():
    result = {"machine": {"backend": "gpu", "devices": ["cuda:0 (NVIDIA H200)"], "jax": "x", "torch": "2.13.0",
                          "gpu_precision": {"jax_default_matmul_precision": "default"}},
              "batch_size": 128, "matmul_peak_gflops": 100.0, "rows": [result_row()],
              "seeds_at_100k_images_per_second": {},
              "lcn_products": {"100000": {"width": 9, "products_ms_per_step": 0.13, "best_share_of_peak": 0.01}}}
    text = markdown(result)
    assert "products alone" not in text  # a CPU-only bound, launch overhead on a GPU
    assert "float32 products at JAX's `default` precision" in text and "TF32" in text
    assert "**PyTorch ran on the CPU**" in text  # a PyTorch build without CUDA beside JAX's GPU
    result["machine"].update(processor="AMD EPYC", cores=16, machine_cores=16)
    assert "ran on 16 of its 16 cores (the host's; the peak below is the GPU's)." in markdown(result)
    result["machine"]["gpu_precision"] |= {"torch_float32_matmul_precision": "highest", "torch_cudnn_allow_tf32": True}
    text = markdown(result)
    assert "matrix products at `highest`" in text and "convolutions in TF32" in text and "on the CPU" not in text
    result["machine"]["gpu_precision"] = None  # a CPU run
    assert "float32 products at" not in markdown(result) and "PyTorch on the GPU" not in markdown(result)


def test_gpu_precision_reads_each_frameworks_setting(monkeypatch):
    assert gpu_precision() is None  # on a CPU, float32 is float32
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with jax.default_matmul_precision("float32"):
        assert gpu_precision()["jax_default_matmul_precision"] == "float32"
    torch = pytest.importorskip("torch", reason="PyTorch is the bench extra")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert gpu_precision() == {"jax_default_matmul_precision": "default",
                               "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
                               "torch_cudnn_allow_tf32": False}


def test_progress_line_says_what_was_measured():
    row = Row("lcn", 100_000, 9, 98_794, 1.2, 46_808, 0.0738, 27.0, 0.152, 8.7, 7_573, 6.18)
    assert progress_line(row) == ("LCN at 100,000 (width 9): 46,808 images/s, 15% of the peak; "
                                  "PyTorch 7,573 images/s (6.18x)")
    without_torch = dataclasses.replace(row, torch_images_per_second=None, speedup_vs_torch=None)
    assert progress_line(without_torch) == "LCN at 100,000 (width 9): 46,808 images/s, 15% of the peak"


MAPPED_BLOCKS_AFTER_8_MIB = """
import ctypes, sys
from whyconv.bench import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype, libc.malloc.restype = MallInfo2, ctypes.c_void_p
before = libc.mallinfo2().hblks
block = libc.malloc(8 << 20)
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="sets glibc's malloc")
@pytest.mark.parametrize("setting, mapped", [("default", 1), ("keep", 0)])
def test_pytorch_sized_blocks_come_from_the_heap_when_freed_memory_is_kept(setting, mapped):
    # A fresh process, as glibc starts one: an 8 MiB block (a CNN's activations at 10k) is mapped
    # from the system, and unmapped when freed, unless keep_freed_memory() has run.
    out = subprocess.run([sys.executable, "-c", MAPPED_BLOCKS_AFTER_8_MIB, setting],
                         capture_output=True, text=True, check=True).stdout
    assert int(out) == mapped


def test_timing_keeps_at_most_one_call_waiting():
    # Calls that return at once and finish later, as JAX's do: the timer must not queue them up
    # for `seconds` and then wait for them all, far past it.
    issued, done, most_pending = [], set(), [0]

    def call():
        issued.append(len(issued))
        most_pending[0] = max(most_pending[0], len(issued) - len(done))
        return issued[-1]

    seconds_per_call = timed(call, seconds=0.05, min_calls=3, wait=done.add)
    assert most_pending[0] == 2  # the call being waited for, and the next one
    assert done == set(issued) and len(issued) >= 4  # the warm-up call and at least three timed
    assert seconds_per_call > 0


def test_a_subset_of_cells_is_measured_and_written(tmp_path, capsys):
    main(["--families", "mlp", "--budgets", "10000", "--seconds", "0.01", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "benchmarks.json").read_text())
    assert [(r["family"], r["budget"]) for r in result["rows"]] == [("mlp", 10_000)]
    assert list(result["seeds_at_100k_images_per_second"]) == ["mlp"] and result["lcn_products"] == {}
    assert result["seconds_per_configuration"] == 0.01
    assert result["machine"]["xla_flags"] == os.environ.get("XLA_FLAGS", "")
    assert (tmp_path / "benchmarks.md").read_text() == markdown(result)
    assert "MLP at 10,000 (width 12)" in capsys.readouterr().out  # progress as it goes


def test_the_lcn_products_bound_is_measured_on_a_cpu_only(tmp_path, monkeypatch):
    import whyconv.bench as bench

    # Only which parts run matters here, not their figures.
    monkeypatch.setattr(bench, "lcn_products_seconds", lambda width, batch, seconds: 1e-3)
    monkeypatch.setattr(bench, "matmul_peak", lambda seconds: 100.0)
    monkeypatch.setattr(bench, "bench_jax", lambda family, width, batch, seconds: (0.1, 1000.0, 1.0))
    monkeypatch.setattr(bench, "bench_torch", lambda family, width, batch, seconds: None)
    monkeypatch.setattr(bench, "bench_seeds", lambda *args: {"together": 1.0, "one_by_one": 1.0})
    args = ["--families", "lcn", "--budgets", "10000", "--seconds", "0.01", "--out", str(tmp_path)]
    main(args)
    assert list(json.loads((tmp_path / "benchmarks.json").read_text())["lcn_products"]) == ["10000"]
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    main(args)
    assert json.loads((tmp_path / "benchmarks.json").read_text())["lcn_products"] == {}


def test_bad_requests_fail_before_measuring_anything(tmp_path, monkeypatch, capsys):
    import whyconv.bench as bench

    monkeypatch.setattr(bench, "matmul_peak", lambda seconds: pytest.fail("measured before checking"))
    with pytest.raises(SystemExit):
        main(["--families", "cnn", "--budgets", "500", "--out", str(tmp_path)])
    assert "budget 500 is below the minimum of family 'cnn'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--families", "resnet", "--out", str(tmp_path)])
    assert "invalid choice: 'resnet'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_an_interrupted_run_writes_nothing(tmp_path, monkeypatch):
    import whyconv.bench as bench

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run", interrupted)
    with pytest.raises(SystemExit, match="interrupted: nothing written"):
        main(["--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def run_result(rows: list[dict], peak: float = 100.0, cores: int = 2) -> dict:
    return {"code_version": "abc1234", "machine": {"processor": "AMD EPYC", "cores": cores, "machine_cores": 2},
            "batch_size": 128, "matmul_peak_gflops": peak, "rows": rows}


def test_two_runs_are_compared_cell_by_cell(tmp_path, capsys):
    before = run_result([result_row("cnn", images_per_second=1000, torch_images_per_second=500),
                         result_row("lcn", 10_000, width=2), result_row("gconv", 10_000, width=3)])
    after = run_result([result_row("cnn", images_per_second=1500, torch_images_per_second=550),
                        result_row("lcn", 10_000, width=3, images_per_second=900),
                        result_row("mlp", 10_000, width=12)], peak=110.0)
    (tmp_path / "before").mkdir()
    (tmp_path / "before" / "benchmarks.json").write_text(json.dumps(before))
    (tmp_path / "after.json").write_text(json.dumps(after))
    main(["--compare", str(tmp_path / "before"), str(tmp_path / "after.json")])  # a folder or the file itself
    text = capsys.readouterr().out
    assert text == comparison(before, after)
    assert "| CNN | 10,000 | 9 | 1,000 | 1,500 | 1.50x | 1.10x |" in text  # PyTorch's column: the drift
    assert "| LCN | 10,000 | 2 -> 3 | 1,000 | 900 | 0.90x | n/a |" in text
    assert "Measured in one run only: MLP at 10,000 (after only); GCONV at 10,000 (before only)." in text
    assert "Matmul peak, after / before: 1.10x" in text and "differ" not in text
    assert "The runs differ in cores: their ratios measure that too" in comparison(before, run_result([], cores=1))
    flagged = run_result([], cores=1)
    flagged["machine"]["xla_flags"] = "--xla_cpu_enable_fast_math=true"
    text = comparison(before, flagged)
    assert "The runs differ in cores and XLA_FLAGS:" in text
    assert "- after: code `abc1234`, AMD EPYC, 1 of 2 cores, batch 128, XLA_FLAGS `--xla_cpu_enable_fast_math=true`" in text
    assert "PyTorch's column measures" not in text
    on_gpu = run_result([])
    on_gpu["machine"]["gpu_precision"] = {"jax_default_matmul_precision": "float32"}
    assert "The runs differ in float32 precision on the GPU:" in comparison(run_result([]), on_gpu)
    for result, version in ((before, "2.13.0"), (flagged, "2.15.0")):
        result["machine"]["torch"] = version
    assert "- The runs differ in PyTorch version: PyTorch's column measures that too." in comparison(before, flagged)
    flagged["machine"]["malloc_keeps_freed_memory"] = True  # runs from before it did not record it
    assert ("- The runs differ in PyTorch version and glibc's malloc keeping freed memory (`keep_freed_memory`): "
            "PyTorch's column measures that too.") in comparison(before, flagged)
    del before["machine"]  # results from before the machine was recorded
    assert "- before: code `abc1234`, processor unrecorded, batch 128, matmul peak 100 GFLOP/s" in comparison(
        before, flagged)


def test_comparing_what_is_not_a_run_says_what_is_wrong(tmp_path, capsys):
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    for path, message in ((tmp_path / "missing", "missing: no such file"),
                          (tmp_path / "broken.json", "broken.json cannot be read as a benchmark result"),
                          (tmp_path / "other.json", "other.json is not a benchmark result")):
        with pytest.raises(SystemExit):
            main(["--compare", str(path), str(path)])
        assert message in capsys.readouterr().err
