"""What the data fingerprint of ``provenance.json`` costs on an ImageNet-sized listing.

Writes ``--files`` small files into ``--classes`` class folders of a temporary folder, then times, interleaved
over repetitions, the scan the image-folder data modules do anyway (``scan_class_folders``) and the split's
fingerprint (a ``stat`` per file and the hash of the sorted listing), and prints both with their ratio.

    python benchmarks/provenance_cost.py [--files 100000] [--classes 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from resnest_pl.data import ImageFileDataset, scan_class_folders
from resnest_pl.provenance import split_fingerprint


def write_listing(root: Path, files: int, classes: int) -> None:
    for k in range(classes):
        (root / f"n{k:08d}").mkdir()
    for i in range(files):
        (root / f"n{i % classes:08d}" / f"img_{i:07d}.JPEG").write_bytes(b"\xff\xd8" * (1 + i % 7))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_listing(root, args.files, args.classes)
        scans, fingerprints = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            files, targets = scan_class_folders(root)
            scans.append(time.perf_counter() - start)
            start = time.perf_counter()
            fingerprint = split_fingerprint(ImageFileDataset(files, targets, None))
            fingerprints.append(time.perf_counter() - start)
    assert fingerprint is not None and fingerprint["samples"] == args.files
    scan, cost = statistics.median(scans), statistics.median(fingerprints)
    print("| files | scan (s) | fingerprint (s) | fingerprint / scan |\n|---|---|---|---|")
    print(f"| {args.files:,} | {scan:.3f} | {cost:.3f} | {cost / scan:.2f} |")


if __name__ == "__main__":
    main()
