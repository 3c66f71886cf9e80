"""Streaming shards: ``python -m resnest_pl.data.shard --root <image folder> --out <dir>``.

Reading 1.28 M small JPEG files from a shared file system does not scale to many nodes: every epoch is millions
of metadata lookups and small random reads. The converter packs a class-folder data set into a few hundred
large, immutable chunk files per split that nodes read sequentially (or stream from object storage), and
:class:`~resnest_pl.data.sharded.ShardedDataModule` trains from them.

The format is Lightning's ``litdata`` (its ``Cache`` writer and ``StreamingDataset`` reader), chosen over
``webdataset`` after trying both offline on local folders:

- DDP: ``litdata`` assigns every rank the same whole number of batches from one shuffled order (chunks shuffled,
  then the items inside each chunk), so each sample is seen at most once per epoch across all ranks and workers,
  and exactly once but for fewer than ``world_size x batch_size`` samples left at the epoch's end (different ones
  each epoch). ``webdataset`` splits whole tar shards over nodes and workers (``split_by_node`` /
  ``split_by_worker``); ranks then get unequal numbers of samples, and the documented DDP recipe is resampling
  shards with ``with_epoch(n)``, which repeats and skips samples within an epoch.
- Resume: ``litdata``'s position is a function of (seed, epoch, samples yielded, workers, batch size, ranks),
  which the data module rebuilds from the batches the fit loop processed: a resumed run continues with the very
  next batch. ``webdataset`` has no mid-epoch position to restore.
- Indexing: ``litdata`` keeps a global index per sample, which seeds its augmentations exactly as the file-based
  modules do (same order of files, same ``(seed, epoch, index)`` seeds), and reads any sample by index.
- Both read local folders offline and ``s3://`` / ``gs://`` URLs; ``litdata`` caches remote chunks locally.

Layout written into ``--out``: ``train/``, ``val/`` (and ``test/`` when the source has one), each a ``litdata``
folder of ``chunk-*.bin`` files plus ``index.json``, and ``meta.json`` holding the class names and the number of
samples per split. Each sample is ``{"index", "target", "path", "image"}``: its position in the split, its class
index, its path relative to ``--root`` (to name it in warnings) and the file's original bytes, not re-encoded.
Splits, sample order and class indices are :class:`~resnest_pl.data.ImageFolderDataModule`'s for the same folder
(the ImageNet layout included: sorted ``train/`` class folders), so the shards hold what the file-based modules
read, in the same order.

A conversion writes into ``<out>.partial/`` and renames it to ``<out>`` once everything, ``meta.json`` last, is
written: an interrupted run never leaves a folder that loads as complete; the next run deletes the partial one
and starts again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..errors import user_errors
from .errors import DatasetNotFoundError
from .image_folder import ImageFolderDataModule

logger = logging.getLogger(__name__)

FORMAT = "resnest_pl-shards"
VERSION = 1
META_NAME = "meta.json"
PARTIAL_SUFFIX = ".partial"
DEFAULT_CHUNK_BYTES = "64MB"
_READ_AHEAD = 256  # files read concurrently ahead of the writer: a shared file system's latency, hidden


def read_bytes(path: str) -> bytes:
    """The file's bytes; empty when it cannot be read, which the reader then treats as an unreadable image."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as err:
        logger.warning("cannot read %s (%s); stored as an unreadable image", path, err)
        return b""


def _read_in_order(files: Sequence[str], threads: int) -> Iterator[bytes]:
    """The files' bytes in order, read by ``threads`` threads up to ``_READ_AHEAD`` files ahead of the caller."""
    with ThreadPoolExecutor(threads) as pool:
        pending: deque[Future[bytes]] = deque()
        for path in files:
            pending.append(pool.submit(read_bytes, path))
            if len(pending) >= _READ_AHEAD:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def write_split(
    files: Sequence[str], targets: Sequence[int], root: Path, out: Path, chunk_bytes: str, threads: int, name: str
) -> int:
    """Write one split's samples, in order, as a ``litdata`` folder ``out``; returns the number of samples."""
    from litdata.streaming import Cache

    cache = Cache(str(out), chunk_bytes=chunk_bytes)
    progress = tqdm(total=len(files), desc=name, unit="img", unit_scale=True, file=sys.stderr)
    with progress:
        for index, (path, target, data) in enumerate(zip(files, targets, _read_in_order(files, threads), strict=True)):
            relative = os.path.relpath(path, root)
            cache[index] = {"index": index, "target": int(target), "path": relative, "image": data}
            progress.update()
    cache.done()
    cache.merge()
    return len(files)


