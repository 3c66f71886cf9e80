"""GPUs' dense tensor-core peaks, the MFU denominator (torch only: the GPU suite imports it without Lightning)."""

from __future__ import annotations

import torch

# Dense (no 2:4 sparsity) tensor-core peaks in TFLOP/s per GPU, from the vendors' datasheets: H100 and H200
# "NVIDIA H100 Tensor Core GPU" / "NVIDIA H200 Tensor Core GPU" datasheets (their tables give sparse figures,
# twice these), A100 "NVIDIA A100 Tensor Core GPU" datasheet, L4 / L40 / L40S datasheets, RTX 4090 "NVIDIA Ada
# GPU Architecture" whitepaper appendix (fp16/bf16 with fp32 accumulate, as PyTorch runs them), V100 "NVIDIA
# Tesla V100 GPU Architecture" whitepaper (no bf16 or tf32 tensor cores). Keys are matched as case-insensitive
# substrings of ``torch.cuda.get_device_name()``, first match wins, so longer names come first. Lightning's own
# table lacks "NVIDIA H200" and lists sparse figures for H100 NVL and H200 SXM.
DENSE_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "h200 nvl": {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0},
    "h200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "h100 nvl": {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0},
    "h100 pcie": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "h100": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM ("H100 80GB HBM3")
    "a100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "l40s": {"bf16": 362.1, "fp16": 362.1, "tf32": 183.0, "fp32": 91.6},
    "l40": {"bf16": 181.0, "fp16": 181.0, "tf32": 90.5, "fp32": 90.5},
    "l4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "rtx 4090": {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6},
    "v100-sxm": {"fp16": 125.0, "fp32": 15.7},
    "v100": {"fp16": 112.0, "fp32": 14.0},  # PCIe
}
PRECISIONS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def dense_peak_tflops(device_name: str, precision: str | torch.dtype) -> float | None:
    """Dense tensor-core peak of a GPU for ``precision`` ("bf16", "fp16", "tf32", "fp32" or a dtype), or None
    when the GPU is not in :data:`DENSE_PEAK_TFLOPS` or lacks that precision (a V100's bf16)."""
    key = PRECISIONS.get(precision, precision) if isinstance(precision, torch.dtype) else precision
    name = device_name.lower()
    for chip, peaks in DENSE_PEAK_TFLOPS.items():
        if chip in name:
            return peaks.get(str(key))
    return None
