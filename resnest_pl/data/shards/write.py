"""The converter: a class-folder data set into shards (:mod:`.format` describes them)."""

from __future__ import annotations

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

from ..image_folder import ImageFolderDataModule
from .format import FORMAT, META_NAME, PARTIAL_SUFFIX, VERSION

logger = logging.getLogger(__name__)

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
    """Convert the class-folder data set at ``root`` into shards at ``out`` (see :mod:`.format`).

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
