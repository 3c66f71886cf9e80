"""Train-step and inference speed of our ResNeSt against the reference ``resnest`` package and timm.

All models run in one process, interleaved round-robin within every repetition, on the same
synthetic device-resident batch and the same weights, so that same-run ratios stay meaningful
on a shared, noisy machine. Prints Markdown tables of medians, spread and ratios. On a busy CPU,
run with ``--threads 1`` and read the CPU-time ratio: it ignores the time the process waited for a core
(with more threads, OpenMP barriers stall whenever any thread is descheduled).

    python benchmarks/model_speed.py                       # CPU: fp32 eager, batch 8 / 16
    python benchmarks/model_speed.py --device cuda         # + bf16, channels_last, torch.compile, MFU; 256 / 512
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from resnest_pl.callbacks.throughput import fp32_precision_name
from resnest_pl.host_memory import keep_freed_host_memory
from resnest_pl.models import create_model, get_variant
from resnest_pl.models.complexity import count_macs
from resnest_pl.peak_flops import dense_peak_tflops

MODES = ("train", "infer")
# Batches that keep a GPU busy (small ones time kernel launches) and ones a CPU gets through in seconds.
DEFAULT_BATCH = {"cuda": (256, 512), "cpu": (8, 16)}


@dataclass(frozen=True)
class Config:
    """One way of running every model: autocast dtype, memory format, compilation."""

    name: str
    amp: bool
    channels_last: bool
    compile: bool


CONFIGS = {
    cfg.name: cfg
    for cfg in (
        Config("fp32", amp=False, channels_last=False, compile=False),
        Config("bf16", amp=True, channels_last=False, compile=False),
        Config("bf16-cl", amp=True, channels_last=True, compile=False),
        # NCHW input: inductor chooses its own layout for the compiled graph.
        Config("bf16-compile", amp=True, channels_last=False, compile=True),
    )
}


@dataclass
class Entry:
    """A model under test, with the step functions of the current configuration and its timings."""

    label: str
    flops_per_image: int
    build: Callable[[], nn.Module]
    steps: dict[str, Callable[[], None]] = field(default_factory=dict)
    iters: dict[str, int] = field(default_factory=dict)
    rates: dict[str, list[float]] = field(default_factory=dict)  # images per wall-clock second, per rep
    cpu_rates: dict[str, list[float]] = field(default_factory=dict)  # images per second of process CPU time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnest50", help="our variant (the others use its counterpart)")
    parser.add_argument("--batch-train", type=int, default=None, help="default 256 on CUDA, 8 on the CPU")
    parser.add_argument("--batch-infer", type=int, default=None, help="default 512 on CUDA, 16 on the CPU")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--reps", type=int, default=6, help="timed repetitions after warm-up (>= 6 for reporting)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model and mode")
    parser.add_argument("--rep-seconds", type=float, default=0.5, help="minimum time of one model's repetition")
    parser.add_argument("--device", default="auto", help="auto: cuda if available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--keep-host-memory",
        action="store_true",
        help="keep freed host memory for reuse (glibc), as the training CLI does on CPU; applies to every model",
    )
    parser.add_argument(
        "--configs",
        default=None,
        help=f"comma-separated subset of {', '.join(CONFIGS)} (default: fp32 on CPU, all on CUDA)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak for MFU in every configuration (default on CUDA: the GPU's dense datasheet peak for each "
        "configuration's precision, bf16 or TF32/fp32; no MFU on the CPU unless set)",
    )
    args = parser.parse_args()
    if args.reps < 1 or args.warmup < 0:
        parser.error("--reps must be >= 1 and --warmup >= 0")
    return args


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary(device: torch.device, keep_host_memory: bool) -> str:
    parts = [
        f"CPU {cpu_model()}",
        f"{os.cpu_count()} logical cores",
        f"{torch.get_num_threads()} torch threads",
        f"torch {torch.__version__}",
        f"device {device.type}",
    ]
    if keep_host_memory:
        parts.append("host memory kept for reuse")
    if device.type == "cuda":
        parts.append(
            f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
            f"cuDNN TF32 in fp32 {torch.backends.cudnn.allow_tf32})"
        )
    return ", ".join(parts)


def load_average() -> tuple[float, ...]:
    """The 1, 5 and 15 minute load averages, where the OS reports them."""
    return os.getloadavg() if hasattr(os, "getloadavg") else ()


def describe(load: tuple[float, ...]) -> str:
    return " ".join(f"{v:.2f}" for v in load) or "n/a"


def model_builders(name: str, state: dict[str, torch.Tensor]) -> list[tuple[str, Callable[[], nn.Module]]]:
    """Constructors of ours, the reference's and timm's version of ``name``, all loading ``state``.

    Packages that are missing, or that lack the architecture, are skipped with a printed note.
    """
    variant = get_variant(name)

    builders: list[tuple[str, Callable[[], nn.Module]]] = [
        (f"ours {variant.name}", lambda: _loaded(create_model(name), state))
    ]
    try:
        import resnest.torch as reference
    except ImportError:
        print("note: `resnest` (reference package) is not installed; skipping it")
    else:
        factory = getattr(reference, variant.name, None)
        if factory is None:
            print(f"note: the reference package has no {variant.name}; skipping it")
        else:
            builders.append((f"reference {variant.name}", lambda: _loaded(factory(), state)))
    try:
        import timm
    except ImportError:
        print("note: `timm` is not installed; skipping it")
    else:
        timm_name = next((n for n in (variant.name, *variant.aliases) if timm.is_model(n)), None)
        if timm_name is None:
            print(f"note: timm has no counterpart of {variant.name}; skipping it")
        else:
            builders.append((f"timm {timm_name}", lambda: _loaded(timm.create_model(timm_name), state)))
    return builders


def _loaded(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    model.load_state_dict(state)
    return model


def make_steps(
    model: nn.Module, cfg: Config, args: argparse.Namespace, device: torch.device
) -> dict[str, Callable[[], None]]:
    """The train step (forward, backward, SGD) and the inference step of ``model`` under ``cfg``."""
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    runner = torch.compile(model) if cfg.compile else model
    size = args.image_size
    x_train = torch.randn(args.batch_train, 3, size, size, device=device).to(memory_format=fmt)
    y_train = torch.randint(0, 1000, (args.batch_train,), device=device)
    x_infer = torch.randn(args.batch_infer, 3, size, size, device=device).to(memory_format=fmt)

    def autocast() -> AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16) if cfg.amp else nullcontext()

    def train() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(runner(x_train), y_train)
        loss.backward()
        optimizer.step()

    def infer() -> None:
        model.eval()
        with torch.no_grad(), autocast():
            runner(x_infer)

    return {"train": train, "infer": infer}


def timed(step: Callable[[], None], iters: int, device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds taken by ``iters`` calls of ``step``, device work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def run_config(entries: list[Entry], cfg: Config, args: argparse.Namespace, device: torch.device) -> None:
    """Warm every model up, then time ``args.reps`` interleaved repetitions of each mode."""
    batch = {"train": args.batch_train, "infer": args.batch_infer}
    for entry in entries:
        torch.manual_seed(0)
        entry.steps = make_steps(entry.build(), cfg, args, device)
        for mode in MODES:
            for _ in range(args.warmup):
                entry.steps[mode]()
            # One more call calibrates how many steps fill --rep-seconds.
            entry.iters[mode] = max(1, math.ceil(args.rep_seconds / timed(entry.steps[mode], 1, device)[0]))
            entry.rates[mode], entry.cpu_rates[mode] = [], []
    for rep in range(args.reps):
        order = entries[rep % len(entries) :] + entries[: rep % len(entries)]
        for mode in MODES:
            for entry in order:
                wall, cpu = timed(entry.steps[mode], entry.iters[mode], device)
                images = batch[mode] * entry.iters[mode]
                entry.rates[mode].append(images / wall)
                entry.cpu_rates[mode].append(images / cpu)
    for entry in entries:
        entry.steps = {}
    if device.type == "cuda":
        torch.cuda.empty_cache()


def config_peak(cfg: Config, device: torch.device, override: float | None) -> float | None:
    """The MFU denominator of a configuration: ``override``, else the CUDA device's dense peak for its precision."""
    if override or device.type != "cuda":
        return override
    precision = "bf16" if cfg.amp else fp32_precision_name()
    return dense_peak_tflops(torch.cuda.get_device_name(device), precision)


