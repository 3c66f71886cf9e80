"""``python -m resnest_pl.data.shards --root <image folder> --out <dir>``: an image folder as streaming shards."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from ...errors import user_errors
from .write import DEFAULT_CHUNK_BYTES, convert


def main(args: Sequence[str] | None = None) -> None:
    """Command line; a bad input ends as :mod:`resnest_pl.errors` says (one ``error:`` line, exit status 2)."""
    parser = argparse.ArgumentParser(prog="python -m resnest_pl.data.shards", description=__doc__.split(": ", 1)[1])
    parser.add_argument("--root", required=True, help="image folder: train/ + val/ class folders, or one class tree")
    parser.add_argument("--out", required=True, help="shard folder to create (must not exist)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="held out for val without a val/ folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of that split")
    parser.add_argument("--chunk-bytes", default=DEFAULT_CHUNK_BYTES, help="size of one chunk file")
    parser.add_argument("--threads", type=int, default=16, help="files read concurrently")
    options = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with user_errors(ValueError, FileNotFoundError):  # DataLayoutError, DatasetNotFoundError, an existing --out
        out = convert(
            options.root, options.out, options.val_fraction, options.seed, options.chunk_bytes, options.threads
        )
    print(f"shards written to {out}; train with --data resnest_pl.data.ShardedDataModule --data.root {out}")


if __name__ == "__main__":
    main()
