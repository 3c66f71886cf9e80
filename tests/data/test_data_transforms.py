"""Transform pipelines: crop sizes, interpolation, augmentation choice, uint8 output, normalisation, lighting,
per-worker seeding."""

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from resnest_pl.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ArrayDataset,
    eval_transform,
    imagenet_train_transform,
    normalize,
    pad_crop_train_transform,
)
from resnest_pl.data.transforms import IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC, PCALighting, TorchvisionAugment


def photo(height: int = 375, width: int = 500, seed: int = 0) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def steps(transform) -> list:
    return list(transform.pipeline.transforms)


def find(transform, kind):
    return [t for t in steps(transform) if isinstance(t, kind)]


def test_train_and_eval_crops_differ_as_configured():
    image = photo()
    train, shift = imagenet_train_transform(224)(image)
    evaluated = eval_transform(256)(image)
    assert train.shape == (3, 224, 224) and train.dtype == torch.uint8
    assert shift.shape == (3,) and shift.dtype == torch.float32
    assert evaluated.shape == (3, 256, 256) and evaluated.dtype == torch.uint8


def test_bicubic_and_efficientnet_crop_from_320():
    (small_crop,) = find(imagenet_train_transform(224), A.RandomResizedCrop)
    (large_crop,) = find(imagenet_train_transform(320), A.RandomResizedCrop)
    assert small_crop.interpolation == cv2.INTER_LINEAR and tuple(small_crop.scale) == (0.08, 1.0)
    assert large_crop.interpolation == cv2.INTER_CUBIC and tuple(large_crop.scale) == (0.1, 1.0)
    assert large_crop.area_for_downscale == "image"


def test_eval_interpolation_is_chosen_not_tied_to_the_crop():
    (bicubic,) = find(eval_transform(256), A.SmallestMaxSize)
    (bilinear,) = find(eval_transform(320, interpolation="bilinear"), A.SmallestMaxSize)
    assert bicubic.interpolation == cv2.INTER_CUBIC and bicubic.max_size == 292
    assert bilinear.interpolation == cv2.INTER_LINEAR and bilinear.max_size == 365
    assert bicubic.area_for_downscale == "image"
    with pytest.raises(ValueError, match="interpolation must be one of 'bilinear', 'bicubic', got 'lanczos'"):
        eval_transform(224, interpolation="lanczos")


@pytest.mark.parametrize(("crop", "crop_pct", "resize"), [(224, 0.875, 256), (256, 256 / 288, 288), (416, 0.928, 448)])
def test_eval_resize_uses_crop_pct(crop, crop_pct, resize):
    (step,) = find(eval_transform(crop, crop_pct=crop_pct), A.SmallestMaxSize)
    assert step.max_size == resize
    assert eval_transform(crop, crop_pct=crop_pct)(photo()).shape == (3, crop, crop)


@pytest.mark.parametrize("crop_pct", [0.0, 1.5])
def test_impossible_crop_pct_is_explained(crop_pct):
    with pytest.raises(ValueError, match=rf"crop_pct must be in \(0, 1\], got {crop_pct}; it is the share"):
        eval_transform(224, crop_pct=crop_pct)


@pytest.mark.parametrize(
    ("name", "kind"), [("autoaugment", v2.AutoAugment), ("randaugment", v2.RandAugment), ("none", None)]
)
def test_auto_augment_is_selectable_and_runs_before_the_crop(name, kind):
    transform = imagenet_train_transform(64, auto_augment=name)
    adapters = find(transform, TorchvisionAugment)
    if kind is None:
        assert adapters == []
    else:
        (adapter,) = adapters
        assert isinstance(adapter.augment, kind)
        assert steps(transform).index(adapter) < steps(transform).index(find(transform, A.RandomResizedCrop)[0])
    assert transform(photo())[0].shape == (3, 64, 64)


def test_auto_augment_policy_and_randaugment_strength():
    (aa,) = find(imagenet_train_transform(64, auto_augment="autoaugment"), TorchvisionAugment)
    assert aa.augment.policy == v2.AutoAugmentPolicy.IMAGENET
    (ra,) = find(imagenet_train_transform(64, auto_augment="randaugment"), TorchvisionAugment)
    assert (ra.augment.num_ops, ra.augment.magnitude) == (2, 12)
    with pytest.raises(ValueError, match="auto_augment"):
        imagenet_train_transform(64, auto_augment="augmix")


def test_torchvision_adapter_maps_hwc_arrays_through_chw_tensors():
    image = photo(20, 30)
    out = TorchvisionAugment(lambda chw: 255 - chw)(image=image)["image"]
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out, 255 - image)


