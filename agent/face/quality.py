"""Quality gates for a camera frame: is this face good enough to compare, and if not, why.

Measured on the face box only: size (its shorter side), sharpness (variance of a Laplacian of the
face scaled to 128x128, so it does not depend on the face's size), and brightness (mean grey).
A second face at least ``second_face_ratio`` as wide as the largest one rejects the frame ("more
than one face": two people in front of the camera); smaller faces further back are ignored and
the largest face is kept.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from agent.face.engine import DetectedFace

if TYPE_CHECKING:
    from agent.config import FaceSettings

NO_FACE = "no face"
TOO_SMALL = "face too small"
BLURRED = "face blurred"
TOO_DARK = "face too dark"
TOO_BRIGHT = "face too bright"
SEVERAL_FACES = "more than one face"


@dataclasses.dataclass(frozen=True)
class FrameQuality:
    """The verdict on one frame: the face to use (``None`` when rejected) and why it was rejected."""

    face: DetectedFace | None
    reason: str | None
    sharpness: float = 0.0
    brightness: float = 0.0


def face_grey(bgr: np.ndarray, face: DetectedFace, size: int = 128) -> np.ndarray:
    """The face box as a ``size`` x ``size`` float grey image."""
    crop = bgr[face.top : face.bottom, face.left : face.right]
    if crop.size == 0:
        return np.zeros((size, size))
    if crop.ndim == 3:  # ITU-R 601 luma from BGR
        grey = crop[:, :, 2] * 0.299 + crop[:, :, 1] * 0.587 + crop[:, :, 0] * 0.114
    else:
        grey = crop.astype(np.float64)
    img = Image.fromarray(grey.astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float64)


def sharpness(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: low for a blurred face."""
    lap = grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1]
    return float(lap.var())


def assess(bgr: np.ndarray, faces: list[DetectedFace], face: FaceSettings, *, frame_scale: float = 1.0) -> FrameQuality:
    """Apply the gates to the largest of ``faces`` (largest first, as engines return them).

    ``frame_scale`` is how much the camera frame was scaled down to give ``bgr`` (working pixels per
    frame pixel): ``min_face_px`` is in the camera's own pixels, as the technician measures them.
    """
    if not faces:
        return FrameQuality(None, NO_FACE)
    best = faces[0]
    if len(faces) > 1 and faces[1].width >= face.second_face_ratio * best.width:
        return FrameQuality(None, SEVERAL_FACES)
    if best.size / frame_scale < face.min_face_px:
        return FrameQuality(None, TOO_SMALL)
    grey = face_grey(bgr, best)
    bright = float(grey.mean())
    sharp = sharpness(grey)
    if bright < face.min_brightness:
        return FrameQuality(None, TOO_DARK, sharp, bright)
    if bright > face.max_brightness:
        return FrameQuality(None, TOO_BRIGHT, sharp, bright)
    if sharp < face.min_sharpness:
        return FrameQuality(None, BLURRED, sharp, bright)
    return FrameQuality(best, None, sharp, bright)
