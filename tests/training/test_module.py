"""ResNeStClassifier: optimizer groups, LR scaling and schedule, losses, EMA, resume, precision, DDP."""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn
from torch.utils.data import DataLoader, TensorDataset

from resnest_pl.callbacks import FusedEMAWeightAveraging
from resnest_pl.models import IncompatibleCheckpointError
from resnest_pl.training.compile import check_compile_with_sync_batchnorm, uses_sync_batchnorm
from resnest_pl.training.ema import FusedEMAModel
from resnest_pl.training.module import ResNeStClassifier
from resnest_pl.training.optim import NesterovSGD, optimizer_from_spec, optimizer_spec, parameter_groups
from resnest_pl.training.random_state import random_state, rank_seed
from resnest_pl.training.schedule import global_batch_size, warmup_cosine

from ..helpers import TEMPLATE_CLASSES, TINY_SMALL_INPUT, make_trainer, template_data, template_loader, tiny_classifier

CLASSES = TEMPLATE_CLASSES


class RecordLR(Callback):
    """The learning rate each optimizer step uses."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *_: object) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


class StopAfterEpochs(Callback):
    """Simulates an interrupted run: stop once ``epochs`` epochs are done."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, *_: object) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


# ---- optimizer groups ----------------------------------------------------------------------------------


def test_no_weight_decay_on_norm_parameters_and_biases() -> None:
    model = tiny_classifier().model
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = parameter_groups(model)
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}

    weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert decayed == weights
    assert not_decayed == set(names.values()) - weights
    norm_params = {
        f"{n}.{kind}" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) for kind in ("weight", "bias")
    }
    biases = {n for n in names.values() if n.endswith(".bias")}
    assert not_decayed == norm_params | biases
    # The ones the reference implementation's name filter misses, and the attention/classifier biases.
    for name in [
        "bn1.weight",
        "bn1.bias",
        "conv1.1.weight",
        "conv1.1.bias",
        "conv1.4.weight",
        "layer2.0.downsample.2.weight",
        "layer2.0.downsample.2.bias",
        "layer1.0.conv2.fc1.bias",
        "layer1.0.conv2.fc2.bias",
        "layer3.0.conv2.bn0.weight",
        "fc.bias",
    ]:
        assert name in not_decayed
    assert {"fc.weight", "layer1.0.conv2.fc1.weight", "conv1.0.weight"} <= decayed


def test_parameter_groups_survive_syncbatchnorm_conversion() -> None:
    model = tiny_classifier().model
    before = [len(g["params"]) for g in parameter_groups(model)]
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert [len(g["params"]) for g in parameter_groups(synced)] == before


def test_default_optimizer_is_the_papers_nesterov_sgd() -> None:
    model = tiny_classifier(scale_lr=False)
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, template_loader(n=16), val_dataloaders=None)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.SGD)
    decay, no_decay = optimizer.param_groups
    assert decay["momentum"] == 0.9 and decay["nesterov"] is True
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert decay["initial_lr"] == 0.1


# ---- learning rate -------------------------------------------------------------------------------------


def test_global_batch_multiplies_batch_devices_nodes_and_accumulation() -> None:
    data = template_data(8, 0)
    fake = SimpleNamespace(train_dataloader=DataLoader(data, batch_size=16), world_size=8, accumulate_grad_batches=2)
    assert global_batch_size(fake) == 16 * 8 * 2
    sampler = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(data), batch_size=32, drop_last=False)
    fake.train_dataloader = DataLoader(data, batch_sampler=sampler)
    assert global_batch_size(fake) == 32 * 8 * 2
    fake.train_dataloader = DataLoader(data, batch_size=None)
    with pytest.raises(ValueError, match="scale_lr=false"):
        global_batch_size(fake)


