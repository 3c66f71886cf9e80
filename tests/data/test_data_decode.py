"""Decoding: colour order, odd formats, unreadable files, and reduced JPEG decoding."""

import io

import numpy as np
import pytest
from PIL import Image

from resnest_pl.data import decode_image, eval_transform, read_image
from resnest_pl.data.decode import jpeg_size


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> np.ndarray:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def smooth_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Blurry random colours: photo-like frequency content."""
    small = np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BICUBIC)


def test_decode_gives_rgb_hwc_uint8():
    red = Image.new("RGB", (20, 10), (250, 5, 5))
    for fmt in ("JPEG", "PNG"):
        image = decode_image(encode(red, fmt))
        assert image.shape == (10, 20, 3) and image.dtype == np.uint8
        assert image[..., 0].min() > 200 and image[..., 2].max() < 50


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK"])
def test_decode_converts_other_modes_to_three_channels(mode):
    fmt = "PNG" if mode == "RGBA" else "JPEG"
    image = decode_image(encode(Image.new(mode, (8, 6)), fmt))
    assert image.shape == (6, 8, 3)


def test_unreadable_inputs_give_none(tmp_path):
    assert decode_image(np.frombuffer(b"garbage bytes" * 50, dtype=np.uint8)) is None
    assert decode_image(np.zeros(0, dtype=np.uint8)) is None
    truncated = encode(smooth_image(64, 48))[:200]
    assert decode_image(truncated) is None
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert read_image(str(empty)) is None
    assert read_image(str(tmp_path / "missing.jpg")) is None


def test_jpeg_size_reads_the_frame_header_past_exif():
    exif = Image.Exif()
    exif[0x010E] = "x" * 3000  # a long description makes a large APP1 segment before the frame header
    data = encode(smooth_image(120, 90), exif=exif.tobytes())
    assert jpeg_size(data) == (120, 90)
    assert jpeg_size(encode(smooth_image(12, 9), "PNG")) is None


def test_exif_rotation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    assert decode_image(encode(smooth_image(60, 40), exif=exif.tobytes())).shape == (60, 40, 3)


def test_reduced_decode_only_when_large_enough():
    data = encode(smooth_image(1200, 900), quality=92)
    assert decode_image(data).shape == (900, 1200, 3)
    assert decode_image(data, min_side=256).shape == (450, 600, 3)  # 1/4 would drop below 256
    assert decode_image(data, min_side=100).shape == (113, 150, 3)  # 1/8, rounded up
    assert decode_image(data, min_side=600).shape == (900, 1200, 3)


def test_reduced_decode_is_close_to_full_decode_after_eval_transform():
    data = encode(smooth_image(1200, 900, seed=1), quality=92)
    transform = eval_transform(224)  # resizes to 256, so a 1/2 decode (450 px) suffices
    full = transform(decode_image(data))
    reduced = transform(decode_image(data, min_side=transform.min_source_side))
    grey_levels = (full.float() - reduced.float()).abs()
    assert grey_levels.mean() < 1.0
    assert grey_levels.max() < 6.0
