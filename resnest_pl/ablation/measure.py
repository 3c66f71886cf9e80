"""What a cell costs: parameters and MACs counted on the meta device, train and inference images/s timed here."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..models import create_model
from ..models.complexity import count_macs, count_params

# Trainer precisions that autocast, so the timing runs in the dtype the training runs use.
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass(frozen=True)
class Throughput:
    """Median images/s of a train step (forward, backward, SGD) and of an inference batch, on CUDA the peak memory
    allocated by the train step, and the 1-minute load average after timing (other work competing for a CPU)."""

    train_img_s: float
    infer_img_s: float
    cuda_peak_mib: float
    load_average: float


def complexity(model_name: str, num_classes: int, overrides: dict[str, Any], image_size: int) -> tuple[int, int]:
    """Parameters and multiply-accumulates per image at ``image_size``, without allocating the model."""
    with torch.device("meta"):
        model = create_model(model_name, num_classes=num_classes, **overrides)
    return count_params(model), count_macs(model, image_size, in_chans=model.cfg.in_chans)


def seconds(step: Callable[[], None], device: torch.device) -> float:
    """Wall time of one call of ``step``, the device's queued work included. (``torch.utils.benchmark`` would do,
    but importing it logs a CUDA_HOME warning on every CPU-only machine.)"""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def throughput(
    model_name: str,
    num_classes: int,
    overrides: dict[str, Any],
    batch_size: int,
    image_size: int,
    reps: int = 5,
    warmup: int = 2,
    precision: str | None = None,
) -> Throughput:
    """Time the cell's network on this machine (CUDA when available, autocast as ``precision`` says): the median
    of ``reps`` calls per mode, after ``warmup`` untimed ones."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=num_classes, **overrides).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(batch_size, model.cfg.in_chans, image_size, image_size, device=device)
    targets = torch.randint(0, num_classes, (batch_size,), device=device)
    dtype = AUTOCAST_DTYPES.get(str(precision))
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(images).float(), targets)
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        with torch.no_grad(), autocast():
            model(images)

    def images_per_s(step: Callable[[], None]) -> float:
        for _ in range(warmup):  # allocations, cuDNN's choice of kernels
            step()
        return batch_size / statistics.median(seconds(step, device) for _ in range(reps))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    train = images_per_s(train_step)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else math.nan
    model.eval()
    infer = images_per_s(infer_step)
    return Throughput(train, infer, peak, os.getloadavg()[0])
