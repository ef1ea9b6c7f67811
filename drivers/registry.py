"""The one way to find a driver: entry points, built-ins included, imported lazily.

A vendor package adds a driver by declaring an entry point in one of ``GROUPS`` (for example
``[project.entry-points."fvagent.card_readers"] acme = "acme_fvagent:AcmeReader"``); nothing in
fvagent changes. An unknown name is an error that lists the installed names; a driver whose optional
dependency is missing says which package to install.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic import ValidationError

from core.errors import ConfigError, DriverNotFound
from drivers.base import Driver, DriverSettings

GROUPS = {
    "card_reader": "fvagent.card_readers",
    "camera": "fvagent.cameras",
    "fingerprint": "fvagent.fingerprint_readers",
    "face_engine": "fvagent.face_engines",
}


def _entry_points(kind: str) -> dict[str, EntryPoint]:
    try:
        group = GROUPS[kind]
    except KeyError:
        raise DriverNotFound(f"unknown plugin kind {kind!r}; kinds: {', '.join(GROUPS)}") from None
    return {ep.name: ep for ep in entry_points(group=group)}


def available(kind: str) -> list[str]:
    """The installed plugin names of ``kind``, sorted."""
    return sorted(_entry_points(kind))


# Modules whose pip package has another name (the built-in drivers' dependencies).
_PACKAGE_OF_MODULE = {"serial": "pyserial", "usb": "pyusb", "cv2": "opencv-python-headless", "dlib": "dlib-bin"}


# Any: EntryPoint.load() returns Any, and the groups hold face engines (agent.face.FaceEngine) as well
# as drivers, so the caller checks what it got (create() takes it as a Driver, load_engine checks).
def load_class(kind: str, name: str) -> type[Any]:
    """Import and return the plugin class registered as ``name`` for ``kind``.

    Raises ``DriverNotFound`` listing the installed names, or naming the package to install when
    the plugin's own import fails.
    """
    eps = _entry_points(kind)
    ep = eps.get(name)
    if ep is None:
        installed = ", ".join(sorted(eps)) or "none"
        raise DriverNotFound(
            f"no {kind} driver named {name!r}; installed: {installed}",
            hint="set driver to one of the installed names, or install the vendor's package",
        )
    try:
        cls: type[Any] = ep.load()
        return cls
    except ImportError as exc:
        missing = exc.name or str(exc)
        package = _PACKAGE_OF_MODULE.get(missing.split(".")[0])
        dist = getattr(getattr(ep, "dist", None), "name", None)
        hint = (
            f"pip install {package} into fvagent's venv"
            if package
            else f"install the package that provides {missing!r} into fvagent's venv"
        )
        if dist:
            hint += f" (reinstalling {dist} brings its dependencies)"
        raise DriverNotFound(f"{kind} driver {name!r} cannot load: module {missing!r} is missing", hint=hint) from exc


def validate_settings(kind: str, name: str, options: Mapping[str, object]) -> DriverSettings:
    """Validate a driver's own config section; raise ``ConfigError`` with ``(key, rule)`` problems."""
    try:
        cls = load_class(kind, name)
    except DriverNotFound as exc:
        raise ConfigError(exc.message, problems=[("driver", exc.message)]) from exc
    try:
        settings: DriverSettings = cls.Settings.model_validate(options)
        return settings
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "driver"
            rule = "unknown key for driver " + repr(name) if err["type"] == "extra_forbidden" else err["msg"]
            problems.append((loc, rule.removeprefix("Value error, ")))
        raise ConfigError(f"invalid settings for {kind} driver {name!r}", problems=problems) from exc


def create(kind: str, name: str, options: Mapping[str, object] | None = None) -> Driver:
    """Build (not open) the driver ``name`` of ``kind`` from its config options."""
    cls = load_class(kind, name)
    settings = validate_settings(kind, name, options or {})
    driver: Driver = cls(settings, name=name)
    return driver
