"""The study with every core busy: the training stages several at a time, through DVC itself.

    python -m whyconv.sweep              # or: make study
    python -m whyconv.sweep --jobs 1     # one stage at a time, like a plain `dvc repro`

`dvc repro` runs stages one after another, but the training cells do not depend on each other,
and one cell keeps two cores only partly busy (measured here: two cells at once train 1.1-2x the
images per second of one; the small convolutions and the FFT barely use a second thread). So,
as DVC documents for parallel stage execution, each worker runs `dvc repro --single-item
<stage>` on its own share of the cores; DVC holds its repository lock only around each stage's
bookkeeping, and `--wait-for-lock` makes a worker wait for it rather than fail. The training
stages start largest first (their analytic FLOPs, whyconv.workload), so that the run ends on short
stages rather than on one long one beside an idle core. The stages after
training (probe, tables, report) go through the same workers: each starts once every stage it
depends on (`dvc dag`) is done, ahead of any training stage, so the probe of the budget cells runs
beside the last control cells rather than after them. A last plain `dvc repro` confirms that all
is up to date, and the run ends naming the report.

    python -m whyconv.sweep -S train.epochs=2   # a variant, saved as a DVC experiment

`-S` changes params.yaml as `dvc exp run -S` does (DVC's own code, so the same syntax); after the
run, `dvc exp save` records it as an experiment, so `dvc exp show` lists it beside `dvc exp run`'s
and, as there, the variant's params and results stay in the workspace. So a variant trains as the
study does, one stage per core, where `dvc exp run` runs one stage at a time on every core.

On an accelerator it runs one stage at a time unless told otherwise. `--jobs N` on a GPU runs N
stages on it at once, each JAX process then allocating the GPU's memory as it needs it rather than
taking most of it at its start (a TPU takes one process at a time).

Each stage's output goes to logs/<stage>.log; the terminal gets one line per stage. A failed
stage stops new ones from starting, and its log's last lines are printed. Interrupted (Ctrl-C),
it starts nothing new, sees the running stages stop and says so in one message; the finished
cells stay cached and a training cell resumes from its last epoch's checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import psutil

LOGS = Path("logs")
PARAMS = Path("params.yaml")
CHECK_PARAMS = "import sys; from whyconv import config, stage; stage.run(lambda: config.load_params(sys.argv[1]))"
UPSTREAM = "prepare"  # the one stage the training stages depend on
STOP_GRACE_SECONDS = 10.0  # after Ctrl-C, how long the running stages get to stop by themselves
INTERRUPTED = 130  # the exit status of a program stopped by Ctrl-C (128 + SIGINT)
JAX_MEMORY_VARIABLES = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                        "XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_ALLOCATOR")
UNCHANGED = re.compile(rb"^Stage '[^']+' didn't change, skipping$")  # DVC's line for a stage it skips
REPORT = "reports/report.md (one page with every figure: reports/index.html)"


def dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def upstream_stages(dag_dot: str) -> dict[str, set[str]]:
    """Each stage's direct upstream stages, from the edges of `dvc dag --dot`."""
    upstream = defaultdict(set)
    for before, after in re.findall(r'^"(.+)" -> "(.+)";$', dag_dot, re.MULTILINE):
        upstream[after].add(before)
    return dict(upstream)


def stages_to_run(listed: Sequence[str], stale: set[str], upstream: Mapping[str, set[str]]) -> list[str]:
    """The stale stages and every stage downstream of one, in `listed`'s (dvc.yaml's) order.

    Downstream stages are included even when `dvc status` does not flag them yet: their inputs
    change once the stale stages have run.
    """
    chosen = set(stale)
    while grown := {s for s in listed if s not in chosen and upstream.get(s, set()) & chosen}:
        chosen |= grown
    return [s for s in listed if s in chosen]


def plan() -> tuple[list[str], dict[str, set[str]]]:
    """What `dvc repro` would run after `prepare`, and each stage's upstream stages."""
    listed = run_captured(dvc("stage", "list", "--name-only")).split()
    stale = set(json.loads(run_captured(dvc("status", "--json")) or "{}"))
    upstream = upstream_stages(run_captured(dvc("dag", "--dot")))
    return [s for s in stages_to_run(listed, stale, upstream) if s != UPSTREAM], upstream


