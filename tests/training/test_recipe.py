"""The ImageNet configs, as the CLI resolves them, against the recipe tables of docs/training.md and docs/recipe.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from jsonargparse import Namespace

from ..helpers import markdown_table, parsed_config

ROOT = Path(__file__).resolve().parents[2]
GPUS = 64  # the paper's 8 machines x 8 GPUs: the configs' per-GPU batch gives its total batch there
LR_PER_256 = 0.1


def by_model(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """Rows keyed by config name: "ResNeSt-101" -> "resnest101"."""
    return {row["model"].replace("ResNeSt-", "resnest"): row for row in rows}


README = by_model(markdown_table((ROOT / "docs" / "training.md").read_text(), "| model | paper's total batch |"))
DOCS_TEXT = (ROOT / "docs" / "recipe.md").read_text()
DOCS = by_model(markdown_table(DOCS_TEXT, "| model | epochs |"))
DOCS_TRAINING = {row["what"]: row["value"] for row in markdown_table(DOCS_TEXT, "| what | value |")}


def resolved(name: str) -> Namespace:
    """``fit --config configs/imagenet/<name>.yaml`` as the CLI hands it to the classes."""
    return parsed_config("--config", str(ROOT / "configs" / "imagenet" / f"{name}.yaml"))


def test_both_tables_cover_the_four_configs() -> None:
    configs = sorted(p.stem for p in (ROOT / "configs" / "imagenet").glob("*.yaml"))
    assert sorted(README) == sorted(DOCS) == configs


@pytest.mark.parametrize("name", ["resnest50", "resnest101", "resnest200", "resnest269"])
def test_config_follows_the_recipe_tables(name: str) -> None:
    config, readme, docs = resolved(name), README[name], DOCS[name]
    data, model = config.data.init_args, config.model
    total_batch = data.batch_size * GPUS
    assert config.trainer.max_epochs == int(docs["epochs"])
    assert data.batch_size == int(docs["per-GPU batch"])
    assert total_batch == int(readme["paper's total batch"]) == int(docs["total batch"])
    assert model.scale_lr and model.optimizer.init_args.lr == LR_PER_256
    assert LR_PER_256 * total_batch / 256 == pytest.approx(float(readme["total lr"])) == float(docs["total lr"])
    assert data.crop_size == int(readme["train crop"]) == int(docs["train crop"])
    assert data.eval_crop_size == int(readme["eval crop"]) == int(docs["eval crop"])
    assert f"{data.crop_pct:.3f}" == readme["crop_pct"] == docs["crop_pct"]
    assert data.interpolation == docs["interpolation"]
    final_drop = model.model_overrides.get("final_drop", 0.0)
    assert final_drop == float(docs["dropout"])
    assert (f"dropout {final_drop}" in readme["extra"]) == (final_drop > 0)
    assert model.model_overrides["dropblock_prob"] == float(docs["DropBlock"])
    callbacks = {callback.class_path: callback for callback in config.trainer.callbacks}
    assert "resnest_pl.callbacks.DropBlockSchedule" in callbacks
    # An ImageNet epoch is about an hour on 8 GPUs: last.ckpt is refreshed every 30 minutes within it.
    assert callbacks["resnest_pl.callbacks.LastCheckpoint"].init_args.every_n_minutes == 30


@pytest.mark.parametrize("name", ["resnest50", "resnest101", "resnest200", "resnest269"])
def test_config_follows_the_shared_training_recipe(name: str) -> None:
    config = resolved(name)
    model, data, optimizer = config.model, config.data.init_args, config.model.optimizer
    shared = DOCS_TRAINING
    assert re.search(rf"\b{model.warmup_epochs:g} warm-up epochs", shared["schedule"])
    assert shared["label smoothing"] == f"{model.label_smoothing:g}"
    assert shared["Mixup"].startswith(f"\N{GREEK SMALL LETTER ALPHA} = {model.mixup_alpha:g},")
    assert model.mix_off_epochs == 0
    assert f"{LR_PER_256:g} per 256 images" in shared["learning rate"]
    assert optimizer.class_path == "resnest_pl.training.optim.NesterovSGD"
    assert optimizer.init_args.nesterov and f"momentum {optimizer.init_args.momentum:g}" in shared["optimizer"]
    assert float(shared["weight decay"].split()[0]) == optimizer.init_args.weight_decay
    assert model.model_overrides["zero_gamma"] is True
    assert data.auto_augment == "autoaugment" and shared["AutoAugment"].startswith("ImageNet policy")
    assert f"jitter {data.color_jitter:g}" in shared["colour"] and f"noise {data.lighting:g}" in shared["colour"]
    assert (model.warmup_epochs, model.label_smoothing, model.mixup_alpha) == (5, 0.1, 0.2)
