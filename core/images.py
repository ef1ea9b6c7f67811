"""JPEG in and out for records: decoded with Pillow, re-encoded EXIF-free and within the size limit.

The platform takes JPEG images of at most 3 MB (headImg, cameraImg). Frames are numpy arrays in
BGR order, as cameras and OpenCV deliver them.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from core.errors import FvagentError

MAX_IMAGE_BYTES = 3 * 1024 * 1024
"""The platform's limit for headImg, cameraImg and fingerCollectImg."""
JPEG_MAGIC = b"\xff\xd8\xff"
MAX_IMAGE_PIXELS = 40_000_000
"""Largest image decoded (40 Mpx, about 120 MB as RGB): a small file can declare a huge size."""


class ImageError(FvagentError, ValueError):
    """Bytes that should be an image are not one we can decode, or cannot be made small enough."""


Frame = npt.NDArray[np.uint8]
"""One image as cameras, OpenCV and the face engine pass it: BGR, uint8, height x width x 3."""


METADATA_KEYS = ("exif", "xmp")
"""Pillow's names for the metadata a record must not carry (camera serials, GPS, timestamps)."""


def decode_image(data: bytes, *, what: str = "image") -> Frame:
    """Decode JPEG/PNG/BMP bytes into a BGR uint8 array. Raises ``ImageError`` naming ``what``."""
    return _decode(data, what)[0]


def _decode(data: bytes, what: str) -> tuple[Frame, bool]:
    """(BGR array, whether the image carries EXIF or XMP metadata)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ImageError(
                    f"{what} is {img.width}x{img.height} pixels, more than the "
                    f"{MAX_IMAGE_PIXELS // 1_000_000} Mpx decoded here; send a smaller image "
                    "(the platform takes at most 3 MB)"
                )
            # Pillow reads every header segment, wherever EXIF sits: a byte search of the first
            # kilobytes misses EXIF placed after a large APPn segment
            has_metadata = any(img.info.get(key) for key in METADATA_KEYS)
            rgb = np.asarray(img.convert("RGB"))
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{what} is not a decodable image ({len(data)} bytes): {exc}") from exc
    return np.ascontiguousarray(rgb[:, :, ::-1]), has_metadata


def encode_jpeg(bgr: Frame, *, max_bytes: int = MAX_IMAGE_BYTES, quality: int = 90) -> bytes:
    """Encode a BGR (or grey) frame as JPEG without metadata, stepping quality down to fit ``max_bytes``.

    Raises ``ImageError`` when even quality 20 does not fit.
    """
    if bgr.ndim == 2:
        img = Image.fromarray(bgr)
    else:
        img = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
    q = quality
    while True:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q, optimize=True)  # Pillow writes no EXIF unless given one
        data = buf.getvalue()
        if len(data) <= max_bytes:
            return data
        if q <= 20:
            raise ImageError(f"JPEG of {img.width}x{img.height} is {len(data)} bytes at quality {q}; limit {max_bytes}")
        q -= 10


def normalize_jpeg(data: bytes, *, what: str = "image", max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """Return ``data`` as a JPEG within ``max_bytes`` without EXIF or XMP, re-encoding only when needed.

    Raises ``ImageError`` naming ``what`` when ``data`` does not decode or cannot be made small enough.
    """
    bgr, has_metadata = _decode(data, what)
    if data.startswith(JPEG_MAGIC) and len(data) <= max_bytes and not has_metadata:
        return data
    return encode_jpeg(bgr, max_bytes=max_bytes)
