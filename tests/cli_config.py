"""The config the CLI would instantiate from, without instantiating it (no 100M-parameter model is built)."""

from __future__ import annotations

from jsonargparse import Namespace

from resnest_pl.cli import ResNeStCLI, default_callbacks
from resnest_pl.data import ImageDataModule
from resnest_pl.training.module import ResNeStClassifier


class ParsedCLI(ResNeStCLI):
    """The real CLI (parser, config files, ``before_instantiate_classes``) that stops before instantiating."""

    def instantiate_classes(self) -> None:
        """Nothing: the tests read ``self.config``."""


def parsed_config(*args: str) -> Namespace:
    """The resolved config of ``python -m resnest_pl.cli fit ARGS``, as the CLI hands it to the classes."""
    cli = ParsedCLI(
        ResNeStClassifier,
        ImageDataModule,
        subclass_mode_data=True,
        trainer_defaults={"callbacks": default_callbacks()},
        run=False,
        args=list(args),
    )
    return cli.config
