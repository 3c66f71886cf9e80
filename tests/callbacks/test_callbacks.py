"""DropBlock ramp and image-throughput monitor."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.plugins import MixedPrecision, Precision
from pytorch_lightning.trainer.states import RunningStage
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.ops import DropBlock2d

from resnest_pl.callbacks import DropBlockSchedule, ImageThroughputMonitor
from resnest_pl.callbacks.dropblock import max_compiled_increments
from resnest_pl.callbacks.throughput import images_in_batch
from resnest_pl.models import create_model
from resnest_pl.models.complexity import count_macs
from resnest_pl.peak_flops import dense_peak_tflops
from resnest_pl.training.module import ResNeStClassifier

from ..helpers import TINY_SMALL_INPUT, make_trainer


def random_loader(n: int, size: int, batch_size: int = 8) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, size, size, generator=gen), torch.randint(0, 4, (n,), generator=gen))
    return DataLoader(data, batch_size=batch_size)


def dropblock_module(prob: float = 0.1, **kwargs: Any) -> ResNeStClassifier:
    # 24 px keeps the layer-3/4 maps (6x6, 3x3) at least as large as the 3x3 blocks.
    return ResNeStClassifier(
        "resnest14d", num_classes=4, model_overrides={**TINY_SMALL_INPUT, "dropblock_prob": prob}, **kwargs
    )


class RecordDropProb(Callback):
    """The drop probabilities in force for each training batch (runs after the schedule)."""

    def __init__(self) -> None:
        self.probs: list[list[float]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        self.probs.append([m.p for m in pl_module.modules() if isinstance(m, DropBlock2d)])


def test_fraction_is_linear_from_first_to_last_step() -> None:
    schedule = DropBlockSchedule()
    assert schedule.fraction(0, 11) == 0.0
    assert schedule.fraction(5, 11) == pytest.approx(0.5)
    assert schedule.fraction(10, 11) == 1.0
    assert schedule.fraction(50, 11) == 1.0
    stepped = DropBlockSchedule(increments=4)
    assert [stepped.fraction(s, 9) for s in range(9)] == [0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0]


def test_ramp_reaches_the_configured_probability() -> None:
    model = dropblock_module(0.1)
    record = RecordDropProb()
    trainer = make_trainer(max_epochs=2, callbacks=[DropBlockSchedule(), record])
    trainer.fit(model, random_loader(40, 24))  # 5 batches x 2 epochs = 10 steps

    assert len(record.probs) == 10 and len(record.probs[0]) == 6  # 3 per block in layers 3 and 4
    for step, probs in enumerate(record.probs):
        assert probs == pytest.approx([0.1 * step / 9] * 6)
    assert record.probs[-1] == pytest.approx([0.1] * 6)


def test_explicit_target_overrides_the_built_probability() -> None:
    model = dropblock_module(0.05)
    trainer = make_trainer(max_steps=3, callbacks=[DropBlockSchedule(target=0.3)])
    trainer.fit(model, random_loader(24, 24))
    assert [m.p for m in model.modules() if isinstance(m, DropBlock2d)] == pytest.approx([0.3] * 6)


def test_model_without_dropblock_is_reported() -> None:
    model = ResNeStClassifier("resnest14d", num_classes=4, model_overrides=TINY_SMALL_INPUT)
    with pytest.raises(ValueError, match="dropblock_prob"):
        make_trainer(max_steps=1, callbacks=[DropBlockSchedule()]).fit(model, random_loader(8, 16))


def test_compiled_model_clamps_increments_to_the_recompile_limit() -> None:
    """torch 2.14 compiles a frame at most 8 times; the eval graph and new batch sizes take 3 of them, so the ramp
    gets 4 increments (5 probabilities). The clamp follows the limit."""
    assert torch._dynamo.config.recompile_limit == 8 and max_compiled_increments() == 4
    model = dropblock_module(compile=True)
    for increments in (None, 20, 5):
        schedule = DropBlockSchedule(increments=increments)
        with pytest.warns(UserWarning, match="the ramp takes 4 increments"):
            schedule.setup(None, model, "fit")  # type: ignore[arg-type]
        assert schedule.increments == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DropBlockSchedule(increments=4).setup(None, model, "fit")  # type: ignore[arg-type]
        DropBlockSchedule().setup(None, dropblock_module(), "fit")  # type: ignore[arg-type]  # not compiled

    schedule = DropBlockSchedule()
    with torch._dynamo.config.patch(recompile_limit=12), pytest.warns(UserWarning, match="the ramp takes 8 incr"):
        schedule.setup(None, model, "fit")  # type: ignore[arg-type]
    assert schedule.increments == 8
    with torch._dynamo.config.patch(recompile_limit=4), pytest.warns(UserWarning, match="no room for a ramp"):
        DropBlockSchedule().setup(None, model, "fit")  # type: ignore[arg-type]


def test_a_compiled_ramp_of_max_increments_stays_within_the_recompile_limit() -> None:
    """The versions counted by max_compiled_increments, on a compiled DropBlock: one per probability, eval, and a
    new batch size in training and in evaluation; none of them falls back to eager."""
    from torch._dynamo.testing import CompileCounter

    from resnest_pl.models.splat import DropBlock

    torch._dynamo.reset()
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), DropBlock(0.1, 3))
    counter = CompileCounter()
    compiled = torch.compile(net, backend=counter)
    schedule = DropBlockSchedule(increments=max_compiled_increments())
    net.eval()
    compiled(torch.randn(4, 3, 8, 8))  # Lightning's sanity check
    for step in range(schedule.increments + 1):  # one epoch per increment
        net.train()
        net[1].p = 0.1 * schedule.fraction(step, schedule.increments + 1)
        compiled(torch.randn(4, 3, 8, 8))
        compiled(torch.randn(3, 3, 8, 8))  # the epoch's last batch is smaller
        net.eval()
        compiled(torch.randn(4, 3, 8, 8))
        compiled(torch.randn(3, 3, 8, 8))  # so is the validation set's
    assert counter.frame_count == torch._dynamo.config.recompile_limit
    net.train()
    net[1].p = 0.05  # one probability more would run eagerly: the limit is exactly used up
    compiled(torch.randn(4, 3, 8, 8))
    assert counter.frame_count == torch._dynamo.config.recompile_limit
    torch._dynamo.reset()


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="target"):
        DropBlockSchedule(target=2.0)
    with pytest.raises(ValueError, match="increments"):
        DropBlockSchedule(increments=0)


class MemoryLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, float] = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.update(metrics)


def test_throughput_monitor_logs_images_and_flops_per_second(tmp_path: Path) -> None:
    logger = MemoryLogger()
    model = ResNeStClassifier("resnest14d", num_classes=4, model_overrides=TINY_SMALL_INPUT)
    trainer = make_trainer(
        max_epochs=1,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[ImageThroughputMonitor(window_size=2)],
        default_root_dir=tmp_path,  # where the per-class metrics go with a logger that has no folder of its own
    )
    trainer.fit(model, random_loader(32, 16), random_loader(24, 16))

    assert logger.metrics["train/samples"] == 32
    assert logger.metrics["train/device/samples_per_sec"] > 0
    assert logger.metrics["train/device/flops_per_sec"] > 0
    assert logger.metrics["validate/device/samples_per_sec"] > 0
    assert images_in_batch((torch.zeros(5, 3, 2, 2), torch.zeros(5))) == 5

    # The FLOPs behind those rates: a forward pass in eval mode, forward + backward in training.
    model.eval()
    forward = model.flops_per_batch
    assert forward == 2 * count_macs(create_model("resnest14d", num_classes=4, **TINY_SMALL_INPUT), 16, batch_size=8)
    model.train()
    assert model.flops_per_batch > 2 * forward  # the backward pass is counted too


def test_throughput_monitor_takes_points_every_window_and_at_the_last_batch(tmp_path: Path) -> None:
    logger = MemoryLogger()
    model = ResNeStClassifier("resnest14d", num_classes=4, model_overrides=TINY_SMALL_INPUT)
    monitor = ImageThroughputMonitor(window_size=3, peak_tflops=1e-3)
    trainer = make_trainer(
        max_epochs=1, logger=logger, log_every_n_steps=1, callbacks=[monitor], default_root_dir=tmp_path
    )
    trainer.fit(model, random_loader(56, 16))  # 7 batches: points after batches 1, 4, 7 (the last)

    train = monitor._throughputs[RunningStage.TRAINING]
    assert list(train._batches) == [4, 7] and list(train._samples) == [32, 56]
    assert train._flops[-1] == 3 * model.flops_per_batch  # FLOPs of the 3 batches between the points
    assert monitor.available_flops == 10**9
    assert logger.metrics["train/samples"] == 56
    assert logger.metrics["train/device/mfu"] > 0


def test_throughput_monitor_takes_a_point_before_validation_interrupts_training() -> None:
    model = ResNeStClassifier("resnest14d", num_classes=4, model_overrides=TINY_SMALL_INPUT)
    monitor = ImageThroughputMonitor(window_size=100)
    trainer = make_trainer(max_epochs=1, val_check_interval=3, num_sanity_val_steps=0, callbacks=[monitor])
    trainer.fit(model, random_loader(64, 16), random_loader(16, 16))  # validation after batches 3 and 6
    # Points after batches 1, 3 and 6 (before validating: its time is not the training's) and 8 (the last).
    assert list(monitor._throughputs[RunningStage.TRAINING]._batches) == [6, 8]
    assert list(monitor._throughputs[RunningStage.VALIDATING]._batches) == [1, 2]
    trainer.predict(model, random_loader(16, 16))  # and prediction, whose loop has no last-batch flag
    assert monitor._samples[RunningStage.PREDICTING] == 16


def test_dense_peaks_are_looked_up_by_device_name() -> None:
    assert dense_peak_tflops("NVIDIA H200", "bf16") == 989.4  # Lightning has no peak for this name
    assert dense_peak_tflops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989.4
    assert dense_peak_tflops("NVIDIA H100 NVL", "bf16") == 835.0  # Lightning's is the sparse 1978.8
    assert dense_peak_tflops("NVIDIA H100 PCIe", "tf32") == 378.0
    assert dense_peak_tflops("NVIDIA L40S", "bf16") == 362.1  # not the L4's
    assert dense_peak_tflops("NVIDIA A100-SXM4-80GB", torch.float32) == 19.5
    assert dense_peak_tflops("Tesla V100-SXM2-32GB", "bf16") is None
    assert dense_peak_tflops("Some Future GPU", "bf16") is None


def test_peak_override_and_unknown_devices() -> None:
    trainer = make_trainer(max_steps=1)
    assert ImageThroughputMonitor().peak_flops(trainer) is None  # CPU: no peak
    assert ImageThroughputMonitor(peak_tflops=790).peak_flops(trainer) == 790 * 10**12
    with pytest.raises(ValueError, match="window_size"):
        ImageThroughputMonitor(window_size=0)


def test_peak_of_a_cuda_trainer_follows_its_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    strategy = SimpleNamespace(root_device=torch.device("cuda", 0))
    bf16 = SimpleNamespace(strategy=strategy, precision_plugin=MixedPrecision("bf16-mixed", "cuda"))
    fp32 = SimpleNamespace(strategy=strategy, precision_plugin=Precision())
    monitor = ImageThroughputMonitor()
    assert monitor.peak_flops(bf16) == int(989.4e12)  # type: ignore[arg-type]
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert monitor.peak_flops(fp32) == int(494.7e12)  # type: ignore[arg-type]
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert monitor.peak_flops(fp32) == int(66.9e12)  # type: ignore[arg-type]
