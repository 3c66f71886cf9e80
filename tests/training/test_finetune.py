"""Fine-tuning: the frozen backbone, layer-wise learning-rate decay, the digits folder and a real fine-tune."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn

from resnest_pl.callbacks import FreezeBackbone
from resnest_pl.cli import main
from resnest_pl.data import DigitsDataModule
from resnest_pl.data.write_digit_folder import main as digit_folder_main
from resnest_pl.data.write_digit_folder import write_digit_folder
from resnest_pl.training.module import ResNeStClassifier
from resnest_pl.training.optim import STAGE_NAMES, NesterovSGD, layer_depth, parameter_groups

from ..helpers import (
    CONFIGS,
    QUICK,
    TEMPLATE_CLASSES,
    make_trainer,
    run_cli,
    template_loader,
    tiny_classifier,
)

CLASSES = TEMPLATE_CLASSES
STAGES = ("fc", "layer4", "layer3", "layer2", "layer1", "stem")  # depth 0 to 5


def stage(name: str) -> str:
    return name.split(".")[0] if name.split(".")[0] in STAGES else "stem"


class Snapshots(Callback):
    """The backbone's and classifier's state at the start and at every epoch end, and what the training steps see:
    whether the backbone's BatchNorms are in training mode and its weights require gradients."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.states: list[dict[str, torch.Tensor]] = []
        self.bn_training: list[bool] = []
        self.requires_grad: list[bool] = []

    def snapshot(self, pl_module: pl.LightningModule) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.snapshot(pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: object) -> None:
        self.bn_training.append(pl_module.model.layer2[0].bn1.training)
        self.requires_grad.append(pl_module.model.layer2[0].conv1.weight.requires_grad)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.snapshot(pl_module)
        if self.stop_after is not None and trainer.current_epoch + 1 >= self.stop_after:
            trainer.should_stop = True  # an interrupted run


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, set[str]]:
    """Per stage, the names of the floating-point tensors (weights and BatchNorm statistics) that changed."""
    moved: dict[str, set[str]] = {name: set() for name in STAGES}
    for key, value in before.items():
        if value.is_floating_point() and not torch.equal(value, after[key]):
            moved[stage(key)].add(key)
    return moved


def fit_frozen_first(
    stop_after: int | None = None, ckpt_path: str | None = None
) -> tuple[ResNeStClassifier, Snapshots]:
    """Two epochs, the first with the backbone frozen; ``stop_after`` epochs when set."""
    torch.manual_seed(0)
    module = tiny_classifier(
        freeze_backbone_epochs=1, optimizer=functools.partial(NesterovSGD, lr=0.8), warmup_epochs=0
    )
    snapshots = Snapshots(stop_after)
    make_trainer(max_epochs=2, callbacks=[snapshots]).fit(module, template_loader(), ckpt_path=ckpt_path)
    return module, snapshots


# ---- freezing ------------------------------------------------------------------------------------------


def test_frozen_backbone_does_not_move_while_frozen_and_trains_after() -> None:
    module, snapshots = fit_frozen_first()
    start, after_frozen, after_unfrozen = snapshots.states
    frozen_epoch = changed(start, after_frozen)
    assert frozen_epoch["fc"] == {"fc.weight", "fc.bias"}
    assert all(not frozen_epoch[name] for name in STAGES[1:])  # weights, weight decay and BN statistics: none moved

    unfrozen_epoch = changed(after_frozen, after_unfrozen)
    # Every conv weight and BatchNorm statistic of the backbone moved (some biases get no gradient: a BatchNorm
    # follows them).
    weights = {k for k, v in start.items() if stage(k) != "fc" and (v.ndim > 1 or "running_" in k)}
    assert weights - set().union(*unfrozen_epoch.values()) == set()
    assert all(unfrozen_epoch[name] for name in STAGES)
    batches = len(snapshots.bn_training) // 2
    assert snapshots.bn_training == [False] * batches + [True] * batches
    assert snapshots.requires_grad == [False] * batches + [True] * batches
    assert all(p.requires_grad for p in module.parameters())  # trainable again after fit
    assert all(m.training for m in module.modules())


def test_run_resumed_after_the_unfreeze_epoch_trains_the_backbone_as_the_uninterrupted_run(tmp_path: Path) -> None:
    whole, _ = fit_frozen_first()
    first, _ = fit_frozen_first(stop_after=1)
    checkpoint = tmp_path / "epoch0.ckpt"
    first.trainer.save_checkpoint(checkpoint)
    resumed, snapshots = fit_frozen_first(ckpt_path=str(checkpoint))
    assert set(snapshots.requires_grad) == {True} and set(snapshots.bn_training) == {True}
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_freezing_under_ddp_needs_the_unused_parameter_search() -> None:
    callback = FreezeBackbone(1)
    module = tiny_classifier()
    with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
        callback.setup(make_trainer(devices=2, strategy="ddp"), module, "fit")
    callback.setup(make_trainer(devices=2, strategy="ddp_find_unused_parameters_true"), module, "fit")


# ---- layer-wise learning-rate decay --------------------------------------------------------------------