def speed_rows(
    entries: list[Entry], config: str, args: argparse.Namespace, peak_tflops: float | None, mfu_columns: bool
) -> list[str]:
    """Markdown rows of the speed table for one configuration (empty MFU cells where its peak is unknown)."""
    batch = {"train": args.batch_train, "infer": args.batch_infer}
    flop_factor = {"train": 3, "infer": 1}
    rows = []
    for mode in MODES:
        for entry in entries:
            rates = entry.rates[mode]
            median = statistics.median(rates)
            row = (
                f"| {config} | {mode} | {entry.label} | {median:.2f} | {min(rates):.2f}..{max(rates):.2f} "
                f"| {100 * (max(rates) - min(rates)) / median:.0f}% | {1000 * batch[mode] / median:.1f} |"
            )
            if peak_tflops:
                achieved = median * entry.flops_per_image * flop_factor[mode] / 1e12
                row += f" {achieved:.1f} | {100 * achieved / peak_tflops:.1f}% |"
            elif mfu_columns:
                row += " | |"
            rows.append(row)
    return rows


def ratio_rows(entries: list[Entry], config: str, with_cpu: bool) -> list[str]:
    """Markdown rows comparing ours with each other model (ratios of img/s: > 1 means ours is faster)."""
    ours, rows = entries[0], []
    for mode in MODES:
        for other in entries[1:]:
            mine, theirs = ours.rates[mode], other.rates[mode]
            paired = [a / b for a, b in zip(mine, theirs, strict=True)]
            row = (
                f"| {config} | {mode} | ours / {other.label.split()[0]} "
                f"| {statistics.median(mine) / statistics.median(theirs):.3f} | {max(mine) / max(theirs):.3f} "
                f"| {min(paired):.3f}..{max(paired):.3f} |"
            )
            if with_cpu:
                cpu = statistics.median(ours.cpu_rates[mode]) / statistics.median(other.cpu_rates[mode])
                row += f" {cpu:.3f} |"
            rows.append(row)
    return rows


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    host_memory_kept = args.keep_host_memory and keep_freed_host_memory()
    if args.keep_host_memory and not host_memory_kept:
        print("note: --keep-host-memory needs glibc; the allocator is left as it is")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    batch_train, batch_infer = DEFAULT_BATCH["cuda" if device.type == "cuda" else "cpu"]
    args.batch_train = args.batch_train or batch_train
    args.batch_infer = args.batch_infer or batch_infer
    names = args.configs.split(",") if args.configs else list(CONFIGS) if device.type == "cuda" else ["fp32"]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"unknown --configs {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    peaks = {name: config_peak(CONFIGS[name], device, args.peak_tflops) for name in names}

    torch.manual_seed(0)
    state = create_model(args.model).state_dict()
    entries = [
        Entry(label, 2 * count_macs(build().to(device), args.image_size), build)
        for label, build in model_builders(args.model, state)
    ]

    print(f"machine: {machine_summary(device, host_memory_kept)}")
    print(f"load average at start: {describe(load_average())}")
    print(
        f"batch train {args.batch_train}, infer {args.batch_infer}; {args.image_size} px; {args.warmup} warm-up "
        f"steps, {args.reps} interleaved reps of >= {args.rep_seconds:g} s per model and mode; same weights for all"
    )
    print("forward GFLOPs/image: " + ", ".join(f"{e.label} {e.flops_per_image / 1e9:.2f}" for e in entries))
    if any(peaks.values()):
        print(
            "MFU against peaks of "
            + ", ".join(f"{name} {peak:g}" for name, peak in peaks.items() if peak)
            + " TFLOP/s; train = 3 x forward FLOPs"
        )

    speed, ratios = [], []
    for name in names:
        run_config(entries, CONFIGS[name], args, device)
        speed += speed_rows(entries, name, args, peaks[name], any(peaks.values()))
        ratios += ratio_rows(entries, name, with_cpu=device.type == "cpu")
        print(f"done: {name}", flush=True)

    mfu_head, mfu_rule = (" TFLOP/s | MFU |", "---:|---:|") if any(peaks.values()) else ("", "")
    print(f"\n| config | mode | model | img/s (median) | min..max | spread | ms/step (median) |{mfu_head}")
    print(f"|---|---|---|---:|---|---:|---:|{mfu_rule}")
    print("\n".join(speed))
    if ratios:
        cpu_head, cpu_rule = (" CPU-time ratio (median) |", "---:|") if device.type == "cpu" else ("", "")
        print("\nRatios of img/s, > 1: ours faster. best: fastest reps; per rep: each rep's ours vs theirs.")
        print(f"| config | mode | ratio | median | best | per rep |{cpu_head}")
        print(f"|---|---|---|---:|---:|---|{cpu_rule}")
        print("\n".join(ratios))
    load = load_average()
    print(f"\nload average at end: {describe(load)}")
    if load and load[0] > (os.cpu_count() or 1) + 0.5:
        print(
            "warning: other processes competed for the CPU; trust only 'best', or the CPU-time ratio with --threads 1"
        )


if __name__ == "__main__":
    main()
