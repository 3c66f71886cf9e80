"""``python -m resnest_pl.export``: a real run's checkpoint becomes weights that load, strictly and with equal
outputs, into our ``create_model``, timm and the reference package, with a config and a model card."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from resnest.torch.resnet import Bottleneck, ResNet
from safetensors.torch import load_file
from torch import nn

from resnest_pl.data import DigitsDataModule
from resnest_pl.export import export, main
from resnest_pl.models import create_model, get_variant
from resnest_pl.models.twins import reference_kwargs, reference_name, timm_name
from resnest_pl.models.weights import extract_state_dict
from resnest_pl.training.module import ResNeStClassifier

from ..helpers import ROOT, make_trainer

# What reading a checkpoint or exporting it needs none of: the exporter runs where the training stack is not installed.
TRAINING_STACK = ("pytorch_lightning", "lightning_fabric", "albumentations", "cv2")


def test_the_exporter_and_the_run_record_import_without_the_training_stack() -> None:
    code = (
        "import sys, resnest_pl.export, resnest_pl.training.run_record; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {TRAINING_STACK!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs of two steps of a full-width resnest14d on the digits with an EMA (decay 0.5, so that it
    differs visibly from the live weights); a checkpoint per epoch and ``last.ckpt``."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("run")
    model = ResNeStClassifier("resnest14d", num_classes=10, warmup_epochs=0, ema_decay=0.5)
    checkpoints = ModelCheckpoint(
        dirpath=folder,
        monitor="val/acc1",
        mode="max",
        save_top_k=-1,
        save_last=True,
        filename="epoch{epoch}",
        auto_insert_metric_name=False,
    )
    trainer = make_trainer(
        max_epochs=2, limit_train_batches=2, limit_val_batches=1, enable_checkpointing=True, callbacks=[checkpoints]
    )
    trainer.fit(model, DigitsDataModule(batch_size=16))
    return folder


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal in float64 up to summation order (as in tests/models/test_equivalence.py)."""
    error = (actual - expected).abs().max().item()
    assert error <= 1e-9 * expected.abs().max().item(), f"max abs difference {error}"


def test_export_loads_strictly_with_equal_outputs_everywhere(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    main([str(run / "last.ckpt"), "--out", str(out)])
    config = json.loads((out / "config.json").read_text())
    state = load_file(out / "model.safetensors")
    assert not any(k.startswith("model.") for k in state)

    trained = ResNeStClassifier.load_from_checkpoint(run / "last.ckpt").model.double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = trained(x)
        for pretrained in (out, out / "model.safetensors"):
            ours = create_model("resnest14d", num_classes=10, pretrained=pretrained).double().eval()
            assert torch.equal(ours(x), expected)

        theirs = timm.create_model(config["timm_name"], num_classes=10)
        theirs.load_state_dict(state, strict=True)
        _close(theirs.double().eval()(x), expected)

        reference = ResNet(Bottleneck, num_classes=10, **reference_kwargs(get_variant("resnest14d").config))
        reference.load_state_dict(state, strict=True)
        _close(reference.double().eval()(x), expected)

        # The model card's own loading code, run as written: ours, timm's, the reference package's.
        blocks = re.findall(r"```python\n(.*?)```", (out / "README.md").read_text(), re.DOTALL)
        assert len(blocks) == 3 and "timm.create_model(f'local-dir:{folder}'" in blocks[1] and "ResNet(" in blocks[2]
        for block in blocks:
            namespace: dict = {}
            exec(block.replace("path/to/this/folder", str(out)), namespace)
            _close(namespace["model"].double().eval()(x), expected)


def test_ema_is_the_default_and_live_is_a_choice(run: Path, tmp_path: Path) -> None:
    checkpoint = _load(run / "last.ckpt")
    ema = extract_state_dict({"state_dict": checkpoint["state_dict"]})
    live = extract_state_dict({"state_dict": checkpoint["current_model_state"]})
    assert not torch.equal(ema["conv1.0.weight"], live["conv1.0.weight"])

    default = load_file(export(run / "last.ckpt", tmp_path / "default"))
    chosen_live = load_file(export(run / "last.ckpt", tmp_path / "live", weights="live"))
    for key in ema:
        assert torch.equal(default[key], ema[key]) and torch.equal(chosen_live[key], live[key]), key
    assert json.loads((tmp_path / "live" / "config.json").read_text())["weights"] == "live"
    assert "the exported live weights were not validated" in (tmp_path / "live" / "README.md").read_text()
    assert "not validated" not in (tmp_path / "default" / "README.md").read_text()

    del checkpoint["current_model_state"]  # as a run without model.ema_decay saves it
    torch.save(checkpoint, tmp_path / "no_ema.ckpt")
    with pytest.raises(ValueError, match=r"holds no EMA weights.*use --weights live"):
        export(tmp_path / "no_ema.ckpt", tmp_path / "x", weights="ema")


def test_average_is_the_mean_of_the_checkpoints(run: Path, tmp_path: Path) -> None:
    first, second = run / "epoch0.ckpt", run / "epoch1.ckpt"
    averaged = load_file(export(second, tmp_path / "avg", average=[first], weights="live"))
    a, b = (extract_state_dict({"state_dict": _load(p)["current_model_state"]}) for p in (first, second))
    assert a["conv1.0.weight"].ne(b["conv1.0.weight"]).any()
    for key, value in averaged.items():
        if value.is_floating_point():
            assert torch.equal(value, ((a[key].double() + b[key].double()) / 2).float()), key
        else:
            assert torch.equal(value, b[key]), key  # num_batches_tracked: the last checkpoint's
    assert a["bn1.num_batches_tracked"] != b["bn1.num_batches_tracked"]
    assert json.loads((tmp_path / "avg" / "config.json").read_text())["sources"] == [str(first), str(second)]
    assert "the average of the checkpoints was not validated" in (tmp_path / "avg" / "README.md").read_text()

    other = _load(first)
    other["hyper_parameters"]["model_name"] = "resnest26d"
    assert other["resnest_pl"]["provenance"]["data"]["splits"]["train"]["samples"] > 0
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"other.ckpt is resnest26d but .*epoch1.ckpt is resnest14d"):
        export(second, tmp_path / "bad", average=[tmp_path / "other.ckpt"])


