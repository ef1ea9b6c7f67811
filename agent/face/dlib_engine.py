"""The default face engine: dlib's HOG detector, 5-point landmarks and ResNet encoder.

The models come from the ``face-recognition-models`` package (public-domain 5-point shape predictor
and ResNet face encoder); dlib from prebuilt ``dlib-bin`` wheels. The 68-point landmark model is
never used: its training data excludes commercial use. Descriptors are 128-d; two photos of one
person are typically 0.3-0.45 apart, two people more than 0.5 (see docs/face.md for this data).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from agent.face.engine import DetectedFace, FaceEngine
from core.errors import FaceError

if TYPE_CHECKING:
    from agent.config import FaceSettings

log = logging.getLogger(__name__)


def model_paths() -> tuple[Path, Path]:
    """(5-point shape predictor, ResNet encoder) from face-recognition-models. Raises ``FaceError``."""
    try:
        import face_recognition_models as models
    except ImportError as exc:
        raise FaceError(
            "the dlib face engine needs the face-recognition-models package",
            hint="pip install 'face-recognition-models>=0.3.0' into fvagent's venv",
        ) from exc
    paths = (Path(models.pose_predictor_five_point_model_location()), Path(models.face_recognition_model_location()))
    for path in paths:
        if not path.is_file():
            raise FaceError(
                f"face model file {path.name} is missing",
                path=str(path),
                hint="reinstall face-recognition-models (pip install --force-reinstall)",
            )
    return paths


class DlibEngine(FaceEngine):
    """HOG detection + 5-point alignment + ResNet 128-d descriptors. Thread-safe (one lock)."""

    name: ClassVar[str] = "dlib"

    def __init__(self, face: FaceSettings) -> None:
        super().__init__(face)
        self._predictor_path, self._encoder_path = model_paths()  # fail early when a model is missing
        self._lock = threading.Lock()
        self._detector: Any = None
        self._predictor: Any = None
        self._encoder: Any = None

    def load(self) -> None:
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> None:
        if self._encoder is not None:
            return
        try:
            import dlib
        except ImportError as exc:
            raise FaceError(
                "the dlib face engine needs dlib", hint="pip install dlib-bin (prebuilt wheels; never compile dlib)"
            ) from exc
        try:
            self._detector = dlib.get_frontal_face_detector()
            self._predictor = dlib.shape_predictor(str(self._predictor_path))
            self._encoder = dlib.face_recognition_model_v1(str(self._encoder_path))
        except RuntimeError as exc:
            raise FaceError(
                f"cannot load the dlib face models: {exc}", hint="reinstall face-recognition-models"
            ) from exc
        log.info("dlib face engine loaded (HOG detector, 5-point landmarks, ResNet encoder)")

    def detect(self, bgr: np.ndarray, *, upsample: int = 0) -> list[DetectedFace]:
        rgb = _rgb(bgr)
        h, w = rgb.shape[:2]
        with self._lock:
            self._load_locked()
            rects = self._detector(rgb, upsample)
            faces = []
            for r in rects:
                shape = self._predictor(rgb, r)
                points = np.array(
                    [[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64
                )
                faces.append(
                    DetectedFace(
                        max(0, r.left()), max(0, r.top()), min(w, r.right()), min(h, r.bottom()), points, shape
                    )
                )
        faces.sort(key=lambda f: f.width * f.height, reverse=True)
        return faces

    def encode(self, bgr: np.ndarray, face: DetectedFace) -> np.ndarray:
        rgb = _rgb(bgr)
        with self._lock:
            self._load_locked()
            shape = face.native
            if shape is None:  # a face from elsewhere: find its landmarks here
                import dlib

                shape = self._predictor(rgb, dlib.rectangle(face.left, face.top, face.right, face.bottom))
            # num_jitters=1, padding 0.25: the settings the published accuracy figures use
            return np.asarray(self._encoder.compute_face_descriptor(rgb, shape, 1, 0.25), dtype=np.float64)

    def encode_mirror(self, bgr: np.ndarray, face: DetectedFace) -> np.ndarray | None:
        if face.native is None:
            return super().encode_mirror(bgr, face)
        import dlib

        rgb = _rgb(bgr)
        with self._lock:
            self._load_locked()
            # the aligned 150x150 chip the encoder sees (same size and padding as encode), mirrored
            chip = dlib.get_face_chip(rgb, face.native, 150, 0.25)
            return np.asarray(
                self._encoder.compute_face_descriptor(np.ascontiguousarray(chip[:, ::-1])), dtype=np.float64
            )


def _rgb(bgr: np.ndarray) -> np.ndarray:
    if bgr.ndim == 2:
        return np.ascontiguousarray(np.stack([bgr] * 3, axis=-1))
    return np.ascontiguousarray(bgr[:, :, 2::-1])
