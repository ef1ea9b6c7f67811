"""``fvagent demo``: the whole agent against a local mock platform, with an outage in the middle.

What runs: the mock platform (a real HTTP server on loopback with its own SQLite), and the daemon's
``Service`` in this process with the ``fake`` card reader over the sample cards of
``agent.service.samples`` (synthetic identities) and the ``fake`` camera over frames made from the
public-domain astronaut portrait. One sample person is shown to a camera that sees no face, so the
"cannot score" path (faceResult 2 with the reason) is part of the run.

The run: ``count`` verifications, one card at a time; after the first third the mock platform is
taken down (records keep being captured and queue up), after the second third it comes back; then
the demo waits for the backlog to drain and prints the table. Exit 0 only when every captured record
was delivered, checked against the mock platform's own database.

The camera is two fake cameras behind a switch (faces / no face) that the demo flips per card, so
each card meets the scene it is meant to; the reader is the fake reader fed one card per step.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from agent.service import samples
from core.records import JsonObject
from core.stored import RecordState

if TYPE_CHECKING:
    from core.images import Frame

log = logging.getLogger(__name__)

DEMO_PORT = 8600
"""The mock platform's port in a written demo configuration."""
STEP_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 90.0


def demo_config(
    workdir: Path,
    platform: str | JsonObject,
    images: samples.SampleImages,
    *,
    card_dir: Path | None = None,
    state_dir: Path | None = None,
) -> JsonObject:
    """The configuration the demo runs with, as a TOML-ready document. ``platform`` is the
    ``[platform]`` table (the mock's ``platform_section``) or just a base URL (demo credentials)."""
    reader: dict[str, Any] = {"driver": "fake"}
    if card_dir is not None:
        reader.update(_fake_reader_options(card_dir))
    if isinstance(platform, str):
        from agent.mock_platform import MockPlatformConfig, platform_section

        platform = platform_section(MockPlatformConfig(), platform)  # the mock's demo credentials
    platform = {**platform, "timeout_s": 3.0, "connect_timeout_s": 1.0}
    return {
        "device": {
            "machine_code": "DEMO-TSR-0001",
            "device_no": "0001",
            "manufacturer": "演示厂商",
            "model": "DEMO-1",
            "purchase_date": "2024-06-01",
            "dept_id": "0601",
            "dept_name": "妇产科",
            "register_user": "演示管理员",
            "operator": "演示护士",
        },
        "platform": platform,
        "storage": {"dir": str(state_dir or workdir / "state")},
        # Recover from the outage within a second or two of the platform's return.
        "uploader": {"backoff_initial_s": 0.2, "backoff_max_s": 1.5, "poll_interval_s": 0.2, "max_rps": 50.0},
        "card_reader": reader,
        "camera": {"driver": "fake", "images": [str(p) for p in images["live"]], "fps": 15},
        "face": {"mode": "compute", "capture_timeout_s": 2.0},
        "local_api": {"enabled": False},
        "logging": {"level": "WARNING", "journald": "off"},
    }


def _fake_reader_options(card_dir: Path) -> dict[str, Any]:
    """The fake reader over the sample cards in ``card_dir``, one tap every 3 s (soak runs)."""
    return {"fixtures_dir": str(card_dir), "cycle_interval_s": 3.0}


def write_sample_cards(card_dir: Path, photo: Path) -> list[Path]:
    """One fixture file per sample person for the fake reader (synthetic identities)."""
    import json

    card_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, person in enumerate(samples.PEOPLE):
        doc = {
            "card_type": "0",
            "name": person.name,
            "sex_code": "2",
            "birth_date": person.birth.isoformat(),
            "card_no": person.card_no,
            "valid_from": person.valid_from.isoformat(),
            "valid_to": person.valid_to.isoformat() if person.valid_to else None,
            "nation_code": person.nation_code,
            "address": person.address,
            "authority": person.authority,
            "photo": str(photo),
        }
        path = card_dir / f"card-{i + 1:02d}.json"
        path.write_text(json.dumps(doc, ensure_ascii=False, indent=2), encoding="utf-8")
        written.append(path)
    return written


