# The two commands: `make study` runs the whole study, `make test` runs the tests.
# Both set up everything first (scripts/setup.sh), so they work on a fresh clone.
.PHONY: setup study quick test bench

# Stage commands in dvc.yaml call `python`: make it the project's.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

# A first look in a few minutes: every stage and control, on fewer budgets, 2 epochs, one seed.
QUICK := -S 'study.budgets.mlp=[10000,25000]' -S 'study.budgets.lcn=[10000,25000]' \
         -S 'study.budgets.gconv=[5000,25000]' -S 'study.budgets.cnn=[4000,25000]' \
         -S 'study.budgets.cnn_gap=[25000]' -S 'study.skeleton_channels=[4]' \
         -S 'controls.subsets.sizes=[1000]' -S controls.subsets.min_steps=200 -S controls.max_shift=2 \
         -S train.epochs=2 -S 'train.seeds=[0]'

setup:
	@scripts/setup.sh

# `dvc repro`, with the independent training stages run one per core (src/whyconv/sweep.py).
study: setup
	python -m whyconv.sweep

quick: setup
	dvc exp run $(QUICK)

test: setup
	pytest

# Training throughput of every family against this machine's matmul peak and PyTorch:
# writes reports/benchmarks.md and .json. PyTorch comes from the `bench` extra.
# Options go through ARGS, e.g. make bench ARGS='--families lcn --budgets 100000 --out /tmp/lcn'.
bench: setup
	python -m pip install -q -c requirements.lock -e '.[bench]'
	python -m whyconv.bench $(ARGS)
