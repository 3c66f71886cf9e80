"""The GPU kit: wheels of the packages the lent GPU machine's image lacks, built here, installed offline there.

The image (Python 3.12) has torch, torchvision, Lightning, timm, OpenCV, scikit-learn and their kind
(``IMAGE_HAS``) but not what the CLI, the data modules, ``decode_on_device`` and the shards import on top:
albumentations, jsonargparse with its ``signatures`` extra, litdata (``ROOTS``). ``build`` follows their
requirements (``Requires-Dist``, markers evaluated for the target Python on Linux x86-64) through the
packages installed in this environment, stops at what the image has, and downloads the rest, pinned to the
versions installed here, as binary wheels for the target Python. Nothing reaches the machine that it has.

    python benchmarks/gpu_kit.py build --python-version 3.12 --out .gpu-kit   # make gpu-kit
    python benchmarks/gpu_kit.py install --kit .gpu-kit --target DIR           # benchmarks/gpu_oneshot.sh
    python benchmarks/gpu_kit.py verdict OUT/results.json                      # make gpu-rehearsal's pass rule
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

from gpu_suite_cli import NEEDS_CUDA
from packaging.requirements import Requirement

ROOTS = ("albumentations", "jsonargparse[signatures]", "litdata")
# Distributions the GPU image has (its listing), and what they pull in: the kit never carries these.
IMAGE_HAS = frozenset(
    re.sub(r"[-_.]+", "-", name).lower()
    for name in (
        *("torch", "torchvision", "triton", "pytorch-lightning", "lightning", "lightning-utilities"),
        *("lightning-fabric", "torchmetrics", "timm", "huggingface-hub", "hf-xet", "safetensors"),
        *("opencv-python", "opencv-python-headless", "scikit-learn", "scipy", "numpy", "joblib", "threadpoolctl"),
        *("tensorboard", "tensorboard-data-server", "protobuf", "grpcio", "absl-py", "markdown", "werkzeug"),
        *("pandas", "python-dateutil", "pytz", "tzdata", "six", "matplotlib", "contourpy", "cycler", "fonttools"),
        *("kiwisolver", "pyparsing", "pillow", "pyyaml", "fsspec", "aiohttp", "requests", "urllib3", "certifi"),
        *("idna", "charset-normalizer", "filelock", "packaging", "typing-extensions", "tqdm", "jinja2"),
        *("markupsafe", "networkx", "sympy", "mpmath", "setuptools"),
    )
)
# Linux x86-64 as the image runs it; pip also accepts the older manylinux tags below each of these.
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")
MAX_MIB = 48.0
PINS = "requirements.txt"


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def marker_environment(python_version: str) -> dict[str, str]:
    """Marker variables of CPython ``python_version`` on Linux x86-64."""
    return {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
    }


def closure(
    roots: Iterable[str], requires: Callable[[str], list[str]], python_version: str, image: frozenset[str] = IMAGE_HAS
) -> list[str]:
    """The distributions (normalized names, sorted) that ``roots`` need on ``python_version`` and the image
    lacks. ``requires(name)`` gives a distribution's ``Requires-Dist`` lines; an image package's own
    requirements are the image's business and are not followed."""
    environment = marker_environment(python_version)
    needed: set[str] = set()
    seen: set[tuple[str, str]] = set()
    todo = [Requirement(root) for root in roots]
    while todo:
        requirement = todo.pop()
        name = normalize(requirement.name)
        if name in image:
            continue
        needed.add(name)
        for extra in ("", *sorted(requirement.extras)):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            for line in requires(name):
                child = Requirement(line)
                if child.marker is None or child.marker.evaluate({**environment, "extra": extra}):
                    todo.append(child)
    return sorted(needed)


def installed_requires(name: str) -> list[str]:
    """``Requires-Dist`` of a distribution installed in this environment."""
    try:
        return metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        raise SystemExit(f"{name} is needed but not installed here: install it (make install) first") from None


def download_command(pins: list[str], python_version: str, dest: Path) -> list[str]:
    """pip's command for binary wheels of exactly ``pins`` (no dependencies) for CPython ``python_version``."""
    platforms = [option for platform in PLATFORMS for option in ("--platform", platform)]
    return [
        *(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"),
        *("--python-version", python_version, "--implementation", "cp", *platforms, "--dest", str(dest), *pins),
    ]


def size_mib(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.iterdir()) / 2**20


def clear_kit(out: Path) -> None:
    """Remove an earlier kit from ``out`` (its wheels would mix with the new ones); refuse a folder holding more."""
    if out.exists():
        strangers = [path.name for path in out.iterdir() if path.suffix != ".whl" and path.name != PINS]
        if strangers:
            raise SystemExit(f"{out} holds more than a kit ({', '.join(strangers[:3])}); choose another --out")
        shutil.rmtree(out)


def build(out: Path, python_version: str) -> None:
    """Download the kit into ``out`` (replacing an earlier kit there) and write its pins to ``out/PINS``."""
    clear_kit(out)
    out.mkdir(parents=True)
    pins = [f"{name}=={metadata.version(name)}" for name in closure(ROOTS, installed_requires, python_version)]
    subprocess.run(download_command(pins, python_version, out), check=True)
    (out / PINS).write_text("\n".join(pins) + "\n")
    mib = size_mib(out)
    print(f"GPU kit for Python {python_version} in {out}: {len(pins)} wheels, {mib:.1f} MiB: {' '.join(pins)}")
    if mib > MAX_MIB:
        raise SystemExit(f"the kit is {mib:.1f} MiB, more than the {MAX_MIB:g} MiB that may travel with the tree")


def install_command(kit: Path, target: Path) -> list[str]:
    """pip's offline command that installs the kit's pins, and nothing else, into ``target``."""
    return [
        *(sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--upgrade", "--find-links", str(kit)),
        *("--target", str(target), "--requirement", str(kit / PINS)),
    ]


def verdict(results: Path) -> list[str]:
    """The rehearsal's failures: rows neither ``ok`` nor skipped because they need CUDA (none: it passed)."""
    document = json.loads(results.read_text())
    failures = [
        f"{row['part']} | {row['item']} | {row['status']} | {row.get('note', '')}"
        for row in document["rows"]
        if not (row["status"] == "ok" or (row["status"] == "skipped" and row.get("note", "").startswith(NEEDS_CUDA)))
    ]
    if document["running"] is not None or len(document["rows"]) < 2:
        failures.append(f"the suite did not finish (running: {document['running']}, {len(document['rows'])} rows)")
    return failures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="download the kit's wheels (needs PyPI)")
    build_parser.add_argument("--python-version", default="3.12", help="the GPU image's Python, major.minor")
    build_parser.add_argument("--out", type=Path, default=Path(".gpu-kit"))
    install_parser = commands.add_parser("install", help="install the kit offline into a folder for PYTHONPATH")
    install_parser.add_argument("--kit", type=Path, default=Path(".gpu-kit"))
    install_parser.add_argument("--target", type=Path, required=True)
    verdict_parser = commands.add_parser("verdict", help="exit 1 unless every row is ok or needs CUDA")
    verdict_parser.add_argument("results", type=Path, help="the suite's results.json")
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.out, args.python_version)
    elif args.command == "install":
        subprocess.run(install_command(args.kit, args.target), check=True)
    else:
        failures = verdict(args.results)
        print("\n".join(["rehearsal FAILED:", *failures]) if failures else "rehearsal passed")
        if failures:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
