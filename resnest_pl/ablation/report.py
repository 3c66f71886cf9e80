"""From finished runs to the ablation's table and plots: ``results.csv``, ``results.md`` and two PNGs.

The plotting functions take the ``results.csv`` frame (one row per cell), so a notebook can redraw them.
Besides accuracy and costs, each run's mean normalised split-attention entropy (``resnest_pl.inspect``) is measured
on a fixed sample of the validation images: 1 when the attention spreads evenly over the radix splits, 0 when one
split takes all.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from pandas.api.typing import DataFrameGroupBy
from pytorch_lightning.cli import instantiate_class

from ..data.transforms import normalize
from ..inspect import load_trained, record_attention

ACC = "best_val_acc1"
MARKERS = "osD^vP*X"
ENTROPY = "attention_entropy"
ENTROPY_IMAGES = 64  # the first validation images, the same for every run
RUN_COLUMNS = ["cell", "seed", ACC, "final_val_acc1", "epochs", "wall_s", "peak_rss_mib", ENTROPY]


def read_val_acc1(log_dir: Path) -> tuple[float, float, int]:
    """Best and final ``val/acc1`` and the number of validated epochs of the newest ``metrics.csv`` under
    ``log_dir`` (a CSVLogger's folder); raises ValueError when there is none."""
    files = sorted(log_dir.glob("version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise ValueError(f"the run wrote no metrics.csv under {log_dir}")
    metrics = pd.read_csv(files[-1])
    acc = metrics["val/acc1"].dropna() if "val/acc1" in metrics else pd.Series(dtype=float)
    if acc.empty:
        raise ValueError(f"the run logged no val/acc1 in {files[-1]} (is validation switched off?)")
    return float(acc.max()), float(acc.iloc[-1]), len(acc)


def run_checkpoint(folder: Path) -> Path | None:
    """The checkpoint of a run folder whose attention is measured: ``checkpoints/last.ckpt`` (the final weights),
    else the newest other checkpoint there; None when there is none."""
    last = folder / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    others = sorted((folder / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return others[-1] if others else None


def validation_sample(data: dict, count: int = ENTROPY_IMAGES) -> torch.Tensor | None:
    """The first ``count`` validation images (``uint8``, at the evaluation crop) of the data module that ``data``
    configures (``class_path`` and ``init_args``); None when it cannot be built or read."""
    try:
        dataset = instantiate_class((), data).dataset("val")
        items = [dataset[i] for i in range(min(count, len(dataset)))]
    except (ValueError, OSError, TypeError, KeyError, ImportError, AttributeError):
        return None
    images = [item[0] for item in items if item is not None]
    return torch.stack(images) if images else None


def attention_entropy(checkpoint: Path | None, images: torch.Tensor | None) -> float:
    """Mean normalised attention entropy over the blocks of ``checkpoint`` on ``images``; NaN when either is missing,
    the checkpoint does not load or the network has no split attention (radix 0)."""
    if checkpoint is None or images is None:
        return math.nan
    try:
        trained = load_trained(checkpoint)
    except (ValueError, OSError):  # a damaged checkpoint leaves the column blank, not the report unwritten
        return math.nan
    if trained.model.cfg.radix < 1:
        return math.nan
    batch = normalize(images, trained.settings["mean"], trained.settings["std"])
    return float(record_attention(trained.model, [(batch, None)]).blocks["norm_entropy"].mean())


def attention_entropies(folders: list[Path], data: dict) -> list[float]:
    """:func:`attention_entropy` of each run folder's checkpoint on the validation sample of ``data``; the data
    module is built only when a run has a checkpoint."""
    checkpoints = [run_checkpoint(folder) for folder in folders]
    images = validation_sample(data) if any(checkpoints) else None
    return [attention_entropy(checkpoint, images) for checkpoint in checkpoints]


def aggregate(cells: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: its description and costs (``cells``) with the mean and sample std over seeds of the
    best and final ``val/acc1`` (fractions, as logged), the mean attention entropy and the runs' peak RSS."""
    runs = runs.reindex(columns=RUN_COLUMNS)
    stats = runs.groupby("cell").agg(
        seeds=("seed", "count"),
        best_val_acc1_mean=(ACC, "mean"),
        best_val_acc1_std=(ACC, "std"),
        final_val_acc1_mean=("final_val_acc1", "mean"),
        final_val_acc1_std=("final_val_acc1", "std"),
        epochs=("epochs", "max"),
        wall_s_mean=("wall_s", "mean"),
        peak_rss_mib=("peak_rss_mib", "max"),
        attention_entropy_mean=(ENTROPY, "mean"),
    )
    results = cells.merge(stats, left_on="cell", right_index=True, how="left")
    results["seeds"] = results["seeds"].fillna(0).astype(int)
    return results


def _percent(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.2f}" if math.isnan(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _entropy(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"


def markdown_table(results: pd.DataFrame) -> str:
    """The paper's layout (setting, params, GMACs, top-1 mean ± std over seeds) plus this machine's costs and the
    mean normalised attention entropy (blank when not measured). Peak memory is the train step's CUDA peak when
    timed on a GPU, else the runs' peak RSS."""
    lines = [
        "| setting | params | GMACs | top-1 best (%) | top-1 final (%) | train img/s | infer img/s | peak mem (MiB) "
        "| seeds | attn. entropy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results.itertuples(index=False):
        memory = row.cuda_peak_mib if not math.isnan(row.cuda_peak_mib) else row.peak_rss_mib
        lines.append(
            f"| {row.cell} | {row.params / 1e6:.2f}M | {row.gmacs:.3g} "
            f"| {_percent(row.best_val_acc1_mean, row.best_val_acc1_std)} "
            f"| {_percent(row.final_val_acc1_mean, row.final_val_acc1_std)} "
            f"| {row.train_img_s:.0f} | {row.infer_img_s:.0f} | {memory:.0f} | {row.seeds} "
            f"| {_entropy(getattr(row, 'attention_entropy_mean', math.nan))} |"
        )
    return "\n".join(lines)


def _series(results: pd.DataFrame) -> DataFrameGroupBy:
    """Cells grouped into lines: same cardinality, width and other varied options, radix along the line."""
    frame = results.assign(extra=results["extra"].astype("string").fillna(""))  # empty in a CSV reads as NaN
    return frame.groupby(["cardinality", "bottleneck_width", "extra"], sort=True)


def _label(cardinality: int, width: int, extra: str) -> str:
    return f"{cardinality}x{width}d" + (f" {extra}" if extra else "")


def accuracy_vs_radix(results: pd.DataFrame) -> Figure:
    """Best ``val/acc1`` (mean ± std over seeds) against radix, one line per cardinality (and width)."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for (cardinality, width, extra), group in _series(results):
        group = group.sort_values("radix")
        ax.errorbar(
            group["radix"],
            100 * group["best_val_acc1_mean"],
            yerr=100 * group["best_val_acc1_std"].fillna(0),
            marker="o",
            capsize=3,
            label=_label(cardinality, width, extra),
        )
    ax.set_xticks(sorted(results["radix"].unique()))
    ax.set_xlabel("radix R (0 = no split attention)")
    ax.set_ylabel("best val top-1 (%)")
    ax.set_title("Accuracy vs radix")
    ax.legend(title="cardinality x width")
    ax.grid(alpha=0.3)
    return fig


def accuracy_vs_gmacs(results: pd.DataFrame) -> Figure:
    """Best ``val/acc1`` (mean ± std over seeds) against GMACs per image: colour for the cardinality and width,
    marker shape for the radix (cells of equal cost often coincide, so no text labels)."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    radices = sorted(results["radix"].unique())
    markers = {radix: MARKERS[i % len(MARKERS)] for i, radix in enumerate(radices)}
    handles = []
    for i, ((cardinality, width, extra), group) in enumerate(_series(results)):
        color = f"C{i}"
        for row in group.itertuples(index=False):
            ax.errorbar(
                row.gmacs,
                100 * row.best_val_acc1_mean,
                yerr=0 if math.isnan(row.best_val_acc1_std) else 100 * row.best_val_acc1_std,
                fmt=markers[row.radix],
                color=color,
                capsize=3,
            )
        handles.append(Line2D([], [], color=color, marker="o", linestyle="", label=_label(cardinality, width, extra)))
    handles += [Line2D([], [], color="gray", marker=markers[r], linestyle="", label=f"R={r}") for r in radices]
    ax.set_xlabel("GMACs per image")
    ax.set_ylabel("best val top-1 (%)")
    ax.set_title("Accuracy vs compute")
    ax.legend(handles=handles, fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def write_report(results: pd.DataFrame, runs: pd.DataFrame, folder: Path, title: str, notes: list[str]) -> list[Path]:
    """``results.csv`` (per cell), ``runs.csv`` (per cell-seed), ``results.md`` and the two plots."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "results": folder / "results.csv",
        "runs": folder / "runs.csv",
        "table": folder / "results.md",
        "radix": folder / "accuracy_vs_radix.png",
        "gmacs": folder / "accuracy_vs_gmacs.png",
    }
    results.to_csv(paths["results"], index=False)
    runs.reindex(columns=RUN_COLUMNS).to_csv(paths["runs"], index=False)
    body = "\n".join([f"# {title}", "", *notes, "", markdown_table(results), ""])
    paths["table"].write_text(body)
    accuracy_vs_radix(results).savefig(paths["radix"], dpi=120)
    accuracy_vs_gmacs(results).savefig(paths["gmacs"], dpi=120)
    return list(paths.values())
