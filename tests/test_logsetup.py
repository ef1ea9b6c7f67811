"""Logging: stderr or journald with structured fields, and ID numbers masked whatever the caller did."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import LoggingSettings
from agent.logsetup import JournalHandler, mask_id_numbers, setup_logging
from core.codes import resident_id_check_digit

FIRST17 = "45020319900101051"  # synthetic: Liuzhou area code, 1990-01-01
CARD_NO = FIRST17 + resident_id_check_digit(FIRST17)
MASKED = CARD_NO[:4] + "*" * 10 + CARD_NO[-4:]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def test_mask_id_numbers_shapes() -> None:
    assert mask_id_numbers(f"card {CARD_NO} read") == f"card {MASKED} read"
    assert mask_id_numbers("x 45020319900101051X.") == "x 4502**********051X."
    assert mask_id_numbers("old 450203900101051") == "old 4502*******1051"  # 15-digit resident ID
    assert mask_id_numbers("foreign USA450203900101") == "foreign USA4*******0101"
    assert mask_id_numbers(f'json {{"cardNo":"{CARD_NO}"}}') == f'json {{"cardNo":"{MASKED}"}}'
    # not ID numbers: longer digit runs, epoch milliseconds, hex digests
    assert mask_id_numbers("t=1732312345678 n=1234567890123456789") == "t=1732312345678 n=1234567890123456789"
    assert (
        mask_id_numbers("sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b")
        == "sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"
    )


def test_stderr_handler_masks_args_and_tracebacks() -> None:
    stream = io.StringIO()
    setup_logging(LoggingSettings(level="DEBUG", journald="off"), stream=stream)
    log = logging.getLogger("fvagent.test")
    log.info("card %s verified", CARD_NO)
    try:
        raise ValueError(f"bad card {CARD_NO}")
    except ValueError:
        log.exception("failed for %s", {"cardNo": CARD_NO})
    out = stream.getvalue()
    assert CARD_NO not in out
    assert out.count(MASKED) >= 3  # the message, the argument dict, the traceback
    assert "Traceback" in out


def test_level_and_handler_replaced_on_reload() -> None:
    stream = io.StringIO()
    setup_logging(LoggingSettings(level="WARNING", journald="off"), stream=stream)
    setup_logging(LoggingSettings(level="WARNING", journald="off"), stream=stream)
    names = [h.get_name() for h in logging.getLogger().handlers]
    assert names.count("fvagent") == 1
    logging.getLogger("x").info("hidden")
    logging.getLogger("x").warning("shown")
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, message: str, **fields: Any) -> None:
        self.sent.append((message, fields))


def test_journald_structured_fields_masked() -> None:
    recorder = Recorder()
    setup_logging(LoggingSettings(level="INFO", journald="on"), journal_sender=recorder)
    logging.getLogger("agent.service.verification").warning(
        "verification %d of %s", 7, CARD_NO, extra={"FVAGENT_OUTBOX_ID": 7, "FVAGENT_CARD": CARD_NO}
    )
    ((message, fields),) = recorder.sent
    assert message == f"verification 7 of {MASKED}"
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "fvagent"
    assert fields["LOGGER"] == "agent.service.verification"
    assert fields["FVAGENT_OUTBOX_ID"] == "7"
    assert fields["FVAGENT_CARD"] == MASKED
    assert "CODE_ARGS" not in fields and isinstance(fields["CODE_LINE"], int)
    assert CARD_NO not in repr(recorder.sent)


def test_each_text_is_masked_exactly_once_and_reads_right(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.logsetup

    masked: list[str] = []

    def counting_mask(text: str) -> str:
        masked.append(text)
        return mask_id_numbers(text)

    monkeypatch.setattr(agent.logsetup, "mask_id_numbers", counting_mask)
    stream = io.StringIO()
    setup_logging(LoggingSettings(level="INFO", journald="off"), stream=stream)
    logging.getLogger("fvagent.test").info("card %s verified", CARD_NO)
    assert masked == [f"card {CARD_NO} verified"]  # the formatter does not mask it a second time
    assert stream.getvalue().rstrip("\n").endswith(f"INFO fvagent.test: card {MASKED} verified")

    masked.clear()
    recorder = Recorder()
    setup_logging(LoggingSettings(level="INFO", journald="on"), journal_sender=recorder)
    logging.getLogger("fvagent.test").warning("card %s refused", CARD_NO, extra={"FVAGENT_CARD": CARD_NO})
    assert sorted(masked) == sorted([f"card {CARD_NO} refused", CARD_NO])  # the message and the field, once each
    ((message, fields),) = recorder.sent
    assert message == f"card {MASKED} refused" and fields["FVAGENT_CARD"] == MASKED


def test_auto_uses_journal_only_when_stderr_is_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    with open(tmp_path / "stream", "w") as stream:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        handler = setup_logging(LoggingSettings(journald="auto"), stream=stream, journal_sender=recorder)
        assert isinstance(handler, logging.StreamHandler)
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        handler = setup_logging(LoggingSettings(journald="auto"), stream=stream, journal_sender=recorder)
        assert isinstance(handler, JournalHandler)


def test_default_sender_is_systemd_journal_when_installed() -> None:
    journal = pytest.importorskip("systemd.journal", reason="systemd-python (the journald extra) is not installed")
    assert JournalHandler()._send is journal.send


# The journald side as systemd runs it: the real systemd.journal.send (libsystemd) writing the native
# journal protocol to /run/systemd/journal/socket. A private mount namespace (as root) puts our own
# datagram socket there, so the test reads exactly what journald would receive.
JOURNAL_RECEIVER = textwrap.dedent(r"""
    import json, logging, os, socket, struct
    from agent.config import LoggingSettings
    from agent.logsetup import JournalHandler, setup_logging

    os.makedirs("/run/systemd/journal", exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("/run/systemd/journal/socket")
    sock.settimeout(10)
    handler = setup_logging(LoggingSettings(level="INFO", journald="on"))
    assert isinstance(handler, JournalHandler), handler
    logging.getLogger("agent.service.verification").warning(
        "verification %d of %s", 7, "{card}", extra={{"FVAGENT_OUTBOX_ID": 7, "FVAGENT_CARD": "{card}"}})
    data = sock.recv(1 << 20)
    fields, i = {{}}, 0
    while i < len(data):  # KEY=value\n, or KEY\n + little-endian u64 length + bytes + \n
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = end + 1
        else:
            key, (size,) = line, struct.unpack("<Q", data[end + 1:end + 9])
            value = data[end + 9:end + 9 + size]
            i = end + 10 + size
        fields[key.decode()] = value.decode()
    print(json.dumps({{"fields": fields, "raw": data.decode("utf-8", "replace")}}))
""")


def test_real_journal_protocol_carries_masked_structured_fields(tmp_path: Path) -> None:
    pytest.importorskip("systemd.journal", reason="systemd-python (the journald extra) is not installed")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to give the test its own /run/systemd/journal")
    script = tmp_path / "receiver.py"
    script.write_text(JOURNAL_RECEIVER.format(card=CARD_NO), encoding="utf-8")
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'mount -t tmpfs fvagent-test /run && exec "{sys.executable}" "{script}"',
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if proc.returncode != 0 and "mount" in proc.stderr and "receiver.py" not in proc.stderr:
        pytest.skip(f"cannot make a private /run here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    fields = doc["fields"]
    assert fields["MESSAGE"] == f"verification 7 of {MASKED}"
    assert fields["PRIORITY"] == "4" and fields["SYSLOG_IDENTIFIER"] == "fvagent"
    assert fields["LOGGER"] == "agent.service.verification"
    assert fields["FVAGENT_OUTBOX_ID"] == "7" and fields["FVAGENT_CARD"] == MASKED
    assert fields["CODE_FUNC"] == "<module>" and fields["CODE_LINE"].isdigit()
    assert CARD_NO not in doc["raw"]


def test_without_systemd_python_on_falls_back_to_stderr(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import logging, sys
        sys.modules["systemd"] = None  # as if systemd-python were not installed
        from agent.config import LoggingSettings
        from agent.logsetup import setup_logging
        handler = setup_logging(LoggingSettings(journald="on"))
        assert isinstance(handler, logging.StreamHandler), handler
        logging.getLogger("t").info("card %s", "{CARD_NO}")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "systemd-python is not installed" in proc.stderr
    assert MASKED in proc.stderr and CARD_NO not in proc.stderr
