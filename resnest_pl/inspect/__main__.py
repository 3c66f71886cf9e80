"""``python -m resnest_pl.inspect CKPT_OR_EXPORT --images DIR [--out DIR]``: how a trained network's split
attention spreads over the radix splits, per stage, block and class."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from resnest_pl.errors import user_errors
from resnest_pl.inspect.run import attention_stats, write_inspection


def main(argv: Sequence[str] | None = None) -> None:
    """Command line; a bad input ends as :mod:`resnest_pl.errors` says (one ``error:`` line, exit status 2)."""
    parser = argparse.ArgumentParser(prog="python -m resnest_pl.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "source", help="a .ckpt of a resnest_pl run, or a folder written by python -m resnest_pl.export"
    )
    parser.add_argument("--images", required=True, help="folder of images; sub-folders are read as classes")
    parser.add_argument("--out", default="inspection", help="folder for the CSVs and figures (default: inspection)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--max-images", type=int, default=None, help="use at most this many, spread evenly")
    args = parser.parse_args(argv)
    with user_errors(ValueError, OSError):
        stats = attention_stats(args.source, args.images, args.batch_size, args.max_images)
        paths = write_inspection(stats, args.out)
    for stage, entropy in stats.stage_entropy().items():
        print(f"stage {stage}: mean normalised attention entropy {entropy:.3f}")
    print(f"wrote {', '.join(map(str, paths))}")


if __name__ == "__main__":
    main()
