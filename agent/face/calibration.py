"""Calibration on a folder of photos, one sub-folder per person (``fvagent face calibrate``).

Each photo in turn is the card, every other photo the live image; same person = genuine pair,
different people = impostor pair. With ``card_size`` the card is the photo cropped in ID framing
(head centred, shoulders at the bottom, as on the chip photo) and scaled to that size, e.g. 102x126.
Each photo is encoded once as a live image and, with ``card_size``, once more as a card.

FAR = impostor pairs that pass / impostor pairs; FRR = genuine pairs that do not pass / genuine
pairs, where a photo without a detectable face counts as a rejection (that is what the person at
the desk would see).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from agent.errors import FaceError
from agent.face.engine import DetectedFace, FaceEngine
from agent.face.scoring import distance_to_score, result_for_score, threshold_distance
from agent.face.session import CARD_UPSAMPLES, working_image
from agent.images import ImageError, decode_image

if TYPE_CHECKING:
    from agent.config import FaceSettings

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CARD_ASPECT = 126 / 102
"""Height / width of the ID card chip photo (102x126 pixels)."""
CARD_FACE_WIDTH = 0.55
"""The detector's face box spans this fraction of the card photo's width (ID framing)."""
CARD_FACE_CENTRE_Y = 0.50
"""The face box's centre sits at this fraction of the card photo's height."""
REPORT_THRESHOLDS = (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
"""Score thresholds shown in the table, beside the configured one."""


@dataclasses.dataclass(frozen=True)
class Photo:
    person: str
    path: Path

    @property
    def label(self) -> str:
        return f"{self.person}/{self.path.name}"


def list_photos(directory: Path) -> list[Photo]:
    """The photos under ``directory``, one sub-folder per person. Raises ``FaceError``."""
    if not directory.is_dir():
        raise FaceError(f"{directory} is not a folder", hint="give a folder with one sub-folder of photos per person")
    found = [Photo(person.name, f) for person in sorted(p for p in directory.iterdir() if p.is_dir())
             for f in sorted(person.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    # The same file filed under two people is a labelling error: its pairs would count a person
    # against themself as an impostor. Leave every copy out and say so; keep one copy per person.
    owners: dict[str, set[str]] = {}
    digests: dict[Path, str] = {}
    for photo in found:
        digests[photo.path] = hashlib.sha256(photo.path.read_bytes()).hexdigest()
        owners.setdefault(digests[photo.path], set()).add(photo.person)
    photos, seen = [], set()
    for photo in found:
        digest = digests[photo.path]
        if len(owners[digest]) > 1:
            log.warning("%s: the same photo is filed under %s; left out", photo.label, " and ".join(sorted(owners[digest])))
        elif digest not in seen:
            photos.append(photo)
        seen.add(digest)
    people = {p.person for p in photos}
    if len(photos) < 2 or len(people) < 2:
        raise FaceError(f"{directory} holds {len(photos)} photo(s) of {len(people)} person(s); need two people or more",
                        hint="one sub-folder per person (named as you like), JPEG/PNG/BMP photos inside")
    return photos


def parse_card_size(text: str) -> tuple[int, int]:
    """"102x126" -> (102, 126). Raises ``ValueError``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"card size must be WIDTHxHEIGHT, e.g. 102x126, not {text!r}") from None
    if not (16 <= w <= 2000 and 16 <= h <= 2000):
        raise ValueError(f"card size {text} out of range (16..2000 pixels a side)")
    return w, h


def card_crop(bgr: np.ndarray, face: DetectedFace, size: tuple[int, int]) -> np.ndarray:
    """Crop ``bgr`` around ``face`` in ID-photo framing and scale it to ``size`` (width, height).

    Parts of the crop outside the image are filled with the image's edge pixels.
    """
    width, height = size
    crop_w = face.width / CARD_FACE_WIDTH
    crop_h = crop_w * height / width
    cx = (face.left + face.right) / 2
    cy = (face.top + face.bottom) / 2
    left = round(cx - crop_w / 2)
    top = round(cy - crop_h * CARD_FACE_CENTRE_Y)
    right, bottom = left + max(1, round(crop_w)), top + max(1, round(crop_h))
    h, w = bgr.shape[:2]
    pad = max(0, -left, -top, right - w, bottom - h)
    padded = np.pad(bgr, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else bgr
    crop = padded[top + pad:bottom + pad, left + pad:right + pad]
    rgb = Image.fromarray(np.ascontiguousarray(crop[:, :, ::-1])).resize(size, Image.Resampling.LANCZOS)
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])


