"""Image decoding with OpenCV, letting libjpeg shrink large JPEGs while it decodes them."""

from __future__ import annotations

import cv2
import numpy as np

# libjpeg's DCT scaling decodes a JPEG directly at 1/2, 1/4 or 1/8 of its size: much faster than a full
# decode followed by a resize, and within a grey level or two of it once the pipeline resizes anyway.
_REDUCED_DECODE = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))

# JPEG start-of-frame markers (SOF0-SOF15 without DHT 0xC4, JPG 0xC8 and DAC 0xCC); their segment holds the size.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset(range(0xD0, 0xDA)) | {0x01}


def jpeg_size(data: np.ndarray) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG's frame header, or None when ``data`` is not a JPEG this can parse.

    Written here because OpenCV cannot read a header alone and PIL's ``Image.open`` costs ~75 us per file (close
    to a tenth of the decode it is meant to shorten); walking the few markers before the frame header takes ~5 us.
    """
    buf = data.tobytes() if len(data) < 65536 else data[:65536].tobytes()
    if buf[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 9 <= len(buf):
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        if marker in _SOF_MARKERS:
            height = int.from_bytes(buf[pos + 5 : pos + 7], "big")
            width = int.from_bytes(buf[pos + 7 : pos + 9], "big")
            return (width, height) if width and height else None
        pos += 2 + int.from_bytes(buf[pos + 2 : pos + 4], "big")
    return None


def _decode_flag(data: np.ndarray, min_side: int | None) -> int:
    if not min_side:
        return cv2.IMREAD_COLOR
    size = jpeg_size(data)
    if size is None:
        return cv2.IMREAD_COLOR
    short = min(size)
    for factor, flag in _REDUCED_DECODE:
        if short // factor >= min_side:
            return flag
    return cv2.IMREAD_COLOR


def decode_image(data: np.ndarray, min_side: int | None = None) -> np.ndarray | None:
    """Decode encoded image bytes to an RGB ``uint8`` ``(H, W, 3)`` array; None when they are not a readable image.

    Grey, CMYK and alpha images come out as 3-channel RGB and EXIF rotation is applied. With ``min_side``, a
    JPEG at least twice that size on its shorter side is decoded at 1/2, 1/4 or 1/8 scale, never below it.
    """
    if data.size == 0:
        return None
    try:
        image = cv2.imdecode(data, _decode_flag(data, min_side))
    except cv2.error:
        return None
    if image is None:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)


def read_image(path: str, min_side: int | None = None) -> np.ndarray | None:
    """:func:`decode_image` of the file at ``path``; None when it cannot be read or decoded."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    return decode_image(data, min_side)
