"""Finding images on disk (class folders, predict paths) and the seeded stratified split."""

from pathlib import Path

import numpy as np
import pytest

from resnest_pl.data import DataLayoutError, DatasetNotFoundError, find_images, scan_class_folders, stratified_split


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded by the scanner")
    return path


def test_scan_sorted_classes_nested_files_and_targets(tmp_path):
    touch(tmp_path / "dog" / "b.jpg")
    touch(tmp_path / "dog" / "a.JPEG")
    touch(tmp_path / "cat" / "sub" / "c.png")
    touch(tmp_path / "cat" / "notes.txt")
    touch(tmp_path / "cat" / ".hidden.jpg")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    files, targets = scan_class_folders(tmp_path)
    names = [str(Path(f).relative_to(tmp_path)) for f in files]
    assert names == ["cat/sub/c.png", "dog/a.JPEG", "dog/b.jpg"]
    assert targets == [0, 1, 1]


def test_scan_uses_given_class_list_for_indices(tmp_path):
    touch(tmp_path / "dog" / "a.jpg")
    _, targets = scan_class_folders(tmp_path, classes=["cat", "dog", "emu"])
    assert targets == [1]


def test_scan_missing_root_names_path_and_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError, match="one sub-folder per class") as info:
        scan_class_folders(missing)
    assert str(missing) in str(info.value)


def test_scan_empty_class_folder_is_named(tmp_path):
    touch(tmp_path / "cat" / "a.jpg")
    (tmp_path / "dog").mkdir()
    touch(tmp_path / "dog" / "readme.txt")
    with pytest.raises(DataLayoutError, match="has no images") as info:
        scan_class_folders(tmp_path)
    assert str(tmp_path / "dog") in str(info.value)


def test_scan_folder_without_anything(tmp_path):
    with pytest.raises(DataLayoutError, match="no class folders and no images"):
        scan_class_folders(tmp_path)


def test_scan_flat_folder_says_so_with_hint(tmp_path):
    for i in range(3):
        touch(tmp_path / f"{i}.jpg")
    with pytest.raises(DataLayoutError, match=r"holds 3 images directly.*sort them please"):
        scan_class_folders(tmp_path, flat_hint="sort them please")


def test_scan_rejects_class_missing_from_class_list(tmp_path):
    touch(tmp_path / "cat" / "a.jpg")
    touch(tmp_path / "yak" / "a.jpg")
    with pytest.raises(DataLayoutError, match="yak"):
        scan_class_folders(tmp_path, classes=["cat", "dog"])


def test_find_images_folder_file_and_list(tmp_path):
    a = touch(tmp_path / "x" / "a.jpg")
    b = touch(tmp_path / "x" / "deeper" / "b.png")
    touch(tmp_path / "x" / "skip.txt")
    odd = touch(tmp_path / "named.explicitly")
    assert find_images(tmp_path / "x") == [str(a), str(b)]
    assert find_images(str(a)) == [str(a)]
    assert find_images([str(odd), str(tmp_path / "x")]) == [str(odd), str(a), str(b)]


def test_find_images_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        find_images(tmp_path / "missing")
    touch(tmp_path / "only.txt")
    with pytest.raises(DataLayoutError, match="no images"):
        find_images(tmp_path)
    with pytest.raises(DataLayoutError, match="no images"):
        find_images([])


def test_stratified_split_is_stratified_seeded_and_disjoint():
    targets = np.repeat(np.arange(4), [10, 20, 30, 40])
    train, val = stratified_split(targets, 0.2, seed=3)
    assert len(np.intersect1d(train, val)) == 0
    assert sorted(np.concatenate([train, val])) == list(range(100))
    assert np.bincount(targets[val]).tolist() == [2, 4, 6, 8]
    again_train, again_val = stratified_split(targets, 0.2, seed=3)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    _, other_val = stratified_split(targets, 0.2, seed=4)
    assert not np.array_equal(val, other_val)


def test_stratified_split_small_classes_keep_both_sides():
    targets = [0, 0, 1, 1, 1, 2]
    train, val = stratified_split(targets, 0.1, seed=0)
    assert sorted(np.asarray(targets)[val].tolist()) == [0, 1]  # one of each class with 2+ samples
    assert 5 in train  # the single sample of class 2 trains


def test_stratified_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split([0, 1], 1.0)
