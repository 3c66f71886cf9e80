"""Loading weights from the reference package, timm, torch.hub URLs or our own checkpoints."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import torch
from torch import nn

# Prefixes that wrappers put in front of the backbone's keys: DDP, torch.compile,
# and LightningModules that hold the network as ``model`` or ``backbone``.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.")
CLASSIFIER_PREFIX = "fc."


class IncompatibleCheckpointError(ValueError):
    """The checkpoint does not describe this architecture."""


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://", "file://"))


def read_checkpoint(source: str | PathLike) -> Mapping[str, object]:
    """Read a checkpoint from a local file or a URL (cached by torch.hub, sha256-checked when the
    file name carries a hash prefix, as the official ones do)."""
    text = str(source)
    try:
        if _is_url(text):
            return torch.hub.load_state_dict_from_url(text, map_location="cpu", check_hash=True, weights_only=True)
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist; pass an existing file or a URL")
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        if _is_url(text) and "hash" in str(err):
            raise OSError(
                f"the file downloaded from {text} fails its sha256 check ({err}): the download is corrupt or "
                "the file changed upstream; retry, or download it by hand and pass its local path"
            ) from err
        if _is_url(text):
            raise OSError(
                f"could not fetch weights from {text} ({err}); download the file by hand and pass its local "
                "path as pretrained=..., or check the URL"
            ) from err
        raise IncompatibleCheckpointError(
            f"{text} is not a readable PyTorch checkpoint ({err}); pass a file written by torch.save"
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
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                problems.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise IncompatibleCheckpointError(
            "the checkpoint does not match this architecture: "
            + "; ".join(problems)
            + ". Create the model with the same variant and overrides as the checkpoint was trained with."
        )
    model.load_state_dict(state, strict=not classifier_differs)
    return classifier_differs


def load_pretrained(model: nn.Module, source: str | PathLike) -> bool:
    """Load weights from ``source`` into ``model``; see :func:`load_state_dict_checked`."""
    return load_state_dict_checked(model, extract_state_dict(read_checkpoint(source)))
