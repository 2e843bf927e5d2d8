# The two commands: `make study` runs the whole study, `make test` runs the tests.
# Both set up everything first (scripts/setup.sh), so they work on a fresh clone.
.PHONY: setup study quick test bench

# Stage commands in dvc.yaml call `python`: make it the project's.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

# A first look in about two minutes: two budgets per family, one skeleton, 2 epochs, one seed.
QUICK := -S 'study.budgets.mlp=[10000,100000]' -S 'study.budgets.lcn=[10000,100000]' \
         -S 'study.budgets.cnn=[4000,25000]' -S 'study.skeleton_channels=[4]' \
         -S train.epochs=2 -S 'train.seeds=[0]'

setup:
	@scripts/setup.sh

study: setup
	dvc repro

quick: setup
	dvc exp run $(QUICK)

test: setup
	pytest

# Training throughput of every family against this machine's matmul peak and PyTorch:
# writes reports/benchmarks.md and .json. PyTorch comes from the `bench` extra.
bench: setup
	python -m pip install -q -c requirements.lock -e '.[bench]'
	python -m whyconv.bench
