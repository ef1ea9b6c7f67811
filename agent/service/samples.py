"""Sample cards and face images for the demo and the service tests, made at run time.

Identities are synthetic: invented names and addresses, Guangxi area codes, birth dates that agree
with the numbers and valid GB 11643 check digits. The face is NASA's public-domain astronaut
portrait shipped by scikit-image (``skimage.data.astronaut()``, the ``demo`` extra): the card photo
is an ID-framed 102x126 crop of it, live frames are shifted, brightness-changed 640x480 views of
it, and the "no face" frame is a part of the picture below the face. Nothing is copied into the
repository and the shared test faces are never used here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from core.codes import resident_id_check_digit
from core.errors import FvagentError

if TYPE_CHECKING:
    from core.card import IdCard

CARD_SIZE = (102, 126)
FRAME_SIZE = (640, 480)
ASTRONAUT_FACE = (179, 83, 266, 170)
"""The face box (left, top, right, bottom) dlib's HOG detector finds in the 512x512 portrait."""
LIVE_VARIANTS = ((0, 0, 1.0), (20, 10, 0.85), (-25, 5, 1.15), (10, -10, 0.7), (-10, 20, 1.25), (30, -5, 0.9))
"""(dx, dy, brightness gain) of the live frames: a person who moves a little under changing light."""


@dataclasses.dataclass(frozen=True)
class Person:
    name: str
    area: str
    """Six-digit administrative division code (Guangxi)."""
    birth: dt.date
    seq: str
    """Three-digit sequence; odd for male, even for female (the mothers are all female)."""
    nation_code: str
    address: str
    authority: str
    valid_from: dt.date
    valid_to: dt.date | None
    """None: a long-term (长期) card."""
    sees_face: bool = True
    """False: the camera shows no face when this card is read (a verification that cannot score)."""

    @property
    def card_no(self) -> str:
        first17 = f"{self.area}{self.birth:%Y%m%d}{self.seq}"
        return first17 + resident_id_check_digit(first17)


PEOPLE = (
    Person(
        "韦秀兰",
        "450102",
        dt.date(1994, 3, 12),
        "024",
        "27",
        "广西南宁市兴宁区示例路1号",
        "南宁市公安局兴宁分局",
        dt.date(2015, 6, 1),
        dt.date(2035, 6, 1),
    ),
    Person(
        "黄丽萍",
        "450203",
        dt.date(1991, 11, 5),
        "046",
        "27",
        "广西柳州市鱼峰区样本街22号",
        "柳州市公安局鱼峰分局",
        dt.date(2012, 2, 20),
        dt.date(2032, 2, 20),
    ),
    Person(
        "覃美玲",
        "450305",
        dt.date(1997, 7, 30),
        "008",
        "27",
        "广西桂林市七星区演示巷8号",
        "桂林市公安局七星分局",
        dt.date(2019, 9, 9),
        dt.date(2029, 9, 9),
    ),
    Person(
        "陈小燕",
        "450103",
        dt.date(1988, 1, 18),
        "062",
        "01",
        "广西南宁市青秀区虚构大道300号",
        "南宁市公安局青秀分局",
        dt.date(2008, 4, 1),
        dt.date(2028, 4, 1),
    ),
    Person(
        "蒙春花",
        "450802",
        dt.date(1975, 5, 2),
        "040",
        "27",
        "广西贵港市港北区测试村5组",
        "贵港市公安局港北分局",
        dt.date(2016, 3, 3),
        None,
    ),
    Person(
        "李晓梅",
        "450521",
        dt.date(1999, 12, 24),
        "086",
        "01",
        "广西北海市合浦县样例镇3号",
        "合浦县公安局",
        dt.date(2020, 1, 10),
        dt.date(2030, 1, 10),
        sees_face=False,
    ),
)


def astronaut_rgb() -> np.ndarray:
    """The 512x512 RGB portrait from scikit-image. Raises ``FvagentError`` naming the extra to install."""
    try:
        from skimage import data
    except ImportError as exc:
        raise FvagentError(
            "the demo's face image comes from scikit-image, which is not installed",
            hint="pip install 'fvagent[demo]' (make demo does it)",
        ) from exc
    # scikit-image ships no type hints: name the one function used with the type it has.
    astronaut: Callable[[], np.ndarray] = data.astronaut
    return np.asarray(astronaut())


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, :, ::-1])


