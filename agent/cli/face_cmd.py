"""`fvagent face compare` and `fvagent face calibrate`: the face engine on files, for technicians.

Both use the [face] settings of the configuration file when there is one (--config, else
$FVAGENT_CONFIG or /etc/fvagent/fvagent.toml when it exists), else the defaults; ``--threshold``
overrides the threshold for a what-if.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli import Subparsers, add_command, add_config_arg, add_group, default_config_path
from core.errors import ConfigError

if TYPE_CHECKING:
    from agent.config import FaceSettings


def register(sub: Subparsers) -> None:
    """compare faces and calibrate the face threshold

    Run the face engine on image files.
    """
    face_sub = add_group(sub, "face", "SUBCOMMAND", register)
    compare = add_command(face_sub, "compare", cmd_compare, config=False)
    compare.add_argument("card", metavar="CARD_IMAGE", help="the card photo (JPEG/PNG/BMP)")
    compare.add_argument("live", metavar="LIVE_IMAGE", nargs="+", help="live image(s), e.g. camera snapshots")
    _common(compare)

    calibrate = add_command(face_sub, "calibrate", cmd_calibrate, config=False)
    calibrate.add_argument("dir", metavar="DIR", help="folder with one sub-folder of photos per person")
    calibrate.add_argument(
        "--card-size",
        metavar="WxH",
        default=None,
        help="crop each card photo in ID framing and scale it to this size, e.g. 102x126 "
        "(the chip photo); default: the whole photo",
    )
    calibrate.add_argument(
        "--json",
        action="store_true",
        help='print {"threshold", "far", "frr", "far_upper_95", "chosen", "cross_validated", '
        '"pairs": [...], ...} instead of the table (docs/face.md)',
    )
    calibrate.add_argument(
        "--target-far",
        type=float,
        default=None,
        metavar="RATE",
        help="false-accept rate to pick the operating point for, instead of [face] target_far (default 0.001)",
    )
    _common(calibrate)


def _common(parser: argparse.ArgumentParser) -> None:
    """--config (after the positional arguments, so --help lists them as before) and --threshold."""
    add_config_arg(parser)
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="SCORE",
        help="score threshold to apply instead of the configured one (0..1)",
    )


def face_settings(args: argparse.Namespace) -> FaceSettings:
    """[face] of the configuration file when there is one, else the defaults; --threshold applied."""
    from pydantic import ValidationError

    from agent.config import FaceSettings, load_config

    path = getattr(args, "config", None)
    if path is None and Path(default_config_path()).is_file():
        path = default_config_path()
    face = load_config(path, validate_drivers=False).face if path else FaceSettings()
    if args.threshold is not None:
        try:
            face = FaceSettings.model_validate(
                {
                    **face.model_dump(),
                    "threshold": args.threshold,
                    "early_stop_score": max(face.early_stop_score, args.threshold),
                }
            )
        except ValidationError:
            raise ConfigError(f"--threshold must be between 0 and 1, not {args.threshold}") from None
    return face


def _read(path: str, what: str) -> bytes:
    from core.errors import FvagentError

    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise FvagentError(f"cannot read {what} {path}: {exc.strerror}") from exc


def cmd_compare(args: argparse.Namespace) -> int:
    """score live images against a card photo; prints JSON

    Compare CARD_IMAGE (the card photo) with one or more live images, as a verification compares it with camera
    frames: quality gates, the closest good image counts. Prints JSON {"distance", "score", "result", "reason",
    ...}; result 1 passed, 0 failed, 2 not verified.
    """
    from agent.face import load_engine, score_frames
    from core.images import ImageError, decode_image

    face = face_settings(args)
    engine = load_engine(face)
    card = _read(args.card, "card image")
    frames, unreadable = [], []
    for path in args.live:
        try:
            frames.append(decode_image(_read(path, "live image"), what=path))
        except ImageError:
            unreadable.append(path)
    outcome = score_frames(engine, frames, card, face)
    live_paths = [p for p in args.live if p not in unreadable]
    best = live_paths[outcome.best_frame_index] if outcome.best_frame_index is not None else None
    report = {
        "distance": outcome.distance,
        "score": outcome.score,
        "result": outcome.result,
        "reason": outcome.reason,
        "best_live": best,
        "live_images": len(args.live),
        "rejected": outcome.rejects,
        "unreadable": unreadable,
    }
    print(json.dumps(report, ensure_ascii=False, indent=2))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """FAR/FRR table over a folder of photos, one sub-folder per person

    Treat each photo in DIR (one sub-folder per person) in turn as the card and every other photo as the live
    image; print the genuine/impostor distances and FAR/FRR at several thresholds, the configured one included.
    """
    from agent.face import load_engine
    from agent.face.calibration import calibrate, parse_card_size

    face = face_settings(args)
    if args.target_far is not None:
        if not 0 < args.target_far < 1:
            raise ConfigError(
                f"--target-far must be between 0 and 1, not {args.target_far}",
                hint="e.g. --target-far 0.001 (one false accept in a thousand impostor pairs)",
            )
        face = face.model_copy(update={"target_far": args.target_far})
    card_size = None
    if args.card_size:
        try:
            card_size = parse_card_size(args.card_size)
        except ValueError as exc:
            raise ConfigError(str(exc), hint="for the ID card chip photo use --card-size 102x126") from None
    engine = load_engine(face)
    result = calibrate(engine, Path(args.dir), face, card_size=card_size)
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        print(result.table())
    return 0
