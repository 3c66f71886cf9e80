"""What keeping freed host memory (``resnest_pl.host_memory``, the CLI's ``KeepHostMemory``) does to a CPU train loop.

The setting is process-wide, so each measurement is its own child process: a plain one and one with the setting,
alternating for ``--rounds`` rounds in this one run. Each child trains one model (forward, backward, SGD step on a
synthetic batch) and reports images/s, minor page faults and system CPU time per step; the parent prints the
medians and the ratio kept / plain.

    python benchmarks/host_memory.py                      # resnest50, batch 8, 224 px
    python benchmarks/host_memory.py --model resnest14d --batch 32
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from resnest_pl.host_memory import keep_freed_host_memory
from resnest_pl.models import create_model

MODES = ("plain", "kept")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnest50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per child")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per child")
    parser.add_argument("--rounds", type=int, default=3, help="plain/kept pairs of children")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--steps and --rounds must be >= 1, --warmup >= 0")
    return args


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Train ``args.model`` in this process; per-step rates after the warm-up."""
    if args.child == "kept" and not keep_freed_host_memory():
        raise SystemExit("this C library is not glibc: there is nothing to compare")
    torch.manual_seed(0)
    model = create_model(args.model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    targets = torch.randint(0, 1000, (args.batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), targets).backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.steps):
        step()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "img_s": args.batch * args.steps / wall,
        "faults_per_step": (after.ru_minflt - before.ru_minflt) / args.steps,
        "sys_s_per_step": (after.ru_stime - before.ru_stime) / args.steps,
    }


def run_child(mode: str) -> dict[str, float]:
    command = [sys.executable, __file__, *sys.argv[1:], "--child", mode]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr.strip() or f"the {mode} child failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            results[mode].append(run_child(mode))
    print(
        f"{args.model}, batch {args.batch}, {args.image_size} px, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.rounds} alternating rounds of {args.steps} steps per child"
    )
    print("\n| allocator | img/s (median) | minor page faults / step | system CPU s / step |")
    print("|---|---:|---:|---:|")
    medians = {}
    for mode in MODES:
        medians[mode] = {key: statistics.median(r[key] for r in results[mode]) for key in results[mode][0]}
        m = medians[mode]
        print(f"| {mode} | {m['img_s']:.2f} | {m['faults_per_step']:.0f} | {m['sys_s_per_step']:.3f} |")
    print(f"\nkept / plain images/s: {medians['kept']['img_s'] / medians['plain']['img_s']:.3f}")


if __name__ == "__main__":
    main()
