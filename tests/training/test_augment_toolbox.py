"""The data-side training switches: random erasing, TrivialAugment and RandAugment's settings, repeated augmentation."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from jsonargparse import Namespace
from torch import nn
from torchvision.transforms import v2

from resnest_pl.data import ArrayDataset, DigitsDataModule, ImageFolderDataModule, imagenet_train_transform
from resnest_pl.data.repeated import RepeatedAugmentationSampler
from resnest_pl.data.resumable import ResumableSampler, SeededSamples, sample_seed
from resnest_pl.data.transforms import TorchvisionAugment
from resnest_pl.models.config import ResNeStConfig
from resnest_pl.training.erasing import RandomErasing
from resnest_pl.training.module import ResNeStClassifier

from ..fixtures import write_jpeg_tree
from ..helpers import CONFIGS, QUICK, ROOT, TINY, markdown_table, parsed_config, run_cli

# ---- random erasing ------------------------------------------------------------------------------------------


def erased_masks(eraser: RandomErasing, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Where ``eraser`` changed ``images`` (boolean, per pixel and channel)."""
    return eraser(images, np.random.default_rng(seed)) != images


def test_every_image_gets_its_own_box_with_probability_one() -> None:
    images = torch.ones(16, 3, 32, 32)
    changed = erased_masks(RandomErasing(1.0, "const"), images)
    assert changed.flatten(1).any(dim=1).all()  # every image erased
    assert changed.any(dim=1).flatten(1).unique(dim=0).shape[0] == 16  # sixteen different boxes
    assert torch.equal(changed[:, 0], changed[:, 2])  # one box through all channels


def test_probability_zero_changes_nothing_and_a_fraction_erases_about_that_share() -> None:
    images = torch.randn(400, 3, 16, 16)
    off = RandomErasing(0.0)
    assert not off.enabled and torch.equal(off(images, np.random.default_rng(0)), images)
    share = erased_masks(RandomErasing(0.25, "pixel"), images).flatten(1).any(dim=1).float().mean().item()
    assert 0.18 < share < 0.32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fill_modes_and_dtype(dtype: torch.dtype) -> None:
    images = torch.full((32, 3, 24, 24), 5.0, dtype=dtype)
    const = RandomErasing(1.0, "const")(images, np.random.default_rng(0))
    rand = RandomErasing(1.0, "rand")(images, np.random.default_rng(0))
    pixel = RandomErasing(1.0, "pixel")(images, np.random.default_rng(0))
    assert const.dtype == rand.dtype == pixel.dtype == dtype
    assert set(const.unique().tolist()) == {0.0, 5.0}  # zeros: the data mean once normalised
    for image in rand:  # one colour per box and channel, drawn from N(0, 1)
        box = image[0] != 5.0
        assert box.any() and all(len(channel[box].unique()) == 1 for channel in image)
    noise = pixel[pixel != 5.0].float()
    assert noise.numel() > 1000 and len(noise.unique()) > 500  # per-pixel noise (bfloat16 has few values)
    assert abs(noise.mean().item()) < 0.1 and 0.9 < noise.std().item() < 1.1


def test_box_areas_aspects_and_counts_follow_timm() -> None:
    boxes = RandomErasing(1.0, max_count=1).boxes(4000, 224, 224, np.random.default_rng(0))[:, 0]
    area = boxes[:, 2] * boxes[:, 3] / 224**2
    aspect = boxes[:, 2] / boxes[:, 3]
    assert area.min() > 0.019 and area.max() < 0.34 and abs(area.mean() - (0.02 + 1 / 3) / 2) < 0.01
    assert 0.29 < aspect.min() < 0.4 and 2.5 < aspect.max() < 3.5
    assert (boxes[:, 0] + boxes[:, 2] <= 224).all() and (boxes[:, 1] + boxes[:, 3] <= 224).all()
    several = RandomErasing(1.0, max_count=3).boxes(3000, 224, 224, np.random.default_rng(1))
    per_image = (several[..., 2] > 0).sum(axis=1)
    assert set(per_image.tolist()) == {1, 2, 3}  # between 1 and erase_count boxes
    area_of_three = (several[..., 2] * several[..., 3])[per_image == 3].sum(axis=1) / 224**2
    assert abs(area_of_three.mean() - (0.02 + 1 / 3) / 2) < 0.02  # the boxes share the erased area


