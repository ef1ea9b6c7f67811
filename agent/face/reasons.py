"""Why a face check ended as it did: one code per outcome, and the Chinese the operator page shows.

``FaceOutcome.code`` is what crosses to the record meta and the page; ``FaceOutcome.reason`` is the
English line for the log and stays free text (it quotes distances, frame counts, driver errors).
The page maps a code to ``REASON_ZH`` and never reads the English line.
"""

from __future__ import annotations

import enum


class FaceReason(enum.StrEnum):
    """Every way a face check can end. The values are stored in the record meta: never rename one."""

    MATCH = "match"
    """The live face matched the card photo (faceResult 1)."""
    NO_MATCH = "no_match"
    """Faces were compared and the best score stayed under the threshold (faceResult 0)."""
    LIVENESS_FAILED = "liveness_failed"
    """The face matched but the head-turn challenge was not met."""
    LIVENESS_NO_FACE = "liveness_no_face"
    """The head-turn challenge never saw a face."""
    NO_CARD_PHOTO = "no_card_photo"
    CARD_PHOTO_UNREADABLE = "card_photo_unreadable"
    """The card photo is not a decodable image."""
    CARD_ENGINE_FAILED = "card_engine_failed"
    """The face engine failed on the card photo."""
    NO_FACE_ON_CARD = "no_face_on_card"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    """No face engine is loaded."""
    CAMERA_UNAVAILABLE = "camera_unavailable"
    """No camera was open when the verification started."""
    CAMERA_ERROR = "camera_error"
    """The camera failed during capture before any frame was compared."""
    NO_FRAME = "no_frame"
    """The camera delivered no frame in the capture time."""
    NO_LIVE_IMAGE = "no_live_image"
    """Scoring from files (or a held record's stored photo) was given no frame."""
    NO_USABLE_FRAME = "no_usable_frame"
    """Frames came but none was usable, for no quality reason below (bad frames, engine errors)."""
    SEVERAL_FACES = "several_faces"
    """No usable frame, mostly because more than one face was in view."""
    FACE_TOO_SMALL = "face_too_small"
    FACE_BLURRED = "face_blurred"
    FACE_TOO_DARK = "face_too_dark"
    FACE_TOO_BRIGHT = "face_too_bright"
    NO_FACE_LIVE = "no_face_live"
    """No usable frame: no face was found in front of the camera."""
    CAPTURE_STOPPED = "capture_stopped"
    """The service stopped during capture before a face could be compared."""
    RELAYED = "relayed"
    """The terminal computed score and result itself (relay mode, or "both")."""
    TERMINAL_NO_RESULT = "terminal_no_result"
    """Relay mode: the terminal reported no face score."""
    TERMINAL_INVALID = "terminal_invalid"
    """Relay mode: the terminal's score and result break the relay rules."""


REASON_ZH: dict[FaceReason, str] = {
    FaceReason.MATCH: "人证比对一致",
    FaceReason.NO_MATCH: "人证比对不一致",
    FaceReason.LIVENESS_FAILED: "活体检测未通过",
    FaceReason.LIVENESS_NO_FACE: "活体检测时未检测到人脸",
    FaceReason.NO_CARD_PHOTO: "证件照片不可用",
    FaceReason.CARD_PHOTO_UNREADABLE: "证件照片不可用",
    FaceReason.CARD_ENGINE_FAILED: "证件照片不可用",
    FaceReason.NO_FACE_ON_CARD: "证件照片不可用",
    FaceReason.ENGINE_UNAVAILABLE: "未完成人脸比对",
    FaceReason.CAMERA_UNAVAILABLE: "未完成人脸比对",
    FaceReason.CAMERA_ERROR: "摄像头故障，未能采集现场照片",
    FaceReason.NO_FRAME: "摄像头无画面",
    FaceReason.NO_LIVE_IMAGE: "没有现场照片",
    FaceReason.NO_USABLE_FRAME: "未采集到合格的人脸画面",
    FaceReason.SEVERAL_FACES: "未采集到合格的人脸画面（画面中有多张人脸）",
    FaceReason.FACE_TOO_SMALL: "未采集到合格的人脸画面（人脸过小，请靠近摄像头）",
    FaceReason.FACE_BLURRED: "未采集到合格的人脸画面（人脸模糊，请保持不动）",
    FaceReason.FACE_TOO_DARK: "未采集到合格的人脸画面（光线过暗）",
    FaceReason.FACE_TOO_BRIGHT: "未采集到合格的人脸画面（光线过亮或逆光）",
    FaceReason.NO_FACE_LIVE: "未采集到合格的人脸画面（未检测到人脸）",
    FaceReason.CAPTURE_STOPPED: "服务停止，采集中断",
    FaceReason.RELAYED: "终端比对未通过",
    FaceReason.TERMINAL_NO_RESULT: "终端未完成人脸比对",
    FaceReason.TERMINAL_INVALID: "未完成人脸比对",
}
"""What the operator page says for each code (for a pass the page shows no reason)."""

UNKNOWN_REASON_ZH: dict[int, str] = {0: "人证比对未通过", 2: "未完成人脸比对"}
"""By faceResult, for a record without a known code (older rows, a code from a newer version)."""

CAPTURE_CODES = frozenset(
    {
        FaceReason.NO_FRAME,
        FaceReason.NO_USABLE_FRAME,
        FaceReason.SEVERAL_FACES,
        FaceReason.FACE_TOO_SMALL,
        FaceReason.FACE_BLURRED,
        FaceReason.FACE_TOO_DARK,
        FaceReason.FACE_TOO_BRIGHT,
        FaceReason.NO_FACE_LIVE,
    }
)
"""Codes that mean "no usable frame came": when the service stopped mid-capture, the stop is why."""


def parse_reason(value: object) -> FaceReason | None:
    """The code stored in a record's meta or an event, or ``None`` when absent or unknown."""
    if isinstance(value, FaceReason):
        return value
    try:
        return FaceReason(str(value)) if value is not None else None
    except ValueError:
        return None
