"""Everything to measure on one lent GPU, in one command, within a wall-clock budget.

Parts, in the order they run: first what has never run on a GPU (the product's paths), then the speed grid,
the long compiles last (``--parts`` picks some):

- ``check``: quick-start fits, all at once, reach their accuracy on CUDA: with ``configs/trainer/gpu.yaml``,
  with ``configs/trainer/ddp.yaml`` (one device: SyncBatchNorm conversion), with ``model.ema_decay``, with
  ``model.compile`` and ``model.channels_last``, and with ``configs/trainer/gpu-fp16.yaml`` (16-mixed);
- ``e2e``: a short ``fit`` through the CLI on generated ImageNet-sized JPEGs with every CPU core loading,
  against the synthetic train step of the same model and layout: the input pipeline's share; then the same
  with the GPU decoding and augmenting (``decode_on_device``);
- ``train``: images/s, peak memory and MFU of a train step (forward, backward, SGD step; bf16 autocast;
  synthetic batch resident on the device) of our resnest50 (each radix-conv form the model offers),
  torchvision's resnet50 and timm's resnest50d, NCHW and channels_last, eager; after the inference rows,
  ``torch.compile`` of ours and of resnet50 in their best eager layout;
- ``infer``: images/s of inference (eval, no grad, bf16) of the same models in both layouts.

Before each item the suite checks that the budget holds its estimated time, else it records the item as
skipped; an item that cannot run (package missing) is recorded with the reason, one that needs CUDA on
another device with a note starting "needs CUDA". ``results.json`` and ``results.md`` in ``--out`` are
rewritten after every item, so a run cut short leaves what it finished. It needs only torch and torchvision
to start (timm and the CLI's packages only for their rows); ``benchmarks/gpu_oneshot.sh`` installs the
packages a GPU image lacks from ``.gpu-kit/`` (``make gpu-kit``) and runs it.

    bash benchmarks/gpu_oneshot.sh $OUT                                             # on the GPU
    PYTHONPATH=. python benchmarks/gpu_suite.py --device cpu --smoke --out /tmp/suite   # plumbing, tiny models
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from gpu_suite_cli import TINY, run_check, run_e2e
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnest_pl.models import ResNeStConfig, create_model
from resnest_pl.peak_flops import dense_peak_tflops

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("check", "e2e", "train", "infer")
LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}

# Seconds each kind of item is expected to take on an H100-class GPU, compiles and start-up included;
# --smoke divides them by SMOKE_SPEEDUP (tiny models, a handful of steps).
ESTIMATE_S = {
    "now": 0.0,
    "eager": 15.0,
    "compile": 90.0,
    "infer": 8.0,
    "e2e": 75.0,
    "check": 60.0,
    "check-compile": 120.0,
}
SMOKE_SPEEDUP = 10.0
# A CLI item is stopped after this many times its estimate (or at the end of the budget, if sooner).
LIMIT_FACTOR = 2.0
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

    def limit_s(self, kind: str) -> float:
        """How long a CLI item may run: LIMIT_FACTOR times its estimate; in --smoke the whole budget (a tiny fit's
        time is its process's start-up, imports and loader workers, which depends on the machine's load)."""
        return self.settings.budget_s if self.settings.smoke else LIMIT_FACTOR * ESTIMATE_S[kind]

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
        for other in self.rows:  # e2e rows (measured first) against our synthetic train step
            synthetic = other.get("against") and self.best(
                "train", model=other["against"], layout="NCHW", compiled=False
            )
            if synthetic and other["status"] == "ok":
                other["ratio"] = other["images_per_s"] / synthetic["images_per_s"]
        self.write()
        return row

    def skip(self, part: str, item: str, reason: str) -> None:
        self.add({"part": part, "item": item, "status": "skipped", "note": reason})

    def budget_reason(self, kind: str) -> str:
        return f"budget: {max(0.0, self.left_s()):.0f} s left, needs ~{self.estimate(kind):.0f} s"

    def run(self, part: str, item: str, kind: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Run ``measure`` if the budget holds it; record its row, or why it was skipped or failed."""
        if not self.fits(kind):
            self.skip(part, item, self.budget_reason(kind))
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


def run_train_eager(suite: Suite, specs: list[ModelSpec]) -> None:
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


def run_train_compiled(suite: Suite, specs: list[ModelSpec]) -> None:
    """Compile the fastest eager configuration of ours (any radix-conv form) and of the baseline."""
    s = suite.settings
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md and CLI logs")
    parser.add_argument("--budget-s", type=float, default=300.0, help="wall-clock budget, start to finish")
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
        # What never ran on a GPU first (the product's paths), then the speed grid, the long compiles last.
        if "check" in parts:
            run_check(suite, work)
        if "e2e" in parts:
            run_e2e(suite, work, specs[0].label)
        if "train" in parts:
            run_train_eager(suite, specs)
        if "infer" in parts:
            run_infer(suite, specs)
        if "train" in parts:
            run_train_compiled(suite, specs)
    suite.notes.append(f"finished in {time.perf_counter() - suite.started:.0f} s")
    suite.write()
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