def write_demo_config(path: str | os.PathLike[str], *, workdir: str | None = None, port: int = DEMO_PORT) -> Path:
    """``fvagent demo --write-config FILE``: the demo's configuration, reusable with ``fvagent run``.

    Images and sample cards go to ``<FILE's directory>/fvagent-demo-data`` (or ``workdir``); the
    platform URL is a mock platform on ``port``; the state directory is beside them.
    """
    target = Path(path).resolve()
    data = Path(workdir).resolve() if workdir else target.parent / "fvagent-demo-data"
    images = samples.write_images(data / "faces")
    card_dir = data / "cards"
    write_sample_cards(card_dir, images["card"])
    from agent.mock_platform import MockPlatformConfig, platform_section

    platform = platform_section(MockPlatformConfig(encrypt=True), f"http://127.0.0.1:{port}")
    doc = demo_config(data, platform, images, card_dir=card_dir, state_dir=data / "state")
    doc["logging"] = {"level": "INFO", "journald": "auto"}
    doc["local_api"] = {"enabled": True, "listen": "127.0.0.1:8787"}
    from agent.cli import invocation

    fvagent = invocation(absolute=True)  # the file outlives the directory it was written from
    header = (
        f"fvagent demo configuration (written by fvagent demo --write-config).\n"
        f"Fake reader and camera over synthetic sample cards: every record is marked simulated.\n"
        f"Start the mock platform it talks to, then the agent:\n"
        f"  {fvagent} mock-platform --port {port} --db {data / 'mock-platform.db'} --config {target}\n"
        f"  {fvagent} run --config {target}\n"
        f"Or point [platform] at a platform's test endpoint to soak-test it."
    )
    target.write_text(samples.toml_text(doc, header=header), encoding="utf-8")
    target.chmod(0o600)  # it holds the demo secret inline
    return target


# --------------------------------------------------------------------------------------------------
# Drivers the demo steers


def _switch_camera(faces: Any, no_face: Any) -> Any:
    """A camera that shows ``faces`` or ``no_face`` (two fake cameras), as the demo chooses."""
    from drivers.base import Camera

    class DemoCamera(Camera):
        simulated: ClassVar[bool] = True

        def __init__(self) -> None:
            super().__init__(name="fake (demo switch)")
            self.show_face = True

        def describe(self) -> str:
            return f"fake camera showing {'a face' if self.show_face else 'no face'}"

        def _open(self) -> None:
            faces.open()
            no_face.open()

        def _close(self) -> None:
            faces.close()
            no_face.close()

        def _read_frame(self, timeout_s: float) -> Frame | None:
            frame: Frame = (faces if self.show_face else no_face).read_frame(timeout_s)
            return frame

    return DemoCamera()


def _fed_reader() -> Any:
    """The fake reader, fed one sample card per step by the demo."""
    import collections

    from drivers.base import CardReader, CardReaderSettings

    class DemoReader(CardReader):
        simulated: ClassVar[bool] = True

        def __init__(self) -> None:
            super().__init__(CardReaderSettings(poll_interval_s=0.05), name="fake (demo)")
            self.queue: collections.deque[Any] = collections.deque()

        def describe(self) -> str:
            return "fake reader over the sample cards"

        def _open(self) -> None:
            pass

        def _close(self) -> None:
            pass

        def _poll_card(self) -> Any:
            return self.queue.popleft() if self.queue else None

    return DemoReader()


# --------------------------------------------------------------------------------------------------
# The mock platform


