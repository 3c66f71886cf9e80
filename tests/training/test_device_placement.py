"""Every tensor that the module and its callbacks make for a fit lives on the module's device.

No GPU takes part in the tests, so the meta device stands in for one. Lightning builds a fit in this order:
callbacks' and the module's ``setup`` run while the module still sits on the CPU but already reports the
strategy's device as ``pl_module.device`` (``_call_setup_hook`` sets ``_device``); then the strategy moves the
module; then batches arrive on the device, where the data module's ``on_after_batch_transfer`` normalises them.
The tests follow the same order with ``torch.device("meta")``, so a tensor made on the CPU where the device was
meant shows up by its device, or fails the first operation that mixes it with meta tensors, as it would fail with
CUDA tensors.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torchmetrics import Metric

from resnest_pl.callbacks import DropBlockSchedule, FusedEMAWeightAveraging, RecordProvenance
from resnest_pl.data import DigitsDataModule
from resnest_pl.training.module import ResNeStClassifier

from ..helpers import TINY_SMALL_INPUT, make_trainer

META = torch.device("meta")
CLASSES = 10  # the digits'


def _module(**kwargs: object) -> ResNeStClassifier:
    overrides = {**TINY_SMALL_INPUT, "dropblock_prob": 0.1}
    return ResNeStClassifier("resnest14d", num_classes=CLASSES, model_overrides=overrides, **kwargs)


def _fake_trainer() -> SimpleNamespace:
    return SimpleNamespace(
        global_rank=0,
        world_size=1,
        global_step=0,
        current_epoch=0,
        max_epochs=2,
        estimated_stepping_batches=10,
        datamodule=DigitsDataModule(image_size=16, batch_size=8),
        strategy=SimpleNamespace(_layer_sync=None),
    )


def _devices(tensors: object) -> set[str]:
    return {tensor.device.type for tensor in tensors}  # type: ignore[attr-defined]


def test_the_ema_average_is_built_on_the_device_the_module_is_going_to() -> None:
    module = _module(ema_decay=0.9)
    (callback,) = [c for c in module.configure_callbacks() if isinstance(c, FusedEMAWeightAveraging)]
    module._device = META  # what Lightning's _call_setup_hook does before the callbacks' setup
    callback.setup(None, module, "fit")  # type: ignore[arg-type]
    average = callback._average_model
    assert average is not None
    assert _devices(itertools.chain(average.parameters(), average.buffers())) == {"meta"}
    assert _devices(module.parameters()) == {"cpu"}  # the strategy, not the callback, moves the module


def test_a_training_step_makes_every_tensor_on_the_module_device() -> None:
    module = _module(ema_decay=0.9, mixup_alpha=0.2, cutmix_alpha=1.0, class_metrics=True)
    trainer = _fake_trainer()
    module.trainer = trainer  # type: ignore[assignment]
    module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    module._device = META
    callbacks = [c for c in module.configure_callbacks() if not isinstance(c, RecordProvenance)]
    callbacks.append(DropBlockSchedule())
    for callback in callbacks:
        callback.setup(trainer, module, "fit")  # type: ignore[arg-type]
    module.setup("fit")
    data = trainer.datamodule
    data.setup("fit")

    module.to(META)  # the strategy's move
    uint8 = torch.zeros(8, 3, 16, 16, dtype=torch.uint8, device=META)
    batch = (uint8, torch.zeros(8, dtype=torch.long, device=META), torch.zeros((), device=META))
    shift = torch.zeros(8, 3, device=META)  # PCA lighting's per-image shift
    for callback in callbacks:
        callback.on_train_batch_start(trainer, module, batch, 0)  # type: ignore[arg-type]
    images, targets, skipped = data.on_after_batch_transfer((*batch, shift), 0)
    assert images.device == META and images.dtype == torch.float32
    assert data._normalization is not None and _devices(data._normalization) == {"meta"}  # the batches' device
    loss = module.training_step((images, targets, skipped), 0)
    assert loss.device == META
    loss.backward()
    trainer.global_step = 1  # the optimizer has stepped
    for callback in callbacks:
        callback.on_train_batch_end(trainer, module, {"loss": loss}, batch, 0)  # type: ignore[arg-type]

    (ema,) = [c._average_model for c in callbacks if isinstance(c, FusedEMAWeightAveraging)]
    assert ema._updates == 1
    made = itertools.chain(module.parameters(), module.buffers(), ema.parameters(), ema.buffers())
    assert _devices(made) == {"meta"}
    metrics = [m for m in module.modules() if isinstance(m, Metric)]
    states = [v for m in metrics for v in m.metric_state.values() if isinstance(v, torch.Tensor)]
    assert len(metrics) > 4 and _devices(states) == {"meta"}  # accuracy, loss and the class metrics


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_half_width_true_precision_trains(precision: str) -> None:
    """Under "*-true" precision the parameters are bf16 / fp16, while the data modules' uint8 pixels are
    normalised to float32 after Lightning has cast the batch: the inputs are cast to the parameters' dtype
    (before the fix the first convolution refused the mix), and the weights learn."""
    pl.seed_everything(0)
    model = ResNeStClassifier("resnest14d", num_classes=10, model_overrides=TINY_SMALL_INPUT, warmup_epochs=0)
    before = model.model.fc.weight.detach().clone()
    trainer = make_trainer(precision=precision, max_steps=4)
    trainer.fit(model, datamodule=DigitsDataModule(image_size=16, batch_size=16))
    dtype = {"bf16-true": torch.bfloat16, "16-true": torch.float16}[precision]
    assert model.model.fc.weight.dtype == dtype
    assert not torch.equal(model.model.fc.weight.float(), before)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