def test_eval_keeps_pixels_and_normalize_uses_mean_and_std():
    grey = np.full((300, 400, 3), 128, dtype=np.uint8)
    out = eval_transform(224)(grey)
    assert out.dtype == torch.uint8 and bool((out == 128).all())
    normalised = normalize(out[None], IMAGENET_MEAN, IMAGENET_STD)
    expected = (128 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert normalised.dtype == torch.float32
    assert torch.allclose(normalised[0, :, 100, 100], torch.tensor(expected, dtype=torch.float32), atol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        normalize(normalised, IMAGENET_MEAN, IMAGENET_STD)


# AlexNet's principal components of ImageNet's RGB pixels as fb.resnet.torch and the ResNeSt and GluonCV
# training scripts publish them: the eigenvectors are the columns.
PUBLISHED_EIGVAL = [0.2175, 0.0188, 0.0045]
PUBLISHED_EIGVEC = [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]


def test_pca_lighting_uses_the_published_components():
    assert IMAGENET_PCA_EIGVAL.tolist() == PUBLISHED_EIGVAL
    assert IMAGENET_PCA_EIGVEC.tolist() == PUBLISHED_EIGVEC
    lighting = PCALighting(alpha_std=0.1)
    for k in range(3):  # a weight on one component alone shifts the pixels along that column
        alpha = np.zeros(3)
        alpha[k] = 2.0
        lighting.params = {"alpha": alpha}
        expected = [2.0 * PUBLISHED_EIGVAL[k] * PUBLISHED_EIGVEC[channel][k] for channel in range(3)]
        assert lighting.pixel_shift().tolist() == pytest.approx(expected, abs=1e-7)
    # The first component, by far the largest, is brightness: nearly the same shift on R, G and B.
    lighting.params = {"alpha": np.array([1.0, 0.0, 0.0])}
    red, green, blue = lighting.pixel_shift().tolist()
    assert red < 0 and max(red, green, blue) - min(red, green, blue) < 0.05 * abs(red)
    alpha = np.array([0.3, -1.2, 0.7])  # and the weights add up, channel by channel
    lighting.params = {"alpha": alpha}
    expected = [sum(PUBLISHED_EIGVEC[c][k] * alpha[k] * PUBLISHED_EIGVAL[k] for k in range(3)) for c in range(3)]
    assert lighting.pixel_shift().tolist() == pytest.approx(expected, abs=1e-7)


def test_pca_lighting_is_drawn_in_the_loader_and_added_on_the_device():
    image = photo(40, 40)
    train = imagenet_train_transform(32, lighting=0.1)
    names = [type(t).__name__ for t in steps(train)]
    assert names[-2:] == ["PCALighting", "ToTensorV2"] and "Normalize" not in names
    (lighting,) = find(train, PCALighting)
    train.reseed(5)
    pixels, shift = train(image)
    alpha = lighting.params["alpha"]
    expected = IMAGENET_PCA_EIGVEC @ (alpha * IMAGENET_PCA_EIGVAL)
    assert np.allclose(shift.numpy(), expected, atol=1e-7) and np.abs(expected).max() > 1e-3
    assert lighting.apply(image, alpha=alpha) is image  # the uint8 image is left as it is
    # On the device: the shift in 0-1 pixel units, divided by std like the pixels.
    normalised = normalize(pixels[None], IMAGENET_MEAN, IMAGENET_STD, shift[None])
    plain = normalize(pixels[None], IMAGENET_MEAN, IMAGENET_STD)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(normalised[0] - plain[0], (shift.view(3, 1, 1) / std).expand(3, 32, 32))
    assert "PCALighting" not in [type(t).__name__ for t in steps(imagenet_train_transform(32, lighting=0))]
    assert isinstance(imagenet_train_transform(32, lighting=0)(image), torch.Tensor)


def test_pad_crop_shifts_without_flipping():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[10, 5] = 255
    transform = pad_crop_train_transform(32, padding=2, flip=False)
    torch.manual_seed(0)
    positions = set()
    for _ in range(60):
        out = transform(image)[0]
        row, col = np.unravel_index(int(out.argmax()), out.shape)
        positions.add((int(row), int(col)))
    rows, cols = zip(*positions, strict=True)
    assert len(positions) > 5  # it does shift
    assert max(abs(r - 10) for r in rows) <= 2 and max(abs(c - 5) for c in cols) <= 2  # only a little, no mirror


def test_main_process_augmentations_follow_torch_seed():
    image = photo()

    def run(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)  # what seed_everything does before a run builds its data
        transform = imagenet_train_transform(32)
        return [torch.cat([pixels.flatten().float(), shift]) for pixels, shift in (transform(image) for _ in range(3))]

    first, again, other = run(1), run(1), run(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[0], other[0])


def test_workers_do_not_replay_the_same_augmentations():
    image = photo(32, 32)
    dataset = ArrayDataset(np.stack([image] * 8), [0] * 8, pad_crop_train_transform(32, padding=4))
    loader = DataLoader(dataset, batch_size=4, num_workers=2)  # worker 0 yields batch 0, worker 1 batch 1
    first, second = (images for images, _ in loader)
    assert not torch.equal(first, second)