class _Platform:
    """The mock platform on a fixed loopback port, so it can go down (stopped: connections are
    refused) and come back at the same URL, over the same database."""

    def __init__(self, workdir: Path, *, encrypt: bool = True) -> None:
        from agent.mock_platform import MockPlatformConfig

        self.db = workdir / "mock-platform.db"
        self.config = MockPlatformConfig(encrypt=encrypt, port=_free_port())
        self.url = f"http://127.0.0.1:{self.config.port}"
        self._mock: Any = None

    def start(self) -> None:
        from agent.mock_platform import MockPlatform

        self._mock = MockPlatform(self.config, self.db).start()

    def stop(self) -> None:
        if self._mock is not None:
            self._mock.stop()
            self._mock = None

    @property
    def up(self) -> bool:
        return self._mock is not None

    def section(self) -> JsonObject:
        """The agent's [platform] table for this mock."""
        from agent.mock_platform import platform_section

        return platform_section(self.config, self.url)

    def delivered(self) -> set[tuple[str, str, str]]:
        """Natural keys (machineCode, cardNo, verifyTime) of the verifications the mock accepted."""
        if self._mock is None:
            raise RuntimeError("the mock platform is down")
        return set(self._mock.delivered())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class DemoResult:
    captured: int = 0
    queued_during_outage: int = 0
    delivered: int = 0
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)
    not_delivered: int = 0
    latencies: list[float] = dataclasses.field(default_factory=list)
    results: dict[int, int] = dataclasses.field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.captured > 0 and self.delivered == self.captured and not self.rejected

    def table(self) -> str:
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) if lat else 0.0
        p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))] if lat else 0.0
        rows = [
            ("captured", str(self.captured)),
            ("queued during the outage", str(self.queued_during_outage)),
            ("delivered", f"{self.delivered} of {self.captured}"),
            ("rejected", str(sum(self.rejected.values()))),
        ]
        rows += [(f"  - {reason}", str(n)) for reason, n in sorted(self.rejected.items())]
        if self.not_delivered:
            rows.append(("not delivered", str(self.not_delivered)))
        rows += [
            ("faceResult 1 / 0 / 2", " / ".join(str(self.results.get(k, 0)) for k in (1, 0, 2))),
            ("verification latency p50", f"{p50 * 1000:.0f} ms"),
            ("verification latency p95", f"{p95 * 1000:.0f} ms"),
            ("demo run time", f"{self.elapsed_s:.1f} s"),
        ]
        width = max(len(k) for k, _ in rows)
        line = "+" + "-" * (width + 2) + "+" + "-" * 14 + "+"
        body = [f"| {k:<{width}} | {v:>12} |" for k, v in rows]
        return "\n".join([line, *body, line])