def card_photo_jpeg(rgb: np.ndarray | None = None) -> bytes:
    """The card photo: ID framing around the face, 102x126, JPEG."""
    from agent.face.calibration import card_crop
    from agent.face.engine import DetectedFace
    from core.images import encode_jpeg

    bgr = _bgr(astronaut_rgb() if rgb is None else rgb)
    left, top, right, bottom = ASTRONAUT_FACE
    face = DetectedFace(left=left, top=top, right=right, bottom=bottom, landmarks=None)
    return encode_jpeg(card_crop(bgr, face, CARD_SIZE), quality=92)


def live_frame(dx: int, dy: int, gain: float, rgb: np.ndarray | None = None) -> np.ndarray:
    """A 640x480 BGR camera frame of the face, moved by (dx, dy) and lit by ``gain``."""
    from PIL import Image

    rgb = astronaut_rgb() if rgb is None else rgb
    left, top, right, bottom = ASTRONAUT_FACE
    cx, cy = (left + right) // 2 + dx, (top + bottom) // 2 + 24 + dy
    w, h = FRAME_SIZE[0] // 2, FRAME_SIZE[1] // 2
    x0, y0 = cx - w // 2, max(0, cy - h // 2)
    view = Image.fromarray(rgb).crop((x0, y0, x0 + w, y0 + h)).resize(FRAME_SIZE, Image.Resampling.BILINEAR)
    lit = np.clip(np.asarray(view).astype(np.float32) * gain, 0, 255).astype(np.uint8)
    return _bgr(lit)


def no_face_frame(rgb: np.ndarray | None = None) -> np.ndarray:
    """A 640x480 BGR frame of the lower part of the portrait (suit and flag): no face in it."""
    from PIL import Image

    rgb = astronaut_rgb() if rgb is None else rgb
    view = Image.fromarray(rgb[330:, :, :]).resize(FRAME_SIZE, Image.Resampling.BILINEAR)
    return _bgr(np.asarray(view))


def sample_card(person: Person, photo_jpeg: bytes | None, **overrides: object) -> IdCard:
    """An ``IdCard`` for ``person`` as a fake reader yields it (marked simulated)."""
    from core.card import IdCard

    fields: dict[str, Any] = dict(
        card_type="0",
        name=person.name,
        sex_code="2",
        birth_date=person.birth,
        card_no=person.card_no,
        valid_from=person.valid_from,
        valid_to=person.valid_to,
        nation_code=person.nation_code,
        address=person.address,
        authority=person.authority,
        photo_jpeg=photo_jpeg,
        simulated=True,
    )
    fields.update(overrides)
    return IdCard(**fields)


class SampleImages(TypedDict):
    """The sample JPEGs ``write_images`` wrote: the card photo, the live frames, the no-face frame."""

    card: Path
    live: list[Path]
    no_face: Path


def write_images(directory: Path) -> SampleImages:
    """Write the card photo, the live frames and the no-face frame as JPEGs into ``directory``.

    Returns ``{"card": Path, "live": [Path, ...], "no_face": Path}``.
    """
    from core.images import encode_jpeg

    directory.mkdir(parents=True, exist_ok=True)
    rgb = astronaut_rgb()
    card = directory / "card-photo.jpg"
    card.write_bytes(card_photo_jpeg(rgb))
    live_dir = directory / "live"
    live_dir.mkdir(exist_ok=True)
    live = []
    for i, (dx, dy, gain) in enumerate(LIVE_VARIANTS):
        path = live_dir / f"live-{i}.jpg"
        path.write_bytes(encode_jpeg(live_frame(dx, dy, gain, rgb)))
        live.append(path)
    no_face = directory / "no-face.jpg"
    no_face.write_bytes(encode_jpeg(no_face_frame(rgb)))
    return SampleImages(card=card, live=live, no_face=no_face)


def toml_text(doc: Mapping[str, object], *, header: str = "") -> str:
    """A small TOML writer for configuration documents: tables, strings, numbers, booleans, dates
    and lists of those (all the config uses)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    if lines:
        lines.append("")

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, dt.date):
            return v.isoformat()
        if isinstance(v, Path):
            v = str(v)
        if isinstance(v, str):
            escaped = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            return f'"{escaped}"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} as TOML")

    def table(name: str, body: Mapping[str, object]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        if name:
            lines.append(f"[{name}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        lines.append("")
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{name}.{k}" if name else k, v)

    table("", doc)
    return "\n".join(lines).rstrip() + "\n"
