"""Calibration on a folder of photos, one sub-folder per person (``fvagent face calibrate``).

Each photo in turn is the card, every other photo the live image; same person = genuine pair,
different people = impostor pair. With ``card_size`` the card is the photo cropped in ID framing
(head centred, shoulders at the bottom, as on the chip photo) and scaled to that size, e.g. 102x126.
Each photo is encoded once as a live image and, with ``card_size``, once more as a card.

FAR = impostor pairs that pass / impostor pairs; FRR = genuine pairs that do not pass / genuine
pairs, where a photo without a detectable face counts as a rejection (that is what the person at
the desk would see).

The operating point comes from a target FAR (``[face] target_far``): the smaller of the empirical
and the normal-fit quantile of the impostor distances (``distance_for_far``), taken at the target
divided by a safety factor, stated with the counts and the exact one-sided 95 % upper bound of the
FAR there (``far_upper_95``). The safety factor (``SAFETY_FACTORS``) is the smallest one whose inner
cross-validation, on the same people the point is chosen on, keeps the held-out FAR at the target
(``Calibration.safety_factor``): impostor pairs share people, so a quantile of one set lets more of
another set's people through than the target. The method is cross-validated by people: the people
are split in two halves (several seeded random splits, ``person_splits``), the distance is chosen
on one half (safety factor included) and FAR/FRR measured on the other half's pairs
(``cross_validate``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import random
from collections.abc import Callable
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Required, TypedDict

import numpy as np
from PIL import Image

from agent.face.engine import DetectedFace, FaceEngine
from agent.face.scoring import distance_to_score, result_for_score, threshold_distance
from agent.face.session import encode_card_image, working_image
from core.errors import FaceError
from core.images import ImageError, decode_image
from core.records import JsonObject

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
CV_SPLITS = 10
"""Random splits of the people for cross-validation (each split is used both ways)."""
CV_SEED = 11
"""Seed of the first split, so a report can be reproduced."""
SAFETY_FACTORS = (1, 1.5, 2, 3, 5, 10)
"""The operating point is chosen at ``target_far / factor``, the first of these that holds (inner CV)."""
INNER_SPLITS = 5
"""Random splits of the choosing people for the safety factor's inner cross-validation."""
INNER_SEED = 101
"""Seed of the inner cross-validation's first split."""
DISTANCE_STEP = 1e-4
"""Distances are compared at 4 decimals, as scores are rounded."""


