"""Batch Mixup / CutMix: pairing with the reversed batch, soft targets, label smoothing, probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resnest_pl.training.mixing import BatchMixer, smooth_one_hot

CLASSES = 4


def constant_batch(size: int = 4, height: int = 8, width: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with the value i + 1 and has class i % CLASSES, so every pixel tells its source."""
    images = torch.arange(1, size + 1, dtype=torch.float32).view(size, 1, 1, 1).expand(size, 3, height, width)
    return images.contiguous(), torch.arange(size) % CLASSES


def own_weight(soft: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return soft.gather(1, targets[:, None]).squeeze(1)


def test_smooth_one_hot_matches_cross_entropy_smoothing() -> None:
    targets = torch.tensor([0, 3, 1])
    soft = smooth_one_hot(targets, CLASSES, 0.1)
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(3))
    assert soft[0, 0] == pytest.approx(0.9 + 0.1 / CLASSES) and soft[0, 1] == pytest.approx(0.1 / CLASSES)
    logits = torch.randn(3, CLASSES)
    torch.testing.assert_close(F.cross_entropy(logits, soft), F.cross_entropy(logits, targets, label_smoothing=0.1))


def test_mixup_blends_each_image_with_its_reversed_partner() -> None:
    images, targets = constant_batch()
    mixed, soft = BatchMixer(CLASSES, mixup_alpha=0.2)(images, targets, np.random.default_rng(0))
    lam = own_weight(soft, targets)[0].item()
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))
    expected = lam * F.one_hot(targets, CLASSES) + (1 - lam) * F.one_hot(targets.flip(0), CLASSES)
    torch.testing.assert_close(soft, expected.float())
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(4))


def test_mixup_lambda_follows_beta_alpha_alpha() -> None:
    images, targets = constant_batch(size=2)
    mixer = BatchMixer(CLASSES, mixup_alpha=0.2)
    rng = np.random.default_rng(1)
    lams = np.array([own_weight(mixer(images, targets, rng)[1], targets)[0].item() for _ in range(2000)])
    # Beta(0.2, 0.2): mean 1/2, variance a^2 / ((2a)^2 (2a + 1)) = 0.1786; mostly near 0 or 1.
    assert lams.mean() == pytest.approx(0.5, abs=0.03)
    assert lams.var() == pytest.approx(0.1786, abs=0.01)


def test_cutmix_pastes_a_box_and_weights_targets_by_its_area() -> None:
    images, targets = constant_batch(size=4, height=16, width=12)
    mixer = BatchMixer(CLASSES, cutmix_alpha=1.0)
    rng = np.random.default_rng(0)
    for _ in range(50):  # boxes of many sizes, some clipped at the border
        mixed, soft = mixer(images, targets, rng)
        from_partner = mixed != images
        torch.testing.assert_close(mixed[from_partner], images.flip(0)[from_partner])
        # One rectangle, at the same place in every image.
        box = from_partner[0, 0]
        assert torch.equal(from_partner, box.expand_as(from_partner))
        rows, cols = box.any(dim=1).nonzero(), box.any(dim=0).nonzero()
        if box.any():
            assert box.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        lam = own_weight(soft, targets)
        torch.testing.assert_close(lam, torch.full((4,), 1 - box.float().mean().item()))
        torch.testing.assert_close(soft.sum(dim=1), torch.ones(4))


def test_label_smoothing_is_folded_into_mixed_targets() -> None:
    images, targets = constant_batch()
    mixed, soft = BatchMixer(CLASSES, mixup_alpha=0.2, label_smoothing=0.1)(images, targets, np.random.default_rng(0))
    raw_lam = own_weight(soft, targets)[0].item() - 0.1 / CLASSES
    lam = raw_lam / 0.9
    smooth = smooth_one_hot(targets, CLASSES, 0.1)
    torch.testing.assert_close(soft, lam * smooth + (1 - lam) * smooth.flip(0))
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))
    assert soft.min() >= 0.1 / CLASSES - 1e-7
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(4))


def test_switch_prob_chooses_between_cutmix_and_mixup() -> None:
    images, targets = constant_batch()
    rng = np.random.default_rng(0)
    for _ in range(20):
        cut, _ = BatchMixer(CLASSES, mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=1.0)(images, targets, rng)
        assert torch.all((cut == images) | (cut == images.flip(0)))  # pasted, never blended
        mixed, soft = BatchMixer(CLASSES, mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.0)(images, targets, rng)
        lam = own_weight(soft, targets)[0].item()
        torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))


def test_mix_prob_and_disabled_mixer_leave_batches_unmixed() -> None:
    images, targets = constant_batch()
    for mixer in [BatchMixer(CLASSES, mixup_alpha=0.2, prob=0.0), BatchMixer(CLASSES, label_smoothing=0.1)]:
        mixed, soft = mixer(images, targets, np.random.default_rng(0))
        assert torch.equal(mixed, images)
        torch.testing.assert_close(soft, smooth_one_hot(targets, CLASSES, mixer.label_smoothing))
    assert not BatchMixer(CLASSES).enabled

    half = BatchMixer(CLASSES, mixup_alpha=1.0, prob=0.5)
    rng = np.random.default_rng(0)
    mixed_count = sum(not torch.equal(half(images, targets, rng)[0], images) for _ in range(400))
    assert 160 < mixed_count < 240


def test_odd_batch_middle_sample_pairs_with_itself() -> None:
    images, targets = constant_batch(size=5)
    mixed, soft = BatchMixer(CLASSES, mixup_alpha=0.2)(images, targets, np.random.default_rng(3))
    torch.testing.assert_close(mixed[2], images[2])
    torch.testing.assert_close(soft[2], F.one_hot(targets[2], CLASSES).float())


def test_same_seed_same_mix() -> None:
    images, targets = constant_batch()
    mixer = BatchMixer(CLASSES, mixup_alpha=0.2, cutmix_alpha=1.0)
    first = mixer(images, targets, np.random.default_rng([7, 0, 3]))
    second = mixer(images, targets, np.random.default_rng([7, 0, 3]))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mixup_alpha": -1.0}, "mixup_alpha"),
        ({"prob": 1.5}, "prob"),
        ({"switch_prob": -0.1}, "switch_prob"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_invalid_settings_are_rejected(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchMixer(CLASSES, **options)