def test_lr_schedule_follows_scaled_warmup_cosine_closed_form() -> None:
    # 8 batches of 16 with accumulation 2: global batch 32, 4 steps/epoch, 3 epochs = 12 steps, 2 of warmup.
    base, min_lr = 0.4, 0.04
    model = tiny_classifier(optimizer=functools.partial(NesterovSGD, lr=base), warmup_epochs=0.5, min_lr=min_lr)
    record = RecordLR()
    trainer = make_trainer(max_epochs=3, accumulate_grad_batches=2, callbacks=[record])
    trainer.fit(model, template_loader(n=128, batch_size=16))

    peak, floor = base * 32 / 256, min_lr * 32 / 256
    step_lrs = record.lrs[::2]  # one entry per optimizer step
    assert len(step_lrs) == 12 == trainer.global_step
    assert step_lrs[0] == 0.0
    assert step_lrs[1] == pytest.approx(peak / 2)
    assert step_lrs[2] == pytest.approx(peak)  # end of warmup
    assert step_lrs[7] == pytest.approx((peak + floor) / 2)  # middle of the 10 cosine steps
    assert step_lrs[4] == pytest.approx(floor + (peak - floor) * (1 + math.cos(math.pi * 0.2)) / 2)
    for step, lr in enumerate(step_lrs):
        assert lr == pytest.approx(peak * warmup_cosine(step, 2, 12, min_lr / base))
    final = trainer.lr_scheduler_configs[0].scheduler.get_last_lr()
    assert final == pytest.approx([floor, floor])  # after the last step


def test_scale_lr_false_keeps_the_given_rate() -> None:
    model = tiny_classifier(optimizer=functools.partial(NesterovSGD, lr=0.3), scale_lr=False, warmup_epochs=0)
    trainer = make_trainer(max_epochs=1, limit_train_batches=1)
    trainer.fit(model, template_loader(n=32, batch_size=32))
    assert trainer.lr_scheduler_configs[0].scheduler.base_lrs == [0.3, 0.3]


def test_min_lr_above_lr_is_rejected() -> None:
    model = tiny_classifier(optimizer=functools.partial(NesterovSGD, lr=0.01), min_lr=0.1)
    with pytest.raises(ValueError, match="min_lr"):
        make_trainer(max_epochs=1).fit(model, template_loader(n=16))


# ---- training outcome ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "optimizer",
    [functools.partial(NesterovSGD, lr=0.8), functools.partial(torch.optim.AdamW, lr=0.01, weight_decay=0.05)],
    ids=["nesterov_sgd", "adamw"],
)
def test_short_fit_learns_the_task(optimizer: object) -> None:
    pl.seed_everything(0)
    model = tiny_classifier(optimizer=optimizer, warmup_epochs=0.2)
    losses: list[float] = []

    class RecordLoss(Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: object, outputs: dict, *_: object) -> None:
            losses.append(outputs["loss"].item())

    trainer = make_trainer(max_epochs=4, callbacks=[RecordLoss()])
    trainer.fit(
        model, template_loader(n=256, batch_size=32, shuffle=True), template_loader(n=128, seed=2, batch_size=64)
    )

    assert type(trainer.optimizers[0]) is optimizer.func
    assert trainer.optimizers[0].param_groups[1]["weight_decay"] == 0.0
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4])
    assert trainer.callback_metrics["val/acc1"] >= 0.75  # chance is 0.25


def test_metrics_and_skipped_images_are_logged() -> None:
    model = tiny_classifier()
    trainer = make_trainer(max_epochs=1, limit_train_batches=3)
    trainer.fit(model, template_loader(n=64, skipped=True), template_loader(n=32, skipped=True))
    metrics = trainer.callback_metrics
    for key in ["train/loss", "val/loss", "val/acc1", "val/acc5"]:
        assert torch.isfinite(metrics[key])
    # The learning rate is LearningRateMonitor's (the CLI adds it): logging it here too cost a host-to-device copy,
    # which waits for the GPU, every step.
    assert "train/lr" not in metrics
    assert metrics["data/skipped_images"] == 3 * 16  # summed, one per image here
    assert metrics["val/skipped_images"] == 32
    assert metrics["val/acc5"] == 1.0  # top-5 is clipped to the 4 classes

    tested = trainer.test(model, template_loader(n=32, seed=3), verbose=False)[0]
    assert set(tested) == {"test/loss", "test/acc1", "test/acc5"}
    assert tested["test/acc5"] == 1.0


def test_predict_returns_probabilities_with_indices() -> None:
    model = tiny_classifier()
    images = template_data(10, 0).tensors[0]
    predict = DataLoader(TensorDataset(images, torch.arange(100, 110)), batch_size=4)
    batches = make_trainer().predict(model, predict)
    indices = torch.cat([b["indices"] for b in batches])
    probs = torch.cat([b["probs"] for b in batches])
    assert indices.tolist() == list(range(100, 110))
    assert probs.shape == (10, CLASSES)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(10))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(probs, model(images).softmax(dim=1))


