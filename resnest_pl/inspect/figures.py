"""One figure per stage: each block's mean attention per split as stacked bars, its normalised entropy and
dominant share as markers (all on the 0-1 scale)."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from resnest_pl.inspect.record import DOMINANT


def split_columns(blocks: pd.DataFrame) -> list[str]:
    """The ``attn_split<r>`` columns, in split order."""
    return sorted((c for c in blocks.columns if c.startswith("attn_split")), key=lambda c: int(c[len("attn_split") :]))


def stage_figure(blocks: pd.DataFrame, stage: int) -> Figure:
    """The blocks of ``stage`` (rows of :attr:`AttentionStats.blocks`)."""
    rows = blocks[blocks["stage"] == stage].reset_index(drop=True)
    fig = Figure(figsize=(max(6.5, 3.5 + 0.9 * len(rows)), 3.6), layout="constrained")
    ax = fig.subplots()
    x = range(len(rows))
    radix = int(rows["radix"].max())
    bottom = pd.Series(0.0, index=rows.index)
    for r, column in enumerate(split_columns(rows)):
        share = rows[column].fillna(0.0)
        label = "mean gate (sigmoid)" if radix == 1 else f"split {r}"
        ax.bar(x, share, bottom=bottom, width=0.6, color=f"C{r}", alpha=0.75, label=label)
        bottom += share
    ax.plot(x, rows["norm_entropy"], "ko-", label="normalised entropy")
    ax.plot(x, rows["dominant_share"], "k^--", markerfacecolor="white", label=f"share with one split > {DOMINANT:g}")
    ax.set_xticks(list(x), rows["block"])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean attention / entropy")
    ax.set_title(f"stage {stage}: split attention (radix {radix}, cardinality {int(rows['cardinality'].max())})")
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(axis="y", alpha=0.3)
    return fig
