"""The benchmark: training throughput of every family against the machine's own limits.

    python -m whyconv.bench                              # or: make bench
    python -m whyconv.bench --families lcn --budgets 100000 --out /tmp/lcn   # one cell
    python -m whyconv.bench --compare /tmp/before /tmp/after     # two runs, cell by cell

On the machine at hand it measures the float32 matmul peak, then for every family at three
parameter budgets: first-call compile time, steady-state training throughput, analytic FLOPs
per step, achieved GFLOP/s and its share of the peak, XLA's memory estimate, and the same
architecture trained the same way in PyTorch (when installed: the `bench` extra). It also
times the LCN's matrix products alone (the most of the peak an LCN step could reach) and seeds
trained together (vmap) against one after another. Results go to
reports/benchmarks.md and reports/benchmarks.json (or --out). This is not a test: it reports
figures. To measure a change to one family, time only it (--families, --budgets), before and after,
and compare the two runs (--compare).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from whyconv.atomic import write_text
from whyconv.capacity import BudgetError, Match, Skeleton, solve_width
from whyconv.compute import train_flops
from whyconv.layers import per_position_product, usable_cores
from whyconv.models import FAMILIES, build_model
from whyconv.provenance import code_version, processor
from whyconv.training import STEPS_PER_CALL, compiler_options, loop_steps

FASHION = Skeleton((28, 28, 1), 10)
BUDGETS = (10_000, 100_000, 1_000_000)


def width_near(family: str, budget: int) -> Match:
    """The nearest width, even when it misses the budget by more than the study allows (GConv's
    widths jump from 8,839 to 13,350 parameters around 10k): the table lists the actual count."""
    return solve_width(family, budget, FASHION, tolerance=0.5)


def timed(call: Callable[[], object], seconds: float, min_calls: int = 2,
          wait: Callable[[object], object] = jax.block_until_ready) -> float:
    """Seconds per call in steady state (after one warm-up call), measured for about `seconds`.

    JAX (and PyTorch on a GPU) return before the work is done. A loop that only watched the clock
    would queue calls for `seconds`, then wait for all of them: ten times as long for the GConv at
    1M. Here each call is issued before waiting (`wait` blocks until an output is ready) for the
    one before it: the device always has the next call, and the host never runs more than one
    call ahead, so the measurement ends within a call of `seconds`.
    """
    wait(call())
    calls, start, previous = 0, time.perf_counter(), None
    while calls < min_calls or time.perf_counter() - start < seconds:
        out = call()
        if previous is not None:
            wait(previous)
        previous, calls = out, calls + 1
    wait(previous)
    return (time.perf_counter() - start) / calls


def matmul_peak(seconds: float = 1.0) -> float:
    """float32 GFLOP/s of the best square matmul (random data): the reference for every share below."""
    sizes = (1024, 2048, 4096) if jax.default_backend() == "cpu" else (4096, 8192, 16384)
    f = jax.jit(lambda x: x @ x, compiler_options=compiler_options())
    best = 0.0
    for n in sizes:
        a = jax.random.normal(jax.random.key(n), (n, n), jnp.float32)
        best = max(best, 2 * n**3 / timed(lambda: f(a), seconds) / 1e9)
    return best


def jax_step(family: str, width: int, batch: int, seeds: int = 1, together: bool = False):
    """A jitted AdamW training call (as in whyconv.training: `STEPS_PER_CALL` steps in one call),
    its states, images, labels, and the steps it takes."""
    model = build_model(family, width, FASHION.num_classes)
    tx = optax.adamw(1e-3)
    per_call = STEPS_PER_CALL
    # Two batches, taken in turn as in training: a loop of steps over one batch would let XLA
    # hoist the work on the images alone (the first layer's patches or FFT) out of the loop.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, batch, 28, 28, 1)), jnp.float32)
    y = jnp.zeros((2, batch), jnp.int32)

    def init(key):
        params = model.init(key, x[0, :1])["params"]
        return params, tx.init(params)

    def step(params, opt, x, y):
        def one(state, i):
            params, opt = state

            def loss(p):
                logits = model.apply({"params": p}, x[i % 2])
                return optax.softmax_cross_entropy_with_integer_labels(logits, y[i % 2]).mean()

            value, grads = jax.value_and_grad(loss)(params)
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), opt), value

        (params, opt), values = loop_steps(one, per_call)((params, opt), 0, per_call)
        return params, opt, values[-1]

    keys = jax.random.split(jax.random.key(0), seeds)
    # As in training, the call donates its parameters and optimizer state: their new values are
    # written in place of the old, not into fresh buffers.
    jit = functools.partial(jax.jit, donate_argnums=(0, 1), compiler_options=compiler_options())
    if together:
        return jit(jax.vmap(step, in_axes=(0, 0, None, None))), [jax.vmap(init)(keys)], x, y, per_call
    return jit(step), [init(k) for k in keys], x, y, per_call


@dataclass
class Row:
    family: str
    budget: int
    width: int
    params: int
    compile_seconds: float
    images_per_second: float
    train_gflop_per_step: float
    gflops: float
    share_of_peak: float
    xla_memory_mb: float
    torch_images_per_second: float | None
    speedup_vs_torch: float | None


def bench_jax(family: str, width: int, batch: int, seconds: float) -> tuple[float, float, float]:
    """(compile seconds, images/s, XLA's memory estimate in MB) of the training call."""
    step, states, x, y, per_call = jax_step(family, width, batch)
    (params, opt), = states
    start = time.perf_counter()
    compiled = step.lower(params, opt, x, y).compile()
    compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    mb = memory_mb(memory) if memory is not None else float("nan")
    state = {"p": params, "o": opt}

    def one():
        state["p"], state["o"], loss = compiled(state["p"], state["o"], x, y)
        return loss

    return compile_seconds, batch * per_call / timed(one, seconds), mb


def memory_mb(memory) -> float:
    """XLA's estimate of the call's memory: arguments, outputs and temporaries, counting once
    the outputs written in place of a donated argument."""
    total = (memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
             - memory.alias_size_in_bytes)
    return total / 2**20


def bench_seeds(family: str, width: int, batch: int, seeds: int, seconds: float) -> dict[str, float]:
    """Images/s over all seeds: one vmapped call, against one plain call per seed."""
    step, states, x, y, per_call = jax_step(family, width, batch, seeds, together=True)
    state = list(states[0])

    def together():
        state[0], state[1], loss = step(state[0], state[1], x, y)
        return loss

    plain, singles, _, _, _ = jax_step(family, width, batch, seeds)
    singles = [list(s) for s in singles]

    def one_by_one():
        losses = []
        for s in singles:
            s[0], s[1], loss = plain(s[0], s[1], x, y)
            losses.append(loss)
        return losses

    images = seeds * batch * per_call
    return {"together": images / timed(together, seconds), "one_by_one": images / timed(one_by_one, seconds)}


def bench_torch(family: str, width: int, batch: int, seconds: float) -> float | None:
    """Images/s of the same architecture and optimizer in PyTorch, or None without torch.

    On the device JAX uses: the CPU (PyTorch's default oneDNN kernels), or the GPU when JAX has one.
    """
    try:
        import torch
    except ImportError:
        return None
    from whyconv.torch_models import build_torch_model

    device = torch_device(torch)
    torch.manual_seed(0)
    model = build_torch_model(family, width, FASHION).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return batch / timed(step, seconds, wait=lambda loss: loss.item())


# glibc's malloc hands a freed block of over 128 KiB straight back to the system, until a first
# such free raises that threshold for the rest of the process. PyTorch allocates each step's
# activations anew, so without the raise it faults in and zeroes fresh pages every step: on the
# sixth CPU of docs/performance.md its CNNs at 10k then ran 1.2-1.7x slower, and which state a run
# met hung on what had run before (the matmul peak's arrays raised the threshold). Setting both
# thresholds measures PyTorch in its faster state every time. XLA reuses its buffers within a
# call, so whyconv's figures do not move with them.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks of up to 32 MiB for reuse, process-wide (see above).
    False where the C library is not glibc, which has its own allocator and is left as it is."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def torch_device(torch) -> str:
    """Where PyTorch's twins train: on the GPU when JAX has one and PyTorch was built for it."""
    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def gpu_precision() -> dict[str, object] | None:
    """On a GPU, the precision each framework's float32 products ran at, or None on a CPU.

    Both frameworks are left at their defaults, and those differ: JAX's default may compute float32
    products as TF32 on NVIDIA's tensor cores (Ampere on), the matmul peak and the training steps
    alike; PyTorch keeps full float32 for matrix products and lets cuDNN use TF32 for convolutions.
    """
    if jax.default_backend() != "gpu":
        return None
    precision = {"jax_default_matmul_precision": jax.config.jax_default_matmul_precision or "default"}
    try:
        import torch
    except ImportError:
        return precision
    if torch_device(torch) == "cuda":
        precision |= {"torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
                      "torch_cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32)}
    return precision


def torch_version() -> str | None:
    """The installed PyTorch's version (its column's figures depend on it), or None."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def lcn_products_seconds(width: int, batch: int, seconds: float) -> float:
    """Seconds per training step that an LCN of this width spends in its layers' matrix products
    alone: each layer's per-position product forward, and backward its kernel's gradient and (past
    the first layer, whose input is the image) its input's, timed as XLA compiles them on their own.

    Everything else in a step (patches, activations, the classifier, the optimizer) takes time on
    top, so a step's FLOPs over this time bound the share of the peak any LCN step can reach here.
    """
    model = build_model("lcn", width, FASHION.num_classes)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *FASHION.image_shape)))["params"]
    products = jax.jit(layer_products, static_argnames="input_grad", compiler_options=compiler_options())
    rng, total = np.random.default_rng(0), 0.0
    for layer in range(FASHION.depth):
        kernel_shape = shapes[f"LocallyConnected_{layer}"]["kernel"].shape  # (h, w, patch, out)
        kernel = jnp.asarray(rng.normal(size=kernel_shape), jnp.float32)
        patches = jnp.asarray(rng.normal(size=(*kernel_shape[:3], batch)), jnp.float32)
        total += timed(lambda: products(kernel, patches, input_grad=layer > 0), seconds)
    return total


def bounds_lcn_step(backend: str) -> bool:
    """Whether the LCN's products, timed alone, bound its training step on this backend: on a CPU.
    On an accelerator each products call is a launch of its own (a training call launches fifty
    steps at once), so its time is mostly launch overhead: on an H200 at batch 128, 2-4x the LCN's
    whole training step."""
    return backend == "cpu"


def layer_products(kernel: jnp.ndarray, patches: jnp.ndarray, input_grad: bool):
    """One LCN layer's products in a training step: forward, then the gradients (an unused one is
    dropped by XLA, with its product)."""
    out, pullback = jax.vjp(per_position_product, kernel, patches)
    kernel_grad, patches_grad = pullback(out)  # any cotangent of the output's shape
    return out, kernel_grad, patches_grad if input_grad else None


def cores_used() -> tuple[int, int]:
    """(cores this process may run on, cores the machine has): `taskset -c 0 make bench` gives
    (1, n), the share one sweep worker gets; XLA and PyTorch size their thread pools to the first."""
    usable = usable_cores()
    return usable, os.cpu_count() or usable


def run(seconds: float, batch: int, budgets: Sequence[int] = BUDGETS,
        families: Sequence[str] = FAMILIES) -> dict:
    """Measure every family in `families` at every budget in `budgets` (see the module docstring)."""
    widths = {(f, b): width_near(f, b) for f in families for b in budgets}  # a budget too small fails here
    keeps_freed_memory = keep_freed_memory()
    peak = matmul_peak(min(seconds, 1.0))
    print(f"float32 matmul peak: {peak:.0f} GFLOP/s", flush=True)
    rows = []
    for family in families:
        for budget in budgets:
            match = widths[family, budget]
            compile_s, ips, mb = bench_jax(family, match.width, batch, seconds)
            step_flops = train_flops(family, match.width, FASHION, batch)
            gflops = step_flops * ips / batch / 1e9
            torch_ips = bench_torch(family, match.width, batch, seconds)
            row = Row(family, budget, match.width, match.params, round(compile_s, 2), round(ips),
                      round(step_flops / 1e9, 4), round(gflops, 1), round(gflops / peak, 3), round(mb, 1),
                      None if torch_ips is None else round(torch_ips),
                      None if torch_ips is None else round(ips / torch_ips, 2))
            print(progress_line(row), flush=True)
            rows.append(row)
    lcn_products = {}
    for budget in budgets if "lcn" in families and bounds_lcn_step(jax.default_backend()) else ():
        width = widths["lcn", budget].width
        product_seconds = lcn_products_seconds(width, batch, seconds)
        best_share = train_flops("lcn", width, FASHION, batch) / product_seconds / 1e9 / peak
        products = {"width": width, "products_ms_per_step": round(1e3 * product_seconds, 3),
                    "best_share_of_peak": round(best_share, 3)}
        lcn_products[str(budget)] = products
        # Printed from the stored, rounded figures, so that the line and the written table agree.
        print(f"LCN at {budget:,}, its matrix products alone: {products['products_ms_per_step']:.2f} ms per "
              f"step, at most {100 * products['best_share_of_peak']:.0f}% of the peak", flush=True)
    seeds = {}
    for family in families:
        seeds[family] = bench_seeds(family, width_near(family, 100_000).width, batch, 3, seconds)
        print(f"{family.upper()} at 100,000, 3 seeds: {seeds[family]['together']:,.0f} images/s vmapped together, "
              f"{seeds[family]['one_by_one']:,.0f} one after another", flush=True)
    usable, total = cores_used()
    name, extensions = processor()
    return {"code_version": code_version(),
            "machine": {"backend": jax.default_backend(), "processor": name, "vector_extensions": extensions,
                        "cores": usable, "machine_cores": total,
                        "devices": [f"{d} ({d.device_kind})" for d in jax.devices()], "jax": jax.__version__,
                        "torch": torch_version(), "malloc_keeps_freed_memory": keeps_freed_memory,
                        "gpu_precision": gpu_precision(), "xla_flags": os.environ.get("XLA_FLAGS", "")},
            "batch_size": batch, "seconds_per_configuration": seconds, "matmul_peak_gflops": round(peak, 1),
            "rows": [asdict(r) for r in rows], "lcn_products": lcn_products,
            "seeds_at_100k_images_per_second": {f: {k: round(v) for k, v in s.items()} for f, s in seeds.items()}}


def markdown(result: dict) -> str:
    lines = [
        "# whyconv benchmark",
        "",
        "Generated by `make bench` (`python -m whyconv.bench`); the figures are this machine's.",
        "",
        *code_line(result),
        f"- Devices: {', '.join(result['machine']['devices'])}; JAX {result['machine']['jax']}"
        f"{torch_part(result['machine'])}; batch {result['batch_size']}, AdamW, float32.",
        *cores_line(result["machine"]),
        *flags_line(result["machine"]),
        *malloc_line(result["machine"]),
        *precision_lines(result["machine"]),
        f"- float32 matmul peak: **{result['matmul_peak_gflops']:,.0f} GFLOP/s** (the best square matmul "
        "through JAX at its default precision; the reference for 'share of peak').",
        "- FLOPs are analytic: three forward passes per training step. An LCN does the same arithmetic",
        "  as the CNN of the same width; sharing saves parameters, not FLOPs.",
        f"- Steps per jitted call as in training: {STEPS_PER_CALL}; each call takes two batches in turn.",
        *seconds_line(result),
        "",
        "| family | budget | width | parameters | compile s | images/s | GFLOP/step | GFLOP/s | share of peak "
        "| XLA memory MB | PyTorch images/s | whyconv / PyTorch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        torch_ips = "n/a" if r["torch_images_per_second"] is None else f"{r['torch_images_per_second']:,}"
        ratio = "n/a" if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.2f}x"
        lines.append(
            f"| {r['family'].upper()} | {r['budget']:,} | {r['width']} | {r['params']:,} | "
            f"{r['compile_seconds']:.2f} | {r['images_per_second']:,} | {r['train_gflop_per_step']:.3f} | "
            f"{r['gflops']:.1f} | {100 * r['share_of_peak']:.0f}% | {r['xla_memory_mb']:.0f} | {torch_ips} | {ratio} |")
    # Runs without the LCN lack it, as do older results (all from CPUs when they lack the backend).
    if result.get("lcn_products") and bounds_lcn_step(result["machine"].get("backend", "cpu")):
        lines += ["", "The LCN's matrix products alone (each layer's, forward and backward, as XLA compiles them on",
                  "their own): a step also builds patches, applies activations, the classifier and the optimizer,",
                  "so its share of the peak cannot exceed the last column.", "",
                  "| budget | width | products ms/step | best share of peak |", "|---:|---:|---:|---:|"]
        for budget, p in result["lcn_products"].items():
            lines.append(f"| {int(budget):,} | {p['width']} | {p['products_ms_per_step']:.2f} | "
                         f"{100 * p['best_share_of_peak']:.0f}% |")
    lines += ["", "Seeds at the 100k budget, 3 seeds, images/s over all seeds:", "",
              "| family | vmapped together | one after another |", "|---|---:|---:|"]
    for family, s in result["seeds_at_100k_images_per_second"].items():
        lines.append(f"| {family.upper()} | {s['together']:,} | {s['one_by_one']:,} |")
    return "\n".join(lines) + "\n"


def progress_line(row: Row) -> str:
    """One measured row, as the run goes."""
    line = (f"{row.family.upper()} at {row.budget:,} (width {row.width}): {row.images_per_second:,} images/s, "
            f"{row.share_of_peak:.0%} of the peak")
    if row.torch_images_per_second is not None:
        line += f"; PyTorch {row.torch_images_per_second:,} images/s ({row.speedup_vs_torch:.2f}x)"
    return line


def code_line(result: dict) -> list[str]:
    """The commit measured, when recorded (older results lack it)."""
    return [f"- Code version `{result['code_version']}`."] if "code_version" in result else []


def cores_line(machine: dict) -> list[str]:
    """The processor and the cores the run had, when recorded (older results lack them)."""
    if "cores" not in machine:
        return []
    extensions = ", ".join(machine.get("vector_extensions", []))
    backend = machine.get("backend", "cpu").upper()  # older results, all from CPUs, lack it
    peak = "the peak below is theirs too" if backend == "CPU" else f"the host's; the peak below is the {backend}'s"
    return [f"- Processor: {machine['processor']}{f' ({extensions})' if extensions else ''}; ran on "
            f"{machine['cores']} of its {machine['machine_cores']} cores ({peak})."]


def malloc_line(machine: dict) -> list[str]:
    """How PyTorch's memory was allocated, for runs with PyTorch that recorded it."""
    if not machine.get("torch") or "malloc_keeps_freed_memory" not in machine:
        return []
    if machine["malloc_keeps_freed_memory"]:
        return ["- glibc's malloc kept freed memory for reuse (`keep_freed_memory`): PyTorch allocates each",
                "  step's activations anew, and would otherwise fault in fresh pages every step."]
    return ["- The C library is not glibc: its malloc ran as it is (`keep_freed_memory`)."]


def precision_lines(machine: dict) -> list[str]:
    """On a GPU, what 'float32' meant for each framework (see `gpu_precision`); nothing on a CPU."""
    precision = machine.get("gpu_precision")
    if not precision:
        return []
    lines = [f"- float32 products at JAX's `{precision['jax_default_matmul_precision']}` precision "
             "(`jax_default_matmul_precision`), the peak and the training steps alike: by default TF32",
             "  on NVIDIA GPUs from Ampere on, so the peak can be far above the chip's plain float32 rate."]
    if "torch_float32_matmul_precision" in precision:
        tf32 = "TF32" if precision["torch_cudnn_allow_tf32"] else "float32"
        lines += [f"- PyTorch on the GPU: matrix products at `{precision['torch_float32_matmul_precision']}` "
                  "(`torch.get_float32_matmul_precision()`; `highest` is full float32),",
                  f"  convolutions in {tf32} (`torch.backends.cudnn.allow_tf32`)."]
    elif machine.get("torch"):
        lines.append("- **PyTorch ran on the CPU** (this build has no CUDA): its column is not the GPU's.")
    return lines


def seconds_line(result: dict) -> list[str]:
    """How long each configuration was timed, when recorded (older results lack it)."""
    if "seconds_per_configuration" not in result:
        return []
    return [f"- Each configuration timed for about {result['seconds_per_configuration']:g} s after a warm-up call "
            "(`--seconds`)."]


def torch_part(machine: dict) -> str:
    """PyTorch's version beside JAX's, when recorded (older results lack it)."""
    return f", PyTorch {machine['torch']}" if machine.get("torch") else ""


def flags_line(machine: dict) -> list[str]:
    """The XLA_FLAGS the run had, when any: they change what XLA compiles, so the figures too."""
    return [f"- XLA_FLAGS: `{machine['xla_flags']}`."] if machine.get("xla_flags") else []


def load_result(path: Path) -> dict:
    """A run's `benchmarks.json`, given as the file or the folder holding it."""
    file = path / "benchmarks.json" if path.is_dir() else path
    try:
        result = json.loads(file.read_text())
    except FileNotFoundError:
        raise ValueError(f"{file}: no such file (a benchmark run writes it into its --out folder)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{file} cannot be read as a benchmark result: {error}") from None
    if not isinstance(result, dict) or not {"rows", "matmul_peak_gflops"} <= result.keys():
        keys = f"; its keys: {', '.join(map(str, result))}" if isinstance(result, dict) else ""
        raise ValueError(f"{file} is not a benchmark result (no 'rows' or 'matmul_peak_gflops'{keys})")
    return result


def run_setting(result: dict) -> dict[str, object]:
    """What a run's figures depend on besides the code: processor, cores, batch size, XLA_FLAGS and,
    on a GPU, the precision of float32 products."""
    machine = result.get("machine", {})
    return {"processor": machine.get("processor"), "cores": machine.get("cores"),
            "batch size": result.get("batch_size"), "XLA_FLAGS": machine.get("xla_flags", ""),
            "float32 precision on the GPU": machine.get("gpu_precision")}


def torch_setting(result: dict) -> dict[str, object]:
    """What PyTorch's column depends on besides the machine (runs from before keep_freed_memory
    did not set glibc's malloc)."""
    machine = result.get("machine", {})
    return {"PyTorch version": machine.get("torch"),
            "glibc's malloc keeping freed memory (`keep_freed_memory`)": machine.get("malloc_keeps_freed_memory", False)}


def differences(before: dict[str, object], after: dict[str, object]) -> str | None:
    """The names of the settings that differ, as a phrase ('a, b and c'), or None."""
    names = [key for key, value in before.items() if after[key] != value]
    if not names:
        return None
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def comparison(before: dict, after: dict) -> str:
    """Markdown: the cells both runs measured, after against before.

    The peak and PyTorch's throughput (when both runs have it) are the controls: a change to
    whyconv moves neither, so their ratios show how much the machine itself moved between runs.
    """
    lines = ["# whyconv benchmark: after against before", ""]
    settings = {label: run_setting(result) for label, result in (("before", before), ("after", after))}
    for label, result in (("before", before), ("after", after)):
        setting, machine = settings[label], result.get("machine", {})
        of_cores = f", {setting['cores']} of {machine['machine_cores']} cores" if setting["cores"] else ""
        flags = f", XLA_FLAGS `{setting['XLA_FLAGS']}`" if setting["XLA_FLAGS"] else ""
        lines.append(f"- {label}: code `{result.get('code_version', 'unrecorded')}`, "
                     f"{setting['processor'] or 'processor unrecorded'}{of_cores}, batch {setting['batch size']}{flags}"
                     f"{torch_part(machine)}, matmul peak {result['matmul_peak_gflops']:,.0f} GFLOP/s")
    if named := differences(settings["before"], settings["after"]):
        lines.append(f"- **The runs differ in {named}: their ratios measure that too, not the code alone.**")
    with_torch = all(result.get("machine", {}).get("torch") for result in (before, after))
    if with_torch and (named := differences(torch_setting(before), torch_setting(after))):
        lines.append(f"- The runs differ in {named}: PyTorch's column measures that too.")
    lines += [f"- Matmul peak, after / before: {after['matmul_peak_gflops'] / before['matmul_peak_gflops']:.2f}x "
              "(the machine's own drift; so is PyTorch's column, which a change to whyconv does not touch).", "",
              "| family | budget | width | images/s before | images/s after | after / before "
              "| PyTorch after / before |", "|---|---:|---:|---:|---:|---:|---:|"]
    cells = {(r["family"], r["budget"]): r for r in before["rows"]}
    unmatched = []
    for new in after["rows"]:
        old = cells.pop((new["family"], new["budget"]), None)
        if old is None:
            unmatched.append(f"{new['family'].upper()} at {new['budget']:,} (after only)")
            continue
        width = str(new["width"]) if new["width"] == old["width"] else f"{old['width']} -> {new['width']}"
        old_torch, new_torch = old.get("torch_images_per_second"), new.get("torch_images_per_second")
        torch_ratio = f"{new_torch / old_torch:.2f}x" if old_torch and new_torch else "n/a"
        lines.append(f"| {new['family'].upper()} | {new['budget']:,} | {width} | {old['images_per_second']:,} | "
                     f"{new['images_per_second']:,} | {new['images_per_second'] / old['images_per_second']:.2f}x "
                     f"| {torch_ratio} |")
    unmatched += [f"{family.upper()} at {budget:,} (before only)" for family, budget in cells]
    if unmatched:
        lines += ["", "Measured in one run only: " + "; ".join(unmatched) + "."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per configuration")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES),
                        help="the families to measure (default: all)")
    parser.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS), metavar="PARAMS",
                        help="parameter budgets (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder for benchmarks.md and .json")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"),
                        help="measure nothing: print two earlier runs' images/s side by side (each a "
                             "benchmarks.json or its folder)")
    args = parser.parse_args(argv)
    if args.compare:
        try:
            print(comparison(*map(load_result, args.compare)), end="")
        except ValueError as error:
            parser.error(str(error))
        return
    if args.seconds <= 0 or args.batch_size <= 0 or min(args.budgets) <= 0:
        parser.error("--seconds, --batch-size and --budgets must be positive")
    try:
        result = run(args.seconds, args.batch_size, sorted(set(args.budgets)),
                     [f for f in FAMILIES if f in args.families])
    except BudgetError as error:
        parser.error(str(error))
    except KeyboardInterrupt:
        raise SystemExit("benchmark interrupted: nothing written (a run writes its files only when complete)")
    write_text(args.out / "benchmarks.json", json.dumps(result, indent=2) + "\n")
    write_text(args.out / "benchmarks.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