# ---- mixing in training_step ---------------------------------------------------------------------------


class RecordingMixer:
    """Wraps the module's mixer and records the epochs in which it was applied."""

    def __init__(self, mixer: object, module: pl.LightningModule) -> None:
        self.mixer, self.module, self.epochs = mixer, module, []

    @property
    def enabled(self) -> bool:
        return self.mixer.enabled

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, rng: object) -> tuple:
        self.epochs.append(self.module.current_epoch)
        return self.mixer(images, targets, rng)


def test_mix_off_epochs_turns_mixing_off_for_the_last_epochs() -> None:
    model = tiny_classifier(mixup_alpha=0.2, cutmix_alpha=1.0, mix_off_epochs=1)
    model.mixer = RecordingMixer(model.mixer, model)
    trainer = make_trainer(max_epochs=3, limit_train_batches=2)
    trainer.fit(model, template_loader(n=32))
    assert model.mixer.epochs == [0, 0, 1, 1]


def test_mixed_batch_loss_is_soft_target_cross_entropy() -> None:
    # The mixing generator is seeded by (torch's initial seed, rank, epoch, batch): seed 13 draws lam = 0.566 from
    # Beta(0.2, 0.2), far from 0 and 1, so the loss on the mixed targets differs from the loss on either label.
    torch.manual_seed(13)
    model = tiny_classifier(mixup_alpha=0.2, label_smoothing=0.1)
    model.mixer = RecordingMixer(model.mixer, model)
    with torch.no_grad():  # spread the initial logits, so that losses against different targets differ clearly
        model.model.fc.weight.mul_(30)
    captured: dict[str, torch.Tensor] = {}
    model.model.register_forward_hook(lambda module, inputs, output: captured.update(images=inputs[0], logits=output))

    class RecordLoss(Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: object, outputs: dict, *_: object) -> None:
            captured["loss"] = outputs["loss"].detach()

    make_trainer(max_steps=1, callbacks=[RecordLoss()]).fit(model, template_loader(n=16, batch_size=16))
    images, targets = template_data(16, 1).tensors
    # The forward saw lam * images + (1 - lam) * reversed images; recover lam by least squares.
    difference = images - images.flip(0)
    lam = (((captured["images"] - images.flip(0)) * difference).sum() / difference.pow(2).sum()).item()
    torch.testing.assert_close(captured["images"], lam * images + (1 - lam) * images.flip(0), rtol=0, atol=1e-5)
    assert model.mixer.epochs == [0] and 0.3 < lam < 0.7
    log_probs = captured["logits"].detach().double().log_softmax(dim=1)

    def soft_target_loss(own: torch.Tensor, partner: torch.Tensor) -> float:
        return -((lam * own + (1 - lam) * partner) * log_probs).sum(dim=1).mean().item()

    one_hot = F.one_hot(targets, CLASSES).double()
    smooth = one_hot * 0.9 + 0.1 / CLASSES
    expected = soft_target_loss(smooth, smooth.flip(0))
    wrong = {
        "own labels only": soft_target_loss(smooth, smooth),
        "no label smoothing": soft_target_loss(one_hot, one_hot.flip(0)),
        "partner labels only": soft_target_loss(smooth.flip(0), smooth.flip(0)),
    }
    assert captured["loss"].item() == pytest.approx(expected, rel=1e-5)
    for name, loss in wrong.items():
        assert loss != pytest.approx(expected, rel=1e-4), name  # each would fail the comparison above


def test_mix_off_epochs_needs_max_epochs() -> None:
    model = tiny_classifier(mixup_alpha=0.2, mix_off_epochs=1)
    with pytest.raises(ValueError, match="max_epochs"):
        make_trainer(max_steps=2, max_epochs=-1).fit(model, template_loader(n=16))


# ---- EMA -----------------------------------------------------------------------------------------------


def _loss_of(state: dict, data: TensorDataset) -> float:
    model = tiny_classifier()
    model.load_state_dict(state)
    model.eval()
    images, targets = data.tensors
    with torch.no_grad():
        return F.cross_entropy(model(images), targets).item()


