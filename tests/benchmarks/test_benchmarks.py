"""The benchmark scripts run end to end and print their tables (a smoke test: no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("ours resnest14d", "torchvision resnet18", "timm resnest14d")  # the GPU suite's --smoke stand-ins


def benchmark(*args: str, script: str = "model_speed.py") -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "benchmarks" / script), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)


def run_benchmark(*args: str, script: str = "model_speed.py") -> str:
    done = benchmark(*args, script=script)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_model_benchmark_compares_ours_with_timm_in_every_requested_config() -> None:
    out = run_benchmark(
        *("--model", "resnest14d", "--image-size", "32", "--batch-train", "2", "--batch-infer", "2"),
        *("--reps", "2", "--warmup", "0", "--rep-seconds", "0", "--threads", "1"),
        *("--configs", "fp32,bf16-cl", "--peak-tflops", "1", "--keep-host-memory"),
    )
    assert "note: the reference package has no resnest14d; skipping it" in out
    assert "host memory kept for reuse" in out
    for config in ("fp32", "bf16-cl"):
        for mode in ("train", "infer"):
            assert f"| {config} | {mode} | ours resnest14d |" in out
            assert f"| {config} | {mode} | timm resnest14d |" in out
            assert f"| {config} | {mode} | ours / timm |" in out
    assert "MFU" in out


def test_unknown_config_is_refused() -> None:
    done = benchmark("--configs", "fp64")
    assert done.returncode != 0
    assert "unknown --configs fp64" in done.stderr


@pytest.mark.slow
def test_host_memory_benchmark_compares_plain_and_kept_children() -> None:
    out = run_benchmark(
        *("--model", "resnest14d", "--batch", "2", "--image-size", "32", "--steps", "1", "--warmup", "0"),
        *("--rounds", "1"),
        script="host_memory.py",
    )
    assert "| plain |" in out and "| kept |" in out
    assert "kept / plain images/s:" in out


def gpu_suite(out: Path, *args: str) -> dict:
    """Run the GPU suite's CPU dry run into ``out``; return its results.json."""
    run_benchmark("--device", "cpu", "--smoke", "--out", str(out), *args, script="gpu_suite.py")
    return json.loads((out / "results.json").read_text())


def rows_by_item(results: dict, part: str) -> dict[str, dict]:
    return {row["item"]: row for row in results["rows"] if row["part"] == part}


@pytest.mark.slow
def test_gpu_suite_measures_every_model_and_layout(tmp_path: Path) -> None:
    results = gpu_suite(tmp_path, "--parts", "train,infer")
    markdown = (tmp_path / "results.md").read_text()
    assert results["running"] is None
    assert rows_by_item(results, "probe")["bf16 matmul"]["tflops"] > 0
    for part in ("train", "infer"):
        rows = rows_by_item(results, part)
        for model in MODELS:  # ours once per radix-conv form (create_model's conv_impl), where it has several
            for layout in ("NCHW", "channels_last"):
                assert any(i.startswith(model) and i.endswith(f" {layout} eager") for i in rows), (model, layout)
        # torch.compile of ours and of the baseline, each in its fastest eager configuration
        compiled = sorted(row["model"].split()[0] for row in rows.values() if row["compiled"])
        assert compiled == (["ours", "torchvision"] if part == "train" else [])
        for row in rows.values():
            assert row["status"] == "ok", row
            assert row["images_per_s"] > 0 and row["ratio"] > 0 and row["tflops"] > 0
            assert f"| {part} | {row['item']} | {row['images_per_s']:.1f} |" in markdown


@pytest.mark.slow
def test_gpu_suite_times_a_cli_fit_on_jpeg_files(tmp_path: Path) -> None:
    results = gpu_suite(tmp_path, "--parts", "e2e,train")
    e2e = rows_by_item(results, "e2e")["CLI fit on JPEG files"]
    assert e2e["status"] == "ok" and e2e["images_per_s"] > 0
    # Measured before the train part: its ratio is set once our synthetic NCHW eager step has a row.
    assert e2e["against"] == "ours resnest14d grouped" and e2e["ratio"] > 0
    on_device = rows_by_item(results, "e2e")["CLI fit on JPEG files, decode_on_device"]
    assert on_device["status"] == "skipped" and on_device["note"].startswith("needs CUDA: decode_on_device")
    assert "--trainer.callbacks+=resnest_pl.callbacks.ImageThroughputMonitor" in (tmp_path / "e2e.log").read_text()


