"""Loading weights from the reference package, timm, torch.hub URLs, safetensors files, exported folders
or our own checkpoints."""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

# Prefixes that wrappers put in front of the backbone's keys: DDP, torch.compile,
# and LightningModules that hold the network as ``model`` or ``backbone``.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.")
CLASSIFIER_PREFIX = "fc."
# What ``python -m resnest_pl.export`` writes into its folder, in the order a folder is searched.
EXPORT_WEIGHTS = ("model.safetensors", "model.pth")
EXPORT_CONFIG = "config.json"


class IncompatibleCheckpointError(ValueError):
    """The checkpoint does not describe this architecture, or is no checkpoint at all."""


class WeightsDownloadError(OSError):
    """Weights at a URL could not be fetched (no network, wrong URL, failed hash check)."""


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://", "file://"))


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def resolve_weights_file(source: str | PathLike) -> Path:
    """The weights file of ``source``: the file itself, or the ``model.safetensors`` / ``model.pth`` of an
    exported folder."""
    path = Path(source).expanduser()
    if path.is_dir():
        for name in EXPORT_WEIGHTS:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(
            f"{path} is a folder without {' or '.join(EXPORT_WEIGHTS)}; pass a folder written by "
            "python -m resnest_pl.export, or a weights file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; pass an existing file, folder or URL")
    return path


def exported_config(source: str | PathLike) -> dict | None:
    """The ``config.json`` written next to exported weights (``source`` is the export folder or its weights
    file), or ``None`` for anything else."""
    if _is_url(str(source)):
        return None
    path = Path(source).expanduser()
    if path.is_file() and path.name in EXPORT_WEIGHTS:
        path = path.parent
    config = path / EXPORT_CONFIG
    if not path.is_dir() or not config.is_file():
        return None
    try:
        return json.loads(config.read_text())
    except (OSError, ValueError) as err:
        raise IncompatibleCheckpointError(
            f"{config} is not valid JSON ({_one_line(err)}); export the checkpoint again"
        ) from err


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _read_file(path: Path) -> Mapping[str, object]:
    if _is_safetensors(path):
        from safetensors.torch import load_file  # optional: the backbone itself needs only torch

        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _download(url: str) -> Mapping[str, object]:
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True, weights_only=True)
    except (OSError, RuntimeError) as err:
        name = Path(urlparse(url).path).name
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        if "hash" in str(err):
            raise WeightsDownloadError(
                f"the file downloaded from {url} fails its sha256 check: the download is corrupt or the file "
                f"changed upstream; retry, or download {name} by hand and pass its local path"
            ) from err
        raise WeightsDownloadError(
            f"could not download {name} from {url} ({_one_line(err)}); download the file by hand and pass its "
            f"local path as pretrained=/path/to/{name} (--model.pretrained /path/to/{name} on the command "
            f"line), or put it into {cache}"
        ) from err


def read_checkpoint(source: str | PathLike) -> Mapping[str, object]:
    """Read a checkpoint: a URL (cached by torch.hub, sha256-checked when the file name carries a hash
    prefix, as the official ones do), a PyTorch file (read with ``weights_only=True``), a safetensors file,
    or a folder written by ``python -m resnest_pl.export``.

    Raises:
        FileNotFoundError: no such file, or a folder without exported weights.
        WeightsDownloadError: the URL cannot be fetched or fails its hash check.
        IncompatibleCheckpointError: the file is not a checkpoint (truncated, corrupt, another format)
            or stores Python objects besides tensors.
    """
    text = str(source)
    if _is_url(text):
        return _download(text)
    path = resolve_weights_file(text)
    try:
        return _read_file(path)
    except PermissionError:
        raise
    except Exception as err:  # torch, pickle, zipfile and safetensors each raise their own types
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if isinstance(err, pickle.UnpicklingError) and found:
            raise IncompatibleCheckpointError(
                f"{path} stores Python objects ({found.group(1)}) besides tensors, which are not loaded for "
                "safety; pass a file that holds only weights (a state dict, a checkpoint of this template, or "
                "the output of python -m resnest_pl.export)"
            ) from err
        raise IncompatibleCheckpointError(
            f"{path} is not a PyTorch or safetensors checkpoint (truncated or corrupt?); re-export it or pass "
            "another file"
        ) from err


