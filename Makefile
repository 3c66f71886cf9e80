# Daily habits. `make install` creates .venv with the pinned torch first (PyPI's: the CUDA build on Linux), then the
# project. CPU-only wheels: make install TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url \
# https://download.pytorch.org/whl/cpu". TORCH_SPEC goes to pip unquoted, so it may hold options.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
CONFIG ?= configs/quickstart.yaml

.PHONY: install quickstart test test-fast lint format bench bench-data bench-memory bench-gpu gpu-kit gpu-rehearsal ablate \
	tune variants clean

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

# Everything to measure on one CUDA GPU within GPU_BUDGET seconds; results.md / results.json in GPU_OUT. The
# default leaves a lent machine's 15 minutes room for its start and a rerun.
GPU_BUDGET ?= 300
GPU_OUT ?= runs/gpu-suite
bench-gpu: install
	$(PY) benchmarks/gpu_suite.py --budget-s $(GPU_BUDGET) --out $(GPU_OUT)

# Wheels of what the GPU image (CPython GPU_KIT_PYTHON) lacks for the CLI, data modules and shards, for
# benchmarks/gpu_oneshot.sh to install offline there.
GPU_KIT_PYTHON ?= 3.12
GPU_KIT ?= .gpu-kit
gpu-kit: install
	$(PY) benchmarks/gpu_kit.py build --python-version $(GPU_KIT_PYTHON) --out $(GPU_KIT)
	@du -sh $(GPU_KIT)

# The one shot on this CPU: a venv with the GPU image's versions (PyPI's torch is its CUDA build, GBs), the
# kit built for this Python through the same code, the one shot's --smoke run (a budget for a slow CPU, not
# a GPU's); every row must be ok or need CUDA.
REHEARSAL_PYTHON ?= python3
REHEARSAL_VENV ?= .rehearsal-venv
REHEARSAL_KIT ?= .gpu-kit-rehearsal
REHEARSAL_OUT ?= runs/gpu-rehearsal
REHEARSAL_BUDGET ?= 900
REHEARSAL_SPEC ?= torch==2.11.0 torchvision==0.26.0 pytorch-lightning==2.6.6 torchmetrics==1.9.0 timm \
	opencv-python-headless scikit-learn tensorboard safetensors pandas matplotlib requests
$(REHEARSAL_VENV)/.installed:
	$(REHEARSAL_PYTHON) -m venv $(REHEARSAL_VENV)
	$(REHEARSAL_VENV)/bin/python -m pip install $(REHEARSAL_SPEC)
	touch $@

gpu-rehearsal: install $(REHEARSAL_VENV)/.installed
	$(PY) benchmarks/gpu_kit.py build --out $(REHEARSAL_KIT) --python-version \
		$$($(REHEARSAL_VENV)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	@du -sh $(REHEARSAL_KIT)
	rm -rf $(REHEARSAL_OUT)
	PYTHON=$(REHEARSAL_VENV)/bin/python GPU_KIT=$(REHEARSAL_KIT) GPU_KIT_SITE=$(abspath $(REHEARSAL_VENV))/kit-site \
		bash benchmarks/gpu_oneshot.sh $(REHEARSAL_OUT) --device cpu --smoke --budget-s $(REHEARSAL_BUDGET)
	$(PY) benchmarks/gpu_kit.py verdict $(REHEARSAL_OUT)/results.json

# One intra-op thread per fit: on a 2-core machine torch's default two threads stall whenever anything else runs.
ablate: install
	OMP_NUM_THREADS=1 $(PY) -m resnest_pl.ablation --config configs/ablation/digits.yaml

# The quick start's hyper-parameter search: 12 trials of 3 epochs (rerun: nothing left to run, outputs rewritten).
TUNE_OUT ?= runs/tune/quickstart
tune: install
	OMP_NUM_THREADS=1 $(PY) -m resnest_pl.tune --config configs/quickstart.yaml --search configs/tune/quickstart.yaml \
		--trials 12 --seed 0 --prune-warmup-epochs 1 --out $(TUNE_OUT) --trainer.max_epochs 3 --trainer.enable_progress_bar false

clean:
	rm -rf $(VENV) $(REHEARSAL_VENV) $(GPU_KIT) $(REHEARSAL_KIT) build dist *.egg-info .pytest_cache .ruff_cache
