"""The GPU suite's items that run the product's CLI: the quick-start checks and the end-to-end fits on JPEGs.

Each starts ``python -m resnest_pl.cli fit`` from the repository root (its log goes to the suite's ``--out``)
and waits for it within the budget and within ``Suite.limit_s`` of its kind.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from gpu_suite import Settings, Suite

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_ACC1 = 0.98
CLI_NEEDS = ("albumentations", "cv2", "jsonargparse", "sklearn", "litdata")
# Tiny stand-ins for --smoke: the quick start's ResNeSt-14 at quarter width.
TINY = {"width_multiplier": 0.25, "stem_width": 8, "min_attn_channels": 8}
# The reason a row that only a CUDA GPU can run is skipped on another device; the rehearsal's pass rule
# (benchmarks/gpu_kit.py verdict) accepts skipped rows whose note starts with it, and no others.
NEEDS_CUDA = "needs CUDA"
# The quick start trains about 230 steps: an average over ~10 steps reaches its accuracy (over ~100, 0.99, it lags).
QUICKSTART_EMA_DECAY = 0.9


def needs_cuda(what: str, suite: Suite) -> str:
    return f"{NEEDS_CUDA}: {what}; this run is on the {suite.settings.device}"


def missing_for_cli() -> str | None:
    """Why the CLI and its data modules cannot run here, or None."""
    missing = []
    for name in CLI_NEEDS:
        try:
            importlib.import_module(name)
        except Exception as err:  # absent, or present but broken: either way the CLI cannot run
            missing.append(f"{name} ({type(err).__name__}: {err})"[:120])
    return f"not importable: {'; '.join(missing)} (the CLI and its data modules need them)" if missing else None


def write_imagenet_layout(root: Path, count: int, classes: int, seed: int = 0) -> None:
    """``count`` ImageNet-sized JPEGs (about 500x375, photo-like) in root/train/<wnid>/, a tenth in root/val/.

    32 distinct images are encoded once and their bytes copied: decoding cost does not depend on which."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(500, 375), (500, 333), (375, 500), (500, 400)]
    encoded = []
    for i in range(32):
        width, height = sizes[i % len(sizes)]
        coarse = torch.from_numpy(rng.integers(0, 256, (1, 3, height // 25, width // 25)).astype("float32"))
        smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
        pixels = (smooth.permute(1, 2, 0).numpy() + rng.normal(0, 12, (height, width, 3))).clip(0, 255)
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    for split, n in (("train", count), ("val", max(classes, count // 10))):
        for i in range(n):
            folder = root / split / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{split}_{i:06d}.JPEG").write_bytes(encoded[i % len(encoded)])


def cli_command(s: Settings, *args: str) -> list[str]:
    """``python -m resnest_pl.cli fit ...``; on a CPU run the GPU trainer presets are pointed at the CPU."""
    command = [sys.executable, "-m", "resnest_pl.cli", "fit", *args]
    if s.device.type != "cuda":
        command += ["--trainer.accelerator", "cpu"]
    return command


def start_cli(command: list[str], log: Path) -> subprocess.Popen:
    """Start a CLI command from the repository root; its output goes to ``log``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with log.open("w") as handle:
        handle.write(" ".join(command) + "\n")
        handle.flush()
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)


def finish_cli(process: subprocess.Popen, suite: Suite, log: Path, deadline: float) -> None:
    """Wait for a started CLI command until ``deadline`` (``time.perf_counter``) or the end of the budget,
    whichever comes first; raise if it failed or was stopped."""
    wait_s = min(suite.left_s(), deadline - time.perf_counter())
    try:
        code = process.wait(timeout=max(1.0, wait_s))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise RuntimeError(f"stopped at its time limit or at the end of the budget (log {log.name})") from None
    if code:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"exit {code} (log {log.name}): {' / '.join(tail)}")


def read_metrics(root: Path) -> list[dict[str, str]]:
    """Rows of the CSVLogger's metrics.csv under ``root`` (the newest version)."""
    files = sorted(root.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise RuntimeError(f"no metrics.csv under {root}")
    with files[-1].open() as handle:
        return list(csv.DictReader(handle))


def end_to_end(suite: Suite, work: Path, synthetic_label: str, on_device: bool = False) -> dict[str, Any]:
    """images/s of a short CLI fit on JPEG files, from the throughput monitor's time points after warm-up; its
    ratio (set by ``Suite.add``) is against the synthetic train step of ``synthetic_label`` (our default form)
    in NCHW, as the CLI runs it.
    ``on_device``: the GPU decodes and augments (``decode_on_device``, which cannot do AutoAugment)."""
    s = suite.settings
    name = "e2e-decode-on-device" if on_device else "e2e"
    data, run = work / "imagenet", work / name
    if not data.exists():
        write_imagenet_layout(data, s.e2e_images, classes=4 if s.smoke else 16)
    model, overrides = ("resnest14d", TINY) if s.smoke else ("resnest50", {})
    augment = ("none", "--data.init_args.decode_on_device", "true") if on_device else ("autoaugment",)
    window = max(1, s.e2e_steps // 4)
    command = cli_command(
        s,
        *("--config", "configs/trainer/gpu.yaml", "--seed_everything", "0"),
        *("--model.model_name", model, "--model.model_overrides", json.dumps(overrides)),
        *("--data.class_path", "resnest_pl.data.ImageNetDataModule", "--data.init_args.root", str(data)),
        *("--data.init_args.crop_size", str(s.image_size), "--data.init_args.auto_augment", *augment),
        *("--data.init_args.batch_size", str(s.batch_train), "--data.init_args.num_workers", str(s.workers)),
        *("--trainer.max_steps", str(s.e2e_steps), "--trainer.limit_val_batches", "0"),
        *("--trainer.num_sanity_val_steps", "0", "--trainer.default_root_dir", str(run)),
        *("--trainer.log_every_n_steps", "1"),
        *("--trainer.logger", "pytorch_lightning.loggers.CSVLogger", "--trainer.logger.init_args.save_dir", str(run)),
        *("--trainer.callbacks+=resnest_pl.callbacks.ImageThroughputMonitor",),
        *("--trainer.callbacks.window_size", str(window)),
    )
    log = suite.out / f"{name}.log"
    finish_cli(start_cli(command, log), suite, log, time.perf_counter() + suite.limit_s("e2e"))
    points = sorted(
        (int(float(r["train/batches"])), float(r["train/time"]), int(float(r["train/samples"])))
        for r in read_metrics(run)
        if r.get("train/batches")
    )
    # From the first point after a quarter of the run (workers started, kernels tuned) to the last.
    later = [p for p in points if p[0] > s.e2e_steps // 4] or points
    first, last = later[0], points[-1]
    if last[1] <= first[1]:
        raise RuntimeError(f"too few throughput points in the log: {points}")
    rate = (last[2] - first[2]) / (last[1] - first[1])
    pipeline = "decode_on_device (no AutoAugment)" if on_device else "AutoAugment"
    return {
        "model": model,
        "batch": s.batch_train,
        "images_per_s": rate,
        "ms_per_step": 1000 * s.batch_train / rate,
        "against": synthetic_label,  # the ratio's denominator, once the train part has measured it
        "note": f"{s.workers} workers, {s.e2e_images} JPEGs, {pipeline}; batches {first[0]}..{last[0]}",
    }


@dataclass(frozen=True)
class QuickStart:
    """A quick-start fit the suite checks: its row, the trainer preset, extra CLI arguments, its kind of
    estimate, and what it needs CUDA for (None: it runs on any device)."""

    name: str
    item: str
    preset: str
    extra: tuple[str, ...] = ()
    kind: str = "check"
    cuda_only: str | None = None


QUICKSTARTS = (
    QuickStart("quickstart-gpu", "quick start, configs/trainer/gpu.yaml", "configs/trainer/gpu.yaml"),
    QuickStart(
        "quickstart-ddp",
        "quick start, configs/trainer/ddp.yaml --trainer.devices 1 (SyncBN)",
        "configs/trainer/ddp.yaml",
    ),
    QuickStart(
        "quickstart-ema",
        f"quick start, gpu.yaml, model.ema_decay {QUICKSTART_EMA_DECAY}",
        "configs/trainer/gpu.yaml",
        ("--model.ema_decay", str(QUICKSTART_EMA_DECAY)),
    ),
    QuickStart(
        "quickstart-compile-cl",
        "quick start, gpu.yaml, model.compile + model.channels_last",
        "configs/trainer/gpu.yaml",
        ("--model.compile", "true", "--model.channels_last", "true"),
        kind="check-compile",
        cuda_only="inductor compiles for the GPU (a CPU build takes minutes)",
    ),
    QuickStart(
        "quickstart-fp16",
        "quick start, configs/trainer/gpu-fp16.yaml (16-mixed)",
        "configs/trainer/gpu-fp16.yaml",
        cuda_only="fp16 autocast with loss scaling",
    ),
)


def start_quickstart(suite: Suite, work: Path, fit: QuickStart) -> subprocess.Popen:
    """Start fitting the quick start with a trainer preset and ``fit.extra`` (``--smoke``: two steps)."""
    s = suite.settings
    run = work / fit.name
    extra = list(fit.extra)
    if "ddp" in fit.preset:
        extra += ["--trainer.devices", "1"]
        if s.device.type != "cuda":
            extra += ["--trainer.sync_batchnorm", "false"]  # SyncBatchNorm runs on CUDA only
    if s.smoke:
        extra += ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2"]
    command = cli_command(
        s,
        *("--config", "configs/quickstart.yaml", "--config", fit.preset, *extra),
        *("--trainer.default_root_dir", str(run), "--trainer.logger.init_args.save_dir", str(run)),
    )
    return start_cli(command, suite.out / f"{fit.name}.log")


def finish_quickstart(
    suite: Suite, work: Path, fit: QuickStart, process: subprocess.Popen, deadline: float
) -> dict[str, Any]:
    """Wait for a quick-start fit; its last val/acc1 must reach QUICKSTART_ACC1 (not checked in ``--smoke``)."""
    finish_cli(process, suite, suite.out / f"{fit.name}.log", deadline)
    accuracies = [float(r["val/acc1"]) for r in read_metrics(work / fit.name) if r.get("val/acc1")]
    if not accuracies:
        raise RuntimeError("no val/acc1 in the log")
    if not suite.settings.smoke and accuracies[-1] < QUICKSTART_ACC1:
        raise RuntimeError(f"val/acc1 {accuracies[-1]:.4f} < {QUICKSTART_ACC1}")
    verdict = "not checked in --smoke" if suite.settings.smoke else f">= {QUICKSTART_ACC1}"
    return {"note": f"val/acc1 {accuracies[-1]:.4f} ({verdict})"}


def why_not(suite: Suite, fit: QuickStart, missing: str | None) -> str | None:
    """Why a quick-start fit cannot run here (packages missing, CUDA needed, budget short), or None."""
    if missing:
        return missing
    if fit.cuda_only and suite.settings.device.type != "cuda":
        return needs_cuda(fit.cuda_only, suite)
    return None if suite.fits(fit.kind) else suite.budget_reason(fit.kind)


def run_check(suite: Suite, work: Path) -> None:
    """The quick-start fits, all at once (they are small: they share the GPU and save the budget start-ups);
    their rows in QUICKSTARTS' order."""
    missing = missing_for_cli()
    reasons = {fit.name: why_not(suite, fit, missing) for fit in QUICKSTARTS}
    began = time.perf_counter()
    started = {fit.name: start_quickstart(suite, work, fit) for fit in QUICKSTARTS if reasons[fit.name] is None}
    for fit in QUICKSTARTS:
        if fit.name not in started:
            suite.skip("check", fit.item, reasons[fit.name])
            continue
        deadline = began + suite.limit_s(fit.kind)
        # Already running: each needs only some budget left to be waited for.
        suite.run(
            "check",
            fit.item,
            "now",
            lambda fit=fit, deadline=deadline: finish_quickstart(suite, work, fit, started[fit.name], deadline),
        )
    for process in started.values():
        if process.poll() is None:  # its row was skipped: the budget ran out
            process.kill()
            process.wait()


def run_e2e(suite: Suite, work: Path, synthetic_label: str) -> None:
    items = ("CLI fit on JPEG files", "CLI fit on JPEG files, decode_on_device")
    reason = missing_for_cli()
    if reason:
        for item in items:
            suite.skip("e2e", item, reason)
        return
    suite.run("e2e", items[0], "e2e", lambda: end_to_end(suite, work, synthetic_label))
    if suite.settings.device.type != "cuda":
        suite.skip("e2e", items[1], needs_cuda("decode_on_device decodes on the GPU", suite))
        return
    suite.run("e2e", items[1], "e2e", lambda: end_to_end(suite, work, synthetic_label, on_device=True))
