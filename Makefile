# The two commands: `make study` runs the whole study, `make test` runs the tests.
# Both set up everything first (scripts/setup.sh), so they work on a fresh clone.
.PHONY: setup study quick crossings learning-rate two-by-two test bench

# Stage commands in dvc.yaml call `python`: make it the project's.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

# A first look in a few minutes: every stage and control, on fewer budgets, 2 epochs, one seed.
QUICK := -S 'study.budgets.mlp=[10000,25000]' -S 'study.budgets.lcn=[10000,25000]' \
         -S 'study.budgets.gconv=[5000,25000]' -S 'study.budgets.cnn=[4000,25000]' \
         -S 'study.budgets.cnn_gap=[25000]' -S 'study.skeleton_channels=[4]' \
         -S 'controls.subsets.sizes=[1000]' -S controls.subsets.min_steps=200 -S controls.max_shift=2 \
         -S train.epochs=2 -S 'train.seeds=[0]'

# The 2x2's families only: no CNN+GAP, no extra skeleton cells, every control off.
TWO_BY_TWO_ONLY := -S 'study.budgets.cnn_gap=[]' -S 'study.skeleton_channels=[]' \
         -S 'controls.permutation.families=[]' -S 'controls.subsets.families=[]' \
         -S controls.max_shift=0 -S controls.weights=false

# Where each family's curve crosses 89%, settled by more seeds: ten seeds at the budgets around
# that line, for the MLP, the LCN, the GConv and the CNN (the 2x2's families), no controls.
CROSSINGS := -S 'train.seeds=[0,1,2,3,4,5,6,7,8,9]' \
         -S 'study.budgets.mlp=[25000,50000,100000,200000,400000]' \
         -S 'study.budgets.lcn=[10000,25000,50000,100000]' -S 'study.budgets.cnn=[4000,10000,25000]' \
         -S 'study.budgets.gconv=[25000,50000,100000,200000,400000]' $(TWO_BY_TWO_ONLY)

# The default budgets of the 2x2's families, the GConv on to 400k, at another learning rate (a third
# of the study's unless LR=... is given): how far the findings depend on the one recipe. No controls.
LR ?= 0.001
LEARNING_RATE := -S train.learning_rate=$(LR) \
         -S 'study.budgets.mlp=[4000,10000,25000,100000,400000]' \
         -S 'study.budgets.lcn=[4000,10000,25000,100000,400000]' -S 'study.budgets.cnn=[1000,4000,10000,25000,100000]' \
         -S 'study.budgets.gconv=[5000,25000,100000,200000,400000]' $(TWO_BY_TWO_ONLY)

# The 2x2 alone, at the matched budget, in ten seeds, at a learning rate (LR, a third of the study's
# unless given): with `make crossings` (ten seeds at the study's rate), each family at its best rate.
TWO_BY_TWO := -S train.learning_rate=$(LR) -S 'train.seeds=[0,1,2,3,4,5,6,7,8,9]' \
         -S 'study.budgets.mlp=[25000]' -S 'study.budgets.lcn=[25000]' -S 'study.budgets.gconv=[25000]' \
         -S 'study.budgets.cnn=[25000]' $(TWO_BY_TWO_ONLY)

setup:
	@scripts/setup.sh

# `dvc repro`, with the independent training stages run one per core (src/whyconv/sweep.py).
study: setup
	python -m whyconv.sweep

# Each is a DVC experiment trained like the study, one stage per core (sweep.py's -S, as dvc exp run's).
# More overrides go through ARGS, after the target's own, e.g.
# make crossings ARGS="-S train.learning_rate=0.01 -S 'study.budgets.gconv=[]'".
quick: setup
	python -m whyconv.sweep $(QUICK) $(ARGS)

crossings: setup
	python -m whyconv.sweep $(CROSSINGS) $(ARGS)

learning-rate: setup
	python -m whyconv.sweep $(LEARNING_RATE) $(ARGS)

two-by-two: setup
	python -m whyconv.sweep $(TWO_BY_TWO) $(ARGS)

test: setup
	pytest

# Training throughput of every family against this machine's matmul peak and PyTorch:
# writes reports/benchmarks.md and .json. PyTorch comes from the `bench` extra.
# Options go through ARGS, e.g. make bench ARGS='--families lcn --budgets 100000 --out /tmp/lcn'.
bench: setup
	python -m pip install -q -c requirements.lock -e '.[bench]'
	python -m whyconv.bench $(ARGS)