def encode_photo(engine: FaceEngine, bgr: np.ndarray, card_size: tuple[int, int] | None = None
                 ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(live descriptor, card descriptor) of one photo; ``None`` where no face was found.

    Without ``card_size`` the card descriptor is the live one (camera-vs-camera calibration).
    """
    work = working_image(bgr)
    faces = engine.detect(work)
    if not faces and min(work.shape[:2]) < 400:  # small chips: look closer
        faces = engine.detect(work, upsample=1)
    if not faces:
        return None, None
    live = engine.encode(work, faces[0])
    if card_size is None:
        return live, live
    card = card_crop(work, faces[0], card_size)
    for upsample in CARD_UPSAMPLES:
        card_faces = engine.detect(card, upsample=upsample)
        if card_faces:
            return live, engine.encode(card, card_faces[0])
    return live, None


@dataclasses.dataclass
class Calibration:
    """Every pair's distance and the rates at the configured mapping."""

    photos: list[Photo]
    live: list[np.ndarray | None]
    card: list[np.ndarray | None]
    face: FaceSettings
    card_size: tuple[int, int] | None

    def __post_init__(self) -> None:
        n = len(self.photos)
        self.distances = np.full((n, n), np.nan)
        for i, c in enumerate(self.card):
            if c is None:
                continue
            for j, v in enumerate(self.live):
                if i != j and v is not None:
                    self.distances[i, j] = float(np.linalg.norm(c - v))
        people = np.array([p.person for p in self.photos])
        self.same = people[:, None] == people[None, :]
        off_diagonal = ~np.eye(n, dtype=bool)
        self.genuine_mask = self.same & off_diagonal
        self.impostor_mask = ~self.same

    def score(self, distance: float) -> float:
        return distance_to_score(distance, self.face.score_midpoint, self.face.score_slope)

    def rates(self, threshold: float) -> tuple[float, float]:
        """(FAR, FRR) when faceResult is 1 at ``score >= threshold``; a missing face is a rejection."""
        scores = 1.0 / (1.0 + np.exp(np.clip(self.face.score_slope * (self.distances - self.face.score_midpoint),
                                             -700, 700)))
        scores = np.round(scores, 4)
        passed = np.nan_to_num(scores, nan=-1.0) >= threshold
        impostors = int(self.impostor_mask.sum())
        genuines = int(self.genuine_mask.sum())
        far = float((passed & self.impostor_mask).sum()) / impostors if impostors else 0.0
        frr = float((~passed & self.genuine_mask).sum()) / genuines if genuines else 0.0
        return far, frr

    def summary(self) -> dict[str, Any]:
        genuine = self.distances[self.genuine_mask]
        impostor = self.distances[self.impostor_mask]
        genuine, impostor = genuine[~np.isnan(genuine)], impostor[~np.isnan(impostor)]
        return {
            "photos": len(self.photos),
            "people": len({p.person for p in self.photos}),
            "no_face_live": [p.label for p, v in zip(self.photos, self.live) if v is None],
            "no_face_card": [p.label for p, c in zip(self.photos, self.card) if c is None],
            "genuine_pairs": int(self.genuine_mask.sum()),
            "impostor_pairs": int(self.impostor_mask.sum()),
            "genuine": _stats(genuine),
            "impostor": _stats(impostor),
        }

    def table(self) -> str:
        """The human-readable report: distances, then FAR/FRR per threshold."""
        s = self.summary()
        f = self.face
        kind = f"card {self.card_size[0]}x{self.card_size[1]} vs camera" if self.card_size else "camera vs camera"
        lines = [f"{kind}: {s['photos']} photos of {s['people']} people, "
                 f"{s['genuine_pairs']} genuine and {s['impostor_pairs']} impostor pairs"]
        for what in ("no_face_live", "no_face_card"):
            if s[what]:
                lines.append(f"no face found ({what.removeprefix('no_face_')}): {', '.join(s[what])}")
        lines.append("")
        lines.append("distance   median    p5      p95     min     max")
        for what in ("genuine", "impostor"):
            st = s[what]
            if st["n"]:
                lines.append(f"{what:<9} {st['median']:.3f}   {st['p5']:.3f}   {st['p95']:.3f}   "
                             f"{st['min']:.3f}   {st['max']:.3f}")
        lines.append("")
        lines.append(f"score = 1/(1+exp({f.score_slope:g}*(distance-{f.score_midpoint:g})))")
        lines.append("threshold  distance<=   FAR       FRR")
        for t in sorted(set(REPORT_THRESHOLDS) | {f.threshold}):
            far, frr = self.rates(t)
            mark = "  <- configured" if math.isclose(t, f.threshold) else ""
            lines.append(f"{t:<9.2f}  {threshold_distance(t, f.score_midpoint, f.score_slope):<10.3f}  "
                         f"{far:<8.4%}  {frr:<8.2%}{mark}")
        return "\n".join(lines)

    def pairs(self) -> list[dict[str, Any]]:
        """Every (card, live) pair for ``--json``; distance and score null where a face was missing."""
        out = []
        for i, card in enumerate(self.photos):
            for j, live in enumerate(self.photos):
                if i == j:
                    continue
                d = self.distances[i, j]
                if np.isnan(d):
                    distance, score, result = None, None, 2
                else:
                    distance = round(float(d), 4)
                    score = self.score(distance)
                    result = result_for_score(score, self.face.threshold)
                out.append({"card": card.label, "live": live.label, "same": bool(self.same[i, j]),
                            "distance": distance, "score": score, "result": result})
        return out

    def to_json(self) -> dict[str, Any]:
        far, frr = self.rates(self.face.threshold)
        return {"threshold": self.face.threshold, "far": round(far, 6), "frr": round(frr, 6), "pairs": self.pairs()}


def _stats(values: np.ndarray) -> dict[str, Any]:
    if values.size == 0:
        return {"n": 0}
    return {"n": int(values.size), "median": float(np.median(values)), "p5": float(np.percentile(values, 5)),
            "p95": float(np.percentile(values, 95)), "min": float(values.min()), "max": float(values.max())}


def calibrate(engine: FaceEngine, directory: Path, face: FaceSettings, *,
              card_size: tuple[int, int] | None = None) -> Calibration:
    """Encode every photo under ``directory`` once (twice with ``card_size``) and pair them all."""
    photos = list_photos(directory)
    live: list[np.ndarray | None] = []
    card: list[np.ndarray | None] = []
    for n, photo in enumerate(photos, 1):
        try:
            bgr = decode_image(photo.path.read_bytes(), what=str(photo.path))
        except (ImageError, OSError) as exc:
            log.warning("skipping %s: %s", photo.label, exc)
            live.append(None)
            card.append(None)
            continue
        v, c = encode_photo(engine, bgr, card_size)
        live.append(v)
        card.append(c)
        log.debug("encoded %d/%d %s", n, len(photos), photo.label)
    return Calibration(photos, live, card, face, card_size)
