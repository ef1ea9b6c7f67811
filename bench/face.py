"""Face engine benchmark: speed, memory and accuracy of the default dlib engine.

Reads the shared test faces (../shared/data/faces, or $FVAGENT_SHARED/data/faces) at run time.
Prints, for a 640x480 frame: detection+encoding median/p95; a whole compare (102x126 card photo +
camera frames -> score, through the fake camera and ``score_live``) for a clear pass and for an
impostor (which reads up to max_compared_frames frames); sustained frames per second through the
scoring loop; peak RSS with the models loaded; and the FAR/FRR tables (camera vs camera, and
102x126 card vs camera). Ends with one line of key=value pairs.

    .venv/bin/python bench/face.py [--runs 20] [--no-accuracy]
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
from agent.face.calibration import calibrate, card_crop  # noqa: E402
from agent.face.scoring import threshold_distance  # noqa: E402
from agent.face.session import working_image  # noqa: E402
from agent.images import decode_image  # noqa: E402
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="repetitions per timing (default 20)")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the FAR/FRR tables (about 40 s)")
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
        pairs.append((name, jpeg(card_crop(src, faces[0], (102, 126)), quality=75),
                      on_canvas(working_image(decode_image(by_person[name][1].read_bytes())))))
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
        print(f"whole compare, genuine ({len(pairs)} people x {rounds}: card 102x126 + camera frames): "
              f"median {statistics.median(g_ms):.0f} ms, p95 {pct(g_ms, 95):.0f} ms; "
              f"{passed}/{len(genuine)} passed, {one_frame} stopped after one frame")
        impostor = [compare(pairs[i][1], pairs[(i + 1) % len(pairs)][2]) for _ in range(rounds) for i in range(len(pairs))]
        i_ms = [i[0] for i in impostor]
        print(f"whole compare, impostor (card + {face.max_compared_frames} frames): "
              f"median {statistics.median(i_ms):.0f} ms, p95 {pct(i_ms, 95):.0f} ms; "
              f"{sum(i[1] == 1 for i in impostor)}/{len(impostor)} falsely passed")

        # sustained: the scoring loop on a camera that always has a frame, for about 5 s
        path = Path(tmp) / "live.png"
        Image.fromarray(np.ascontiguousarray(live[:, :, ::-1])).save(path)
        cam = registry.create("camera", "fake", {"images": [str(path)], "fps": 0})
        sustained = face.model_copy(update={"early_stop_score": 1.0, "max_compared_frames": 200,
                                            "capture_timeout_s": 5.0})
        with cam:
            out = score_live(engine, cam, pairs[0][1], sustained)
        fps = out.frames_seen / out.elapsed_s
        print(f"sustained: {out.frames_seen} frames in {out.elapsed_s:.1f} s = {fps:.1f} frames/s (detect+gates+encode)")

    far = frr = far_card = frr_card = float("nan")
    if not args.no_accuracy:
        print(f"\naccuracy on {FACES.relative_to(SHARED.parent) if FACES.is_relative_to(SHARED.parent) else FACES} "
              f"(threshold {face.threshold} = distance <= "
              f"{threshold_distance(face.threshold, face.score_midpoint, face.score_slope):.3f}):")
        t = time.perf_counter()
        cam_cal = calibrate(engine, FACES, face)
        print(cam_cal.table())
        card_cal = calibrate(engine, FACES, face, card_size=(102, 126))
        print()
        print(card_cal.table())
        print(f"(calibration took {time.perf_counter() - t:.1f} s)")
        far, frr = cam_cal.rates(face.threshold)
        far_card, frr_card = card_cal.rates(face.threshold)
    peak = peak_rss_mb()
    print(f"peak RSS {peak:.0f} MB")
    print(f"detect_encode_p50_ms={det_enc[0]:.0f} detect_encode_p95_ms={det_enc[1]:.0f} "
          f"compare_p50_ms={statistics.median(g_ms):.0f} compare_p95_ms={pct(g_ms, 95):.0f} "
          f"compare_impostor_p50_ms={statistics.median(i_ms):.0f} sustained_fps={fps:.1f} "
          f"rss_loaded_mb={rss_loaded:.0f} peak_rss_mb={peak:.0f} "
          f"far_cam={far:.4f} frr_cam={frr:.4f} far_card={far_card:.4f} frr_card={frr_card:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