def test_validation_uses_the_ema_weights(tmp_path) -> None:
    pl.seed_everything(0)
    model = tiny_classifier(ema_decay=0.5, optimizer=functools.partial(NesterovSGD, lr=0.8), warmup_epochs=0)
    val = template_data(64, 2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = make_trainer(max_epochs=1, limit_train_batches=6, callbacks=[checkpoint], enable_checkpointing=True)
    trainer.fit(model, template_loader(n=96), DataLoader(val, batch_size=64))

    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    ema_loss = _loss_of(saved["state_dict"], val)
    live_loss = _loss_of(saved["current_model_state"], val)
    logged = trainer.callback_metrics["val/loss"].item()
    assert abs(ema_loss - live_loss) > 1e-3
    assert logged == pytest.approx(ema_loss, rel=1e-5)
    # After fit the module holds the averaged weights, which are what test/predict then use.
    for key, value in saved["state_dict"].items():
        torch.testing.assert_close(model.state_dict()[key], value)


def _perturb(model: nn.Module, generator: torch.Generator) -> None:
    """A stand-in for an optimizer step: every parameter and float buffer moves, the BatchNorm counters count."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))
            else:
                tensor.add_(1)


def test_fused_ema_equals_the_per_tensor_ema_in_float64() -> None:
    model = tiny_classifier().model.double()
    fused = FusedEMAModel(model, decay=0.9)
    reference = AveragedModel(model, avg_fn=get_ema_avg_fn(0.9), use_buffers=True)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        _perturb(model, generator)
        fused.update_parameters(model)
        reference.update_parameters(model)
    assert int(fused.n_averaged) == int(reference.n_averaged) == 5
    assert list(fused.state_dict()) == list(reference.state_dict())  # checkpoints load into either
    averages = zip(fused.module.state_dict().items(), reference.module.state_dict().values(), strict=True)
    for (name, ours), theirs in averages:
        if ours.is_floating_point():
            torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-15, msg=name)
        else:  # a counter, copied: averaging it means nothing
            assert torch.equal(ours, model.state_dict()[name]), name


def test_fused_ema_update_never_reads_its_count_back() -> None:
    """After its first update (and after a load) the count lives on the host too: reading the device's copy waits
    for the GPU. A meta tensor cannot be read, so any read fails here."""
    model = tiny_classifier().model
    fused = FusedEMAModel(model, decay=0.5)
    fused.update_parameters(model)
    fused.n_averaged = torch.ones((), dtype=torch.long, device="meta")
    before = fused.module.conv1[0].weight.clone()
    _perturb(model, torch.Generator().manual_seed(0))
    fused.update_parameters(model)
    expected = 0.5 * before + 0.5 * model.conv1[0].weight.detach()
    torch.testing.assert_close(fused.module.conv1[0].weight, expected)

    loaded = FusedEMAModel(model, decay=0.5)
    loaded.load_state_dict({**fused.state_dict(), "n_averaged": torch.tensor(3)})
    loaded.update_parameters(model)  # reads the loaded count once: 3 > 0, so this averages instead of copying
    torch.testing.assert_close(loaded.module.conv1[0].weight, 0.5 * expected + 0.5 * model.conv1[0].weight)


def test_ema_every_n_steps_updates_every_nth_step_with_the_decay_to_the_n() -> None:
    callbacks = tiny_classifier(ema_decay=0.9, ema_every_n_steps=3).configure_callbacks()
    (callback,) = [c for c in callbacks if isinstance(c, FusedEMAWeightAveraging)]
    assert callback.decay == pytest.approx(0.9**3)
    assert [callback.should_update(step_idx=step) for step in range(7)] == [1, 0, 0, 1, 0, 0, 1]
    with pytest.raises(ValueError, match="ema_every_n_steps"):
        tiny_classifier(ema_decay=0.9, ema_every_n_steps=0)


# ---- checkpoints ---------------------------------------------------------------------------------------


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path) -> None:
    def run(
        dirpath, stop_after: int | None = None, ckpt_path: str | None = None
    ) -> tuple[pl.Trainer, ResNeStClassifier]:
        pl.seed_everything(0)
        model = tiny_classifier(
            ema_decay=0.9, mixup_alpha=0.2, warmup_epochs=1, optimizer=functools.partial(NesterovSGD, lr=0.8)
        )
        callbacks: list[Callback] = [ModelCheckpoint(dirpath=dirpath, save_last=True)]
        if stop_after:
            callbacks.append(StopAfterEpochs(stop_after))
        trainer = make_trainer(max_epochs=4, deterministic=True, callbacks=callbacks, enable_checkpointing=True)
        trainer.fit(model, template_loader(n=48), template_loader(n=16, seed=2), ckpt_path=ckpt_path)
        return trainer, model

    full_trainer, full = run(tmp_path / "full")
    interrupted, _ = run(tmp_path / "resumed", stop_after=2)
    assert interrupted.global_step == full_trainer.global_step // 2
    resumed_trainer, resumed = run(tmp_path / "resumed", ckpt_path="last")

    assert resumed_trainer.global_step == full_trainer.global_step == 12
    assert resumed_trainer.current_epoch == full_trainer.current_epoch
    for key, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)
    full_ckpt = torch.load(tmp_path / "full" / "last.ckpt", weights_only=True)
    resumed_ckpt = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=True)
    for key, value in full_ckpt["current_model_state"].items():
        torch.testing.assert_close(resumed_ckpt["current_model_state"][key], value, rtol=0, atol=0, msg=key)
    assert resumed_ckpt["lr_schedulers"] == full_ckpt["lr_schedulers"]


def test_checkpoint_records_hyperparameters_as_plain_data(tmp_path) -> None:
    model = tiny_classifier(optimizer=functools.partial(torch.optim.AdamW, lr=0.002), mixup_alpha=0.2)
    trainer = make_trainer(max_steps=1)
    trainer.fit(model, template_loader(n=16))
    trainer.save_checkpoint(tmp_path / "model.ckpt")

    saved = torch.load(tmp_path / "model.ckpt", weights_only=True)  # no pickled code
    hparams = saved["hyper_parameters"]
    assert hparams["model_name"] == "resnest14d" and hparams["mixup_alpha"] == 0.2
    assert hparams["optimizer"] == {"class_path": "torch.optim.adamw.AdamW", "init_args": {"lr": 0.002}}
    restored = ResNeStClassifier.load_from_checkpoint(tmp_path / "model.ckpt", weights_only=True)
    assert restored.hparams.model_overrides == TINY_SMALL_INPUT
    assert isinstance(restored.optimizer_factory([nn.Parameter(torch.zeros(1))]), torch.optim.AdamW)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value)


def test_optimizer_spec_round_trip() -> None:
    assert optimizer_spec(NesterovSGD) == {"class_path": "resnest_pl.training.optim.NesterovSGD", "init_args": {}}
    assert optimizer_spec(lambda params: torch.optim.SGD(params, lr=0.1)) is None
    rebuilt = optimizer_from_spec(optimizer_spec(functools.partial(torch.optim.SGD, lr=0.5, momentum=0.8)))
    optimizer = rebuilt([nn.Parameter(torch.zeros(1))])
    assert optimizer.defaults["lr"] == 0.5 and optimizer.defaults["momentum"] == 0.8


def test_the_optimizer_of_an_older_checkpoint_still_resolves() -> None:
    """Checkpoints written before the training/ package name resnest_pl.module.NesterovSGD in their hparams."""
    old = optimizer_from_spec({"class_path": "resnest_pl.module.NesterovSGD", "init_args": {"lr": 0.2}})
    assert old.func is NesterovSGD and old.keywords == {"lr": 0.2}


def test_checkpoint_with_other_class_count_gives_one_clear_error(tmp_path) -> None:
    trainer = make_trainer(max_steps=1)
    trainer.fit(tiny_classifier(num_classes=10), template_loader(n=16))
    path = tmp_path / "ten.ckpt"
    trainer.save_checkpoint(path)

    with pytest.raises(IncompatibleCheckpointError, match=r"10 classes.*has 5.*pretrained=") as excinfo:
        make_trainer(max_epochs=1).fit(tiny_classifier(num_classes=5), template_loader(n=16), ckpt_path=path)
    assert "--ckpt_path" in str(excinfo.value)
    with pytest.raises(IncompatibleCheckpointError, match="10 classes"):
        ResNeStClassifier.load_from_checkpoint(path, num_classes=5)

    # The suggested fix: the trunk comes from the checkpoint, the classifier is new.
    finetune = tiny_classifier(num_classes=5, pretrained=str(path))
    source = torch.load(path, weights_only=True)["state_dict"]
    torch.testing.assert_close(
        finetune.state_dict()["model.layer1.0.conv1.weight"], source["model.layer1.0.conv1.weight"]
    )
    assert finetune.model.fc.out_features == 5
    trainer = make_trainer(max_steps=1)
    trainer.fit(finetune, template_loader(n=16))
    trainer.save_checkpoint(tmp_path / "five.ckpt")
    assert torch.load(tmp_path / "five.ckpt", weights_only=True)["hyper_parameters"]["pretrained"] is False


def test_data_with_other_class_count_is_rejected() -> None:
    class Data(pl.LightningDataModule):
        num_classes = 7

        def train_dataloader(self) -> DataLoader:
            return template_loader(n=16)

    with pytest.raises(ValueError, match=r"7 classes.*num_classes=4.*model.num_classes=7"):
        make_trainer(max_steps=1).fit(tiny_classifier(), datamodule=Data())


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        tiny_classifier(num_classes=1)
    with pytest.raises(ValueError, match="ema_decay"):
        tiny_classifier(ema_decay=1.5)
    with pytest.raises(ValueError, match="warmup_epochs"):
        tiny_classifier(warmup_epochs=-1)
    with pytest.raises(ValueError, match="mixup_alpha"):
        tiny_classifier(mixup_alpha=-0.2)


# ---- precision, memory format, compile, DDP ------------------------------------------------------------


def test_bf16_mixed_precision_runs_with_finite_loss() -> None:
    model = tiny_classifier()
    dtypes = []
    model.model.fc.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    before = model.model.fc.weight.detach().clone()
    trainer = make_trainer(precision="bf16-mixed", max_steps=3)
    trainer.fit(model, template_loader(n=48))
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert model.model.fc.weight.dtype == torch.float32
    assert not torch.equal(model.model.fc.weight, before)


def test_channels_last_gives_the_same_outputs() -> None:
    pl.seed_everything(0)
    nchw = tiny_classifier().eval()
    nhwc = tiny_classifier(channels_last=True).eval()
    nhwc.load_state_dict(nchw.state_dict())
    assert nhwc.model.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    images = template_data(4, 0).tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(nhwc(images), nchw(images), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_backbone_trains_and_keeps_backbone_checkpoint_keys(tmp_path, monkeypatch) -> None:
    # Dynamo + AOT autograd without inductor's C++ code generation, which takes minutes on a small CPU.
    counter = CompileCounterWithBackend("aot_eager")
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **options: compile_(fn, backend=counter))
    model = tiny_classifier(compile=True)
    trainer = make_trainer(max_steps=2)
    trainer.fit(model, template_loader(n=32))
    assert counter.frame_count >= 1
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    trainer.save_checkpoint(tmp_path / "compiled.ckpt")
    keys = set(torch.load(tmp_path / "compiled.ckpt", weights_only=True)["state_dict"])
    assert keys == set(tiny_classifier().state_dict())
    assert not any("_orig_mod" in key for key in keys)


def test_compile_with_sync_batchnorm_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"SyncBatchNorm.*107372.*sync_batchnorm=false.*compile=false"):
        check_compile_with_sync_batchnorm(compile=True, sync_batchnorm=True)
    check_compile_with_sync_batchnorm(compile=True, sync_batchnorm=False)
    check_compile_with_sync_batchnorm(compile=False, sync_batchnorm=True)

    module = tiny_classifier()
    synced = pl.Trainer(accelerator="cpu", strategy="ddp", devices=1, sync_batchnorm=True, logger=False)
    plain = pl.Trainer(accelerator="cpu", strategy="ddp", devices=1, logger=False)
    assert uses_sync_batchnorm(synced, module) and not uses_sync_batchnorm(plain, module)
    assert uses_sync_batchnorm(plain, nn.SyncBatchNorm.convert_sync_batchnorm(tiny_classifier()))


def test_setup_refuses_compile_under_sync_batchnorm() -> None:
    module = tiny_classifier(compile=True)
    module.trainer = pl.Trainer(accelerator="cpu", strategy="ddp", devices=1, sync_batchnorm=True, logger=False)
    with pytest.raises(ValueError, match="SyncBatchNorm"):
        module.setup("fit")
    assert not module._compiled


def _fake_trainer(rank: int, world_size: int, step: int = 0) -> SimpleNamespace:
    return SimpleNamespace(global_rank=rank, world_size=world_size, global_step=step, datamodule=None, max_epochs=1)


def test_ddp_ranks_seed_torch_apart_and_resumed_ranks_reseed_from_the_step() -> None:
    single = tiny_classifier()
    single.trainer = _fake_trainer(0, 1)
    torch.manual_seed(5)
    single.setup("fit")
    assert torch.initial_seed() == 5  # one process keeps its stream: its resume stays bit-exact

    seeds = []
    for rank in (0, 1):
        module = tiny_classifier()
        module.trainer = _fake_trainer(rank, 2)
        torch.manual_seed(5)
        module.setup("fit")
        assert module._mix_seed == 5
        seeds.append(torch.initial_seed())
    assert seeds == [rank_seed(5, 0, 0), rank_seed(5, 1, 0)] and len(set(seeds)) == 2

    # Resuming at step 30 from a checkpoint that holds rank 0's generator.
    torch.manual_seed(rank_seed(5, 0, 0))
    saved = random_state(torch.device("cpu"))
    rank0_next = torch.rand(4)
    draws = []
    for rank in (0, 1):
        module = tiny_classifier()
        module.trainer = _fake_trainer(rank, 2, step=30)
        module._mix_seed, module._rng_to_restore = 5, saved
        torch.manual_seed(123)
        module.on_train_batch_start(None, 0)
        draws.append(torch.rand(4))
    assert torch.equal(draws[0], rank0_next)  # rank 0 continues exactly
    torch.manual_seed(rank_seed(5, 1, 30))
    assert torch.equal(draws[1], torch.rand(4))  # rank 1: its own stream, reproducible from (seed, rank, step)


class RecordDropoutMasks(Callback):
    """Feeds ones to the classifier's dropout in training and saves its masks as ``<folder>/rank<N>.pt``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.masks: list[torch.Tensor] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        drop = pl_module.model.drop
        # Ones, still connected to the backbone's graph (DDP requires every parameter to get a gradient).
        drop.register_forward_pre_hook(lambda module, args: (args[0] - args[0].detach() + 1,))
        drop.register_forward_hook(lambda module, args, out: self.masks.append(out != 0) if module.training else None)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save(torch.stack(self.masks), self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ddp_ranks_draw_different_dropout_masks_reproducibly(tmp_path) -> None:
    masks = []
    for run in range(2):
        folder = tmp_path / f"run{run}"
        folder.mkdir()
        pl.seed_everything(0)
        model = ResNeStClassifier(
            "resnest14d", num_classes=CLASSES, model_overrides={**TINY_SMALL_INPUT, "final_drop": 0.5}
        )
        trainer = make_trainer(strategy="ddp_spawn", devices=2, max_steps=2, callbacks=[RecordDropoutMasks(folder)])
        trainer.fit(model, template_loader(n=64, batch_size=8))
        masks.append([torch.load(folder / f"rank{rank}.pt") for rank in (0, 1)])
    first, second = masks
    assert first[0].shape == (2, 8, model.model.num_features)  # two steps of 8 samples
    assert not torch.equal(first[0], first[1])  # sample i of each rank draws its own mask
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])  # run to run


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path) -> None:
    model = tiny_classifier(warmup_epochs=0)
    logger = CSVLogger(tmp_path)
    trainer = make_trainer(
        strategy="ddp_spawn",
        devices=2,
        max_epochs=1,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[LearningRateMonitor("step")],
    )
    # 64 images, 32 per process, batches of 8: 4 steps at a global batch of 16.
    trainer.fit(model, template_loader(n=64, batch_size=8, skipped=True), template_loader(n=32, seed=2, batch_size=8))
    metrics = trainer.callback_metrics
    peak = 0.1 * 16 / 256
    with open(next(Path(tmp_path).rglob("metrics.csv"))) as rows:
        lrs = [float(row["lr-NesterovSGD/pg1"]) for row in csv.DictReader(rows) if row.get("lr-NesterovSGD/pg1")]
    assert lrs == pytest.approx([peak * (1 + math.cos(math.pi * step / 4)) / 2 for step in range(4)])
    assert metrics["data/skipped_images"] == 64  # summed over both processes
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/acc1"])