def test_same_seed_same_erasing() -> None:
    images = torch.randn(8, 3, 16, 16)
    eraser = RandomErasing(0.5, "pixel", 2)
    first, again = (eraser(images, np.random.default_rng(3)) for _ in range(2))
    assert torch.equal(first, again) and not torch.equal(first, eraser(images, np.random.default_rng(4)))


class Recorder(nn.Module):
    """Stands in for the backbone and keeps the images it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(10))
        self.seen: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.clone())
        return self.weight.expand(images.shape[0], -1)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_module_erases_training_batches_only() -> None:
    module = ResNeStClassifier("resnest14d", num_classes=10, model_overrides=TINY, erase_prob=1.0, erase_mode="const")
    module.model = Recorder()
    images, targets = torch.full((4, 3, 16, 16), 2.0), torch.arange(4)
    module.training_step((images, targets), 0)
    module.validation_step((images, targets), 0)
    module.test_step((images, targets), 0)
    module.predict_step((images, targets), 0)
    trained, *evaluated = module.model.seen
    assert (trained == 0).flatten(1).any(dim=1).all()
    assert all(torch.equal(seen, images) for seen in evaluated)


# ---- TrivialAugment and RandAugment ----------------------------------------------------------------------------


def random_pixels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)


def adapter(transform) -> TorchvisionAugment:
    (step,) = [t for t in transform.pipeline.transforms if isinstance(t, TorchvisionAugment)]
    return step


def test_trivialaugment_changes_images_and_is_seeded() -> None:
    augment = adapter(imagenet_train_transform(32, auto_augment="trivialaugment")).augment
    assert isinstance(augment, v2.TrivialAugmentWide)
    image = torch.from_numpy(random_pixels()).permute(2, 0, 1)
    outputs = []
    for seed in range(8):
        torch.manual_seed(seed)
        outputs.append(augment(image))
    assert sum(not torch.equal(out, image) for out in outputs) >= 6  # Identity is one op of 14
    torch.manual_seed(5)
    assert torch.equal(augment(image), outputs[5])
    transform = imagenet_train_transform(32, auto_augment="trivialaugment")
    transform.reseed(11)
    first = transform(random_pixels())[0]
    transform.reseed(11)
    assert torch.equal(transform(random_pixels())[0], first)


def test_randaugment_ops_and_magnitude_reach_torchvision(tmp_path: Path) -> None:
    augment = adapter(imagenet_train_transform(32, "randaugment", randaugment_ops=3, randaugment_magnitude=27)).augment
    assert isinstance(augment, v2.RandAugment) and (augment.num_ops, augment.magnitude) == (3, 27)
    root = write_jpeg_tree(tmp_path / "tree", {"train": 1, "val": 1})
    data = ImageFolderDataModule(str(root), auto_augment="randaugment", randaugment_ops=1, randaugment_magnitude=0)
    augment = adapter(data.train_transform()).augment
    assert (augment.num_ops, augment.magnitude) == (1, 0)
    image = torch.from_numpy(random_pixels()).permute(2, 0, 1)
    # Magnitude 0 leaves only the ops without a strength that change pixels (equalise, autocontrast, invert...).
    changed = 0
    for seed in range(40):
        torch.manual_seed(seed)
        changed += not torch.equal(augment(image), image)
    assert 0 < changed < 40


# ---- repeated augmentation ---------------------------------------------------------------------------------------


def keys(sampler: ResumableSampler) -> list[tuple[int, int, int]]:
    return list(iter(sampler))


def test_repeated_copies_are_dealt_to_different_ranks() -> None:
    dataset = list(range(600))
    ranks = [RepeatedAugmentationSampler(dataset, num_replicas=2, rank=r, seed=4, repeats=2) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(3)
    orders = [sampler.order() for sampler in ranks]
    assert [len(order) for order in orders] == [256, 256] == [len(sampler) for sampler in ranks]  # 600 // 256 * 256 / 2
    assert not set(orders[0]) & set(orders[1])  # no (index, repeat) on both ranks
    counts = Counter(index for order in orders for index, _ in order)
    assert set(counts.values()) == {2} and len(counts) == 256  # 256 images, each shown twice
    assert all(counts[index] == 2 for index, _ in orders[0])
    rank_of = {copy: r for r, order in enumerate(orders) for copy in order}
    assert all(rank_of[(index, 0)] != rank_of[(index, 1)] for index in counts)  # the two copies on two processes
    seeds = {(index, seed) for sampler in ranks for index, seed, epoch in keys(sampler)}
    expected = {(index, sample_seed(4, 3, index, repeat)) for order in orders for index, repeat in order}
    assert seeds == expected and len(seeds) == 512  # every copy its own augmentation seed
    assert sample_seed(4, 3, 7, 0) == sample_seed(4, 3, 7)  # copy 0: the image's seed without repetition


def test_repeated_sampler_on_a_small_set_and_resume() -> None:
    sampler = RepeatedAugmentationSampler(list(range(10)), num_replicas=2, rank=1, seed=0, repeats=3)
    assert len(sampler) == 5  # timm's ceil(N / ranks) below 256 images
    sampler.set_epoch(1)
    full = keys(sampler)
    assert len(full) == 5 and keys(sampler) == full  # the order is a function of (seed, epoch)
    sampler.resume_at(1, 2)
    assert keys(sampler) == full[2:]
    assert keys(sampler) == full  # skips once
    sampler.set_epoch(2)
    assert keys(sampler) != full
    with pytest.raises(ValueError, match="repeats >= 2"):
        RepeatedAugmentationSampler(list(range(10)), repeats=1)


def test_copies_of_one_image_get_different_crops() -> None:
    images = np.stack([random_pixels(seed) for seed in range(4)])
    dataset = ArrayDataset(images, [0, 1, 2, 3], imagenet_train_transform(24, color_jitter=0.0, lighting=0.0))
    sampler = RepeatedAugmentationSampler(dataset, seed=1, repeats=2)
    samples = SeededSamples(dataset)
    pairs = list(iter(sampler))
    assert [key[0] for key in pairs[::2]] == [key[0] for key in pairs[1::2]]  # copies side by side with one process
    for first, second in zip(pairs[::2], pairs[1::2], strict=True):
        assert not torch.equal(samples[first][0], samples[second][0])
        assert torch.equal(samples[first][0], samples[first][0])  # each copy reproducible from its key


def test_data_module_uses_the_repeated_sampler() -> None:
    plain = DigitsDataModule(batch_size=64).train_dataloader()
    repeated = DigitsDataModule(batch_size=64, aug_repeats=3).train_dataloader()
    assert type(plain.sampler) is ResumableSampler and len(plain) == 1437 // 64
    assert isinstance(repeated.sampler, RepeatedAugmentationSampler) and repeated.sampler.repeats == 3
    assert len(repeated) == 1280 // 64  # 1437 images rounded down to a multiple of 256


# ---- the documented switch table (docs/training.md) ----------------------------------------------------------------


def test_every_switch_of_the_documented_table_is_a_config_key() -> None:
    rows = markdown_table((ROOT / "docs" / "training.md").read_text(), "| switch (CLI key) |")
    keys = [row["switch (CLI key)"].strip("`") for row in rows]
    assert {"model.erase_prob", "model.erase_mode", "model.erase_count", "data.aug_repeats"} <= set(keys)
    assert {"data.auto_augment", "data.randaugment_ops", "data.randaugment_magnitude"} <= set(keys)
    config = parsed_config("--config", str(CONFIGS / "imagenet" / "resnest50.yaml"))
    overrides = {field.name for field in dataclasses.fields(ResNeStConfig)}
    for key in keys:
        parts = key.split(".")
        if parts[:2] == ["model", "model_overrides"]:
            assert parts[2] in overrides, key
            continue
        node = config
        for part in parts:
            if isinstance(node, Namespace) and part not in node and "init_args" in node:
                node = node.init_args  # a class's arguments: data.batch_size, model.optimizer.lr
            assert isinstance(node, Namespace) and part in node, key
            node = node[part]


# ---- bad values through the CLI ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.erase_prob", "1.5"], "error: erase_prob must lie in [0, 1] (0 = off), got 1.5"),
        (["--model.erase_count", "0"], "error: erase_count must be at least 1"),
        (["--data.aug_repeats", "0"], "error: aug_repeats must be 1 (off) or more"),
        (["--data.randaugment_magnitude", "31"], "error: randaugment_magnitude must lie in 0..30"),
        (["--data.randaugment_ops", "0"], "error: randaugment_ops must be at least 1"),
        (["--data.aug_repeats", "2", "--data.init_args.root", "nowhere"], "error: aug_repeats=2: repeated"),
    ],
)
def test_bad_values_end_in_one_error_line(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    base = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), *QUICK]
    base += ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]
    if "--data.randaugment_magnitude" in args or "--data.randaugment_ops" in args:
        root = write_jpeg_tree(tmp_path / "tree", {"train": 1, "val": 1})
        base += ["--data", "resnest_pl.data.ImageFolderDataModule", "--data.root", str(root)]
    elif "--data.init_args.root" in args:
        base += ["--config", str(CONFIGS / "data" / "shards.yaml")]
    code, err = run_cli([*base, *args], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(message), err[-2000:]


def test_unknown_erase_mode_and_policy_are_refused(tmp_path: Path, capsys) -> None:
    base = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), *QUICK, "--trainer.logger", "false"]
    code, err = run_cli([*base, "--model.erase_mode", "noise"], capsys)
    assert code == 2 and "erase_mode" in err and "pixel" in err
    with pytest.raises(ValueError, match="auto_augment must be one of 'none', 'autoaugment', 'randaugment', 'triv"):
        imagenet_train_transform(32, auto_augment="augmix")


# ---- exact resume ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.proof
def test_resume_mid_epoch_is_exact_with_erasing_and_repeats(tmp_path: Path, capsys, monkeypatch) -> None:
    """A run that fails after step 3 of 6 and is resumed from its last checkpoint ends with the uninterrupted run's
    weights to the bit: the repeated sampler skips exactly the done batches and erasing draws from the step."""
    switches = ["--model.erase_prob", "0.5", "--model.erase_count", "2", "--data.aug_repeats", "2"]
    switches += ["--model.mixup_alpha", "0.2", "--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "2"]

    def fit(root: Path, *extra: str) -> list[str]:
        base = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), *QUICK, "--trainer.logger", "false"]
        return [*base, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(root), *switches, *extra]

    code, err = run_cli(fit(tmp_path / "full"), capsys)
    assert code == 0, err
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # FailOnFirstAttempt fails the first attempt only
    fail = ["--trainer.callbacks+=tests.interrupt.FailOnFirstAttempt", "--trainer.callbacks.step", "3"]
    with pytest.raises(RuntimeError, match="failure injected after step 3"):
        run_cli(fit(tmp_path / "failed", *fail), capsys)
    last = tmp_path / "failed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    code, err = run_cli(fit(tmp_path / "failed", "--ckpt_path", "last"), capsys)
    assert code == 0, err
    resumed = torch.load(last, weights_only=True)
    full = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == full["global_step"] == 6
    for key, value in full["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)