def test_averaging_checkpoints_of_other_data_is_one_warning(run: Path, tmp_path: Path, caplog) -> None:
    first, second = run / "epoch0.ckpt", run / "epoch1.ckpt"
    with caplog.at_level(logging.WARNING, logger="resnest_pl.export"):
        export(second, tmp_path / "same", average=[first])
        assert not caplog.records  # one run: the same data
        other = _load(first)
        other["resnest_pl"]["provenance"]["data"]["splits"]["train"]["sha256"] = "0" * 64
        torch.save(other, tmp_path / "other_data.ckpt")
        export(second, tmp_path / "mixed", average=[tmp_path / "other_data.ckpt"])
    (record,) = caplog.records
    message = record.getMessage()
    assert message.startswith("warning: ") and "other_data.ckpt was trained on other data" in message
    assert "differing: train files" in message and "\n" not in message


def test_pth_format_is_a_plain_state_dict(run: Path, tmp_path: Path) -> None:
    path = export(run / "last.ckpt", tmp_path / "pth", fmt="pth")
    assert path.name == "model.pth" and not (tmp_path / "pth" / "model.safetensors").exists()
    state = torch.load(path, weights_only=True)
    model = nn.Module.load_state_dict(create_model("resnest14d", num_classes=10), state, strict=True)
    assert not model.missing_keys and not model.unexpected_keys
    loaded = create_model("resnest14d", num_classes=10, pretrained=tmp_path / "pth")
    assert torch.equal(loaded.conv1[0].weight, state["conv1.0.weight"])
    assert "torch.load(f'{folder}/model.pth', weights_only=True)" in (tmp_path / "pth" / "README.md").read_text()


