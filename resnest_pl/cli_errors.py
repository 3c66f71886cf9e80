"""Parse errors of the CLI as one ``error:`` line: an unknown key names the nearest valid one, a missing ``--config``
file the nearest existing file; the usage is printed by ``--help`` only. The CLI's own formatter of its parser's
messages; the line is printed and the exit status set by :mod:`resnest_pl.errors`, as for every command."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import ArgumentParser
from pytorch_lightning.cli import LightningArgumentParser

from .errors import fail
from .models.config import ResNeStConfig
from .training.run_record import with_moved_class_paths

OVERRIDES_KEY = "model.model_overrides"
# jsonargparse's messages for a key no parser knows, on the command line or in a config file.
UNKNOWN_KEY = (
    re.compile(r"unrecognized arguments: --?([^\s=]+)"),
    re.compile(r"does not accept option '([^']+)'"),
    re.compile(r"Option '([^']+)' is not accepted"),
)
CLASS_OPTION = re.compile(r"class_path '([\w.]+)':\s*Option '([^']+)' is not accepted")
PARSER_KEY = re.compile(r'Parser key "([\w.]+)"')
MISSING_FILE = re.compile(r"File does not exist: '?([^'\s]+)'?")
GPU_BACKEND_MISSING = "No supported gpu backend found"
CPU_PRESET = "configs/trainer/cpu.yaml"


def parser_keys(parser: argparse.ArgumentParser) -> Iterator[str]:
    """Every option key of ``parser`` and of its subcommands' parsers (``model.label_smoothing``, ...)."""
    for action in parser._actions:
        choices = getattr(action, "_name_parser_map", None)
        if isinstance(choices, dict):
            for subparser in choices.values():
                yield from parser_keys(subparser)
        elif action.dest not in (argparse.SUPPRESS, "help") and action.option_strings:
            yield action.dest


def nearest_key(key: str, parser: argparse.ArgumentParser) -> str | None:
    """The valid key nearest to ``key``; an architecture option given at the model's top level
    (``model.radix``) is a field of ``model.model_overrides``."""
    head, _, field = key.rpartition(".")
    if head == "model" and field in {f.name for f in dataclasses.fields(ResNeStConfig)}:
        return f"{OVERRIDES_KEY}.{field}"
    valid = sorted(set(parser_keys(parser)))
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return close[0] if close else None


def nearest_init_arg(class_path: str, name: str) -> str | None:
    """The argument of ``class_path``'s constructor nearest to ``name``."""
    module, _, attribute = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError):
        return None
    close = difflib.get_close_matches(name, list(inspect.signature(cls).parameters), n=1, cutoff=0.6)
    return close[0] if close else None


def nearest_file(path: str) -> str | None:
    """The existing YAML file whose path is nearest to ``path`` (a typo in a ``--config`` path)."""
    folder = Path(path).parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    candidates = [str(p) for p in folder.rglob("*.yaml")] if folder.is_dir() else []
    close = difflib.get_close_matches(path, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def explain_parse_error(message: str, parser: argparse.ArgumentParser) -> str:
    """One line for a jsonargparse error ``message``: the problem and the fix."""
    missing = MISSING_FILE.search(message)
    if missing:
        near = nearest_file(missing.group(1))
        hint = f"did you mean {near}?" if near else "pass the path of an existing YAML file"
        return f"config file {missing.group(1)} does not exist; {hint}"
    option = CLASS_OPTION.search(message)
    if option:
        prefix = f"{PARSER_KEY.search(message).group(1)}.init_args" if PARSER_KEY.search(message) else "init_args"
        near = nearest_init_arg(*option.groups())
        hint = f"did you mean --{prefix}.{near}?" if near else f"run with --help for {option.group(1)}'s keys"
        return f"unknown key '{prefix}.{option.group(2)}' (on the command line or in a config file); {hint}"
    for pattern in UNKNOWN_KEY:
        found = pattern.search(message)
        if found:
            key = found.group(1)
            near = nearest_key(key, parser)
            hint = f"did you mean --{near}?" if near else "run with --help for the valid keys"
            return f"unknown key {key!r} (on the command line or in a config file); {hint}"
    return " ".join(message.split())


def explain_gpu_missing(message: str) -> str | None:
    """The fix for Lightning's "No supported gpu backend found!" on a machine without a GPU, else None."""
    if GPU_BACKEND_MISSING not in message:
        return None
    return (
        "trainer.accelerator is gpu (a GPU preset such as configs/trainer/gpu.yaml) but this machine has no "
        f"supported GPU; use --config {CPU_PRESET} instead"
    )


class OneLineErrorParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors end the program with one ``error:`` line and exit status 2 instead of
    the whole usage (``--help`` still prints it), and which reads the hyper-parameters of checkpoints written
    before a class moved (LightningCLI parses them for ``--ckpt_path``) as naming its current home."""

    def parse_object(self, cfg_obj: Any, *args: Any, **kwargs: Any) -> Any:
        return super().parse_object(with_moved_class_paths(cfg_obj), *args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            ArgumentParser.error(self, message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        fail(explain_parse_error(message, parser))
