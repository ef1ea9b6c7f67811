"""Configuration fingerprints: when to register again, and when a blocked uploader may resume.

A fingerprint is a keyed digest (HMAC-SM3 under the outbox key) of settings, secrets included, so
a changed secret counts as a change and the stored value reveals nothing offline.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, SecretStr

if TYPE_CHECKING:
    from agent.config import DeviceSettings, PlatformSettings


class _Fingerprinter(Protocol):
    def fingerprint(self, data: bytes) -> str: ...


def _plain(value: object) -> object:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return _plain(dict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path | dt.date | dt.datetime):
        return str(value)
    return value


def settings_bytes(*parts: object) -> bytes:
    """Canonical bytes of settings models (secrets revealed: only ever fed to a keyed digest)."""
    return json.dumps([_plain(p) for p in parts], sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")


def platform_fingerprint(keyed: _Fingerprinter, platform: PlatformSettings) -> str:
    """Changes whenever anything in ``[platform]`` changes (URL, credentials, conventions, TLS files' paths)."""
    return keyed.fingerprint(b"platform\x00" + settings_bytes(platform))


def device_fingerprint(keyed: _Fingerprinter, device: DeviceSettings, platform: PlatformSettings) -> str:
    """Changes when ``[device]`` changes, or the device is pointed at another platform or org app id."""
    return keyed.fingerprint(b"device\x00" + settings_bytes(device, platform.base_url, platform.org_app_id))


def platform_identity_fingerprint(keyed: _Fingerprinter, platform: PlatformSettings) -> str:
    """Names the platform itself (its URL and our org app id), not how we talk to it: what it is
    known to do (sign its replies) stays known across changes of conventions or credentials."""
    return keyed.fingerprint(b"platform-identity\x00" + settings_bytes(platform.base_url, platform.org_app_id))
