"""Shared fixtures: deterministic seeds and one thread per xdist worker."""

from __future__ import annotations

import pytest
import torch

# One intra-op thread per test process: under `pytest -n 2` two workers share two cores, and even alone a
# second thread stalls every tiny step whenever anything else runs on the machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
