"""A checkpoint written before the package was reshaped (``data/before_the_reshape.ckpt``: the quick start at an
eighth of the width, with an EMA, stopped at step 3 by ``max_steps``, written by commit 3599dba, whose hyper-parameters
name ``resnest_pl.module.NesterovSGD``) validates, resumes and exports with today's code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from resnest_pl.export import export
from resnest_pl.models import create_model

from ..helpers import load_checkpoint, quickstart_command, run_cli

OLD = Path(__file__).parent / "data" / "before_the_reshape.ckpt"
EIGHTH = {"width_multiplier": 0.125, "stem_width": 8, "min_attn_channels": 8}
OVERRIDES = ["--model.model_overrides", json.dumps(EIGHTH)]
SHORT = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--model.ema_decay", "0.9"]


def test_the_fixture_names_the_old_optimizer_path() -> None:
    """What makes it a proof: the file holds the class path that moved."""
    old = load_checkpoint(OLD)
    assert old["hyper_parameters"]["optimizer"]["class_path"] == "resnest_pl.module.NesterovSGD"
    assert (old["global_step"], old["epoch"]) == (3, 1)


def test_an_older_checkpoint_validates(tmp_path: Path, capsys) -> None:
    args = quickstart_command(tmp_path, "validate", *OVERRIDES, *SHORT, "--ckpt_path", str(OLD))
    code, err = run_cli(args, capsys)
    assert code == 0, err
    assert "val/acc1" in (tmp_path / "run" / "csv_logs" / "version_0" / "metrics.csv").read_text()


def test_an_older_checkpoint_resumes_to_its_next_step(tmp_path: Path, capsys) -> None:
    root = tmp_path / "run"
    (root / "checkpoints").mkdir(parents=True)
    shutil.copy(OLD, root / "checkpoints" / "last.ckpt")
    more = ["--trainer.max_epochs", "3", "--trainer.max_steps", "4", "--ckpt_path", "last"]
    args = quickstart_command(tmp_path, "fit", *OVERRIDES, *SHORT, *more)
    code, err = run_cli(args, capsys)
    assert code == 0, err
    resumed = load_checkpoint(root / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 4
    assert resumed["hyper_parameters"]["optimizer"]["class_path"] == "resnest_pl.training.optim.NesterovSGD"
    before = load_checkpoint(OLD)
    moved = [k for k in before["state_dict"] if not torch.equal(before["state_dict"][k], resumed["state_dict"][k])]
    assert moved  # the step trained the restored weights


def test_an_older_checkpoint_exports_with_equal_weights(tmp_path: Path) -> None:
    weights = export(OLD, tmp_path / "export", weights="live", fmt="pth")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = create_model("resnest14d", num_classes=10, pretrained=tmp_path / "export", **EIGHTH)
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
    old = load_checkpoint(OLD)["current_model_state"]
    assert torch.equal(state["fc.weight"], old["model.fc.weight"])
    assert "NesterovSGD" in (tmp_path / "export" / "README.md").read_text()