def extract_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The backbone's tensors from a raw state dict or a training checkpoint, wrapper prefixes removed."""
    for key in ("state_dict", "model_state_dict", "model"):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping):
            checkpoint = inner
            break
    state = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise IncompatibleCheckpointError("the checkpoint holds no tensors; expected a model state dict")
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def state_mismatch(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str | None:
    """How ``state`` fails to fit a model whose state dict is ``own`` (counts and examples of missing,
    unexpected and wrongly shaped keys), or ``None`` when it fits."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if keys:
            problems.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
    return "; ".join(problems) or None


def load_state_dict_checked(model: nn.Module, state: Mapping[str, torch.Tensor]) -> bool:
    """Load ``state`` into ``model``; a classifier of another shape is skipped and left freshly
    initialised. Returns whether the classifier was re-initialised. Anything else that does not
    match raises :class:`IncompatibleCheckpointError` naming the keys."""
    own = model.state_dict()
    classifier_differs = any(
        k.startswith(CLASSIFIER_PREFIX) and (k not in own or own[k].shape != v.shape) for k, v in state.items()
    ) or any(k.startswith(CLASSIFIER_PREFIX) and k not in state for k in own)
    if classifier_differs:
        state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIX)}
        own = {k: v for k, v in own.items() if not k.startswith(CLASSIFIER_PREFIX)}
    problems = state_mismatch(own, state)
    if problems:
        raise IncompatibleCheckpointError(
            f"the checkpoint does not match this architecture: {problems}. Create the model with the same "
            "variant and overrides as the checkpoint was trained with."
        )
    model.load_state_dict(state, strict=not classifier_differs)
    return classifier_differs


def load_pretrained(model: nn.Module, source: str | PathLike) -> bool:
    """Load weights from ``source`` into ``model``; see :func:`load_state_dict_checked`."""
    return load_state_dict_checked(model, extract_state_dict(read_checkpoint(source)))


# The key of a training checkpoint's run record (``resnest_pl.training.run_record``): class names, data, metrics.
RUN_RECORD_KEY = "resnest_pl"


def describe_run(checkpoint: Mapping[str, object]) -> str:
    """Where weights came from, for a log line: a training checkpoint's model, classes, epoch, step and
    ``val/acc1`` (what it records), or "a state dict without a run record"."""
    hparams = checkpoint.get("hyper_parameters")
    record = checkpoint.get(RUN_RECORD_KEY)
    parts = []
    if isinstance(hparams, Mapping) and isinstance(hparams.get("model_name"), str):
        overrides = hparams.get("model_overrides") or {}
        parts.append(" ".join([hparams["model_name"], *(f"{k}={v}" for k, v in dict(overrides).items())]))
    names = record.get("class_names") if isinstance(record, Mapping) else None
    if names:
        shown = ", ".join(str(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
        parts.append(f"{len(names)} classes ({shown})")
    for key in ("epoch", "global_step"):
        if isinstance(checkpoint.get(key), int):
            parts.append(f"{'step' if key == 'global_step' else key} {checkpoint[key]}")
    metrics = record.get("metrics") if isinstance(record, Mapping) else None
    if isinstance(metrics, Mapping) and "val/acc1" in metrics:
        parts.append(f"val/acc1 {float(metrics['val/acc1']):.4f}")
    return f"run: {', '.join(parts)}" if parts else "a state dict without a run record"


def classifier_change(checkpoint_state: Mapping[str, torch.Tensor], model: nn.Module) -> str | None:
    """``"classifier 10 → 2 classes, re-initialised"`` when the checkpoint's classifier does not fit
    ``model``'s (which :func:`load_state_dict_checked` then leaves freshly initialised); None when it fits."""
    weight = model.state_dict().get(f"{CLASSIFIER_PREFIX}weight")
    theirs = checkpoint_state.get(f"{CLASSIFIER_PREFIX}weight")
    if weight is None or theirs is None or theirs.shape == weight.shape:
        return None
    return f"classifier {theirs.shape[0]} → {weight.shape[0]} classes, re-initialised"


def load_line(source: str | PathLike, checkpoint: Mapping[str, object], replaced: str | None = None) -> str:
    """One line saying which weights a run loads: the file, the run it came from and what was replaced."""
    return f"loading weights: {source} ({describe_run(checkpoint)}); {replaced or 'nothing replaced'}"


def has_ema(checkpoint: Mapping[str, Any]) -> bool:
    """Whether the run kept an EMA: Lightning's ``EMAWeightAveraging`` saves the averaged weights as
    ``state_dict`` and moves the live ones to ``current_model_state``."""
    return "current_model_state" in checkpoint