def training_work() -> dict[str, float]:
    """Each training stage's estimated FLOPs (whyconv.workload).

    Asked of a child process, as JAX is: the estimate solves widths through the models' code.
    """
    return json.loads(run_captured([sys.executable, "-m", "whyconv.workload"]))


def start_order(stages: Sequence[str], work: Mapping[str, float], upstream: Mapping[str, set[str]]) -> list[str]:
    """The order to start `stages` in: the training stages (those with an estimated `work`) that
    the earliest later stage waits for first (the probe needs only the budget cells, the tables
    every cell), the most work first among those; the other stages, which run_parallel starts as
    soon as they are ready, keep their order at the end.

    Largest first, the run ends on short stages rather than on a long one beside an idle core;
    and the probe can still run beside the control cells.
    """
    def trained_before(stage: str) -> set[str]:
        seen, todo = set(), [stage]
        while todo:
            for before in upstream.get(todo.pop(), set()) - seen:
                seen.add(before)
                todo.append(before)
        return seen & work.keys() & set(stages)

    waits = [trained_before(stage) for stage in stages if stage not in work]

    def priority(stage: str) -> tuple[float, float]:
        first_needed_by = min((len(needs) for needs in waits if stage in needs), default=math.inf)
        return first_needed_by, -work.get(stage, 0.0)

    return sorted(stages, key=priority)


def set_params(overrides: Sequence[str], params: Path = PARAMS) -> None:
    """Apply `dvc exp run -S` overrides to params.yaml, then check it as every stage will.

    A bad override, or one that leaves params.yaml invalid, puts the file back as it was and exits
    with the reason, before any stage runs.
    """
    from dvc.exceptions import DvcException
    from dvc.utils.hydra import apply_overrides

    before = params.read_text()
    try:
        apply_overrides(params, list(overrides))
        # In a child process, as every stage reads it: this one must not load JAX before it forks.
        check = subprocess.run([sys.executable, "-c", CHECK_PARAMS, params], capture_output=True, text=True)
        reason = check.stderr.strip() if check.returncode else None
    except DvcException as err:  # an override DVC cannot parse or apply (a key not in the file)
        cause = f": {err.__cause__}" if err.__cause__ else ""
        reason = f"error: -S {' -S '.join(overrides)}: {err}{cause}"
    if reason:
        params.write_text(before)
        sys.exit(f"{reason}\n({params} is left as it was)")


def git_identity_missing(environ: Mapping[str, str] = os.environ) -> list[str]:
    """What git lacks for `dvc exp save` to commit: user.name and user.email, each from git's config
    or from both GIT_AUTHOR_* and GIT_COMMITTER_* in the environment, as DVC reads them."""
    missing = []
    for field in ("name", "email"):
        configured = subprocess.run(["git", "config", f"user.{field}"], capture_output=True).returncode == 0
        if not configured and not all(environ.get(f"GIT_{who}_{field.upper()}") for who in ("AUTHOR", "COMMITTER")):
            missing.append(f"user.{field}")
    return missing


