"""``python -m resnest_pl.inspect``: attention set by hand gives the entropies it must, a checkpoint and its export
give the same tables, the command writes its CSVs and figures, and bad inputs end in one ``error:`` line."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from resnest_pl.export import export
from resnest_pl.inspect import attention_stats, record_attention, split_attention_blocks
from resnest_pl.inspect.__main__ import main
from resnest_pl.models import ResNeSt

from ..helpers import ROOT, tiny_model, write_run_checkpoint

CLASSES = ("even", "odd")
SETTINGS = {"eval_crop_size": 32, "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.25] * 3}


def set_attention(model: ResNeSt, split: int | None, logit: float = 50.0) -> None:
    """Make every block's attention independent of its input: even over the splits (``split=None``), or all on
    ``split`` (radix 1: the gate at ``sigmoid(logit)``)."""
    for block, conv in split_attention_blocks(model):
        torch.nn.init.zeros_(conv.fc2.weight)
        bias = torch.zeros(block.cardinality, block.radix, block.channels // block.cardinality)
        if split is not None:
            bias[:, split] = logit
        conv.fc2.bias.data.copy_(bias.flatten())  # fc2's output order: (cardinality, radix, C/K)


def stats_of(model: ResNeSt, images: int = 3) -> pd.DataFrame:
    return record_attention(model, [(torch.randn(images, 3, 32, 32), None)]).blocks


@pytest.mark.parametrize(("radix", "cardinality"), [(2, 1), (4, 2)])
def test_even_attention_has_entropy_one_and_one_hot_zero(radix: int, cardinality: int) -> None:
    model = tiny_model(radix=radix, cardinality=cardinality)
    set_attention(model, None)
    even = stats_of(model)
    assert len(even) == 4 and (even["radix"] == radix).all() and (even["cardinality"] == cardinality).all()
    np.testing.assert_allclose(even["norm_entropy"], 1.0, atol=1e-6)
    for r in range(radix):
        np.testing.assert_allclose(even[f"attn_split{r}"], 1 / radix, atol=1e-6)
    assert (even["dominant_share"] == 0).all()

    set_attention(model, radix - 1)  # the last split: a wrong channel layout would spread it over the splits
    one_hot = stats_of(model)
    np.testing.assert_allclose(one_hot["norm_entropy"], 0.0, atol=1e-6)
    np.testing.assert_allclose(one_hot[f"attn_split{radix - 1}"], 1.0, atol=1e-6)
    np.testing.assert_allclose(one_hot["attn_split0"], 0.0, atol=1e-6)
    assert (one_hot["dominant_share"] == 1).all()


def test_radix_one_reads_the_sigmoid_gate_as_keep_or_suppress() -> None:
    model = tiny_model(radix=1)
    set_attention(model, None)
    half = stats_of(model)
    assert list(half.filter(like="attn_split").columns) == ["attn_split0"]
    np.testing.assert_allclose(half["attn_split0"], 0.5, atol=1e-6)
    np.testing.assert_allclose(half["norm_entropy"], 1.0, atol=1e-6)
    set_attention(model, 0, logit=-50.0)  # a shut gate is as decided as an open one
    shut = stats_of(model)
    np.testing.assert_allclose(shut[["attn_split0", "norm_entropy"]], 0.0, atol=1e-6)
    assert (shut["dominant_share"] == 1).all()
    set_attention(model, 0, logit=math.log(3.0))  # g = 3/4: entropy of (3/4, 1/4) over log 2
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    np.testing.assert_allclose(stats_of(model)["norm_entropy"], expected, atol=1e-6)


def test_recording_leaves_the_model_as_it_was_and_splits_classes() -> None:
    model = tiny_model(radix=2).train()
    labels = torch.tensor([0, 1, 1])
    stats = record_attention(model, [(torch.randn(3, 3, 32, 32), labels)], CLASSES)
    assert model.training and not any(conv.rsoftmax._forward_hooks for _, conv in split_attention_blocks(model))
    assert stats.blocks["images"].eq(3).all()
    assert list(stats.by_class["class"][:2]) == list(CLASSES) and list(stats.by_class["images"][:2]) == [1, 2]
    assert list(stats.stage_entropy().index) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="no split-attention blocks"):
        record_attention(tiny_model(radix=0), [(torch.randn(1, 3, 32, 32), None)])


def write_checkpoint(path: Path, radix: int = 2) -> Path:
    return write_run_checkpoint(path, radix, CLASSES, SETTINGS)


def write_class_images(root: Path, per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_command_writes_tables_and_figures(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint = write_checkpoint(tmp_path / "run" / "last.ckpt")
    images = write_class_images(tmp_path / "images")
    main([str(checkpoint), "--images", str(images), "--out", str(tmp_path / "out"), "--batch-size", "4"])
    assert capsys.readouterr().out.startswith("stage 1: mean normalised attention entropy ")
    blocks = pd.read_csv(tmp_path / "out" / "attention.csv")
    assert list(blocks.columns) == [
        "block",
        "stage",
        "index",
        "radix",
        "cardinality",
        "channels",
        "images",
        "attn_split0",
        "attn_split1",
        "norm_entropy",
        "dominant_share",
    ]
    assert list(blocks["block"]) == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"] and blocks["images"].eq(6).all()
    np.testing.assert_allclose(blocks["attn_split0"] + blocks["attn_split1"], 1.0, atol=1e-6)
    for column in ("attn_split0", "norm_entropy", "dominant_share"):
        assert blocks[column].between(0, 1).all()
    by_class = pd.read_csv(tmp_path / "out" / "attention_by_class.csv")
    assert len(by_class) == 8 and set(by_class["class"]) == set(CLASSES) and by_class["images"].eq(3).all()
    for stage in range(1, 5):
        assert (tmp_path / "out" / f"attention_stage{stage}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_export_gives_the_checkpoints_tables(tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "last.ckpt")
    images = write_class_images(tmp_path / "images")
    export(checkpoint, tmp_path / "export")
    pd.testing.assert_frame_equal(
        attention_stats(tmp_path / "export", images).blocks, attention_stats(checkpoint, images).blocks
    )


def test_max_images_spreads_over_the_classes(tmp_path: Path) -> None:
    stats = attention_stats(write_checkpoint(tmp_path / "last.ckpt"), write_class_images(tmp_path / "i"), max_images=2)
    assert stats.blocks["images"].eq(2).all() and set(stats.by_class["class"]) == set(CLASSES)


def test_bad_inputs_end_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint = write_checkpoint(tmp_path / "last.ckpt")
    images = write_class_images(tmp_path / "images")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00" * 100)
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "x.png").write_bytes(b"not an image")
    for source, folder, message in (
        (tmp_path / "nope.ckpt", images, f"checkpoint {tmp_path / 'nope.ckpt'} does not exist; pass a .ckpt"),
        (garbage, images, f"{garbage} is not a PyTorch or safetensors checkpoint"),
        (tmp_path, images, f"{tmp_path} holds no config.json, so it is no folder written by python -m resnest_pl"),
        (checkpoint, tmp_path / "none", f"image folder {tmp_path / 'none'} does not exist"),
        (checkpoint, tmp_path / "empty", "no images (.jpg, .jpeg, .png, .bmp, .webp, .tif, .tiff, .ppm, .pgm) in "),
        (checkpoint, tmp_path / "broken", "cannot read image "),
    ):
        with pytest.raises(SystemExit) as exit_:
            main([str(source), "--images", str(folder), "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a fresh interpreter imports torch and Lightning
def test_runs_as_a_module_without_shadowing_the_standard_inspect(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "resnest_pl.inspect", str(tmp_path / "nope.ckpt"), "--images", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2 and done.stderr.startswith("error: checkpoint "), done.stderr
