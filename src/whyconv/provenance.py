"""Where a set of figures came from: the git commit (marked when the working tree differs) and
the device that computed them."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import jax

# What the study's and the benchmark's figures depend on.
CODE_PATHS = ("src", "pipelines", "params.yaml", "dvc.yaml")


def code_version() -> str:
    """The checkout's short commit, with "with uncommitted changes" when the code or params differ
    from it (run from the repository root, as the stages and `make bench` are)."""
    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", *CODE_PATHS)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit} with uncommitted changes" if changed else commit


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


def trained_on() -> str:
    """The device that trains here, as a results table records it: the accelerator's kind or the
    CPU's model name and vector extensions (XLA picks its kernels by them), how many devices take
    part, and the precision of float32 products when it is not JAX's default (on NVIDIA GPUs the
    default is TF32). Results differ between devices by float rounding carried through training,
    so a table says where each model trained."""
    devices = jax.devices()
    first = devices[0]
    if first.platform == "cpu":
        name, extensions = processor()
        kind = f"{name} with {', '.join(extensions)}" if extensions else name
    else:
        kind = first.device_kind
    count = f"{len(devices)} x " if len(devices) > 1 else ""
    precision = jax.config.jax_default_matmul_precision
    return f"{count}{kind} ({first.platform}{f', float32 products at {precision} precision' if precision else ''})"


# The vector extensions that bound a CPU's float32 matmul peak, as /proc/cpuinfo spells them (x86
# "flags", Arm "Features"): CPUs that report the same model name can differ here.
VECTOR_EXTENSIONS = {"avx2": "AVX2", "avx512f": "AVX-512", "amx_tile": "AMX", "asimd": "NEON", "sve": "SVE"}


def describe_cpu(cpuinfo: str) -> tuple[str | None, list[str]]:
    """The model name and vector extensions in the text of /proc/cpuinfo (first CPU listed)."""
    name, flags = None, set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name is None:
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return name, [label for flag, label in VECTOR_EXTENSIONS.items() if flag in flags]


def processor() -> tuple[str, list[str]]:
    """This CPU's model name and vector extensions (Linux reports both in /proc/cpuinfo;
    platform.processor() is often empty)."""
    try:
        name, extensions = describe_cpu(Path("/proc/cpuinfo").read_text())
    except OSError:
        name, extensions = None, []
    return name or platform.processor() or platform.machine(), extensions
