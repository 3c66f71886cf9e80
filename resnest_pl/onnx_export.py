"""ONNX out of an export: ``model.onnx`` with a dynamic batch axis, checked against the PyTorch model with
onnxruntime before the command reports success."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

# The opset the exporter writes: supported by onnxruntime 1.16 and newer and by TensorRT 8.6 and newer.
OPSET = 18
# Largest |ONNX - PyTorch| accepted, relative to the largest |logit|: float32 kernels sum in other orders.
TOLERANCE = 1e-4
NEEDED = ("onnx", "onnxscript", "onnxruntime")  # torch's exporter needs the first two, the check the third


def check_onnx_available() -> None:
    """Refuse before any work when a package the export or its check needs is missing."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            f"--format onnx needs {', '.join(missing)}, which is not installed; pip install {' '.join(missing)} "
            "(or pick --format safetensors)"
        )


def write_onnx(model: nn.Module, path: Path, image_size: int) -> float:
    """Write ``model`` (in eval mode) as ONNX to ``path`` with inputs ``images`` ``(batch, 3, S, S)`` and outputs
    ``logits``; run it in onnxruntime on a batch of another size and return the largest absolute difference from
    PyTorch's logits. Raises ``ValueError`` when the difference exceeds ``TOLERANCE`` of the largest logit."""
    check_onnx_available()
    import onnxruntime

    model = model.float().eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, image_size, image_size, generator=generator)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        opset_version=OPSET,
        dynamo=True,
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check = torch.randn(3, 3, image_size, image_size, generator=generator)
    (logits,) = session.run(None, {"images": check.numpy()})
    with torch.no_grad():
        expected = model(check)
    difference = float((torch.from_numpy(logits) - expected).abs().max())
    if difference > TOLERANCE * max(1.0, float(expected.abs().max())):
        raise ValueError(
            f"the ONNX model's logits differ from PyTorch's by up to {difference:.3g} in onnxruntime; report it with "
            "the checkpoint's model settings, and use --format safetensors meanwhile"
        )
    return difference
