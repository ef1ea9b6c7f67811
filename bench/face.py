"""Face engine benchmark: speed, memory and accuracy of the default dlib engine.

Reads the shared test faces (../shared/data/faces, or $FVAGENT_SHARED/data/faces) at run time.
Prints, for a 640x480 frame: detection+encoding median/p95; a whole compare (102x126 card photo +
camera frames -> score, through the fake camera and ``score_live``) for a clear pass and for an
impostor (which reads up to max_compared_frames frames); sustained frames per second through the
scoring loop; peak RSS with the models loaded; and the FAR/FRR tables with the operating point for
[face] target_far, cross-validated (camera vs camera, 102x126 card vs camera, and that card
compressed to 2 KB JPEG 2000); the grey zone's effect on impostors; with --card-side, the card
encoding with and without its mirror. Ends with one line of key=value pairs.

    .venv/bin/python bench/face.py [--runs 20] [--no-accuracy] [--card-side]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import FaceSettings  # noqa: E402
from agent.face import load_engine, score_live  # noqa: E402
from agent.face.calibration import Calibration, calibrate, card_crop  # noqa: E402
from agent.face.scoring import threshold_distance  # noqa: E402
from agent.face.session import working_image  # noqa: E402
from core.images import decode_image, encode_jpeg  # noqa: E402
from drivers import registry  # noqa: E402

SHARED = Path(os.environ.get("FVAGENT_SHARED", ROOT.parent / "shared"))
FACES = SHARED / "data" / "faces"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def on_canvas(bgr: np.ndarray, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
    img.thumbnail(size)
    canvas = Image.new("RGB", size, (128, 128, 128))
    canvas.paste(img, ((size[0] - img.width) // 2, (size[1] - img.height) // 2))
    return np.ascontiguousarray(np.asarray(canvas)[:, :, ::-1])


def jpeg(bgr: np.ndarray, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def jpeg2000_card(bgr: np.ndarray, max_bytes: int = 2048) -> np.ndarray:
    """The card crop as a chip photo would arrive: JPEG 2000 at the largest rate within ``max_bytes``
    (bisection on the compression ratio), decoded, then JPEG q90 as ``normalize_jpeg`` stores it."""
    img = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
    lo, hi, best = 2.0, 400.0, b""
    for _ in range(20):
        ratio = (lo * hi) ** 0.5
        buf = io.BytesIO()
        img.save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[ratio])
        if len(buf.getvalue()) <= max_bytes:
            best, hi = buf.getvalue(), ratio
        else:
            lo = ratio
    return decode_image(encode_jpeg(decode_image(best)))


def grey_zone(cal: Calibration, face: FaceSettings, frames: int, rounds: int = 200, seed: int = 5) -> dict[str, float]:
    """Best-of-frames with and without the grey-zone retry, from the calibration's distances.

    A person with 2 x ``frames`` photos or more stands in for a camera: each round takes a random
    ``frames`` of their photos as the first frames and ``frames`` more as the retry's. Photos of one
    person differ far more than frames of one sitting, so this overstates what extra frames give
    an impostor (an upper bound on the FAR the retry adds).
    """
    rng = np.random.default_rng(seed)
    limit = threshold_distance(face.threshold, face.score_midpoint, face.score_slope)
    band_low = threshold_distance(max(1e-6, face.threshold - face.retry_band), face.score_midpoint, face.score_slope)
    people = np.array([p.person for p in cal.photos])
    counts = {k: {"trials": 0, "one": 0, "best": 0, "retry": 0, "retried": 0} for k in ("impostor", "genuine")}
    closest: dict[str, list[float]] = {"first": [], "all": []}  # impostor best-of-frames distances
    d = np.nan_to_num(cal.distances, nan=np.inf)
    for i in range(len(cal.photos)):
        for person in sorted(set(people)):
            idx = np.where(people == person)[0]
            idx = idx[idx != i]
            if idx.size < 2 * frames:
                continue
            c = counts["genuine" if person == people[i] else "impostor"]
            for _ in range(rounds):
                order = rng.permutation(idx)
                first, more = d[i, order[:frames]].min(), d[i, order[frames : 2 * frames]].min()
                retried = limit < first <= band_low
                c["trials"] += 1
                c["one"] += d[i, order[0]] <= limit
                c["best"] += first <= limit
                c["retried"] += retried
                c["retry"] += first <= limit or (retried and more <= limit)
                if person != people[i]:
                    closest["first"].append(first)
                    closest["all"].append(min(first, more))
    out = {
        f"{k}_{what}": v[what] / v["trials"] if what != "trials" else v["trials"]
        for k, v in counts.items()
        for what in v
    }
    for what, values in closest.items():  # how much nearer the best of twice the frames comes
        out[f"impostor_{what}_min"] = float(np.min(values))
        out[f"impostor_{what}_q001"] = float(np.quantile(values, 0.001))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="repetitions per timing (default 20)")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the FAR/FRR tables (about 90 s)")
    parser.add_argument(
        "--card-side",
        action="store_true",
        help="also compare the card encoding with and without its mirror (about 2 min more)",
    )
    args = parser.parse_args()
    # Every timed compare opens a fake camera on purpose: its "simulated driver" warning says nothing here.
    logging.getLogger("drivers.base").setLevel(logging.ERROR)
    if not FACES.is_dir():
        print(f"needs the shared test faces at {FACES}", file=sys.stderr)
        return 2
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"machine: nproc={os.cpu_count()} cpu={cpu!r} python={platform.python_version()}")
    face = FaceSettings()
    rss_before = rss_mb()
    engine = load_engine(face)
    t = time.perf_counter()
    engine.load()
    load_s = time.perf_counter() - t
    rss_loaded = rss_mb()
    print(f"models loaded in {load_s:.2f} s; RSS {rss_before:.0f} MB before, {rss_loaded:.0f} MB after")

    def read(rel: str) -> np.ndarray:
        return working_image(decode_image((FACES / rel).read_bytes()))

    # one genuine pair per person with two photos or more: card = ID crop of the first (102x126,
    # JPEG q75), live = the second on a 640x480 canvas; impostor = the next person's live photo
    from agent.face.calibration import list_photos

    by_person: dict[str, list[Path]] = {}
    for p in list_photos(FACES):
        by_person.setdefault(p.person, []).append(p.path)
    people = [name for name, files in by_person.items() if len(files) >= 2]
    pairs = []
    for name in people:
        src = working_image(decode_image(by_person[name][0].read_bytes()))
        faces = engine.detect(src) or engine.detect(src, upsample=1)
        pairs.append(
            (
                name,
                jpeg(card_crop(src, faces[0], (102, 126)), quality=75),
                on_canvas(working_image(decode_image(by_person[name][1].read_bytes()))),
            )
        )
    live = pairs[0][2]

    # detection + encoding on one 640x480 frame
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        faces = engine.detect(live)
        engine.encode(live, faces[0])
        times.append((time.perf_counter() - t) * 1000)
    det_enc = (statistics.median(times), pct(times, 95))
    print(f"detect+encode 640x480: median {det_enc[0]:.0f} ms, p95 {det_enc[1]:.0f} ms")
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        engine.detect(live)
        times.append((time.perf_counter() - t) * 1000)
    print(f"  of which detection: median {statistics.median(times):.0f} ms")

    with tempfile.TemporaryDirectory() as tmp:  # derived frames live only in a temporary folder

        def compare(card: bytes, frame: np.ndarray) -> tuple[float, int, int]:
            path = Path(tmp) / "frame.png"
            Image.fromarray(np.ascontiguousarray(frame[:, :, ::-1])).save(path)
            cam = registry.create("camera", "fake", {"images": [str(path)], "fps": 0})
            with cam:
                t = time.perf_counter()
                out = score_live(engine, cam, card, face)
                return (time.perf_counter() - t) * 1000, out.result, out.frames_seen

        rounds = max(2, -(-args.runs // len(pairs)))
        genuine = [compare(card, frame) for _ in range(rounds) for _, card, frame in pairs]
        g_ms = [g[0] for g in genuine]
        passed = sum(g[1] == 1 for g in genuine)
        one_frame = sum(g[2] == 1 for g in genuine)
        print(
            f"whole compare, genuine ({len(pairs)} people x {rounds}: card 102x126 + camera frames): "
            f"median {statistics.median(g_ms):.0f} ms, p95 {pct(g_ms, 95):.0f} ms; "
            f"{passed}/{len(genuine)} passed, {one_frame} stopped after one frame"
        )
        impostor = [
            compare(pairs[i][1], pairs[(i + 1) % len(pairs)][2]) for _ in range(rounds) for i in range(len(pairs))
        ]
        i_ms = [i[0] for i in impostor]
        print(
            f"whole compare, impostor (card + {face.max_compared_frames} frames): "
            f"median {statistics.median(i_ms):.0f} ms, p95 {pct(i_ms, 95):.0f} ms; "
            f"{sum(i[1] == 1 for i in impostor)}/{len(impostor)} falsely passed"
        )

        # sustained: the scoring loop on a camera that always has a frame, for about 5 s
        path = Path(tmp) / "live.png"
        Image.fromarray(np.ascontiguousarray(live[:, :, ::-1])).save(path)
        cam = registry.create("camera", "fake", {"images": [str(path)], "fps": 0})
        sustained = face.model_copy(
            update={"early_stop_score": 1.0, "max_compared_frames": 200, "capture_timeout_s": 5.0}
        )
        with cam:
            out = score_live(engine, cam, pairs[0][1], sustained)
        fps = out.frames_seen / out.elapsed_s
        print(
            f"sustained: {out.frames_seen} frames in {out.elapsed_s:.1f} s = {fps:.1f} frames/s (detect+gates+encode)"
        )

    far = frr = far_card = frr_card = far_j2k = frr_j2k = float("nan")
    cv_card: dict[str, float] = {}
    cv_j2k: dict[str, float] = {}
    if not args.no_accuracy:
        print(
            f"\naccuracy on {FACES.relative_to(SHARED.parent) if FACES.is_relative_to(SHARED.parent) else FACES} "
            f"(threshold {face.threshold} = distance <= "
            f"{threshold_distance(face.threshold, face.score_midpoint, face.score_slope):.3f}):"
        )
        t = time.perf_counter()
        cam_cal = calibrate(engine, FACES, face)
        print(cam_cal.table())
        card_cal = calibrate(engine, FACES, face, card_size=(102, 126))
        print()
        print(card_cal.table())
        j2k_cal = calibrate(engine, FACES, face, card_size=(102, 126), card_transform=jpeg2000_card)
        print("\ncard compressed to <= 2 KB JPEG 2000:")
        print(j2k_cal.table())
        print(f"(calibration took {time.perf_counter() - t:.1f} s)")
        far, frr = cam_cal.rates(face.threshold)
        far_card, frr_card = card_cal.rates(face.threshold)
        far_j2k, frr_j2k = j2k_cal.rates(face.threshold)
        cv_card = card_cal.cross_validate(face.target_far).summary()
        cv_j2k = j2k_cal.cross_validate(face.target_far).summary()
        if args.card_side:  # what the mirrored card encoding brings (docs/face.md)
            print(
                "\ncard side, cross-validated at target FAR (chosen on one half of the people, measured on the other):"
            )
            print("| card | mirror | FRR mean | FRR max | FAR mean | FAR max | full-set distance | full-set FRR |")
            for name, transform in (("102x126", None), ("102x126 JPEG 2000 2 KB", jpeg2000_card)):
                for mirror in (False, True):
                    cal = calibrate(engine, FACES, face, card_size=(102, 126), card_transform=transform, mirror=mirror)
                    cv = cal.cross_validate(face.target_far).summary()
                    point = cal.choose(face.target_far)
                    print(
                        f"| {name} | {'yes' if mirror else 'no'} | {cv['frr_mean']:.2%} | {cv['frr_max']:.2%} | "
                        f"{cv['far_mean']:.3%} | {cv['far_max']:.3%} | {point.distance:.3f} | {point.frr:.2%} |"
                    )
        for name, cal in (("102x126", card_cal), ("JPEG 2000 2 KB", j2k_cal)):
            g = grey_zone(cal, face, face.max_compared_frames)
            print(
                f"grey zone ({name} card, best of {face.max_compared_frames} photos, then {face.max_compared_frames} "
                f"more when in the band): impostor {g['impostor_trials']:.0f} trials: one frame passes "
                f"{g['impostor_one']:.4%}, best of {face.max_compared_frames} {g['impostor_best']:.4%}, with the retry "
                f"{g['impostor_retry']:.4%} (retried {g['impostor_retried']:.3%}); genuine {g['genuine_trials']:.0f}: "
                f"pass {g['genuine_best']:.3%} -> {g['genuine_retry']:.3%} (retried {g['genuine_retried']:.3%})"
            )
            print(
                f"  impostor best of {face.max_compared_frames} photos: closest {g['impostor_first_min']:.3f}, "
                f"0.1 % quantile {g['impostor_first_q001']:.3f}; best of {2 * face.max_compared_frames}: closest "
                f"{g['impostor_all_min']:.3f}, 0.1 % quantile {g['impostor_all_q001']:.3f} (threshold "
                f"{threshold_distance(face.threshold, face.score_midpoint, face.score_slope):.3f})"
            )
    peak = peak_rss_mb()
    print(f"peak RSS {peak:.0f} MB")
    print(
        f"detect_encode_p50_ms={det_enc[0]:.0f} detect_encode_p95_ms={det_enc[1]:.0f} "
        f"compare_p50_ms={statistics.median(g_ms):.0f} compare_p95_ms={pct(g_ms, 95):.0f} "
        f"compare_impostor_p50_ms={statistics.median(i_ms):.0f} sustained_fps={fps:.1f} "
        f"rss_loaded_mb={rss_loaded:.0f} peak_rss_mb={peak:.0f} "
        f"far_cam={far:.4f} frr_cam={frr:.4f} far_card={far_card:.4f} frr_card={frr_card:.4f} "
        f"far_j2k={far_j2k:.4f} frr_j2k={frr_j2k:.4f} "
        f"cv_frr_card={cv_card.get('frr_mean', float('nan')):.4f} "
        f"cv_far_card={cv_card.get('far_mean', float('nan')):.4f} "
        f"cv_frr_j2k={cv_j2k.get('frr_mean', float('nan')):.4f} cv_far_j2k={cv_j2k.get('far_mean', float('nan')):.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