def test_config_and_model_card_describe_the_run(run: Path, tmp_path: Path) -> None:
    export(run / "last.ckpt", tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    data = DigitsDataModule()
    assert config["model_name"] == "resnest14d" and config["model_overrides"] == {}
    assert config["num_classes"] == 10 and config["class_names"] == [str(d) for d in range(10)]
    assert config["mean"] == pytest.approx(list(data.mean)) and config["std"] == pytest.approx(list(data.std))
    assert config["eval_crop"] == 32 and config["timm_name"] == "resnest14d" and config["weights"] == "ema"
    # The run's own evaluation (digits are already 32 px), not the variant's ImageNet one.
    assert (config["crop_pct"], config["interpolation"]) == (data.crop_pct, data.interpolation) == (1.0, "bilinear")

    card = (tmp_path / "out" / "README.md").read_text()
    checkpoint = _load(run / "last.ckpt")
    state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert f"best: val/acc1 = {float(state['best_model_score']):.4f}" in card
    assert f"val/acc1 = {checkpoint['resnest_pl']['metrics']['val/acc1']:.4f}" in card.split("final")[1]
    for expected in (
        "resnest_pl.data.digits.DigitsDataModule",
        "resnest_pl.training.optim.NesterovSGD",
        "global batch: 16",
        "epochs: 2 planned",
        "label smoothing: 0.1",
        "mixup / cutmix: off",
        "EMA: decay 0.5",
        "timm.create_model(f'local-dir:{folder}', pretrained=True)",
        "create_model('resnest14d', num_classes=10, pretrained=folder)",
        "ResNeSt: Split-Attention Networks",
        "arXiv:2004.08955",
        "@article{zhang2020resnest",
    ):
        assert expected in card, expected


@pytest.mark.parametrize(
    ("ours", "timm_model", "reference"),
    [
        ("resnest14d", "resnest14d", None),
        ("resnest26d", "resnest26d", None),
        ("resnest50", "resnest50d", "resnest50"),
        ("resnest101", "resnest101e", "resnest101"),
        ("resnest200", "resnest200e", "resnest200"),
        ("resnest269", "resnest269e", "resnest269"),
        ("resnest50_fast_4s2x40d", "resnest50d_4s2x40d", "resnest50_fast_4s2x40d"),
        ("resnest50_fast_1s4x24d", "resnest50d_1s4x24d", "resnest50_fast_1s4x24d"),
        ("resnest50_fast_2s2x40d", None, "resnest50_fast_2s2x40d"),
    ],
)
def test_names_in_timm_and_the_reference(ours: str, timm_model: str | None, reference: str | None) -> None:
    import resnest.torch

    assert timm_name(ours, {}) == timm_model and reference_name(ours, {}) == reference
    assert timm_model is None or timm_model in timm.list_models("resnest*")
    assert reference is None or callable(getattr(resnest.torch, reference))
    assert timm_name(ours, {"stem_width": 16}) is None and reference_name(ours, {"width_multiplier": 0.5}) is None
    assert timm_name(ours, {"dropblock_prob": 0.1}) == timm_model  # regularisation keeps the weights layout


def test_bad_inputs_end_in_one_line(tmp_path: Path, capsys) -> None:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00" * 100)
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    for path, message in (
        (garbage, f"error: {garbage} is not a PyTorch or safetensors checkpoint (truncated or corrupt?)"),
        (tmp_path / "plain.ckpt", "error: " + str(tmp_path / "plain.ckpt") + " is not a checkpoint of a resnest_pl"),
        (tmp_path / "nope.ckpt", "error: weights file " + str(tmp_path / "nope.ckpt") + " does not exist"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main([str(path), "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_timm_opens_the_export_folder_with_the_published_evaluation(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export(run / "last.ckpt", out)
    model = timm.create_model(f"local-dir:{out}", pretrained=True).double().eval()
    assert model.num_classes == 10 and model.pretrained_cfg["label_names"] == [str(d) for d in range(10)]
    data = timm.data.resolve_data_config(model=model)
    assert tuple(data["input_size"]) == (3, 32, 32) and (data["crop_pct"], data["interpolation"]) == (1.0, "bilinear")
    assert data["mean"] == pytest.approx(DigitsDataModule().mean)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    expected = ResNeStClassifier.load_from_checkpoint(run / "last.ckpt").model.double().eval()
    with torch.no_grad():
        _close(model(x), expected(x))


def test_a_model_without_a_timm_twin_says_so(tmp_path: Path) -> None:
    module = ResNeStClassifier("resnest14d", num_classes=3, model_overrides={"width_multiplier": 0.25})
    path = tmp_path / "tiny.ckpt"
    hparams = {k: v for k, v in module.hparams.items() if k != "optimizer"}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, path)
    export(path, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architecture"] is None and "timm has no model of these settings" in config["timm_note"]
    assert "timm and the reference package have no model" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.slow
def test_onnx_export_matches_pytorch_in_onnxruntime(run: Path, tmp_path: Path, capsys) -> None:
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    main([str(run / "last.ckpt"), "--out", str(out), "--format", "onnx"])
    printed = capsys.readouterr().out
    assert "onnxruntime parity: max |ONNX - PyTorch|" in printed and "opset 18" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["file"] == "model.onnx" and config["onnx"]["max_abs_diff"] < 1e-3
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 32, 32)  # another batch size than the export's
    (logits,) = session.run(None, {"images": x.numpy()})
    expected = ResNeStClassifier.load_from_checkpoint(run / "last.ckpt").model.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), expected(x), rtol=1e-4, atol=1e-4)
    block = re.findall(r"```python\n(.*?)```", (out / "README.md").read_text(), re.DOTALL)[0]
    namespace: dict = {}
    exec(block.replace("path/to/this/folder", str(out)), namespace)  # the card's onnxruntime snippet runs
    assert namespace["logits"].shape == (1, 10)


def test_onnx_without_onnxruntime_is_one_error_line(
    run: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(SystemExit) as exit_:
        main([str(run / "last.ckpt"), "--out", str(tmp_path / "onnx"), "--format", "onnx"])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --format onnx needs onnxruntime") and "pip install onnxruntime" in line
    assert not (tmp_path / "onnx").exists()  # refused before anything is written
