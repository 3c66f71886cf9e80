"""The GPU kit's selection (what the image lacks), its pip commands and the rehearsal's pass rule; no download."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gpu_kit

# Requires-Dist lines as installed distributions declare them (a trimmed copy of the real ones).
FAKE = {
    "albumentations": ["numpy>=1.24.4", "pydantic>=2.9.2", "albucore==0.0.24", "opencv-python-headless>=4.9.0.80"],
    "albucore": ["numpy", "stringzilla>=3.10.4", 'eval-type-backport; python_version < "3.10"'],
    "pydantic": ["typing-extensions>=4.16.0", "pydantic-core==2.50.5", "email-validator>=2; extra == 'email'"],
    "pydantic-core": ["typing-extensions>=4.16.0"],
    "stringzilla": [],
    "jsonargparse": [
        "PyYAML>=3.13",
        'jsonargparse[typing-extensions]; extra == "signatures"',
        'docstring-parser>=0.17; extra == "signatures"',
        'typing-extensions>=4.12.0; python_version < "3.11" and extra == "typing-extensions"',
        'omegaconf>=2.1.1; extra == "omegaconf"',
    ],
    "docstring-parser": [],
    "litdata": ["torch>=2.4.0", "boto3", "tifffile"],
    "boto3": ["botocore (<1.45.0,>=1.44.8)", "botocore[crt] (<2.0a0,>=1.21.0) ; extra == 'crt'"],
    "botocore": ["urllib3>=1.25.4", "python-dateutil<3.0.0,>=2.1"],
    "tifffile": ["numpy", 'imagecodecs>=2025.11.11; extra == "codecs"'],
    "exotic": ['backport-only; python_version < "3.12"', 'win-only; sys_platform == "win32"'],
}


def fake_requires(name: str) -> list[str]:
    return FAKE.get(name, [])


def test_the_kit_holds_what_the_roots_need_and_the_image_lacks() -> None:
    kit = gpu_kit.closure(("albumentations", "jsonargparse[signatures]", "litdata"), fake_requires, "3.12")
    assert kit == [
        *("albucore", "albumentations", "boto3", "botocore", "docstring-parser", "jsonargparse", "litdata"),
        *("pydantic", "pydantic-core", "stringzilla", "tifffile"),
    ]  # not numpy, opencv, torch, typing-extensions (the image's), no extra not asked for, no Python < 3.10 backport


def test_markers_are_evaluated_for_the_target_python_on_linux() -> None:
    assert gpu_kit.closure(("exotic",), fake_requires, "3.12") == ["exotic"]
    assert gpu_kit.closure(("exotic",), fake_requires, "3.11") == ["backport-only", "exotic"]
    # An extra's own requirements follow the same markers: typing-extensions is the image's anyway, so the
    # same selection with an empty image shows that the 3.10 marker is read.
    lacks_all = frozenset()
    assert "typing-extensions" not in gpu_kit.closure(("jsonargparse[signatures]",), fake_requires, "3.12", lacks_all)
    assert "typing-extensions" in gpu_kit.closure(("jsonargparse[signatures]",), fake_requires, "3.10", lacks_all)


def test_the_installed_closure_leaves_out_everything_the_image_has() -> None:
    kit = gpu_kit.closure(gpu_kit.ROOTS, gpu_kit.installed_requires, "3.12")
    assert {"albumentations", "albucore", "jsonargparse", "docstring-parser", "typeshed-client", "litdata"} <= set(kit)
    assert {"pydantic", "pydantic-core", "boto3", "botocore"} <= set(kit)  # litdata's client imports boto3
    assert not set(kit) & gpu_kit.IMAGE_HAS
    assert {"torch", "numpy", "opencv-python-headless", "pyyaml", "typing-extensions"} <= gpu_kit.IMAGE_HAS


def test_pip_commands_take_exactly_the_pins_offline(tmp_path: Path) -> None:
    download = gpu_kit.download_command(["albucore==0.0.24", "litdata==0.2.76"], "3.12", tmp_path)
    assert download[:4] == [sys.executable, "-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:"} <= set(download)
    assert download[download.index("--python-version") + 1] == "3.12"
    assert [download[i + 1] for i, arg in enumerate(download) if arg == "--platform"] == list(gpu_kit.PLATFORMS)
    assert download[-2:] == ["albucore==0.0.24", "litdata==0.2.76"]
    install = gpu_kit.install_command(tmp_path, tmp_path / "site")
    assert {"--no-index", "--no-deps"} <= set(install)
    assert install[install.index("--requirement") + 1] == str(tmp_path / gpu_kit.PINS)


def test_a_new_kit_replaces_an_old_one_but_no_other_folder(tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "old-1.0-py3-none-any.whl").write_bytes(b"")
    (kit / gpu_kit.PINS).write_text("old==1.0\n")
    gpu_kit.clear_kit(kit)
    assert not kit.exists()
    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(SystemExit, match="holds more than a kit"):
        gpu_kit.clear_kit(tmp_path)
    assert (tmp_path / "notes.txt").exists()


def results(tmp_path: Path, *rows: dict, running: str | None = None) -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"running": running, "rows": [{"part": "probe", "item": "x", "status": "ok"}, *rows]}))
    return path


def test_the_rehearsal_passes_only_rows_that_ran_or_need_cuda(tmp_path: Path) -> None:
    cuda = {"part": "e2e", "item": "on device", "status": "skipped", "note": "needs CUDA: decode; this run is on cpu"}
    assert gpu_kit.verdict(results(tmp_path, cuda)) == []
    missing = {"part": "check", "item": "q", "status": "skipped", "note": "not importable: albumentations"}
    failed = {"part": "train", "item": "t", "status": "failed", "note": "RuntimeError: boom"}
    budget = {"part": "infer", "item": "i", "status": "skipped", "note": "budget: 0 s left, needs ~1 s"}
    assert len(gpu_kit.verdict(results(tmp_path, cuda, missing, failed, budget))) == 3
    assert gpu_kit.verdict(results(tmp_path, cuda, running="t"))[0].startswith("the suite did not finish")
