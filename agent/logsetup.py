"""Logging for the daemon and the CLI: stderr, or journald with structured fields.

``setup_logging(settings.logging)`` installs one handler on the root logger:

- journald (``[logging] journald = "on"``, or ``"auto"`` when systemd-python is installed and
  stderr is connected to the journal, as systemd's ``$JOURNAL_STREAM`` says): each entry carries
  ``PRIORITY``, ``SYSLOG_IDENTIFIER=fvagent``, ``LOGGER``, ``THREAD_NAME``, the code location, and
  every ``extra={"FVAGENT_...": value}`` the caller gave (e.g. ``FVAGENT_OUTBOX_ID``), so
  ``journalctl -u fvagent FVAGENT_EVENT=verification`` finds them;
- stderr otherwise (under systemd without the journal module, the journal still captures stderr).

Whatever the destination, ``MaskingFilter`` is a safety net for privacy: any ID number that slipped
into a message, its arguments, a traceback or a ``FVAGENT_*`` field is shown masked
(``4502**********0516``) by ``core.privacy.mask_id_numbers``, once per text. Code must still mask
names and numbers itself; this only catches mistakes.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

# The ID-number rule alone, not mask_personal: its name rule would also mask the word after any
# "address" in ordinary log text ("appended address not read").
from core.privacy import mask_id_numbers

if TYPE_CHECKING:
    from agent.config import LoggingSettings

JournalSender = Callable[..., object]
"""``systemd.journal.send``'s shape: ``send(message, **fields)``."""

FIELD_PREFIX = "FVAGENT_"
"""``extra`` keys with this prefix become journald fields."""

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class MaskingFilter(logging.Filter):
    """Masks ID numbers, once, in everything a handler can show of a record, in place: the message,
    the traceback and stack, and the ``FVAGENT_*`` extras.

    The message is formatted here (``msg % args``) and the arguments dropped, so no handler can
    show an unmasked argument (systemd's JournalHandler, for one, would log ``args`` as a field).
    The traceback is formatted here too (``exc_text``, which formatters reuse), and the extras
    become strings (journald fields are text), so the formatter and the handler mask nothing again.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the parts, masked
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = mask_id_numbers(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_id_numbers(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_id_numbers(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key.startswith(FIELD_PREFIX) and value is not None:
                setattr(record, key, mask_id_numbers(str(value)))
        return True


_TRACEBACKS = logging.Formatter()
"""Formats tracebacks for ``MaskingFilter`` the way every ``logging.Formatter`` does."""


class JournalHandler(logging.Handler):
    """Sends records to journald with structured fields through ``sender`` (``systemd.journal.send``).

    It masks nothing itself: ``setup_logging`` gives it the ``MaskingFilter``, which masks the
    message and the ``FVAGENT_*`` fields before ``emit`` sees them."""

    def __init__(self, sender: JournalSender | None = None, *, identifier: str = "fvagent") -> None:
        super().__init__()
        if sender is None:
            from systemd import journal

            sender = journal.send
        self._send = sender
        self.identifier = identifier

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            fields: dict[str, str] = {
                "PRIORITY": str(_PRIORITY.get(record.levelno, 6)),
                "SYSLOG_IDENTIFIER": self.identifier,
                "LOGGER": record.name,
                "THREAD_NAME": record.threadName or "",
            }
            for key, value in record.__dict__.items():
                if key.startswith(FIELD_PREFIX) and value is not None:
                    fields[key] = str(value)
            self._send(message, CODE_FILE=record.pathname, CODE_LINE=record.lineno, CODE_FUNC=record.funcName, **fields)
        except Exception:
            self.handleError(record)


def journald_available() -> bool:
    """True when systemd-python's journal module can be imported."""
    try:
        from systemd import journal  # noqa: F401
    except ImportError:
        return False
    return True


def stderr_is_journal(stream: TextIO | None = None, environ: dict[str, str] | None = None) -> bool:
    """True when ``stream`` (stderr) is the journal's stream, per ``$JOURNAL_STREAM`` (device:inode)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def setup_logging(
    settings: LoggingSettings | None = None,
    *,
    stream: TextIO | None = None,
    journal_sender: JournalSender | None = None,
) -> logging.Handler:
    """Install fvagent's one root handler (replacing the previous one) and return it.

    ``settings`` is a ``LoggingSettings`` (``level``, ``journald``); ``None`` means INFO to stderr.
    ``journald = "on"`` without systemd-python logs to stderr and says so once. Calling it again
    (SIGHUP reload) swaps the handler and level.
    """
    level = settings.level if settings is not None else "INFO"
    mode = settings.journald if settings is not None else "off"
    stream = stream or sys.stderr
    use_journal = False
    warn_missing = False
    if mode == "on":
        use_journal = journal_sender is not None or journald_available()
        warn_missing = not use_journal
    elif mode == "auto":
        use_journal = (journal_sender is not None or journald_available()) and stderr_is_journal(stream)
    handler: logging.Handler
    if use_journal:
        handler = JournalHandler(journal_sender)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(stream)
        # Under systemd without the journal module, journald adds its own timestamp and name.
        fmt = (
            "%(levelname)s %(name)s: %(message)s"
            if stderr_is_journal(stream)
            else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(MaskingFilter())
    handler.set_name("fvagent")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "fvagent":
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(logging.getLevelNamesMapping()[level])
    # Libraries that chatter at INFO about every request.
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    if warn_missing:
        logging.getLogger(__name__).warning(
            '[logging] journald = "on" but systemd-python is not installed: logging to stderr '
            "(install the extra: pip install 'fvagent[journald]')"
        )
    return handler