def convert(
    root: str | Path,
    out: str | Path,
    val_fraction: float = 0.2,
    seed: int = 0,
    chunk_bytes: str = DEFAULT_CHUNK_BYTES,
    threads: int = 16,
) -> Path:
    """Convert the class-folder data set at ``root`` into shards at ``out`` (see the module docstring).

    Args:
        root: ``root/train/<class>/`` + ``root/val/<class>/`` (+ ``test/``), or a single class tree, split into
            train and val by ``val_fraction`` and ``seed`` as ImageFolderDataModule does.
        out: the folder to create; it must not exist.
        val_fraction: share of each class held out for val when there is no ``val/`` folder.
        seed: seed of that split.
        chunk_bytes: the size of one chunk file, e.g. ``"64MB"``.
        threads: files read concurrently.

    Raises:
        DatasetNotFoundError, DataLayoutError: ``root`` is missing or not a class-folder data set.
        ValueError: ``out`` exists already.
    """
    root, out = Path(root), Path(out)
    if out.exists():
        raise ValueError(f"{out} exists already; remove it or choose another --out")
    # Scanning, layouts, class order and errors are the file-based module's.
    folder = ImageFolderDataModule(str(root), val_fraction=val_fraction, seed=seed)
    splits = ["train", "val"] + (["test"] if folder.test_dir is not None else [])
    if folder.val_dir is None and val_fraction == 0:
        splits = ["train"]
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    if partial.exists():
        logger.warning("removing %s, left by an interrupted conversion", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    counts = {}
    for split in splits:
        files, targets = folder.files(split)  # type: ignore[arg-type]
        counts[split] = write_split(files, targets, root, partial / split, chunk_bytes, threads, split)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "class_names": folder.class_names,
        "num_samples": counts,
        "source": str(root.resolve()),
    }
    (partial / META_NAME).write_text(json.dumps(meta, indent=1))
    partial.rename(out)
    return out


def read_meta(root: str) -> dict[str, Any]:
    """The metadata of the shards at ``root`` (a folder or an ``s3://`` / ``gs://`` URL); only complete sets have it."""
    if "://" not in root:
        path = Path(root) / META_NAME
        if not path.is_file():
            partial = Path(root.rstrip("/") + PARTIAL_SUFFIX)
            reason = (
                f"{partial} is an interrupted conversion; run the converter again"
                if partial.exists()
                else "convert an image folder first"
            )
            raise DatasetNotFoundError(
                f"no shards at {root} ({META_NAME} missing): {reason}: "
                f"python -m resnest_pl.data.shard --root <image folder> --out {root}"
            )
        meta = json.loads(path.read_text())
    else:
        meta = _read_remote_meta(root)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DatasetNotFoundError(f"{root}/{META_NAME} is not {FORMAT} version {VERSION}: {meta.get('format')!r}")
    return meta


def _read_remote_meta(root: str) -> dict[str, Any]:
    import tempfile

    from litdata.streaming.fs_provider import _get_fs_provider  # what litdata fetches its own index.json with

    url = f"{root.rstrip('/')}/{META_NAME}"
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, META_NAME)
        try:
            _get_fs_provider(url).download_file(url, local)
        except Exception as err:
            raise DatasetNotFoundError(f"cannot read {url} ({err}); is {root} a converted shard set?") from err
        with open(local) as handle:
            return json.load(handle)


def main(args: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m resnest_pl.data.shard", description=__doc__.split("\n\n")[0])
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
