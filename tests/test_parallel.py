"""Data parallelism: the same training on 2 forced host devices as on 1, within a stated tolerance."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

# JAX warns on any fork once it has started threads; subprocess forks only to exec a fresh
# interpreter at once, which inherits none of them.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")

TESTS = Path(__file__).resolve().parent
SCRIPT = f"""
import json, sys
sys.path.insert(0, {str(TESTS)!r})
import jax
from test_training import CONFIG, tiny_splits
from whyconv.models import build_model
from whyconv.training import train_seed

result = train_seed(build_model("cnn", 4, 10, dropout=0.3), tiny_splits(), CONFIG, seed=0)
print(json.dumps({{"devices": len(jax.devices()), "history": result.history, "test_loss": result.test_loss,
                  "test_acc": result.test_acc}}))
"""


def last_line_on(devices: int, script: str) -> str:
    """The last line `script` prints, run on `devices` forced CPU devices."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def train_on(devices: int) -> dict:
    return json.loads(last_line_on(devices, SCRIPT))


@pytest.mark.slow
def test_two_devices_train_like_one():
    one, two = train_on(1), train_on(2)
    assert (one["devices"], two["devices"]) == (1, 2)
    # The batch is split over the devices and the gradients averaged: the same mathematics, summed
    # in another order, so float32 rounding may differ. Measured: 1e-7 relative after 2 epochs.
    # Stated tolerance: 1e-5 relative on losses; accuracies may differ by one example in 128.
    for a, b in zip(one["history"], two["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
        assert b["val_acc"] == pytest.approx(a["val_acc"], abs=1 / 128)
    assert two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-5)


QUEUED = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import jax, jax.numpy as jnp
from flax.training import train_state
from jax.sharding import NamedSharding, PartitionSpec as P
from test_training import CONFIG, tiny_splits
from whyconv.models import build_model
from whyconv.training import batch_mesh, epoch_order, init_params, make_optimizer, make_steps

model, splits, mesh = build_model("cnn", 4, 10), tiny_splits(), batch_mesh()
replicate = lambda tree: jax.device_put(tree, NamedSharding(mesh, P()))
images, labels = (replicate(jnp.asarray(a)) for a in splits.arrays["train"])
state = replicate(train_state.TrainState.create(
    apply_fn=model.apply, params=init_params(model, 0, splits.meta.image_shape), tx=make_optimizer(CONFIG, 8)))
order = jnp.asarray(epoch_order(0, 1, len(splits.arrays["train"][1]), CONFIG.batch_size))
steps = make_steps(model, splits.meta.mean, splits.meta.std, mesh)
for i in range(300):  # 300 calls of one step each, all queued: nothing is read back until the end
    state, (losses, _) = steps.train(state, images, labels, order, i % len(order), 1, jax.random.key(0))
print(float(losses[-1]))
"""


@pytest.mark.slow
def test_two_devices_take_many_queued_steps():
    # XLA's CPU all-reduce deadlocks (JAX 0.10.2, 2-8 forced devices) once about 60 steps are
    # queued when a step takes its batch as a batch-sharded argument: the process aborts after
    # 40 s in a rendezvous. whyconv's step takes the replicated split and splits each batch inside
    # (a sharding constraint), which ran 3,000 queued steps; train_seed also reads the loss back
    # every 50 steps. This keeps a refactor from bringing the deadlock back.
    assert math.isfinite(float(last_line_on(2, QUEUED)))


HOST = f"""
import json, sys
sys.path.insert(0, {str(TESTS)!r})
from whyconv.training import join_hosts
join_hosts()
import jax
from test_training import CONFIG, tiny_splits
from whyconv.models import build_model
from whyconv.training import train_seed

result = train_seed(build_model("cnn", 4, 10, dropout=0.3), tiny_splits(), CONFIG, seed=0)
print(json.dumps({{"devices": len(jax.devices()), "processes": jax.process_count(), "history": result.history,
                  "test_loss": result.test_loss, "test_acc": result.test_acc}}))
"""


@pytest.mark.slow
def test_two_processes_through_jax_distributed_train_like_one(unused_tcp_port):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "WHYCONV_DISTRIBUTED": "1",
           "JAX_COORDINATOR_ADDRESS": f"localhost:{unused_tcp_port}", "JAX_NUM_PROCESSES": "2"}
    hosts = [subprocess.Popen([sys.executable, "-c", HOST], env={**env, "JAX_PROCESS_ID": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [host.communicate(timeout=300) for host in hosts]
    assert all(host.returncode == 0 for host in hosts), outputs[0][1][-2000:]
    one = train_on(1)
    for stdout, _ in outputs:
        two = json.loads(stdout.strip().splitlines()[-1])
        assert (two["devices"], two["processes"]) == (2, 2)
        # Same tolerance as two devices in one process (measured: identical to 1e-7 relative).
        for a, b in zip(one["history"], two["history"], strict=True):
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
            assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
        assert two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-5)


def test_the_cuda_extra_installs_the_jax_that_training_runs_on():
    # No GPU runs in CI, so this is the check that `pip install -e '.[cuda]'` cannot pull in a
    # JAX (and so a CUDA plugin) other than the one pinned and tested here.
    import tomllib

    import jax

    project = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())["project"]
    version = next(dep.split("==")[1] for dep in project["dependencies"] if dep.startswith("jax=="))
    assert version == jax.__version__
    assert project["optional-dependencies"]["cuda"] == [f"jax[cuda13]=={version}"]


def test_sweep_runs_exactly_the_training_stages_and_deals_out_every_core():
    from whyconv.capacity import Skeleton
    from whyconv.config import load_params
    from whyconv.sweep import core_shares
    from whyconv.workload import training_work

    work = training_work(load_params(TESTS.parent / "params.yaml"), Skeleton((28, 28, 1), 10), 55_000, TESTS.parent)
    assert {stage.split("@")[0] for stage in work} == {
        "train-mlp", "train-lcn", "train-gconv", "train-cnn", "train-cnn_gap", "skeleton", "permuted", "subset"}
    assert all(flops > 0 for flops in work.values())
    for jobs in (1, 2, 3):
        shares = core_shares(jobs)
        assert len(shares) == jobs and all(shares)
        assert set().union(*shares) == os.sched_getaffinity(0)


def test_the_sweeps_stages_find_its_own_python_first():
    import whyconv.sweep as sweep

    # `.venv/bin/python -m whyconv.sweep` with no environment activated: the stages' `python` is this one.
    assert sweep.path_with_this_python_first({"PATH": "/bin"}) == f"{Path(sys.executable).parent}{os.pathsep}/bin"
    assert sweep.path_with_this_python_first({}).startswith(f"{Path(sys.executable).parent}{os.pathsep}")


def test_sweep_lets_stages_share_a_gpu_and_keeps_a_users_memory_setting(monkeypatch):
    import whyconv.sweep as sweep

    for backend, jobs in [("cpu", len(os.sched_getaffinity(0))), ("gpu", 1), ("tpu", 1)]:
        monkeypatch.setattr(sweep, "run_captured", lambda cmd, backend=backend: f"{backend}\n")
        assert sweep.default_jobs() == jobs
    # Several JAX processes on one GPU: none may take most of its memory at its start.
    assert sweep.stage_environment(3, {"PATH": "/bin"}) == {"PATH": "/bin", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    assert sweep.stage_environment(1, {"PATH": "/bin"}) == {"PATH": "/bin"}
    for users in ({"XLA_PYTHON_CLIENT_MEM_FRACTION": ".2"}, {"XLA_CLIENT_MEM_FRACTION": ".2"}):
        assert sweep.stage_environment(3, users) == users


def test_sweep_stages_run_in_the_shared_gpu_environment(tmp_path, monkeypatch):
    import whyconv.sweep as sweep

    seen = tmp_path / "seen.txt"
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    monkeypatch.setattr(sweep, "dvc", lambda *args: [
        "sh", "-c", f"echo {args[-1]} ${{XLA_PYTHON_CLIENT_PREALLOCATE:-unset}} >> {seen}"])
    assert sweep.run_parallel(["a", "b"], jobs=2, logs=tmp_path / "logs") == []
    assert sorted(seen.read_text().splitlines()) == ["a false", "b false"]
    seen.unlink()
    assert sweep.run_parallel(["a"], jobs=1, logs=tmp_path / "logs") == []
    assert seen.read_text().split() == ["a", "unset"]


def test_the_last_check_leaves_out_only_the_skipped_stages_lines(monkeypatch, capsys):
    import whyconv.sweep as sweep

    # As DVC would print it when the last stage turned out stale and failed.
    printed = ["Stage 'train-mlp@4000' didn't change, skipping", "Running stage 'report':",
               "progress 50%\rprogress 100%", "Stage 'aggregate' didn't change, skipping"]
    script = f"print({chr(10).join(printed)!r}); raise SystemExit(3)"
    monkeypatch.setattr(sweep, "dvc", lambda *args: [sys.executable, "-c", script])
    assert sweep.confirm_up_to_date() == 3
    assert capsys.readouterr().out == "Running stage 'report':\nprogress 50%\rprogress 100%\n"


def test_sweep_stops_starting_stages_after_a_failure(tmp_path, monkeypatch, capsys):
    from whyconv.sweep import run_parallel

    monkeypatch.chdir(tmp_path)  # not a DVC repository: every `dvc repro` fails
    failed = run_parallel(["first", "second", "third"], jobs=1, logs=tmp_path / "logs")
    assert failed == ["first"]
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["first.log"]
    assert "FAILED first" in capsys.readouterr().out


def test_an_interrupted_sweep_stops_its_stages_starts_no_more_and_says_so(tmp_path, monkeypatch, capsys):
    import whyconv.sweep as sweep

    started = tmp_path / "started.txt"
    monkeypatch.setattr(sweep, "STOP_GRACE_SECONDS", 0.5)
    # Each "stage" is a shell waiting on a long command, as DVC waits on a stage's command. Once
    # both are running, the second sends SIGINT to this process alone (not, as Ctrl-C in a
    # terminal would, to the whole group): the sweep must pass it on to the stages itself.
    monkeypatch.setattr(sweep, "dvc", lambda *args: [
        "sh", "-c", f"echo {args[-1]} >> {started}; "
                    + (f"sleep 0.5; kill -INT {os.getpid()}; " if args[-1] == "second" else "") + "sleep 60"])
    # Python's own Ctrl-C handler, even where the suite was started with SIGINT ignored (as a
    # shell starts a background job), which would leave the sweep nothing to catch.
    launched_with = signal.signal(signal.SIGINT, signal.default_int_handler)
    began = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            sweep.run_parallel(["first", "second", "third"], jobs=2, logs=tmp_path / "logs")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again
    finally:
        signal.signal(signal.SIGINT, launched_with)
    assert time.monotonic() - began < 30  # the stages stopped: not their 60 s
    assert sorted(started.read_text().split()) == ["first", "second"]  # the third never started
    out = capsys.readouterr().out
    assert "interrupted first" in out and "interrupted second" in out and "FAILED" not in out


def test_sweep_starts_the_training_stages_with_the_most_arithmetic_first():
    from whyconv.capacity import Skeleton, solve_width
    from whyconv.compute import train_flops
    from whyconv.config import load_params
    from whyconv.sweep import start_order
    from whyconv.workload import stage_work

    params, skeleton = load_params(TESTS.parent / "params.yaml"), Skeleton((28, 28, 1), 10)
    seeds, batch, min_steps = len(params.train.seeds), params.train.batch_size, params.controls.subsets.min_steps

    def work(args: str) -> float:
        return stage_work(f"python pipelines/train.py {args}", params, skeleton, train_images=55_000)

    def step_flops(family: str, budget: int) -> int:
        return train_flops(family, solve_width(family, budget, skeleton, params.study.tolerance).width, skeleton, batch)

    # Training FLOPs: a step's, times the steps (epochs of whole batches; a small subset's at least
    # min_steps), times the seeds.
    assert work("cnn --budget 100000") == params.train.epochs * (55_000 // batch) * seeds * step_flops("cnn", 100_000)
    assert work("gconv --budget 25000 --permuted") == work("gconv --budget 25000")
    assert work("gconv --subset 1000") == min_steps * seeds * step_flops("gconv", params.controls.matched_budget)
    assert work("lcn --channels 16") == work("cnn --channels 16") > work("cnn --channels 4")
    assert stage_work("python pipelines/report.py", params, skeleton, 55_000) is None

    # The probe needs the budget cells only, the tables every cell: the budget cells go first, each
    # group largest first, the stages without an estimate (started as soon as they are ready) last.
    estimate = {"train-mlp@4000": work("mlp --budget 4000"), "train-cnn@100000": work("cnn --budget 100000"),
                "train-gconv@100000": work("gconv --budget 100000"), "subset@gconv-3000": work("gconv --subset 3000"),
                "subset@gconv-1000": work("gconv --subset 1000")}  # the last two equal: both take min_steps
    budget_cells = {"train-mlp@4000", "train-gconv@100000", "train-cnn@100000"}
    upstream = {"probe": budget_cells, "aggregate": budget_cells | {"subset@gconv-3000", "subset@gconv-1000"},
                "report": {"probe", "aggregate"}}
    stages = ["train-mlp@4000", "subset@gconv-3000", "train-gconv@100000", "train-cnn@100000", "probe",
              "subset@gconv-1000", "aggregate", "report"]
    assert start_order(stages, estimate, upstream) == [
        "train-cnn@100000", "train-gconv@100000", "train-mlp@4000", "subset@gconv-3000", "subset@gconv-1000",
        "probe", "aggregate", "report"]
    assert start_order(stages, estimate, {}) == [  # with nothing after them: largest first
        "train-cnn@100000", "train-gconv@100000", "subset@gconv-3000", "subset@gconv-1000", "train-mlp@4000",
        "probe", "aggregate", "report"]


def test_sweep_plans_stale_stages_and_their_downstream_from_the_dag():
    from whyconv.sweep import stages_to_run, upstream_stages

    dot = ('strict digraph {\n"prepare";\n"train@a";\n"prepare" -> "train@a";\n"prepare" -> "train@b";\n'
           '"train@a" -> "probe";\n"train@a" -> "aggregate";\n"train@b" -> "aggregate";\n'
           '"probe" -> "report";\n"aggregate" -> "report";\n}\n')
    upstream = upstream_stages(dot)
    assert upstream["report"] == {"probe", "aggregate"} and upstream["train@a"] == {"prepare"}
    listed = ["prepare", "train@a", "train@b", "probe", "aggregate", "report"]
    assert stages_to_run(listed, {"train@b"}, upstream) == ["train@b", "aggregate", "report"]
    assert stages_to_run(listed, set(), upstream) == []


def test_sweep_starts_a_stage_after_its_upstream_and_ahead_of_training(tmp_path, monkeypatch):
    import whyconv.sweep as sweep

    order = tmp_path / "order.txt"
    # Each "stage" appends its name to order.txt at its start and end, with a pause in between.
    monkeypatch.setattr(sweep, "dvc", lambda *args: [
        "sh", "-c", f"echo start {args[-1]} >> {order}; sleep 0.2; echo end {args[-1]} >> {order}"])
    upstream = {"probe": {"train@a"}, "report": {"probe", "train@b", "train@c"}}
    stages = ["train@a", "train@b", "train@c", "probe", "report"]
    assert sweep.run_parallel(stages, jobs=1, logs=tmp_path / "logs", upstream=upstream, training=["train@a", "train@b", "train@c"]) == []
    starts = [line.split()[1] for line in order.read_text().splitlines() if line.startswith("start")]
    assert starts == ["train@a", "probe", "train@b", "train@c", "report"]

    order.unlink()
    assert sweep.run_parallel(stages, jobs=2, logs=tmp_path / "logs", upstream=upstream, training=["train@a", "train@b", "train@c"]) == []
    events = order.read_text().splitlines()
    for stage, before in upstream.items():
        assert all(events.index(f"end {b}") < events.index(f"start {stage}") for b in before)


def test_sweep_applies_overrides_as_dvc_exp_run_does_and_refuses_bad_ones(tmp_path):
    from whyconv.sweep import set_params

    params = tmp_path / "params.yaml"
    default = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    params.write_text(default)
    set_params(["train.epochs=3", "train.seeds=[0,1]"], params)
    changed = params.read_text()
    assert yaml.safe_load(changed)["train"] == {**yaml.safe_load(default)["train"], "epochs": 3, "seeds": [0, 1]}
    assert changed.count("#") == default.count("#")  # DVC's own YAML round trip keeps the comments
    for override, reason in [("train.epochs=zero", "train.epochs = 'zero': Input should be a valid integer"),
                             ("train.learning_rat=0.1", "Could not override 'train.learning_rat'"),
                             ("study.budgets.lcn=[3000,25000]", "budget 3,000 is below the minimum of family 'lcn'")]:
        with pytest.raises(SystemExit) as stopped:
            set_params([override], params)
        assert reason in str(stopped.value) and f"({params} is left as it was)" in str(stopped.value)
        assert params.read_text() == changed


def test_sweep_with_overrides_needs_a_git_identity_and_says_so_before_anything_runs(tmp_path, monkeypatch):
    import whyconv.sweep as sweep

    monkeypatch.chdir(tmp_path)  # no params.yaml here: the check must come before it is read
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("AUTHOR", "COMMITTER"):
        monkeypatch.delenv(f"GIT_{name}_NAME", raising=False)
        monkeypatch.delenv(f"GIT_{name}_EMAIL", raising=False)
    assert sweep.git_identity_missing() == ["user.name", "user.email"]
    with pytest.raises(SystemExit) as stopped:
        sweep.main(["-S", "train.epochs=3"])
    assert "git has no user.name or user.email: set them (git config --global" in str(stopped.value)
    identity = {f"GIT_{who}_{field}": "x" for who in ("AUTHOR", "COMMITTER") for field in ("NAME", "EMAIL")}
    assert sweep.git_identity_missing(identity) == []
    assert sweep.git_identity_missing({**identity, "GIT_COMMITTER_EMAIL": ""}) == ["user.email"]
