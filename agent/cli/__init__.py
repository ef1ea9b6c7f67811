"""The `fvagent` command: a thin layer over the library.

Each command group lives in its own module with a ``register(subparsers)`` function that adds its
parsers with ``add_command`` (a command that runs ``func(args) -> int``) and ``add_group`` (a
command of subcommands); the handler's docstring is the command's help. The shared steps of the
handlers live here too: ``load_settings``, ``open_outbox``, ``masked_identity``, ``print_error``.
Modules import heavy libraries (dlib, cv2, uvicorn) inside their handlers, so `fvagent --help` and
`fvagent status` stay fast.

The library raises domain errors; here they become a message, a hint, and a non-zero exit code
(2 for configuration errors, 1 for every other failure).
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from agent import __version__
from core.errors import ConfigError, FvagentError

if TYPE_CHECKING:
    from agent.config import Settings
    from agent.outbox import Outbox

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_subparsers()`` returns: each command module's ``register(sub)`` adds its parsers to it."""

Handler: TypeAlias = Callable[[argparse.Namespace], int]
"""A command's ``func(args) -> int``: the exit code."""

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


def add_command(sub: Subparsers, name: str, func: Handler, *, config: bool = True) -> argparse.ArgumentParser:
    """Add the command ``name`` that runs ``func``, with the shared --config option unless
    ``config`` is False, and return its parser for the command's own arguments.

    ``func``'s docstring is the command's help, as in click: its first paragraph is the line in the
    list of commands, the rest (when there is more) the description that ``--help`` shows.
    """
    summary, description = _help_texts(func)
    parser = sub.add_parser(name, help=summary, description=description)
    if config:
        add_config_arg(parser)
    parser.set_defaults(func=func)
    return parser


def add_group(sub: Subparsers, name: str, metavar: str, register: Callable[[Subparsers], None]) -> Subparsers:
    """Add the command ``name`` that only groups subcommands (``fvagent queue ls``), listed as
    ``metavar`` in its usage, and return what they are added to. Given alone, it prints its help to
    stderr and exits 2 (a usage error).

    The docstring of ``register``, the module's function that adds the group, is the group's help,
    read as ``add_command`` reads a command's: the first paragraph for the list of commands, the
    rest for the description.
    """
    summary, description = _help_texts(register)
    parser = sub.add_parser(name, help=summary, description=description)
    group = parser.add_subparsers(dest=f"{name}_command", metavar=metavar)

    def usage(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=usage)
    return group


def _help_texts(documented: Callable[..., object]) -> tuple[str, str | None]:
    """(the first paragraph of the docstring, the rest or None), each on one line: argparse wraps them."""
    summary, _, details = inspect.cleandoc(documented.__doc__ or "").partition("\n\n")
    return " ".join(summary.split()), " ".join(details.split()) or None


def load_settings(args: argparse.Namespace) -> Settings:
    """The configuration of ``--config`` (or the default path), drivers unchecked: for commands
    that use the outbox, the platform or the keys, not the hardware."""
    from agent.config import load_config

    return load_config(config_path(args), validate_drivers=False)


def open_outbox(settings: Settings, *, readonly: bool = False) -> Outbox:
    """The configured outbox, never created here; ``readonly`` for the commands that only look."""
    from agent.outbox import Outbox

    return Outbox.open(settings.storage, create=False, readonly=readonly)


def masked_identity(payload: Mapping[str, object]) -> str:
    """``cardNo 4502**********1234, realName 张**, verifyTime ...``: which record, masked."""
    from core.privacy import mask_card_no, mask_name

    card_no, name = payload.get("cardNo"), payload.get("realName")
    return (
        f"cardNo {mask_card_no(None if card_no is None else str(card_no))}, "
        f"realName {mask_name(None if name is None else str(name))}, verifyTime {payload.get('verifyTime')}"
    )


def print_error(message: str, hint: str | None = None) -> None:
    """``fvagent: error: MESSAGE`` and, when given, ``fvagent: hint: HINT`` on stderr."""
    print(f"fvagent: error: {message}", file=sys.stderr)
    if hint:
        print(f"fvagent: hint: {hint}", file=sys.stderr)


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
        print_error(str(exc), exc.hint)
        return 2
    except FvagentError as exc:
        print_error(str(exc), exc.hint)
        return 1


if __name__ == "__main__":
    sys.exit(main())
