"""Shared fixtures: deterministic seeds and one thread per xdist worker."""

from __future__ import annotations

import os

import pytest
import torch

# One intra-op thread per test process: under `pytest -n 2` two workers share two cores, and even alone a
# second thread stalls every tiny step whenever anything else runs on the machine. The variable carries it to
# every process a test starts (CLI runs, DDP ranks, notebook kernels).
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
