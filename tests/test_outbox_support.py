"""Helpers shared by the outbox, uploader and durability tests (no tests here).

Synthetic identities only: ID numbers carry a valid GB 11643 check digit, names are invented.
Photos are small real JPEGs made from generated pixels.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import StorageSettings
from core import codes
from core.images import encode_jpeg

DEVICE_TOML = """\
[device]
machine_code = "TS0001"
device_no = "SN0001"
manufacturer = "德生实名易"
model = "TSR-R3"
purchase_date = 2024-01-02
dept_id = "D01"
dept_name = "妇产科"
register_user = "管理员"
operator = "覃护士"
"""
"""The [device] table of the test configs (synthetic, valid for the records' rules)."""

CONFIG = (
    DEVICE_TOML
    + """
[platform]
base_url = "{url}"
environment = "test"
allow_plain_http = true
org_app_id = "APP0001"
org_app_secret = "0123456789abcdef"
enabled = {enabled}
encrypt = {encrypt}

[platform.auth]
kind = "static"
ticket = "ESB-TICKET-1"

[storage]
dir = "{state_dir}"
{storage_extra}

[uploader]
backoff_initial_s = {backoff_initial_s}
backoff_max_s = {backoff_max_s}
max_rps = {max_rps}
concurrency = {concurrency}
poll_interval_s = 0.2
"""
)


def write_config(
    path: Path,
    *,
    url: str = "http://127.0.0.1:9/api",
    state_dir: Path,
    enabled: bool = True,
    encrypt: bool = False,
    backoff_initial_s: float = 0.05,
    backoff_max_s: float = 0.5,
    max_rps: float = 200.0,
    concurrency: int = 4,
    storage_extra: str = "",
) -> Path:
    path.write_text(
        CONFIG.format(
            url=url,
            state_dir=state_dir,
            enabled=str(enabled).lower(),
            encrypt=str(encrypt).lower(),
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            max_rps=max_rps,
            concurrency=concurrency,
            storage_extra=storage_extra,
        ),
        encoding="utf-8",
    )
    return path


def card_no(n: int) -> str:
    """A synthetic resident ID number, unique per ``n`` (< 1000 per birth day), valid check digit."""
    day = dt.date(1990, 1, 1) + dt.timedelta(days=n // 900)
    first17 = "450203" + day.strftime("%Y%m%d") + f"{n % 900 + 100:03d}"
    return first17 + codes.resident_id_check_digit(first17)


def jpeg(seed: int = 0, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    return encode_jpeg(frame, quality=80)


_SMALL_JPEG_B64 = base64.b64encode(jpeg()).decode()


def record(n: int = 0, *, photo_b64: str | None = None, verify_time: dt.datetime | None = None) -> dict[str, Any]:
    """A valid verification payload (spec field names) for synthetic person ``n``."""
    number = card_no(n)
    birth = dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    moment = verify_time or (dt.datetime(2024, 6, 11, 8, 0, 0) + dt.timedelta(seconds=n))
    img = photo_b64 or _SMALL_JPEG_B64
    return {
        "realName": "韦测试",
        "cardType": 0,
        "cardNo": number,
        "sexCode": "2",
        "sexName": "女",
        "nationalCode": "08",
        "nationalName": "壮",
        "operationUser": "覃护士",
        "birthday": birth.isoformat(),
        "address": "广西壮族自治区南宁市青秀区测试路1号",
        "police": "南宁市公安局青秀分局",
        "cardStartDate": "2015-03-01",
        "cardEndDate": "2035-03-01",
        "headImg": img,
        "cameraImg": img,
        "faceScore": 0.86,
        "faceResult": 1,
        "verifyDate": moment.date().isoformat(),
        "verifyTime": moment.strftime("%Y-%m-%d %H:%M:%S"),
        "certTimeoutStatus": 0,
        "deviceNo": "SN0001",
        "machineCode": "TS0001",
    }


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Any]:
    """The real mock platform on loopback with the test configs' credentials (import it to use it)."""
    from agent import mock_platform

    config = mock_platform.MockPlatformConfig(
        org_app_id="APP0001", org_app_secret="0123456789abcdef", ticket="ESB-TICKET-1"
    )
    mock = mock_platform.MockPlatform(config, tmp_path / "mock-platform.db").start()
    yield mock
    mock.stop()


def storage(tmp_path: Path, **kw: Any) -> StorageSettings:
    return StorageSettings(dir=tmp_path / "state", **kw)
