"""Images per second, FLOP/s and MFU, measured with few host syncs."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.throughput import Throughput
from pytorch_lightning.callbacks import ThroughputMonitor
from pytorch_lightning.callbacks.throughput_monitor import _plugin_to_compute_dtype
from pytorch_lightning.trainer.states import RunningStage, TrainerFn
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from ..peak_flops import dense_peak_tflops


def fp32_precision_name() -> str:
    """ "tf32" when cuDNN may run fp32 convolutions on TF32 tensor cores (PyTorch's default; a ResNet's FLOPs
    are its convolutions), else "fp32"."""
    return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"


def images_in_batch(batch: Any) -> int:
    """Batch size of a batch whose first element is the image tensor."""
    return int(batch[0].shape[0])


class ImageThroughputMonitor(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` for image batches, with our own GPU peaks and few host syncs.

    Logs ``train/device/samples_per_sec`` (images/s per device; ``train/samples_per_sec`` in total
    under DDP), the same for ``validate``, and FLOP/s plus MFU (``train/device/mfu``) when the module has
    ``flops_per_batch`` (``ResNeStClassifier`` measures it with ``torch.utils.flop_counter``) and the peak is
    known: ``peak_tflops``, else :func:`dense_peak_tflops` of the CUDA device for the trainer's precision.

    Lightning 2.6 calls ``torch.cuda.synchronize()`` after every batch so that its clock reads finished
    work; that stalls the host once a step and lets the GPU run dry while the next step is launched. This
    monitor synchronises and takes a time point only after the first batch of a stage (so compilation and
    cuDNN autotuning stay out of the rates), every ``window_size`` batches after it, at a stage's last batch
    and before validation interrupts training. Rates cover the batches between the last two points: they
    appear after ``window_size + 1`` batches and are refreshed every ``window_size`` batches.
    """

    def __init__(self, window_size: int = 50, separator: str = "/", peak_tflops: float | None = None) -> None:
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1; got {window_size}")
        # Each point of Lightning's Throughput window is one of ours; two points give the rate between them.
        super().__init__(batch_size_fn=images_in_batch, window_size=2, separator=separator)
        self.window_size = window_size
        self.peak_tflops = peak_tflops
        self._pending_flops: dict[RunningStage, int | None] = {}
        self._last_point: dict[RunningStage, int] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning's setup with our peak: its get_available_flops warns about, or halves MFU on, some GPUs.
        self.available_flops = self.peak_flops(trainer)
        stages = [trainer.state.stage]
        if stage == TrainerFn.FITTING and trainer.enable_validation:
            stages.append(RunningStage.VALIDATING)  # fit validates too
        for running in stages:
            assert running is not None
            self._throughputs[running] = Throughput(
                available_flops=self.available_flops, world_size=trainer.world_size, **self.kwargs
            )

    def peak_flops(self, trainer: pl.Trainer) -> int | None:
        """The MFU denominator: ``peak_tflops`` if given, else the dense peak of the trainer's GPU and precision."""
        if self.peak_tflops is not None:
            return int(self.peak_tflops * 1e12)
        device = trainer.strategy.root_device
        if device.type != "cuda":
            return None
        dtype = _plugin_to_compute_dtype(trainer.precision_plugin)
        precision = fp32_precision_name() if dtype is torch.float32 else dtype
        peak = dense_peak_tflops(torch.cuda.get_device_name(device), precision)
        return None if peak is None else int(peak * 1e12)

    def _start(self, trainer: pl.Trainer) -> None:
        super()._start(trainer)
        stage = trainer.state.stage
        assert stage is not None
        if self._batches[stage] == 0:
            self._pending_flops[stage] = 0
            self._last_point[stage] = 0

    @torch.inference_mode()
    def _update(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, iter_num: int) -> None:
        stage = trainer.state.stage
        assert stage is not None
        if self._module_has_flops is None:
            self._module_has_flops = hasattr(pl_module, "flops_per_batch")
            if not self._module_has_flops:
                rank_zero_warn(f"{type(pl_module).__name__} has no `flops_per_batch`: no FLOP/s or MFU are logged")
        flops = pl_module.flops_per_batch if self._module_has_flops else None
        pending = self._pending_flops.get(stage, 0)
        self._pending_flops[stage] = None if flops is None or pending is None else pending + flops
        self._samples[stage] += self.batch_size_fn(batch)
        self._batches[stage] += 1
        done = self._batches[stage]
        if done == 1 or done - self._last_point[stage] >= self.window_size or _is_last_batch(trainer, stage):
            self._take_point(trainer, stage)

    def _take_point(self, trainer: pl.Trainer, stage: RunningStage) -> None:
        """Wait for the device, then add (time, batches, images, FLOPs since the last point) to the window."""
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # the clock must read finished work, not queued work
        self._throughputs[stage].update(
            time=time.perf_counter() - self._t0s[stage],
            batches=self._batches[stage],
            samples=self._samples[stage],
            flops=self._pending_flops[stage],  # type: ignore[arg-type]
        )
        self._pending_flops[stage] = 0
        self._last_point[stage] = self._batches[stage]

    def on_validation_start(self, trainer: pl.Trainer, *args: Any) -> None:
        # Lightning subtracts the time after the last training point as validation time: take one now.
        training = RunningStage.TRAINING
        if not trainer.sanity_checking and self._batches.get(training, 0) > self._last_point.get(training, 0):
            self._take_point(trainer, training)
        super().on_validation_start(trainer, *args)


def _is_last_batch(trainer: pl.Trainer, stage: RunningStage) -> bool:
    """Whether the batch just seen is the last of its loop's epoch (a prediction loop does not tell)."""
    if stage == RunningStage.PREDICTING:
        return False
    loop = trainer.fit_loop.epoch_loop if stage == RunningStage.TRAINING else trainer._evaluation_loop
    return bool(loop.batch_progress.is_last_batch)
