"""`fvagent config check [PATH]`: validate the configuration file and show what the agent will use.

Exit 0 and the effective configuration (every default filled in, every secret masked) when the file
is valid and fit to run; exit 2 and every fault as ``key.path: rule`` when it is not, including the
example's placeholder values left in and a fake driver with ``[platform] environment = "production"``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping

from agent.cli import Subparsers, add_command, add_config_arg, add_group, config_path, print_error


def register(sub: Subparsers) -> None:
    """check the configuration file

    Work with the configuration file.
    """
    config_sub = add_group(sub, "config", "SUBCOMMAND", register)
    check = add_command(config_sub, "check", cmd_check, config=False)
    check.add_argument("path", nargs="?", metavar="PATH", help="configuration file (same as --config)")
    add_config_arg(check)
    check.add_argument("--json", action="store_true", help="print the effective configuration as JSON")
    check.add_argument(
        "--no-drivers",
        action="store_true",
        help="do not ask the card-reader and camera drivers to check their own keys",
    )


def cmd_check(args: argparse.Namespace) -> int:
    """validate the file and print the effective configuration, secrets masked

    Validate the configuration file. Prints the effective configuration (defaults filled in, secrets masked) and
    exits 0, or prints every error as key.path: rule and exits 2.
    """
    from agent.config import (
        config_warnings,
        deployment_problems,
        load_config,
        plain_http_warning,
    )
    from core.errors import ConfigError

    if args.path and args.config and args.path != args.config:
        print_error(f"two different files given: {args.path} and --config {args.config}")
        return 2
    path = args.path or config_path(args)
    settings = load_config(path, validate_drivers=not args.no_drivers)  # ConfigError -> exit 2 in main
    problems = deployment_problems(settings)
    if problems:
        raise ConfigError(
            f"configuration in {settings.source} is not ready to run: {len(problems)} error(s)",
            problems=problems,
            hint="fix each key named above; docs/configuration.md explains them",
        )
    effective = settings.masked()
    if args.json:
        print(json.dumps(effective, ensure_ascii=False, indent=2))
    else:
        print(f"# {settings.source}: valid. Effective configuration (defaults filled in, secrets masked):")
        for key, where in sorted(settings.secret_sources.items()):
            print(f"# {key}: from {where}")
        print(to_toml(effective))
    for warning in [*config_warnings(settings), plain_http_warning(settings)]:
        if warning is None:
            continue
        print(f"fvagent: warning: {warning}", file=sys.stderr)
    return 0


def to_toml(data: Mapping[str, object]) -> str:
    """Render nested plain data as TOML; unset (None) keys become comments."""
    lines: list[str] = []
    _emit_table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _emit_table(table: Mapping[str, object], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines.append("")
        lines.append(f"[{'.'.join(path)}]")
    for key, value in scalars.items():
        if value is None:
            lines.append(f"# {key} = (not set)")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in tables.items():
        _emit_table(value, [*path, key], lines)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(str(value), ensure_ascii=False)
