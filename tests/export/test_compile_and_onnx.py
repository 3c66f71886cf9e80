"""torch.compile, TorchScript and ONNX (checked with onnxruntime) give the eager outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from resnest_pl.models import create_model

from ..helpers import tiny_model


@pytest.mark.slow
def test_torch_compile_matches_eager() -> None:
    model = tiny_model(radix=2, cardinality=2).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_torchscript_resnest50() -> None:
    model = create_model("resnest50").eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize(("radix", "cardinality"), [(1, 1), (2, 1), (4, 2)])
def test_torchscript_of_every_attention_form(radix: int, cardinality: int) -> None:
    model = tiny_model(radix=radix, cardinality=cardinality).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
        torch.testing.assert_close(scripted.forward_stages(x)["C4"], model.forward_stages(x)["C4"])


@pytest.mark.slow
def test_onnx_export_runs_in_onnxruntime_with_a_dynamic_batch(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = tiny_model(radix=2, cardinality=2).eval()
    path = tmp_path / "resnest.onnx"
    torch.onnx.export(
        model,
        (torch.randn(2, 3, 32, 32),),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 32, 32)
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_torchscript_of_a_model_trained_with_dropblock() -> None:
    model = tiny_model(dropblock_prob=0.1).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
