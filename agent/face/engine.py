"""The face engine interface: what the scoring session needs from any engine (dlib, a vendor SDK).

An engine is found by name in the entry-point group ``fvagent.face_engines`` (``[face] engine``), so
a licensed commercial engine or a terminal SDK replaces the default without changes here: it
subclasses ``FaceEngine`` and declares ``[project.entry-points."fvagent.face_engines"]``.

Images are numpy uint8 arrays in BGR order (as cameras and ``core.images.decode_image`` give them).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from agent.config import FaceSettings


@dataclasses.dataclass(frozen=True, eq=False)
class DetectedFace:
    """One face found in an image, in that image's pixel coordinates."""

    left: int
    top: int
    right: int
    bottom: int
    landmarks: np.ndarray | None = None
    """(5, 2) float array in dlib's 5-point order: two corners of one eye, two of the other, the
    base of the nose; None when the engine has no landmarks."""
    native: Any = dataclasses.field(default=None, repr=False)
    """Whatever the engine needs to encode this face later (dlib: the landmark shape)."""

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def size(self) -> int:
        """The shorter side of the box, in pixels."""
        return min(self.width, self.height)


class FaceEngine(abc.ABC):
    """Detects faces and turns one into a descriptor; smaller ``distance`` means more alike.

    Engines are built with the ``[face]`` settings and load their models lazily: ``load()`` loads
    them now (call it at start-up to make the first verification fast); the other methods call it.
    ``load()`` raises ``FaceError`` when a model is missing. ``detect`` and ``encode`` may raise any
    exception on a pathological image; the scoring session catches it and records the frame as
    unusable, so an engine bug never blocks the desk.
    """

    name: ClassVar[str] = ""

    def __init__(self, face: FaceSettings) -> None:
        self.face = face

    def load(self) -> None:  # noqa: B027 (optional: an engine with nothing to load keeps this)
        """Load the models now. Idempotent. Raises ``FaceError``."""

    @abc.abstractmethod
    def detect(self, bgr: np.ndarray, *, upsample: int = 0) -> list[DetectedFace]:
        """Return the faces in ``bgr``, largest first. ``upsample`` > 0 finds smaller faces, slower."""

    @abc.abstractmethod
    def encode(self, bgr: np.ndarray, face: DetectedFace) -> np.ndarray:
        """Return the descriptor of ``face`` (found by ``detect`` in this same image)."""

    def encode_mirror(self, bgr: np.ndarray, face: DetectedFace) -> np.ndarray | None:
        """The descriptor of ``face`` seen in the mirror (``bgr`` flipped left-right); None when the
        mirrored face is not found. The card photo's descriptor is the mean of both (docs/face.md).
        This default detects the face again in the flipped image; engines may do it cheaper."""
        flipped = np.ascontiguousarray(bgr[:, ::-1])
        for upsample in (0, 1, 2):
            faces = self.detect(flipped, upsample=upsample)
            if faces:
                return self.encode(flipped, faces[0])
        return None

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Distance between two descriptors (Euclidean unless the engine knows better)."""
        return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))