def run_demo(*, count: int = 36, workdir: str | None = None, out: Callable[[str], None] = print) -> int:
    """Run the demo; returns the exit code (0 only when every captured record was delivered)."""
    from agent.logsetup import setup_logging

    setup_logging(None)
    logging.getLogger().setLevel(logging.ERROR)  # the demo's own lines are the output
    if count < 3:
        out("fvagent demo: --count must be at least 3")
        return 2
    keep = workdir is not None
    base = Path(workdir).resolve() if workdir is not None else Path(tempfile.mkdtemp(prefix="fvagent-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        result = _run(base, count, out)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    out("")
    out(result.table())
    if result.ok:
        from agent.cli import invocation

        out(
            f"OK: all {result.captured} captured verifications were delivered (checked in the mock platform's "
            "database)."
        )
        out(
            f"Next: {invocation()} demo --write-config demo.toml writes this setup for `run`; "
            f"{invocation()} --help lists every command."
        )
        return 0
    out("FAILED: not every captured verification was delivered (see the table).")
    return 1


def _run(base: Path, count: int, out: Callable[[str], None]) -> DemoResult:
    from agent.config import parse_config
    from agent.service.notify import Notifier
    from agent.service.service import Service
    from core.privacy import mask_name
    from drivers import registry

    t_start = time.monotonic()
    out(f"fvagent demo: {count} verifications with synthetic sample cards, the mock platform goes down and comes back")
    out(f"  working directory: {base}")
    images = samples.write_images(base / "faces")
    card_photo = images["card"].read_bytes()
    platform = _Platform(base)
    platform.start()
    out(f"  mock platform at {platform.url} (SM4-encrypted bodies, HMAC-SM3 signatures)")
    settings = parse_config(demo_config(base, platform.section(), images), validate_drivers=False)
    faces = registry.create("camera", "fake", dict(settings.camera.options))
    no_face = registry.create("camera", "fake", {"images": [str(images["no_face"])], "fps": 15})
    camera = _switch_camera(faces, no_face)
    reader = _fed_reader()
    service = Service(
        settings, reader=reader, camera=camera, notifier=Notifier(backend="socket", environ={}), start_local_api=False
    )
    out("  loading the face engine and opening the outbox ...")
    service.start()
    outbox = service.outbox
    assert outbox is not None  # start() opened it, or raised
    result = DemoResult()
    down_at, up_at = count // 3, (2 * count) // 3
    last_seen: dict[str, float] = {}
    try:
        for i in range(count):
            if i == down_at:
                platform.stop()
                out(f"  -- platform DOWN (verifications {down_at + 1}..{up_at} are captured while it is down) --")
            if i == up_at:
                platform.start()
                out("  -- platform back UP: the queue drains --")
            person = samples.PEOPLE[i % len(samples.PEOPLE)]
            # The natural key (machineCode, cardNo, verifyTime) has one-second resolution: never
            # verify the same card twice within one second.
            wait = last_seen.get(person.card_no, 0.0) + 1.05 - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            last_seen[person.card_no] = time.monotonic()
            camera.show_face = person.sees_face
            before = service.verifications
            reader.queue.append(samples.sample_card(person, card_photo))
            deadline = time.monotonic() + STEP_TIMEOUT_S
            while service.verifications == before and time.monotonic() < deadline:
                time.sleep(0.01)
            done = service.last_verification
            if service.verifications == before or done is None:
                out(f"  [{i + 1:2}/{count}] no verification within {STEP_TIMEOUT_S:.0f} s")
                continue
            if done.outbox_id is not None:
                result.captured += 1
                result.latencies.append(done.latency_s)
                result.results[done.result] = result.results.get(done.result, 0) + 1
                if not platform.up:
                    result.queued_during_outage += 1
            stats = outbox.stats()
            queue = stats["pending"] + stats["sending"]
            text = "passed" if done.result == 1 else ("FAILED" if done.result == 0 else "not verified")
            reason = f" ({done.reason})" if done.result != 1 else ""
            out(
                f"  [{i + 1:2}/{count}] {mask_name(person.name)} {done.card_no_masked} faceResult {done.result} "
                f"{text}, score {done.score:.2f}, {done.latency_s * 1000:4.0f} ms{reason} | queue {queue}, "
                f"delivered {stats['sent']}, platform {'up' if platform.up else 'DOWN'}"
            )
        if not platform.up:
            platform.start()
        out("  waiting for the queue to drain ...")
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        last_print = 0.0
        while time.monotonic() < deadline:
            stats = outbox.stats()
            if stats["pending"] + stats["sending"] == 0:
                break
            if time.monotonic() - last_print > 1.0:
                out(f"  ... {stats['pending'] + stats['sending']} waiting, {stats['sent']} delivered")
                last_print = time.monotonic()
            time.sleep(0.1)
        stats = outbox.stats()
        for row in outbox.list(RecordState.REJECTED, limit=1000):
            reason = row.last_error or "rejected"
            result.rejected[reason] = result.rejected.get(reason, 0) + 1
        delivered_keys = platform.delivered()
        ours = set()
        for row in outbox.list(None, limit=100000):
            payload = outbox.payload(row.id) or {}
            ours.add((str(payload.get("machineCode")), str(payload.get("cardNo")), str(payload.get("verifyTime"))))
        result.delivered = min(stats["sent"], len(ours & delivered_keys))
        result.not_delivered = result.captured - result.delivered - sum(result.rejected.values())
    finally:
        service.stop()
        platform.stop()
    result.elapsed_s = time.monotonic() - t_start
    return result