def run_captured(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: {' '.join(cmd[1:])} failed:\n{done.stderr.strip()}")
    return done.stdout


def confirm_up_to_date() -> int:
    """A last plain `dvc repro`, its exit status: it runs whatever is still stale, and otherwise
    says so in one line rather than DVC's one line per skipped stage (a screenful for a study,
    which would scroll the run's own lines away)."""
    with subprocess.Popen(dvc("repro"), stdout=subprocess.PIPE) as child:
        for line in child.stdout:  # bytes: a stage's progress bars keep their carriage returns
            if not UNCHANGED.match(line.rstrip(b"\r\n")):
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()
    return child.returncode


def core_shares(jobs: int) -> list[set[int]]:
    """This process's cores dealt out to `jobs` workers (round robin; each gets at least one)."""
    cores = sorted(os.sched_getaffinity(0))
    return [set(cores[k::jobs]) or {cores[k % len(cores)]} for k in range(jobs)]


def default_jobs() -> int:
    """One worker per core on a CPU; one in all when JAX trains on an accelerator.

    JAX is asked in a child process: this one forks the workers, and JAX's threads must not be
    running in a process that forks.
    """
    backend = run_captured([sys.executable, "-c", "import jax; print(jax.default_backend())"]).strip()
    return len(os.sched_getaffinity(0)) if backend == "cpu" else 1


def path_with_this_python_first(environ: Mapping[str, str] = os.environ) -> str:
    """PATH with this interpreter's folder first, so that the stages' `python` is this one.

    dvc.yaml's commands call `python`: run as `.venv/bin/python -m whyconv.sweep` without the
    environment activated, they would otherwise find the system's, which has no whyconv.
    """
    return os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", os.defpath)])


def stage_environment(jobs: int, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment each stage runs in: with several workers, JAX allocates a GPU's memory as
    it needs it.

    By default each JAX process takes 75% of a GPU's memory when it starts, so a second stage on
    the same GPU would run out of it (JAX's documentation: "GPU memory allocation"). A user's own
    setting of JAX's memory variables is kept; on a CPU, nothing reads them.
    """
    env = dict(environ)
    if jobs > 1 and not any(name in env for name in JAX_MEMORY_VARIABLES):
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return env


def run_parallel(stages: Sequence[str], jobs: int, logs: Path = LOGS,
                 upstream: Mapping[str, set[str]] | None = None, training: Collection[str] = ()) -> list[str]:
    """Run each stage in its own `dvc repro`, `jobs` at a time: the stages that failed.

    A stage starts once none of its `upstream` stages is still to run; of the stages ready, the
    first in `stages` that is not a `training` stage goes first, then the first training stage.
    On KeyboardInterrupt it starts nothing new, waits for the running stages to stop (after a
    grace period, interrupting them itself), and raises it again.
    """
    logs.mkdir(exist_ok=True)
    upstream = upstream or {}
    free_cores = list(core_shares(jobs))
    env = stage_environment(jobs)
    ready_or_done = threading.Condition()
    pending = sorted(stages, key=lambda s: s in training)  # stable: keeps the order
    running: dict[str, subprocess.Popen] = {}
    failed: list[str] = []
    interrupted = False
    workers_left = jobs
    start, done = time.perf_counter(), 0

    def say(text: str) -> None:
        elapsed = time.perf_counter() - start
        # One write per line: print() writes the text and its newline separately, and two workers'
        # lines interleaved ("done a[ 80.1 min] start b").
        sys.stdout.write(f"[{elapsed / 60:5.1f} min] {text}\n")
        sys.stdout.flush()

    def next_ready() -> str | None:
        waiting = set(pending) | set(running)
        return next((s for s in pending if not upstream.get(s, set()) & waiting), None)

    def worker() -> None:
        nonlocal workers_left
        try:
            while (started := start_next()) is not None:
                finish(*started)
        finally:
            with ready_or_done:
                workers_left -= 1
                ready_or_done.notify_all()

    def wait_for_workers(timeout: float | None = None) -> None:
        # On the condition, not with Thread.join: on CPython 3.11 a join cut short by Ctrl-C can
        # mark a thread that is still running as finished, and every later join returns at once.
        with ready_or_done:
            ready_or_done.wait_for(lambda: not workers_left, timeout)

    def start_next() -> tuple[str, subprocess.Popen, set[int], Path] | None:
        """Start the next stage on a free share of the cores; None when there is none to start."""
        with ready_or_done:
            # A failure or an interruption stops new starts (running stages finish); so does an
            # empty queue. Starting under the lock means an interruption sees every stage started.
            while not failed and not interrupted and pending and (stage := next_ready()) is None:
                ready_or_done.wait()
            if failed or interrupted or not pending:
                return None
            pending.remove(stage)
            cores = free_cores.pop()
            log = logs / f"{stage.replace('@', '-')}.log"
            with log.open("w") as out:
                running[stage] = subprocess.Popen(
                    dvc("--wait-for-lock", "repro", "--single-item", stage), stdout=out,
                    stderr=subprocess.STDOUT, env=env, preexec_fn=lambda: os.sched_setaffinity(0, cores))
            say(f"start {stage}")
            return stage, running[stage], cores, log

    def finish(stage: str, child: subprocess.Popen, cores: set[int], log: Path) -> None:
        nonlocal done
        began = time.perf_counter()
        code = child.wait()
        with ready_or_done:
            free_cores.append(cores)
            del running[stage]
            done += 1
            stopped = interrupted
            if code and not stopped:
                failed.append(stage)
            ready_or_done.notify_all()
        minutes = (time.perf_counter() - began) / 60
        if code and stopped:
            say(f"interrupted {stage} after {minutes:.1f} min ({done}/{len(stages)})")
            return
        say(f"{'FAILED' if code else 'done'} {stage} in {minutes:.1f} min ({done}/{len(stages)}; log: {log})")
        if code:
            print("".join(log.read_text().splitlines(keepends=True)[-15:]), file=sys.stderr, flush=True)

    def stop() -> None:
        """After Ctrl-C: start nothing new, and see every running stage stop."""
        nonlocal interrupted
        with ready_or_done:
            interrupted = True
            ready_or_done.notify_all()
        # Ctrl-C in a terminal reaches the whole process group, so the stages' commands are
        # stopping already. A SIGINT sent to this process alone is passed on after a grace period,
        # to each worker's descendants too: DVC ignores SIGINT while its stage's command runs.
        wait_for_workers(STOP_GRACE_SECONDS)
        with ready_or_done:
            left = [child.pid for child in running.values()]
        for pid in left:
            try:
                dvc_process = psutil.Process(pid)
                family = [dvc_process, *dvc_process.children(recursive=True)]
            except psutil.NoSuchProcess:  # it stopped in the meantime
                continue
            for process in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(signal.SIGINT)
        wait_for_workers()

    workers = [threading.Thread(target=worker) for _ in range(jobs)]
    for thread in workers:
        thread.start()
    try:
        wait_for_workers()
    except KeyboardInterrupt:
        # A second Ctrl-C still reaches the stages; here it would only cut the waiting short.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            stop()
        finally:
            signal.signal(signal.SIGINT, previous)
        raise
    return failed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", "-j", type=int, default=None,
                        help="stages at a time (default: one per core on a CPU, 1 on an accelerator)")
    parser.add_argument("--set-param", "-S", action="append", default=[], metavar="KEY=VALUE",
                        help="change params.yaml as `dvc exp run -S` does, then save the run as a DVC "
                             "experiment (`dvc exp show`); repeat for several")
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.set_param:
        # Checked first: without it the run would train in full and fail at its last step.
        if missing := git_identity_missing():
            sys.exit(f"error: -S saves the run as a DVC experiment, a git commit, and git has no {' or '.join(missing)}: "
                     "set them (git config --global user.name 'Your Name'; git config --global user.email "
                     "you@example.com) and run again; nothing has changed")
        set_params(args.set_param)
    os.environ["PATH"] = path_with_this_python_first()  # for every dvc below and the stages it runs
    jobs = args.jobs or default_jobs()
    try:
        # What every training stage reads (the prepared data) comes first, once.
        if subprocess.run(dvc("repro", UPSTREAM)).returncode:
            sys.exit(1)
        stages, upstream = plan()
        work = training_work()
        stages = start_order(stages, work, upstream)
        trains = sum(s in work for s in stages)
        print(f"{len(stages)} stages to run ({trains} training stage{'' if trains == 1 else 's'}), {jobs} at a time",
              flush=True)
        failed = run_parallel(stages, jobs, upstream=upstream, training=work.keys())
        if failed:
            sys.exit(f"error: {len(failed)} stage(s) failed: {', '.join(failed)}; see logs/ for each")
        if code := confirm_up_to_date():
            sys.exit(code)
        print(f"the report: {REPORT}", flush=True)
        if args.set_param:
            sys.exit(subprocess.run(dvc("exp", "save")).returncode)
    except KeyboardInterrupt:
        print("\ninterrupted: the stages reported done are kept, and an interrupted training cell "
              "keeps its finished epochs; run the same command again to go on from there",
              file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED)


if __name__ == "__main__":
    main()