def far_upper_95(errors: int, trials: int) -> float:
    """Exact one-sided 95 % upper bound (Clopper-Pearson) of a rate seen as ``errors`` in ``trials``.

    With 0 errors it is ``1 - 0.05 ** (1 / trials)``, about ``3 / trials`` (the rule of three).
    No trials bound nothing: 1.0. Raises ``ValueError`` on counts that make no sense.
    """
    if trials < 0 or not 0 <= errors <= trials:
        raise ValueError(f"need 0 <= errors <= trials, not {errors} of {trials}")
    if trials == 0 or errors == trials:
        return 1.0
    if errors == 0:
        return 1.0 - math.pow(0.05, 1.0 / trials)
    # the p at which seeing <= errors has probability 5 %: P(X <= k | n, p) falls as p grows
    lo, hi = errors / trials, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if _binomial_cdf(errors, trials, mid) > 0.05:
            lo = mid
        else:
            hi = mid
    return hi


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (n of many thousands stays exact)."""
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def distance_for_far(impostor: np.ndarray, target_far: float) -> float:
    """The operating distance for ``target_far`` on these impostor distances (4 decimals).

    The smaller of two estimates of the distance below which a fraction ``target_far`` of impostor
    pairs fall: the empirical one (the largest distance at which at most ``floor(target_far * n)``
    of the ``n`` pairs pass) and a normal distribution fitted to all of them (mean + z * sd, z the
    ``target_far`` quantile of the standard normal). The empirical quantile of a small set rests on
    its few closest pairs and, cross-validated on unseen people, let through 6-10 times the target
    (docs/face.md); the fit uses the spread of every pair. Missing distances (NaN: no face) count as
    impostor pairs that never pass. Raises ``ValueError`` without impostor pairs or a target in (0, 1).
    """
    if not 0 < target_far < 1:
        raise ValueError(f"target FAR must be between 0 and 1, not {target_far}")
    values = np.asarray(impostor, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no impostor pairs: need photos of two people or more")
    finite = np.sort(values[~np.isnan(values)])
    if finite.size == 0:
        return 0.0
    allowed = math.floor(target_far * values.size + 1e-9)
    # just under the first impostor that must not pass
    empirical = (
        (math.floor(round(float(finite[allowed]) / DISTANCE_STEP, 6)) - 1) * DISTANCE_STEP
        if allowed < finite.size
        else float(finite[-1])
    )
    fitted = float(finite.mean()) + NormalDist().inv_cdf(target_far) * float(finite.std())
    return round(max(0.0, min(empirical, fitted)), 4)


def person_splits(
    people: list[str], splits: int = CV_SPLITS, seed: int = CV_SEED, with_pairs: set[str] | None = None
) -> list[tuple[frozenset[str], frozenset[str]]]:
    """``splits`` random halvings of ``people`` (seeded, reproducible).

    People in ``with_pairs`` (those with two photos or more, who make the genuine pairs) are halved
    separately from the rest, so each half gets about half of the genuine pairs.
    """
    names = sorted(set(people))
    if len(names) < 4:
        raise ValueError(f"cross-validation needs 4 people or more, not {len(names)}")
    paired = sorted(set(names) & (with_pairs or set()))
    single = sorted(set(names) - set(paired))
    out = []
    for n in range(splits):
        rng = random.Random(seed + n)
        first: list[str] = []
        second: list[str] = []
        for group in (paired, single):
            group = list(group)
            rng.shuffle(group)
            # alternate, continuing where the previous group left off, so the halves differ by at most one
            for name in group:
                (first if len(first) <= len(second) else second).append(name)
        out.append((frozenset(first), frozenset(second)))
    return out


@dataclasses.dataclass(frozen=True)
class Fold:
    """One cross-validation fold: the distance chosen on one half, the rates on the other."""

    distance: float
    far: float
    frr: float
    impostor_pairs: int
    genuine_pairs: int


class DistanceStats(TypedDict, total=False):
    """The spread of a set of distances; only ``n`` when there are none."""

    n: Required[int]
    median: float
    p5: float
    p95: float
    min: float
    max: float


class CalibrationSummary(TypedDict):
    """What a calibration measured: the photos, the faces not found, the pairs and their distances."""

    photos: int
    people: int
    no_face_live: list[str]
    no_face_card: list[str]
    genuine_pairs: int
    impostor_pairs: int
    genuine: DistanceStats
    impostor: DistanceStats


@dataclasses.dataclass(frozen=True)
class CrossValidation:
    """Every fold of ``cross_validate`` and the spread of its rates."""

    folds: list[Fold]

    def summary(self) -> JsonObject:
        """Mean and max of FRR and FAR over the folds and the chosen distances' range (None without folds)."""
        if not self.folds:
            return dict.fromkeys(
                ("frr_mean", "frr_max", "far_mean", "far_max", "distance_min", "distance_max", "distance_median"), None
            ) | {"folds": 0}
        far = [f.far for f in self.folds]
        frr = [f.frr for f in self.folds]
        dist = [f.distance for f in self.folds]
        return {
            "folds": len(self.folds),
            "frr_mean": round(float(np.mean(frr)), 6),
            "frr_max": round(max(frr), 6),
            "far_mean": round(float(np.mean(far)), 6),
            "far_max": round(max(far), 6),
            "distance_min": min(dist),
            "distance_max": max(dist),
            "distance_median": round(float(np.median(dist)), 4),
        }


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
    found = [
        Photo(person.name, f)
        for person in sorted(p for p in directory.iterdir() if p.is_dir())
        for f in sorted(person.iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
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
            log.warning(
                "%s: the same photo is filed under %s; left out", photo.label, " and ".join(sorted(owners[digest]))
            )
        elif digest not in seen:
            photos.append(photo)
        seen.add(digest)
    people = {p.person for p in photos}
    if len(photos) < 2 or len(people) < 2:
        raise FaceError(
            f"{directory} holds {len(photos)} photo(s) of {len(people)} person(s); need two people or more",
            hint="one sub-folder per person (named as you like), JPEG/PNG/BMP photos inside",
        )
    return photos


def parse_card_size(text: str) -> tuple[int, int]:
    """ "102x126" -> (102, 126). Raises ``ValueError``."""
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
    crop = padded[top + pad : bottom + pad, left + pad : right + pad]
    rgb = Image.fromarray(np.ascontiguousarray(crop[:, :, ::-1])).resize(size, Image.Resampling.LANCZOS)
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])


