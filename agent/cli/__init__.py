"""The `fvagent` command: a thin layer over the library.

Each command group lives in its own module with a ``register(subparsers)`` function that adds its
parsers and sets ``func(args) -> int`` on each. Modules import heavy libraries (dlib, cv2, uvicorn)
inside their handlers, so `fvagent --help` and `fvagent status` stay fast.

The library raises domain errors; here they become a message, a hint, and a non-zero exit code
(2 for configuration errors, 1 for every other failure).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import __version__
from core.errors import ConfigError, FvagentError

COMMAND_MODULES = (
    "agent.cli.config_cmd",
    "agent.cli.platform_cmd",
    "agent.cli.mock_cmd",
    "agent.cli.queue_cmd",
    "agent.cli.audit_cmd",
    "agent.cli.outbox_cmd",
    "agent.cli.card_cmd",
    "agent.cli.face_cmd",
    "agent.cli.service_cmd",
)

DEFAULT_CONFIG = "/etc/fvagent/fvagent.toml"


def default_config_path() -> str:
    """$FVAGENT_CONFIG, else the path the systemd unit and install script use."""
    return os.environ.get("FVAGENT_CONFIG", DEFAULT_CONFIG)


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """The shared --config option (default $FVAGENT_CONFIG or /etc/fvagent/fvagent.toml)."""
    parser.add_argument(
        "--config",
        "-c",
        metavar="PATH",
        default=None,
        help=f"configuration file (default: $FVAGENT_CONFIG or {DEFAULT_CONFIG})",
    )


def config_path(args: argparse.Namespace) -> str:
    return getattr(args, "config", None) or default_config_path()


def invocation(*, absolute: bool = False) -> str:
    """How to type this fvagent again from the current directory, for commands we print.

    ``fvagent`` when that name on PATH is this very program; otherwise the path it was started
    by (``.venv/bin/fvagent`` after ``make demo``; made absolute with ``absolute``, for text that
    outlives this directory), or ``python -m agent`` when run that way.
    """
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if program is None or program.name in ("__main__.py", "-c"):
        return f"{sys.executable} -m agent"
    on_path = shutil.which("fvagent")
    if on_path and program.exists() and Path(on_path).resolve() == program.resolve():
        return "fvagent"
    if not program.exists():
        return "fvagent"
    return str(program.absolute()) if absolute else str(program)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="fvagent", description="ID-card and live-face verification agent")
    parser.add_argument("--version", "-V", action="version", version=f"fvagent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        _print_error(exc)
        return 2
    except FvagentError as exc:
        _print_error(exc)
        return 1


def _print_error(exc: FvagentError) -> None:
    print(f"fvagent: error: {exc}", file=sys.stderr)
    if exc.hint:
        print(f"fvagent: hint: {exc.hint}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
