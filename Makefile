# Daily habits. `make install` creates .venv with the pinned torch first (PyPI's: the CUDA build on Linux), then the
# project. CPU-only wheels: make install TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url \
# https://download.pytorch.org/whl/cpu". TORCH_SPEC goes to pip unquoted, so it may hold options.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
CONFIG ?= configs/quickstart.yaml

.PHONY: install quickstart test test-fast lint format bench bench-data bench-memory bench-gpu ablate tune variants clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[dev]"
	touch $@

quickstart: install
	$(PY) -m resnest_pl.cli fit --config $(CONFIG)

test: install
	$(PY) -m pytest -n 2 --durations=15

# Without the slow tests, except the marked proofs: one exact resume and one SLURM requeue.
test-fast: install
	$(PY) -m pytest -n 2 -m "not slow or proof"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

variants: install
	$(PY) -m resnest_pl.models

bench: install
	$(PY) benchmarks/model_speed.py

bench-data: install
	$(PY) benchmarks/data_speed.py

bench-memory: install
	$(PY) benchmarks/host_memory.py

# Everything to measure on one CUDA GPU within GPU_BUDGET seconds; results.md / results.json in GPU_OUT.
GPU_BUDGET ?= 360
GPU_OUT ?= runs/gpu-suite
bench-gpu: install
	$(PY) benchmarks/gpu_suite.py --budget-s $(GPU_BUDGET) --out $(GPU_OUT)

# One intra-op thread per fit: on a 2-core machine torch's default two threads stall whenever anything else runs.
ablate: install
	OMP_NUM_THREADS=1 $(PY) -m resnest_pl.ablation --config configs/ablation/digits.yaml

# The quick start's hyper-parameter search: 12 trials of 3 epochs (rerun: nothing left to run, outputs rewritten).
TUNE_OUT ?= runs/tune/quickstart
tune: install
	OMP_NUM_THREADS=1 $(PY) -m resnest_pl.tune --config configs/quickstart.yaml --search configs/tune/quickstart.yaml \
		--trials 12 --seed 0 --prune-warmup-epochs 1 --out $(TUNE_OUT) --trainer.max_epochs 3 --trainer.enable_progress_bar false

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
