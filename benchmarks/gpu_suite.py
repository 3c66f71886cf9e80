"""Everything to measure on one lent GPU, in one command, within a wall-clock budget.

Parts, most important first (``--parts`` picks some):

- ``train``: images/s, peak memory and MFU of a train step (forward, backward, SGD step; bf16 autocast;
  synthetic batch resident on the device) of our resnest50 (each radix-conv form the model offers),
  torchvision's resnet50 and timm's resnest50d, NCHW and channels_last, eager; then ``torch.compile`` of
  ours and of resnet50 in their best eager layout;
- ``infer``: images/s of inference (eval, no grad, bf16) of the same models in both layouts;
- ``e2e``: a short ``fit`` through the CLI on generated ImageNet-sized JPEGs with every CPU core loading,
  against the synthetic train step of the same model and layout: the input pipeline's share; then the same
  with the GPU decoding and augmenting (``decode_on_device``; CUDA only);
- ``check``: the quick start with ``configs/trainer/gpu.yaml`` and with ``configs/trainer/ddp.yaml`` (one
  device: SyncBatchNorm conversion) reach their accuracy.

Before each item the suite checks that the budget holds its estimated time, else it records the item as
skipped; an item that cannot run (package missing) is recorded with the reason. ``results.json`` and
``results.md`` in ``--out`` are rewritten after every item, so a run cut short leaves what it finished.

    PYTHONPATH=. python benchmarks/gpu_suite.py --budget-s 420 --out $OUT      # on the GPU
    PYTHONPATH=. python benchmarks/gpu_suite.py --device cpu --smoke --out /tmp/suite   # plumbing, tiny models
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnest_pl.callbacks import dense_peak_tflops
from resnest_pl.models import ResNeStConfig, create_model

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("train", "infer", "e2e", "check")
LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}
QUICKSTART_ACC1 = 0.98
CLI_NEEDS = ("albumentations", "cv2", "jsonargparse", "sklearn", "litdata")
# Tiny stand-ins for --smoke: the quick start's ResNeSt-14 at quarter width.
TINY = {"width_multiplier": 0.25, "stem_width": 8, "min_attn_channels": 8}

# Seconds each kind of item is expected to take on an H100-class GPU, compiles and start-up included;
# --smoke divides them by SMOKE_SPEEDUP (tiny models, a handful of steps).
ESTIMATE_S = {"now": 0.0, "eager": 15.0, "compile": 90.0, "infer": 8.0, "e2e": 75.0, "check": 60.0}
SMOKE_SPEEDUP = 10.0
FLOPS_PER_IMAGE: dict[tuple[str, bool, int], int | None] = {}


@dataclass(frozen=True)
class ModelSpec:
    """A model under test: its label, whether it is the baseline, and how to build it."""

    label: str
    build: Callable[[], nn.Module]
    baseline: bool = False  # ratios are against the baseline's best row of the same part
    ours: bool = False


@dataclass
class Settings:
    """What one run measures with, from the command line and --smoke."""

    device: torch.device
    smoke: bool
    batch_train: int
    batch_infer: int
    image_size: int
    seconds: float  # timed seconds per measurement, after warm-up
    warmup: int
    peak_tflops: float | None
    budget_s: float
    e2e_images: int
    e2e_steps: int
    workers: int


@dataclass
class Suite:
    """The results so far, written to disk after each item, and the budget's clock."""

    settings: Settings
    out: Path
    started: float = field(default_factory=time.perf_counter)
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    running: str | None = None

    def left_s(self) -> float:
        return self.settings.budget_s - (time.perf_counter() - self.started)

    def estimate(self, kind: str) -> float:
        return ESTIMATE_S[kind] / (SMOKE_SPEEDUP if self.settings.smoke else 1.0)

    def fits(self, kind: str) -> bool:
        """Whether the rest of the budget holds an item of this kind (kind "now" only needs some left)."""
        left = self.left_s()
        return left > 0 and left >= self.estimate(kind)

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        """Record a row; recompute the train and inference ratios against the baseline's best so far."""
        self.rows.append(row)
        for part in ("train", "infer"):
            base = self.best(part, baseline=True)
            for other in self.rows:
                if base and other["part"] == part and other["status"] == "ok":
                    other["ratio"] = other["images_per_s"] / base["images_per_s"]
        self.write()
        return row

    def skip(self, part: str, item: str, reason: str) -> None:
        self.add({"part": part, "item": item, "status": "skipped", "note": reason})

    def run(self, part: str, item: str, kind: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Run ``measure`` if the budget holds it; record its row, or why it was skipped or failed."""
        if not self.fits(kind):
            self.skip(part, item, f"budget: {max(0.0, self.left_s()):.0f} s left, needs ~{self.estimate(kind):.0f} s")
            return None
        self.running = item
        self.write()
        began = time.perf_counter()
        try:
            row = {"part": part, "item": item, "status": "ok", **measure()}
        except Exception as err:  # one failure must not lose the rest of a rare GPU session
            traceback.print_exc()
            row = {"part": part, "item": item, "status": "failed", "note": f"{type(err).__name__}: {err}"[:300]}
        finally:
            self.running = None
            if self.settings.device.type == "cuda":
                torch.cuda.empty_cache()
        row["wall_s"] = round(time.perf_counter() - began, 1)
        print(f"[{time.perf_counter() - self.started:6.1f} s] {part} | {item} | {row['status']}", flush=True)
        return self.add(row)

    def best(self, part: str, **match: Any) -> dict[str, Any] | None:
        """The fastest finished row of ``part`` whose fields equal ``match``."""
        rows = [
            r
            for r in self.rows
            if r["part"] == part and r["status"] == "ok" and all(r.get(k) == v for k, v in match.items())
        ]
        return max(rows, key=lambda r: r["images_per_s"], default=None)

    def write(self) -> None:
        """Rewrite results.json and results.md (each through a temporary file, so neither is ever half written)."""
        elapsed = round(time.perf_counter() - self.started, 1)
        document = {
            "machine": machine_summary(self.settings.device),
            "settings": {k: str(v) if isinstance(v, torch.device) else v for k, v in vars(self.settings).items()},
            "elapsed_s": elapsed,
            "running": self.running,
            "notes": self.notes,
            "rows": self.rows,
        }
        _replace(self.out / "results.json", json.dumps(document, indent=1) + "\n")
        _replace(self.out / "results.md", markdown(document, self))


def _replace(path: Path, text: str) -> None:
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(text)
    partial.replace(path)


def _fmt(value: Any, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(document: dict[str, Any], suite: Suite) -> str:
    """The results as a Markdown table, ratios against the baseline's best row of the same part."""
    s = suite.settings
    lines = [
        f"machine: {document['machine']}",
        "",
        f"bf16 autocast; train batch {s.batch_train}, inference batch {s.batch_infer}, {s.image_size} px; "
        f"{document['elapsed_s']} s of a {s.budget_s:g} s budget"
        + (f"; running: {document['running']}" if document["running"] else ""),
        "",
        "| part | item | img/s | ms/step | peak GiB | TFLOP/s | MFU | ratio | status | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in document["rows"]:
        mfu, tflops = row.get("mfu"), row.get("tflops")
        lines.append(
            f"| {row['part']} | {row['item']} | {_fmt(row.get('images_per_s'))} | {_fmt(row.get('ms_per_step'))} "
            f"| {_fmt(row.get('peak_gib'), 2)} | {'' if tflops is None else f'{tflops:.3g}'} "
            f"| {'' if mfu is None else f'{100 * mfu:.1f}%'} | {_fmt(row.get('ratio'), 3)} "
            f"| {row['status']} | {row.get('note', '')} |"
        )
    lines += [
        "",
        "- ratio: train and infer rows against the baseline's best row of the same part; e2e against our "
        "synthetic NCHW eager train step",
        *(f"- {note}" for note in document["notes"]),
    ]
    return "\n".join(lines) + "\n"


def machine_summary(device: torch.device) -> str:
    parts = [platform.node(), f"{os.cpu_count()} logical CPUs", f"torch {torch.__version__}", f"device {device.type}"]
    if device.type == "cuda":
        parts.append(
            f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
        )
    return ", ".join(parts)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def conv_impls() -> list[str]:
    """The radix-conv forms our model offers, its default first: ``conv_impl`` values if ResNeStConfig has
    that field, else none (the grouped conv is the only form)."""
    fields = {f.name: f for f in dataclasses.fields(ResNeStConfig)}
    if "conv_impl" not in fields:
        return []
    default = str(fields["conv_impl"].default)
    return [default, *(impl for impl in ("grouped", "split") if impl != default)]


def model_specs(smoke: bool, suite: Suite) -> list[ModelSpec]:
    """Ours (per radix-conv form), torchvision's ResNet and, when importable, timm's ResNeSt."""
    import torchvision

    ours, overrides = ("resnest14d", TINY) if smoke else ("resnest50", {})
    impls = conv_impls()
    if not impls:
        suite.notes.append("create_model has no conv_impl yet: ours is measured with its grouped radix conv only")
    specs = [
        ModelSpec(
            f"ours {ours}" + (f" {impl}" if impls else ""),
            lambda impl=impl: create_model(ours, **overrides, **({"conv_impl": impl} if impl else {})),
            ours=True,
        )
        for impl in impls or [None]
    ]
    resnet = "resnet18" if smoke else "resnet50"
    specs.insert(1, ModelSpec(f"torchvision {resnet}", getattr(torchvision.models, resnet), baseline=True))
    try:
        import timm
    except ImportError:
        suite.notes.append("timm is not importable: its resnest50d is not measured")
    else:
        name = "resnest14d" if smoke else "resnest50d"
        specs.append(ModelSpec(f"timm {name}", lambda: timm.create_model(name)))
    return specs


def train_flops_per_image(build: Callable[[], nn.Module], size: int) -> int | None:
    """Forward + backward FLOPs of one image, counted by torch.utils.flop_counter on the meta device."""
    try:
        with torch.device("meta"):
            model = build().train()
            images = torch.empty(2, 3, size, size)
            with FlopCounterMode(display=False) as counter:
                model(images).sum().backward()
        return counter.get_total_flops() // 2
    except Exception:  # a model that cannot be built on the meta device gets no MFU, not a failure
        return None


def forward_flops_per_image(build: Callable[[], nn.Module], size: int) -> int | None:
    """Inference FLOPs of one image (eval mode, no grad), counted as above."""
    try:
        with torch.device("meta"):
            model = build().eval()
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(torch.empty(2, 3, size, size))
        return counter.get_total_flops() // 2
    except Exception:
        return None


def time_steps(step: Callable[[], None], s: Settings, suite: Suite) -> tuple[int, float, float]:
    """Warm up, then run ``step`` for ``s.seconds`` (at least 2 steps, never past the budget).

    Returns steps timed, their seconds and the warm-up's seconds (compilation, cuDNN autotuning)."""
    began = time.perf_counter()
    for _ in range(s.warmup):
        step()
    sync(s.device)
    warmup_s = time.perf_counter() - began
    began = time.perf_counter()
    step()
    sync(s.device)
    one = time.perf_counter() - began
    target = max(0.0, min(s.seconds, suite.left_s() - 1.0))
    steps = max(2, math.ceil(target / max(one, 1e-6)))
    began = time.perf_counter()
    for _ in range(steps):
        step()
    sync(s.device)
    return steps, time.perf_counter() - began, warmup_s


def measure_step(
    spec: ModelSpec, layout: str, compiled: bool, train: bool, s: Settings, suite: Suite
) -> dict[str, Any]:
    """Images/s, ms/step, peak memory and MFU of ``spec``'s train step or inference."""
    fmt = LAYOUTS[layout]
    torch.manual_seed(0)
    model = spec.build().to(s.device, memory_format=fmt).train(train)
    # A CPU dry run checks the capture, not inductor's C++ build (minutes on a small machine).
    runner = torch.compile(model, backend="inductor" if s.device.type == "cuda" else "eager") if compiled else model
    batch = s.batch_train if train else s.batch_infer
    images = torch.randn(batch, 3, s.image_size, s.image_size, device=s.device).contiguous(memory_format=fmt)
    labels = torch.randint(0, 1000, (batch,), device=s.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(s.device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(runner(images), labels)
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        with torch.no_grad(), torch.autocast(s.device.type, dtype=torch.bfloat16):
            runner(images)

    if s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(s.device)
    try:
        steps, seconds, warmup_s = time_steps(train_step if train else infer_step, s, suite)
    finally:
        if compiled:
            torch._dynamo.reset()  # drop the compiled graphs and what they hold on the device
    rate = steps * batch / seconds
    key = (spec.label, train, s.image_size)
    if key not in FLOPS_PER_IMAGE:  # counted once per model and mode: the layout does not change it
        count = train_flops_per_image if train else forward_flops_per_image
        FLOPS_PER_IMAGE[key] = count(spec.build, s.image_size)
    flops = FLOPS_PER_IMAGE[key]
    row: dict[str, Any] = {
        "model": spec.label,
        "layout": layout,
        "compiled": compiled,
        "batch": batch,
        "images_per_s": rate,
        "ms_per_step": 1000 * seconds / steps,
        "steps": steps,
        "warmup_s": round(warmup_s, 1),
    }
    if s.device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(s.device) / 2**30
    if flops:
        row["tflops"] = rate * flops / 1e12
        if s.peak_tflops:
            row["mfu"] = row["tflops"] / s.peak_tflops
    row["note"] = f"warm-up {warmup_s:.1f} s" + ("" if flops else "; no FLOP count")
    return row


def matmul_probe(s: Settings, suite: Suite) -> dict[str, Any]:
    """TFLOP/s of a large bf16 matmul: the peak this GPU reaches in practice, next to the datasheet's."""
    n = 256 if s.smoke else 8192
    a = torch.randn(n, n, device=s.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=s.device, dtype=torch.bfloat16)
    steps, seconds, _ = time_steps(lambda: torch.mm(a, b), dataclasses.replace(s, seconds=min(s.seconds, 2)), suite)
    tflops = 2 * n**3 * steps / seconds / 1e12
    row: dict[str, Any] = {"tflops": tflops, "note": f"{n}x{n}x{n} bf16"}
    if s.peak_tflops:
        row["mfu"] = tflops / s.peak_tflops
    return row


def run_train(suite: Suite, specs: list[ModelSpec]) -> None:
    s = suite.settings
    for spec in specs:
        for layout in LAYOUTS:
            suite.run(
                "train",
                f"{spec.label} {layout} eager",
                "eager",
                lambda spec=spec, layout=layout: {
                    "baseline": spec.baseline,
                    "ours": spec.ours,
                    **measure_step(spec, layout, False, True, s, suite),
                },
            )
    # Compile the fastest eager configuration of ours (any radix-conv form) and of the baseline.
    for group in ({"ours": True}, {"baseline": True}):
        best = suite.best("train", compiled=False, **group)
        if best is None:
            suite.skip("train", f"{'ours' if 'ours' in group else 'baseline'} compiled", "no eager row to start from")
            continue
        spec, layout = next(x for x in specs if x.label == best["model"]), best["layout"]
        suite.run(
            "train",
            f"{spec.label} {layout} compiled",
            "compile",
            lambda spec=spec, layout=layout: {
                "baseline": spec.baseline,
                "ours": spec.ours,
                **measure_step(spec, layout, True, True, s, suite),
            },
        )


def run_infer(suite: Suite, specs: list[ModelSpec]) -> None:
    s = suite.settings
    for spec in specs:
        for layout in LAYOUTS:
            suite.run(
                "infer",
                f"{spec.label} {layout} eager",
                "infer",
                lambda spec=spec, layout=layout: {
                    "baseline": spec.baseline,
                    **measure_step(spec, layout, False, False, s, suite),
                },
            )


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


def finish_cli(process: subprocess.Popen, suite: Suite, log: Path) -> None:
    """Wait for a started CLI command within the rest of the budget; raise if it failed or ran out of time."""
    try:
        code = process.wait(timeout=max(1.0, suite.left_s()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise RuntimeError(f"stopped at the end of the budget (log {log.name})") from None
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
    """images/s of a short CLI fit on JPEG files, from the throughput monitor's time points after warm-up,
    against the synthetic train step of ``synthetic_label`` (our default form) in NCHW, as the CLI runs it.
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
    finish_cli(start_cli(command, log), suite, log)
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
    row: dict[str, Any] = {
        "model": model,
        "batch": s.batch_train,
        "images_per_s": rate,
        "ms_per_step": 1000 * s.batch_train / rate,
    }
    synthetic = suite.best("train", model=synthetic_label, layout="NCHW", compiled=False)
    pipeline = "decode_on_device (no AutoAugment)" if on_device else "AutoAugment"
    note = f"{s.workers} workers, {s.e2e_images} JPEGs, {pipeline}; batches {first[0]}..{last[0]}"
    if synthetic:
        row["ratio"] = rate / synthetic["images_per_s"]
        note += f"; ratio vs synthetic {synthetic['item']}: input pipeline costs {100 * (1 - row['ratio']):.0f}%"
    row["note"] = note
    return row


def start_quickstart(suite: Suite, work: Path, trainer_config: str, name: str) -> subprocess.Popen:
    """Start fitting the quick start with a trainer preset (``--smoke``: two steps)."""
    s = suite.settings
    run = work / name
    extra = ["--trainer.devices", "1"] if "ddp" in trainer_config else []
    if extra and s.device.type != "cuda":
        extra += ["--trainer.sync_batchnorm", "false"]  # SyncBatchNorm runs on CUDA only
    if s.smoke:
        extra += ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2"]
    command = cli_command(
        s,
        *("--config", "configs/quickstart.yaml", "--config", trainer_config, *extra),
        *("--trainer.default_root_dir", str(run), "--trainer.logger.init_args.save_dir", str(run)),
    )
    return start_cli(command, suite.out / f"{name}.log")


def finish_quickstart(suite: Suite, work: Path, name: str, process: subprocess.Popen) -> dict[str, Any]:
    """Wait for a quick-start fit; its last val/acc1 must reach QUICKSTART_ACC1 (not checked in ``--smoke``)."""
    finish_cli(process, suite, suite.out / f"{name}.log")
    accuracies = [float(r["val/acc1"]) for r in read_metrics(work / name) if r.get("val/acc1")]
    if not accuracies:
        raise RuntimeError("no val/acc1 in the log")
    if not suite.settings.smoke and accuracies[-1] < QUICKSTART_ACC1:
        raise RuntimeError(f"val/acc1 {accuracies[-1]:.4f} < {QUICKSTART_ACC1}")
    verdict = "not checked in --smoke" if suite.settings.smoke else f">= {QUICKSTART_ACC1}"
    return {"note": f"val/acc1 {accuracies[-1]:.4f} ({verdict})"}


def run_e2e(suite: Suite, work: Path, synthetic_label: str) -> None:
    items = ("CLI fit on JPEG files", "CLI fit on JPEG files, decode_on_device")
    reason = missing_for_cli()
    if reason:
        for item in items:
            suite.skip("e2e", item, reason)
        return
    suite.run("e2e", items[0], "e2e", lambda: end_to_end(suite, work, synthetic_label))
    if suite.settings.device.type != "cuda":
        suite.skip("e2e", items[1], f"decode_on_device needs a CUDA GPU; this run is on the {suite.settings.device}")
        return
    suite.run("e2e", items[1], "e2e", lambda: end_to_end(suite, work, synthetic_label, on_device=True))


def run_check(suite: Suite, work: Path) -> None:
    """Both quick-start fits at once (they are small: they share the GPU and save the budget a start-up)."""
    presets = {
        "quickstart-gpu": ("quick start, configs/trainer/gpu.yaml", "configs/trainer/gpu.yaml"),
        "quickstart-ddp": (
            "quick start, configs/trainer/ddp.yaml --trainer.devices 1 (SyncBN)",
            "configs/trainer/ddp.yaml",
        ),
    }
    reason = missing_for_cli()
    if not reason and not suite.fits("check"):
        reason = f"budget: {max(0.0, suite.left_s()):.0f} s left, needs ~{suite.estimate('check'):.0f} s"
    if reason:
        for item, _ in presets.values():
            suite.skip("check", item, reason)
        return
    started = {name: start_quickstart(suite, work, config, name) for name, (_, config) in presets.items()}
    for name, (item, _) in presets.items():
        # Already running: each needs only some budget left to be waited for.
        suite.run("check", item, "now", lambda name=name: finish_quickstart(suite, work, name, started[name]))
    for process in started.values():
        if process.poll() is None:  # its row was skipped: the budget ran out
            process.kill()
            process.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md and CLI logs")
    parser.add_argument("--budget-s", type=float, default=360.0, help="wall-clock budget, start to finish")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (plumbing only)")
    parser.add_argument("--smoke", action="store_true", help="tiny models, batch 4, 32 px, a few steps")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--batch-train", type=int, default=None, help="default 256 (4 with --smoke)")
    parser.add_argument("--batch-infer", type=int, default=None, help="default 512 (8 with --smoke)")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per measurement (default 3)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="bf16 peak for MFU (default: the GPU's dense datasheet peak; a large matmul reaches ~790 on H100/H200)",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.parts.split(",")) - set(PARTS))
    if unknown:
        parser.error(f"unknown --parts {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu --smoke for a dry run")
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        peak = dense_peak_tflops(torch.cuda.get_device_name(device), "bf16")
    smoke = args.smoke
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return Settings(
        device=device,
        smoke=smoke,
        batch_train=args.batch_train or (4 if smoke else 256),
        batch_infer=args.batch_infer or (8 if smoke else 512),
        image_size=32 if smoke else 224,
        seconds=args.seconds if args.seconds is not None else (0.0 if smoke else 3.0),
        warmup=1 if smoke else 3,
        peak_tflops=peak,
        budget_s=args.budget_s,
        e2e_images=24 if smoke else 4096,
        e2e_steps=4 if smoke else 60,
        workers=1 if smoke else cores,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    s = settings_from(args)
    args.out.mkdir(parents=True, exist_ok=True)
    suite = Suite(s, args.out)
    parts = args.parts.split(",")
    if s.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    suite.notes.append(
        f"MFU against {s.peak_tflops:g} TFLOP/s (bf16 dense)" if s.peak_tflops else "no peak known: no MFU"
    )
    suite.run("probe", "bf16 matmul", "now", lambda: matmul_probe(s, suite))
    specs = model_specs(s.smoke, suite)
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        work = Path(tmp)
        for part in PARTS:
            if part not in parts:
                continue
            if part == "train":
                run_train(suite, specs)
            elif part == "infer":
                run_infer(suite, specs)
            elif part == "e2e":
                run_e2e(suite, work, specs[0].label)
            else:
                run_check(suite, work)
    suite.notes.append(f"finished in {time.perf_counter() - suite.started:.0f} s")
    suite.write()
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
