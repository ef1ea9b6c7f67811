"""Synthetic payloads that pass the mock platform's checks: for tests, benches and bench-testing.

Identities are invented: the ID numbers carry a valid GB 11643 check digit but belong to no one
(the region 450203 and the serial range are arbitrary), names and addresses are made up, and the
photos are small generated JPEGs, not faces.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
from typing import Any

from core import codes
from core.records import Payload


def synthetic_card_no(n: int) -> str:
    """A resident ID number unique per ``n`` (< 900 per birth day) with a valid check digit."""
    day = dt.date(1992, 3, 1) + dt.timedelta(days=n // 900)
    first17 = "450203" + day.strftime("%Y%m%d") + f"{n % 900 + 100:03d}"
    return first17 + codes.resident_id_check_digit(first17)


@functools.lru_cache(maxsize=1)
def small_jpeg_b64() -> str:
    """A 32x32 generated JPEG as base64 (the real JPEG magic and structure, no face)."""
    import numpy as np

    from core.images import encode_jpeg

    ramp = np.linspace(0, 255, 32 * 32 * 3, dtype=np.float64).reshape(32, 32, 3).astype(np.uint8)
    return base64.b64encode(encode_jpeg(ramp, quality=80)).decode("ascii")


def sample_registration(*, machine_code: str = "MOCK0001", device_no: str = "SN-MOCK-0001", status: int = 0) -> Payload:
    """A POST /machine/info body."""
    return {
        "deptId": "D-OB-01",
        "deptName": "妇产科",
        "machineManufacturer": "演示厂商",
        "machineMode": "DEMO-R3",
        "purchaseTime": "2024-01-02",
        "machineCode": machine_code,
        "deviceNo": device_no,
        "status": status,
        "registerUser": "设备管理员",
        "registerTime": "2024-06-11T15:39:15.072",
    }


def sample_verification(
    n: int = 0, *, machine_code: str = "MOCK0001", device_no: str = "SN-MOCK-0001", **overrides: object
) -> Payload:
    """A POST /verification/pregnant_woman/first body for synthetic person ``n``; ``overrides``
    replace fields (to break one on purpose)."""
    number = synthetic_card_no(n)
    birth = dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    moment = dt.datetime(2024, 6, 11, 8, 0, 0) + dt.timedelta(seconds=n)
    img = small_jpeg_b64()
    payload: dict[str, Any] = {
        "realName": "黎示例",
        "cardType": 0,
        "cardNo": number,
        "sexCode": "2",
        "sexName": "女",
        "nationalCode": "01",
        "nationalName": "汉",
        "operationUser": "演示护士",
        "birthday": birth.isoformat(),
        "address": "广西壮族自治区南宁市示例区演示路1号",
        "police": "南宁市公安局示例分局",
        "cardStartDate": "2016-05-01",
        "cardEndDate": "2036-05-01",
        "headImg": img,
        "cameraImg": img,
        "faceScore": 0.86,
        "faceResult": 1,
        "verifyDate": moment.date().isoformat(),
        "verifyTime": moment.strftime("%Y-%m-%d %H:%M:%S"),
        "certTimeoutStatus": 0,
        "deviceNo": device_no,
        "machineCode": machine_code,
    }
    payload.update(overrides)
    return payload
