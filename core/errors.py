"""The one error family of fvagent.

Every error the library raises on purpose is an ``FvagentError``. Leaves also inherit the matching
builtin where one fits (``DeviceTimeout`` is a ``TimeoutError``), carry their context as attributes,
and show that context in ``str()``. The CLI prints ``str(error)`` and, when set, ``error.hint``.
"""

from __future__ import annotations


class FvagentError(Exception):
    """Base of every fvagent error. ``hint`` says how to fix it, for the person reading the message."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None, **context: object) -> None:
        self.message = message
        if hint is not None:
            self.hint = hint
        self.context = {k: v for k, v in context.items() if v is not None}
        for key, value in context.items():
            setattr(self, key, value)
        super().__init__(message)

    def __str__(self) -> str:
        if not self.context:
            return self.message
        details = ", ".join(f"{k}={v}" for k, v in self.context.items())
        return f"{self.message} ({details})"


class _ProblemsError(FvagentError):
    """An error about several named things at once: ``problems`` lists ``(name, rule)`` pairs, and
    ``str()`` shows the message and then one indented line per problem."""

    def __init__(
        self,
        message: str,
        *,
        problems: list[tuple[str, str]] | None = None,
        hint: str | None = None,
        **context: object,
    ) -> None:
        self.problems = list(problems or [])
        super().__init__(message, hint=hint, **context)

    def __str__(self) -> str:
        if not self.problems:
            return super().__str__()
        return "\n".join([self.message] + [f"  {name}: {rule}" for name, rule in self.problems])


class ConfigError(_ProblemsError, ValueError):
    """The configuration is wrong. ``problems`` lists ``(key_path, rule)`` pairs, one per fault."""


class SecretError(ConfigError):
    """A secret could not be read safely (missing file, wrong permissions, empty)."""


class RecordError(_ProblemsError, ValueError):
    """A record breaks the platform spec. ``problems`` lists ``(field, rule)`` pairs, one per fault."""


class CryptoError(FvagentError):
    """SM3/SM4 failed: a bad key, a failed decryption or padding, or a self-test mismatch."""


class PlatformError(FvagentError):
    """Talking to the provincial platform failed in a way that is not one of the four outcomes."""


class PlatformDisabled(PlatformError):
    """``[platform] enabled = false``: the upstream switch is off, so nothing may be sent."""


class AuthError(PlatformError):
    """The Authorization could not be obtained (token endpoint). ``retryable`` says whether trying
    later may help (network, 5xx) or the credentials themselves were refused (fix the config)."""


class OutboxError(FvagentError):
    """The local outbox cannot store or read a record."""


class OutboxCorrupt(OutboxError):
    """The outbox database file is damaged; it was kept aside, never overwritten."""


class StorageFull(OutboxError, OSError):
    """The disk is full: capture cannot be committed. Nothing stored is damaged."""


class KeyFileError(OutboxError):
    """The local data key is missing, unreadable or wrong for the stored data."""


class DriverError(FvagentError):
    """A hardware driver failed. ``device`` names the device."""


class DriverNotFound(DriverError, LookupError):
    """No installed driver has the configured name; the message lists the installed ones."""


class DeviceNotFound(DriverError, FileNotFoundError):
    """The device is not there (unplugged, wrong port, no permission to open it)."""


class DeviceTimeout(DriverError, TimeoutError):
    """The device did not answer in time."""


class ProtocolError(DriverError):
    """A frame from the device breaks the protocol. ``frame_hex`` holds the frame's header (never its body)."""

    frame_hex: str | None = None


class CardReadError(DriverError):
    """The SAM reported a failure reading the card. ``sw3`` and ``meaning`` say which."""


class FaceError(FvagentError):
    """The face engine cannot run (model missing, engine not installed)."""


class LocalApiError(FvagentError):
    """The local API cannot be served (its port is taken, it did not start in time)."""


class AuditError(FvagentError):
    """The audit chain, an export or its signature does not check, or an export cannot be made."""