class RecordGroupLRs(Callback):
    """Every group's learning rate at every optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *_: object) -> None:
        self.lrs.append([group["lr"] for group in trainer.optimizers[0].param_groups])


def test_each_stage_learns_at_lr_times_decay_to_its_depth() -> None:
    lr, decay, batch = 0.4, 0.5, 32
    module = tiny_classifier(optimizer=functools.partial(NesterovSGD, lr=lr), layer_decay=decay, warmup_epochs=0)
    lrs = RecordGroupLRs()
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, callbacks=[lrs])
    trainer.fit(module, template_loader(batch_size=batch))

    optimizer = trainer.optimizers[0]
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    names = {id(p): n for n, p in module.model.named_parameters()}
    no_decay = {id(p) for p in parameter_groups(module.model)[1]["params"]}
    seen: list[str] = []
    depths = []
    for group, base_lr, second_step_lr in zip(optimizer.param_groups, scheduler.base_lrs, lrs.lrs[1], strict=True):
        (depth,) = {layer_depth(names[id(p)]) for p in group["params"]}
        assert {stage(names[id(p)]) for p in group["params"]} == {STAGES[depth]}
        assert group["name"] == STAGE_NAMES[depth] + ("/no_decay" if group["weight_decay"] == 0.0 else "")
        assert base_lr == pytest.approx(lr * batch / 256 * decay**depth)
        assert second_step_lr == pytest.approx(base_lr * 0.5)  # the schedule halfway through 2 steps, for all alike
        assert ({id(p) in no_decay for p in group["params"]} == {True}) == (group["weight_decay"] == 0.0)
        seen += [names[id(p)] for p in group["params"]]
        depths.append(depth)
    assert sorted(seen) == sorted(names.values())  # every parameter, once
    assert depths == sorted(depths) and set(depths) == set(range(6))  # head first, down to the stem
    stem = {names[id(p)] for g, d in zip(optimizer.param_groups, depths, strict=True) if d == 5 for p in g["params"]}
    assert {"conv1.0.weight", "bn1.weight"} <= stem


# ---- configuration -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("layer_decay", "0", "layer_decay must lie in (0, 1]"),
        ("layer_decay", "1.5", "layer_decay must lie in (0, 1]"),
        ("freeze_backbone_epochs", "-1", "freeze_backbone_epochs must be >= 0"),
    ],
)
def test_bad_fine_tuning_values_give_one_error_line(option: str, value: str, message: str, tmp_path, capsys) -> None:
    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--trainer.default_root_dir", str(tmp_path), *QUICK]
    code, err = run_cli([*args, f"--model.{option}", value], capsys)
    assert code == 2
    (line,) = err.strip().splitlines()[-1:]
    assert line.startswith("error: ") and message in line


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("finetune.yaml", ["model_name: resnest50", "pretrained: true", "layer_decay: 0.7", "ImageFolderDataModule"]),
        ("finetune_digits.yaml", ["pretrained: runs/quickstart/checkpoints/last.ckpt", "freeze_backbone_epochs: 1"]),
    ],
)
def test_fine_tuning_configs_parse(config: str, expected: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(CONFIGS / config), "--print_config"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    for text in expected:
        assert text in printed


# ---- the digits as a class folder ----------------------------------------------------------------------


def test_digit_folder_holds_the_digits_split_as_the_quick_start_does(tmp_path: Path, capsys) -> None:
    counts = write_digit_folder(tmp_path / "parity", "parity")
    digits = DigitsDataModule()
    assert counts == {"train": len(digits.train_indices), "val": len(digits.val_indices)}
    for split, indices in (("train", digits.train_indices), ("val", digits.val_indices)):
        for name, parity in (("even", 0), ("odd", 1)):
            files = {int(p.stem) for p in (tmp_path / "parity" / split / name).glob("*.png")}
            assert files == {int(i) for i in indices if digits.targets[i] % 2 == parity}
    with pytest.raises(SystemExit) as exit_:
        digit_folder_main([str(tmp_path / "parity")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not empty" in err


# ---- a real fine-tune ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_fine_tune_from_a_digits_checkpoint_learns_a_new_folder_in_two_epochs(tmp_path: Path, capsys) -> None:
    """The quick start for 3 epochs (0.97 val/acc1), then configs/finetune_digits.yaml on the even/odd folder: one
    epoch with the backbone frozen, one with everything and layer decay. Measured 0.947 then 0.953 val/acc1 (from
    scratch, the config's 3 epochs reach 0.50, 0.70, 0.83). About 14 s of one core."""
    source = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--trainer.max_epochs", "3", *QUICK]
    source += ["--trainer.default_root_dir", str(tmp_path / "source"), "--trainer.logger", "false"]
    code, err = run_cli([*source, "--trainer.limit_val_batches", "0"], capsys)
    assert code == 0, err
    write_digit_folder(tmp_path / "parity", "parity")
    args = [
        "fit",
        "--config",
        str(CONFIGS / "finetune_digits.yaml"),
        "--model.pretrained",
        str(tmp_path / "source" / "checkpoints" / "last.ckpt"),
        "--data.init_args.root",
        str(tmp_path / "parity"),
        "--trainer.default_root_dir",
        str(tmp_path / "finetune"),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "finetune"),
        "--trainer.max_epochs",
        "2",
        *QUICK,
    ]
    code, err = run_cli(args, capsys)
    assert code == 0, err
    with (tmp_path / "finetune" / "csv_logs" / "version_0" / "metrics.csv").open() as handle:
        accuracy = [float(row["val/acc1"]) for row in csv.DictReader(handle) if row.get("val/acc1")]
    assert len(accuracy) == 2
    assert accuracy[-1] >= 0.92


def test_bn_layers_are_what_the_freeze_puts_in_eval_mode() -> None:
    module = tiny_classifier()
    FreezeBackbone(1).set_frozen(module, True)
    in_eval = {name for name, m in module.model.named_modules() if not m.training}
    batchnorms = {name for name, m in module.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert in_eval == batchnorms
    assert all(not p.requires_grad for n, p in module.model.named_parameters() if not n.startswith("fc."))
    assert module.model.fc.weight.requires_grad