def encode_photo(
    engine: FaceEngine,
    bgr: np.ndarray,
    card_size: tuple[int, int] | None = None,
    *,
    card_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    mirror: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(live descriptor, card descriptor) of one photo; ``None`` where no face was found.

    Without ``card_size`` the card descriptor is the live one (camera-vs-camera calibration).
    ``card_transform`` changes the card crop first (a benchmark compresses it as a chip photo);
    ``mirror=False`` leaves out the mirrored encoding (to measure what it brings).
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
    crop = card_crop(work, faces[0], card_size)
    card = encode_card_image(engine, card_transform(crop) if card_transform else crop)
    # the card's descriptor as a verification that is no clear pass uses it (mirror included)
    return live, (card.refined(engine) if mirror else card).descriptor


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """FAR and FRR at one distance, with the counts behind them."""

    distance: float
    impostor_pairs: int
    false_accepts: int
    genuine_pairs: int
    false_rejects: int

    @property
    def far(self) -> float:
        return self.false_accepts / self.impostor_pairs if self.impostor_pairs else 0.0

    @property
    def frr(self) -> float:
        return self.false_rejects / self.genuine_pairs if self.genuine_pairs else 0.0

    @property
    def far_upper_95(self) -> float:
        return far_upper_95(self.false_accepts, self.impostor_pairs)


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
        scores = 1.0 / (
            1.0 + np.exp(np.clip(self.face.score_slope * (self.distances - self.face.score_midpoint), -700, 700))
        )
        scores = np.round(scores, 4)
        passed = np.nan_to_num(scores, nan=-1.0) >= threshold
        impostors = int(self.impostor_mask.sum())
        genuines = int(self.genuine_mask.sum())
        far = float((passed & self.impostor_mask).sum()) / impostors if impostors else 0.0
        frr = float((~passed & self.genuine_mask).sum()) / genuines if genuines else 0.0
        return far, frr

    def _pair_masks(self, people: frozenset[str] | None) -> tuple[np.ndarray, np.ndarray]:
        """(genuine, impostor) masks of the pairs whose card and live photos are both of ``people``."""
        if people is None:
            return self.genuine_mask, self.impostor_mask
        inside = np.array([p.person in people for p in self.photos])
        both = inside[:, None] & inside[None, :]
        return self.genuine_mask & both, self.impostor_mask & both

    def at_distance(self, distance: float, people: frozenset[str] | None = None) -> OperatingPoint:
        """FAR/FRR when a pair passes at ``distance`` or less (a missing face never passes)."""
        genuine, impostor = self._pair_masks(people)
        passed = np.nan_to_num(self.distances, nan=np.inf) <= distance + DISTANCE_STEP / 2
        impostors, genuines = int(impostor.sum()), int(genuine.sum())
        false_accepts = int((passed & impostor).sum())
        false_rejects = int((~passed & genuine).sum())
        return OperatingPoint(
            distance=round(distance, 4),
            impostor_pairs=impostors,
            false_accepts=false_accepts,
            genuine_pairs=genuines,
            false_rejects=false_rejects,
        )

    def _quantile(self, target_far: float, people: frozenset[str] | None) -> float:
        """``distance_for_far`` on the impostor pairs of ``people`` (all by default)."""
        _, impostor = self._pair_masks(people)
        return distance_for_far(self.distances[impostor], target_far)

    def safety_factor(self, target_far: float, people: frozenset[str] | None = None) -> float:
        """The first of ``SAFETY_FACTORS`` at which the quantile for ``target_far / factor``, cross-validated
        within ``people`` only (``INNER_SPLITS`` halvings, each way), lets through at most ``target_far``
        of the held-out impostor pairs on average; the largest when none does or ``people`` are too few
        (under 4) to split."""
        for factor in SAFETY_FACTORS:

            def choose(half: frozenset[str], factor: float = factor) -> float:
                return self._quantile(target_far / factor, half)

            folds = self._folds(choose, people, INNER_SPLITS, INNER_SEED)
            if folds and np.mean([fold.far for fold in folds]) <= target_far:
                return factor
        return SAFETY_FACTORS[-1]

    def choose(self, target_far: float, people: frozenset[str] | None = None) -> OperatingPoint:
        """The operating point for ``target_far`` on the pairs of ``people`` (all by default): the quantile
        for ``target_far / safety_factor``."""
        factor = self.safety_factor(target_far, people)
        return self.at_distance(self._quantile(target_far / factor, people), people)

    def cross_validate(self, target_far: float, splits: int = CV_SPLITS, seed: int = CV_SEED) -> CrossValidation:
        """Choose on one half of the people (``choose``: its safety factor sees that half only), measure
        on the other; every split both ways. No folds with fewer than 4 people."""
        return CrossValidation(self._folds(lambda half: self.choose(target_far, half).distance, None, splits, seed))

    def _folds(
        self, choose: Callable[[frozenset[str]], float], people: frozenset[str] | None, splits: int, seed: int
    ) -> list[Fold]:
        """The distance ``choose`` gives on one half of ``people`` (all by default), measured on the other
        half; every split both ways. None with fewer than 4 people."""
        counts: dict[str, int] = {}
        for p in self.photos:
            if people is None or p.person in people:
                counts[p.person] = counts.get(p.person, 0) + 1
        if len(counts) < 4:
            return []
        folds = []
        for first, second in person_splits(list(counts), splits, seed, {p for p, n in counts.items() if n >= 2}):
            for chosen_on, measured_on in ((first, second), (second, first)):
                distance = choose(chosen_on)
                point = self.at_distance(distance, measured_on)
                folds.append(Fold(distance, point.far, point.frr, point.impostor_pairs, point.genuine_pairs))
        return folds

    def summary(self) -> CalibrationSummary:
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
        lines = [
            f"{kind}: {s['photos']} photos of {s['people']} people, "
            f"{s['genuine_pairs']} genuine and {s['impostor_pairs']} impostor pairs"
        ]
        for where, labels in (("live", s["no_face_live"]), ("card", s["no_face_card"])):
            if labels:
                lines.append(f"no face found ({where}): {', '.join(labels)}")
        lines.append("")
        lines.append("distance   median    p5      p95     min     max")
        for what, st in (("genuine", s["genuine"]), ("impostor", s["impostor"])):
            if st["n"]:
                lines.append(
                    f"{what:<9} {st['median']:.3f}   {st['p5']:.3f}   {st['p95']:.3f}   "
                    f"{st['min']:.3f}   {st['max']:.3f}"
                )
        lines.append("")
        lines.append(f"score = 1/(1+exp({f.score_slope:g}*(distance-{f.score_midpoint:g})))")
        lines.append("threshold  distance<=   FAR       FRR")
        for t in sorted(set(REPORT_THRESHOLDS) | {f.threshold}):
            far, frr = self.rates(t)
            mark = "  <- configured" if math.isclose(t, f.threshold) else ""
            lines.append(
                f"{t:<9.2f}  {threshold_distance(t, f.score_midpoint, f.score_slope):<10.3f}  "
                f"{far:<8.4%}  {frr:<8.2%}{mark}"
            )
        lines.append("")
        lines.extend(self.decision())
        return "\n".join(lines)

    def pairs(self) -> list[JsonObject]:
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
                out.append(
                    {
                        "card": card.label,
                        "live": live.label,
                        "same": bool(self.same[i, j]),
                        "distance": distance,
                        "score": score,
                        "result": result,
                    }
                )
        return out

    def configured(self) -> OperatingPoint:
        """FAR/FRR at the configured threshold, with the counts."""
        f = self.face
        return self.at_distance(threshold_distance(f.threshold, f.score_midpoint, f.score_slope))

    def chosen_settings(self, point: OperatingPoint) -> dict[str, float]:
        """How to configure ``point``: the threshold at the configured mapping, or the score midpoint
        that keeps the configured threshold."""
        f = self.face
        return {
            "threshold": round(self.score(point.distance), 4),
            "score_midpoint": round(point.distance + math.log(f.threshold / (1 - f.threshold)) / f.score_slope, 4),
        }

    def to_json(self) -> JsonObject:
        far, frr = self.rates(self.face.threshold)
        configured = self.configured()
        target = self.face.target_far
        chosen = self.choose(target)
        return {
            "threshold": self.face.threshold,
            "far": round(far, 6),
            "frr": round(frr, 6),
            "far_upper_95": round(configured.far_upper_95, 6),
            "threshold_distance": configured.distance,
            "impostor_pairs": configured.impostor_pairs,
            "genuine_pairs": configured.genuine_pairs,
            "false_accepts": configured.false_accepts,
            "false_rejects": configured.false_rejects,
            "target_far": target,
            "chosen": {
                "distance": chosen.distance,
                "safety_factor": self.safety_factor(target),
                **self.chosen_settings(chosen),
                "far": round(chosen.far, 6),
                "frr": round(chosen.frr, 6),
                "far_upper_95": round(chosen.far_upper_95, 6),
                "false_accepts": chosen.false_accepts,
                "false_rejects": chosen.false_rejects,
            },
            "cross_validated": self.cross_validate(target).summary(),
            "pairs": self.pairs(),
        }

    def decision(self) -> list[str]:
        """The operating point for ``target_far`` and its cross-validation, for the table."""
        f = self.face
        target = f.target_far
        chosen = self.choose(target)
        settings = self.chosen_settings(chosen)
        configured = self.configured()
        cv = self.cross_validate(target).summary()
        if cv["folds"]:
            cv_lines = [
                f"cross-validated ({cv['folds']} folds: {CV_SPLITS} random halvings of the people, each way; "
                "chosen on one half, measured on the other):",
                f"  FRR mean {cv['frr_mean']:.2%}, max {cv['frr_max']:.2%}; FAR mean {cv['far_mean']:.3%}, "
                f"max {cv['far_max']:.3%}; chosen distance {cv['distance_min']:.3f} .. {cv['distance_median']:.3f} "
                f".. {cv['distance_max']:.3f} (min .. median .. max)",
            ]
        else:
            cv_lines = ["not cross-validated: needs photos of 4 people or more"]
        return [
            f"configured threshold {f.threshold:g} (distance <= {configured.distance:.3f}): "
            f"{configured.false_accepts} of {configured.impostor_pairs} impostor pairs pass "
            f"(FAR 95 % upper bound {configured.far_upper_95:.3%}), "
            f"{configured.false_rejects} of {configured.genuine_pairs} genuine pairs fail",
            "",
            f"operating point for target FAR {target:g}: distance <= {chosen.distance:.4f} "
            f"(the quantile at {target:g} / {self.safety_factor(target):g}, the safety factor that held in an "
            "inner cross-validation)",
            f"  FAR {chosen.far:.3%} ({chosen.false_accepts} of {chosen.impostor_pairs} impostor pairs), "
            f"95 % upper bound {chosen.far_upper_95:.3%}; FRR {chosen.frr:.2%} "
            f"({chosen.false_rejects} of {chosen.genuine_pairs} genuine pairs)",
            f"  set threshold = {settings['threshold']:g} (at score_midpoint {f.score_midpoint:g}), "
            f"or keep threshold {f.threshold:g} and set score_midpoint = {settings['score_midpoint']:g}",
            *cv_lines,
            "  pairs share people: the bounds assume independent pairs, so they are optimistic; a FAR "
            f"below about {3 / max(1, chosen.impostor_pairs):.2%} cannot be claimed from {chosen.impostor_pairs} pairs",
        ]


def _stats(values: np.ndarray) -> DistanceStats:
    if values.size == 0:
        return DistanceStats(n=0)
    return {
        "n": int(values.size),
        "median": float(np.median(values)),
        "p5": float(np.percentile(values, 5)),
        "p95": float(np.percentile(values, 95)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def calibrate(
    engine: FaceEngine,
    directory: Path,
    face: FaceSettings,
    *,
    card_size: tuple[int, int] | None = None,
    card_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    mirror: bool = True,
) -> Calibration:
    """Encode every photo under ``directory`` once (three times with ``card_size``: live, card,
    mirrored card) and pair them all. ``card_transform``, ``mirror``: see ``encode_photo``."""
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
        v, c = encode_photo(engine, bgr, card_size, card_transform=card_transform, mirror=mirror)
        live.append(v)
        card.append(c)
        log.debug("encoded %d/%d %s", n, len(photos), photo.label)
    return Calibration(photos, live, card, face, card_size)
