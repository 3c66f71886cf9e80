"""The error policy of every ``python -m resnest_pl.*`` command.

A mistake in the input (a missing file, a bad config, grid or search space) ends the command with exactly one
``error:`` line on stderr, naming the problem and the fix, and exit status 2; with ``RESNEST_PL_DEBUG=1`` the error
is raised instead, traceback and all. A command stopped by SIGTERM exits with 143 (128 + the signal) as a process
killed by it would: the CLI after Lightning's clean stop, the ablation and tune runners (which install
:func:`stop_on_signals`) after stopping their running fit, the other commands by the signal itself.

Imports nothing of this package: the commands of every layer use it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

DEBUG_ENV = "RESNEST_PL_DEBUG"
USAGE_STATUS = 2


def debugging() -> bool:
    """Whether ``RESNEST_PL_DEBUG`` asks for tracebacks instead of ``error:`` lines."""
    return bool(os.environ.get(DEBUG_ENV))


def fail(message: str) -> NoReturn:
    """End the command with one ``error:`` line and exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_STATUS)


def report(err: BaseException, message: str | None = None) -> int:
    """Print ``err`` (or ``message``, its explanation) as one ``error:`` line and return the exit status 2; with
    ``RESNEST_PL_DEBUG=1`` raise ``err`` instead."""
    if debugging():
        raise err
    print(f"error: {str(err) if message is None else message}", file=sys.stderr)
    return USAGE_STATUS


def user_error_message(err: BaseException) -> str:
    """The message of the error that describes the problem: jsonargparse wraps errors raised while it
    instantiates a class (a missing data set, say) in its own; the original, raised by this package,
    is further down the chain."""
    package = Path(__file__).resolve().parent
    chain: BaseException | None = err
    while chain is not None:
        frames = traceback.extract_tb(chain.__traceback__)
        raised_here = bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(package)
        if chain is not err and (type(chain).__module__.startswith("resnest_pl") or raised_here):
            return str(chain)
        chain = chain.__cause__ or chain.__context__
    return str(err)


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException], explain: Callable[[BaseException], str] = str) -> Iterator[None]:
    """An error of ``kinds`` raised inside ends the command as :func:`report` says (``SystemExit(2)``, whose
    ``__cause__`` is the error); ``explain`` turns it into the line."""
    try:
        yield
    except kinds as err:
        raise SystemExit(report(err, explain(err))) from err


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread like Ctrl-C's ``KeyboardInterrupt`` (so that a running fit is
    stopped with it); ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_interrupted(signum: int, frame: object) -> None:
    """A signal handler for SIGINT and SIGTERM that raises :class:`Interrupted`."""
    raise Interrupted(signum)


def stop_on_signals() -> None:
    """Turn SIGINT and SIGTERM into :class:`Interrupted`: ``kill`` stops a runner's current fit too, like Ctrl-C."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, raise_interrupted)


def interrupted(interrupt: KeyboardInterrupt, advice: str) -> int:
    """Print ``advice`` (how to go on) and return the exit status of the interruption: 128 + the signal."""
    print(f"\ninterrupted: {advice}", file=sys.stderr)
    return 128 + getattr(interrupt, "signum", signal.SIGINT)
