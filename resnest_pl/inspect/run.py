"""From a checkpoint or export and a folder of images to the inspection's tables and figures."""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from resnest_pl.inspect.figures import stage_figure
from resnest_pl.inspect.images import find_image_set, image_batches
from resnest_pl.inspect.loading import load_trained
from resnest_pl.inspect.record import AttentionStats, record_attention

BLOCKS_CSV = "attention.csv"
CLASSES_CSV = "attention_by_class.csv"


def attention_stats(
    source: str | PathLike, images: str | PathLike, batch_size: int = 64, max_images: int | None = None
) -> AttentionStats:
    """The split attention of the network in ``source`` (a ``.ckpt`` of a resnest_pl run or an export folder) on
    the images under ``images`` (sub-folders read as classes), prepared as the run's validation images were."""
    trained = load_trained(source)
    image_set = find_image_set(images, max_images)
    batches = image_batches(image_set, trained.settings, batch_size)
    return record_attention(trained.model, batches, image_set.classes)


def write_inspection(stats: AttentionStats, out: str | PathLike) -> list[Path]:
    """``attention.csv`` (per block), ``attention_by_class.csv`` (per block and class, when there are classes) and
    ``attention_stage<N>.png`` per stage into ``out``; returns the paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / BLOCKS_CSV]
    stats.blocks.to_csv(paths[0], index=False)
    if not stats.by_class.empty:
        paths.append(folder / CLASSES_CSV)
        stats.by_class.to_csv(paths[-1], index=False)
    for stage in sorted(stats.blocks["stage"].unique()):
        paths.append(folder / f"attention_stage{stage}.png")
        stage_figure(stats.blocks, stage).savefig(paths[-1], dpi=110)
    return paths
