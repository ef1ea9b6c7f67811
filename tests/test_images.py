"""Images for the record (headImg, cameraImg): JPEG, at most 3 MB with quality stepped down, no EXIF."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from core.images import (
    MAX_IMAGE_BYTES,
    ImageError,
    decode_image,
    encode_jpeg,
    normalize_jpeg,
)

XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Make="TerminalMaker"/></rdf:RDF></x:xmpmeta>'
)


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A frame of random pixels: the worst case for JPEG size."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def jpeg(bgr: np.ndarray, quality: int = 90, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])).save(buf, format="JPEG", quality=quality, **save)
    return buf.getvalue()


def metadata(data: bytes) -> dict[str, object]:
    with Image.open(io.BytesIO(data)) as img:
        return {key: img.info[key] for key in ("exif", "xmp") if img.info.get(key)}


def with_exif(bgr: np.ndarray) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "TerminalMaker"  # Make
    exif[0xA431] = "SN-0042"  # BodySerialNumber
    data = jpeg(bgr, exif=exif.tobytes())
    assert metadata(data).keys() == {"exif"}
    return data


def test_encode_jpeg_steps_quality_down_to_fit_3_mb() -> None:
    frame = noise(1800, 2400)  # 4.3 MP of noise: about 3.6 MB at quality 90
    assert len(jpeg(frame, 90, optimize=True)) > MAX_IMAGE_BYTES
    data = encode_jpeg(frame)
    assert len(data) <= MAX_IMAGE_BYTES
    assert len(data) > MAX_IMAGE_BYTES * 0.6  # one step down (quality 80), not straight to the floor
    assert decode_image(data).shape == frame.shape and not metadata(data)


def test_encode_jpeg_keeps_quality_when_it_fits_and_takes_grey_frames() -> None:
    frame = noise(120, 160)
    assert len(encode_jpeg(frame)) == len(jpeg(frame, 90, optimize=True))
    grey = encode_jpeg(frame[:, :, 0])
    assert grey.startswith(b"\xff\xd8\xff") and decode_image(grey).shape == (120, 160, 3)


def test_encode_jpeg_that_cannot_fit_names_the_size_and_limit() -> None:
    with pytest.raises(ImageError, match=r"400x300 .* quality 20; limit 5000"):
        encode_jpeg(noise(300, 400), max_bytes=5000)


def test_normalize_keeps_a_clean_jpeg_byte_for_byte() -> None:
    data = jpeg(noise(60, 80))
    assert normalize_jpeg(data) == data


def test_normalize_strips_exif_and_xmp() -> None:
    frame = noise(60, 80)
    out = normalize_jpeg(with_exif(frame))
    assert not metadata(out) and b"SN-0042" not in out and decode_image(out).shape == (60, 80, 3)
    xmp = jpeg(frame, xmp=XMP)
    assert "xmp" in metadata(xmp)
    out = normalize_jpeg(xmp)
    assert not metadata(out) and b"TerminalMaker" not in out


def test_normalize_finds_exif_behind_a_large_segment() -> None:
    # EXIF after a 64 KB APP15 segment: a search of the first 64 KB of the file does not see it
    data = with_exif(noise(60, 80))
    app15 = b"\xff\xef" + struct.pack(">H", 65535) + bytes(65533)
    padded = data[:2] + app15 + data[2:]
    assert b"Exif\x00\x00" not in padded[:65536] and "exif" in metadata(padded)
    out = normalize_jpeg(padded)
    assert not metadata(out) and b"SN-0042" not in out


def test_normalize_reencodes_other_formats_and_oversized_jpegs() -> None:
    frame = noise(200, 300)
    png = io.BytesIO()
    Image.fromarray(frame).save(png, format="PNG")
    out = normalize_jpeg(png.getvalue())
    assert out.startswith(b"\xff\xd8\xff") and decode_image(out).shape == (200, 300, 3)
    big = jpeg(frame, 95)
    limit = len(big) // 2
    out = normalize_jpeg(big, max_bytes=limit)
    assert out.startswith(b"\xff\xd8\xff") and len(out) <= limit


def test_bad_bytes_are_an_error_naming_the_image() -> None:
    with pytest.raises(ImageError, match=r"headImg is not a decodable image \(9 bytes\)"):
        normalize_jpeg(b"not a jpg", what="headImg")
    with pytest.raises(ImageError, match="cameraImg"):
        decode_image(b"\xff\xd8\xff" + bytes(20), what="cameraImg")
