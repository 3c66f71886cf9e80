"""torch's generator states in checkpoints, and a distinct seed per DDP process."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


def random_state(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's global generator states (CPU, and ``device``'s when it is a GPU) as tensors, so that a
    checkpoint holding them still loads with ``weights_only=True``."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_random_state(state: Mapping[str, torch.Tensor], device: torch.device) -> None:
    """Restore what :func:`random_state` saved."""
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def rank_seed(seed: int, rank: int, step: int) -> int:
    """torch's seed for DDP process ``rank`` of a run seeded with ``seed``, starting or resuming at optimizer
    step ``step``: distinct per rank, so the ranks draw different dropout and DropBlock masks."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0])