@pytest.mark.slow
def test_gpu_suite_fits_the_quick_start_with_the_gpu_presets(tmp_path: Path) -> None:
    checks = rows_by_item(gpu_suite(tmp_path, "--parts", "check"), "check")
    ran = [row for row in checks.values() if row["status"] == "ok" and "val/acc1" in row["note"]]
    assert len(ran) == 3  # gpu.yaml, ddp.yaml on one device, the weight EMA
    assert "configs/trainer/ddp.yaml" in (tmp_path / "quickstart-ddp.log").read_text()
    assert "--model.ema_decay 0.9" in (tmp_path / "quickstart-ema.log").read_text()
    cuda_only = {item: row["note"] for item, row in checks.items() if row["status"] == "skipped"}
    assert list(cuda_only) == [  # rows in the suite's order: the three that ran first
        "quick start, gpu.yaml, model.compile + model.channels_last",
        "quick start, configs/trainer/gpu-fp16.yaml (16-mixed)",
    ]
    assert list(checks)[:3] == [row["item"] for row in ran]
    assert all(
        note.startswith("needs CUDA: ") and note.endswith("this run is on the cpu") for note in cuda_only.values()
    )


@pytest.mark.slow
def test_gpu_suite_skips_what_the_budget_cannot_hold(tmp_path: Path) -> None:
    results = gpu_suite(tmp_path, "--budget-s", "1")  # the probe needs no time, each item 1.5 s or more
    assert results["rows"][0]["status"] == "ok" and results["rows"][0]["tflops"] > 0
    later = results["rows"][1:]
    assert later and all(row["status"] == "skipped" for row in later)
    assert later[0]["note"].startswith("budget: ")
    # What never ran on a GPU first, then the speed grid, the compiles last.
    assert [row["part"] for row in later[:7]] == ["check"] * 5 + ["e2e"] * 2
    grid, compiled = later[7:-2], later[-2:]
    assert [row["part"] for row in grid] == ["train"] * (len(grid) // 2) + ["infer"] * (len(grid) // 2)
    assert [row["item"] for row in compiled] == ["ours compiled", "baseline compiled"]
    assert "| probe | bf16 matmul |" in (tmp_path / "results.md").read_text()


# What the lent GPU machine's image may lack (it lacks the CLI's packages and the optional ones): the suite must
# start with torch and torchvision alone and skip, with the reason, the rows that need the rest.
NOT_TORCH = (
    *("pytorch_lightning", "lightning", "lightning_fabric", "lightning_utilities", "torchmetrics", "timm"),
    *("albumentations", "albucore", "jsonargparse", "litdata", "optuna", "wandb", "sklearn", "cv2", "pandas"),
    *("matplotlib", "tensorboard", "safetensors"),
)
WITH_TORCH_ALONE = """
import runpy, sys
sys.modules.update(dict.fromkeys({blocked!r}))  # None: "import ... halted", and find_spec says absent
sys.path.insert(0, {benchmarks!r})
sys.argv = ["gpu_suite.py", *{args!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


def test_gpu_suite_runs_with_torch_and_torchvision_alone(tmp_path: Path) -> None:
    args = ["--device", "cpu", "--smoke", "--parts", "e2e,check", "--out", str(tmp_path)]
    code = WITH_TORCH_ALONE.format(
        blocked=set(NOT_TORCH),
        benchmarks=str(ROOT / "benchmarks"),
        args=args,
        script=str(ROOT / "benchmarks" / "gpu_suite.py"),
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["rows"][0]["status"] == "ok"  # the probe
    skipped = results["rows"][1:]
    assert len(skipped) == 7  # five quick-start checks, two e2e rows (CPU and on-device decoding)
    assert all(row["status"] == "skipped" and "albumentations (ModuleNotFoundError" in row["note"] for row in skipped)
    assert "timm is not importable: its resnest50d is not measured" in results["notes"]
    assert "not importable: albumentations" in (tmp_path / "results.md").read_text()
