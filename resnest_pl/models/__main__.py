"""``python -m resnest_pl.models``: the variant table, counted live."""

from __future__ import annotations

import argparse

import torch

from ..errors import user_errors
from .complexity import count_macs, count_params
from .registry import create_model, get_variant, list_models


def variant_rows(names: list[str]) -> list[dict[str, object]]:
    """Params, GMACs at 224, the published evaluation settings and GMACs at the eval crop of each variant."""
    rows = []
    for name in names:
        variant = get_variant(name)
        with torch.device("meta"):
            model = create_model(name)
        gmacs_224 = count_macs(model, 224) / 1e9
        rows.append(
            {
                "name": variant.name,
                "layers": ",".join(map(str, variant.config.layers)),
                "params_M": count_params(model) / 1e6,
                "gmacs_224": gmacs_224,
                "eval_crop": variant.eval_crop,
                "crop_pct": variant.crop_pct,
                "interpolation": variant.interpolation,
                "gmacs_eval": gmacs_224 if variant.eval_crop == 224 else count_macs(model, variant.eval_crop) / 1e9,
            }
        )
    return rows


def format_table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| name | layers | params | GMACs@224 | eval crop | crop_pct | interpolation | GMACs@eval |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['layers']} | {r['params_M']:.2f}M | {r['gmacs_224']:.2f} | "
            f"{r['eval_crop']} | {r['crop_pct']:.3f} | {r['interpolation']} | {r['gmacs_eval']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line; an unknown variant ends as :mod:`resnest_pl.errors` says (one ``error:`` line, exit 2)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="variants to list (default: all)")
    args = parser.parse_args(argv)
    with user_errors(ValueError):  # an unknown variant
        table = format_table(variant_rows(args.names or list_models()))
    print(table)


if __name__ == "__main__":
    main()
