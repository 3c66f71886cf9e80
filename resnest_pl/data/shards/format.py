"""The shards' format: what the converter (:mod:`.write`) writes and the data module (:mod:`.datamodule`) reads.

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

import json
import os
from pathlib import Path
from typing import Any

from ..errors import DatasetNotFoundError

FORMAT = "resnest_pl-shards"
VERSION = 1
META_NAME = "meta.json"
PARTIAL_SUFFIX = ".partial"


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
                f"python -m resnest_pl.data.shards --root <image folder> --out {root}"
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
