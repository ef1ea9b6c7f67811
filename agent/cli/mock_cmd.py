"""`fvagent mock-platform`: the mock provincial platform as a process, for bench tests and demos.

A technician runs it on a laptop (or on the terminal itself) to bench-test a terminal before
go-live: point the agent's ``[platform] base_url`` at the URL it prints, register, capture, and
watch ``/_mock/stats``. Credentials come from the agent's config when ``--config`` is given (so
the agent needs no change but base_url), else the documented demo credentials. Loopback only unless
``--host`` says otherwise. Faults can be set here and changed while running (POST /_mock/faults).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent.cli import Subparsers, add_command

if TYPE_CHECKING:
    from agent.mock_platform import MockPlatformConfig

DEFAULT_PORT = 8600


def register(sub: Subparsers) -> None:
    # config=False: its own --config names the agent config to take the credentials from
    p = add_command(sub, "mock-platform", cmd_mock_platform, config=False)
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0 = any free port)"
    )
    p.add_argument(
        "--db",
        metavar="PATH",
        default="mock-platform.db",
        help="the mock's SQLite file, kept across restarts (default ./mock-platform.db)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback only)")
    p.add_argument(
        "--config",
        "-c",
        metavar="AGENT_CONFIG",
        default=None,
        help="take orgAppId, secrets, auth kind, conventions and encryption from this agent config "
        "(default: the demo credentials)",
    )
    p.add_argument(
        "--auth-kind",
        choices=("static", "token", "oauth2"),
        default=None,
        help="without --config: which Authorization to expect (default static)",
    )
    p.add_argument(
        "--encrypt", action="store_true", default=None, help="without --config: require SM4-encrypted bodies"
    )
    p.add_argument(
        "--token-lifetime",
        type=float,
        default=None,
        metavar="S",
        help="lifetime of issued tokens in seconds (default 86400)",
    )
    p.add_argument("--no-sign-responses", action="store_true", help="do not sign responses")
    p.add_argument(
        "--no-require-registration", action="store_true", help="accept verifications from devices that never registered"
    )
    p.add_argument(
        "--no-store-images",
        action="store_true",
        help="store each photo's length only (long benches: keeps the database small)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the --error-rate dice")
    f = p.add_argument_group("faults (change them while running: POST /_mock/faults)")
    f.add_argument("--down", action="store_true", help="refuse everything with 503")
    f.add_argument(
        "--error-rate",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction of business requests that fail with --error-status",
    )
    f.add_argument("--error-status", type=int, default=500, help="HTTP status of those failures (default 500)")
    f.add_argument("--status-5xx", type=int, default=None, metavar="STATUS", help="answer every business request so")
    f.add_argument(
        "--retry-after",
        type=float,
        default=None,
        metavar="S",
        help="answer every business request 429 with this Retry-After",
    )
    f.add_argument("--latency", type=float, default=0.0, metavar="S", help="delay every business answer")
    f.add_argument("--drop-connection", action="store_true", help="read the body, then close without answering")
    f.add_argument(
        "--truncated-reply", action="store_true", help="process the request, then send half the answer and close"
    )
    f.add_argument("--html-error", action="store_true", help="answer with an HTML error page")
    f.add_argument("--bad-response-sign", action="store_true", help="sign responses wrongly")
    f.add_argument("--reject-tokens", action="store_true", help="treat every token as expired")


def build_config(args: argparse.Namespace) -> tuple[MockPlatformConfig, str | None]:
    """The ``MockPlatformConfig`` for the command line, and the agent config it came from (if any)."""
    from agent.mock_platform import Faults, MockPlatformConfig

    faults = Faults(
        down=args.down,
        error_rate=args.error_rate,
        error_status=args.error_status,
        status_5xx=args.status_5xx,
        throttle_retry_after_s=args.retry_after,
        latency_s=args.latency,
        drop_connection=args.drop_connection,
        truncated_reply=args.truncated_reply,
        html_error=args.html_error,
        bad_response_sign=args.bad_response_sign,
        reject_tokens=args.reject_tokens,
    )
    values: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "faults": faults,
        "seed": args.seed,
        "sign_responses": not args.no_sign_responses,
        "require_registration": not args.no_require_registration,
        "store_images": not args.no_store_images,
    }
    if args.token_lifetime is not None:
        values["token_lifetime_s"] = args.token_lifetime
    source = None
    if args.config:
        from agent.config import load_config

        platform = load_config(args.config, validate_drivers=False).platform
        source = args.config
        auth = platform.auth
        values.update(
            org_app_id=platform.org_app_id,
            org_app_secret=platform.org_app_secret.get_secret_value(),
            auth_kind=auth.kind,
            conventions=platform.conventions,
            encrypt=platform.encrypt,
        )
        if auth.ticket is not None:
            values["ticket"] = auth.ticket.get_secret_value()
        if auth.app_key is not None and auth.app_secret is not None:
            values.update(
                app_key=auth.app_key,
                app_secret=auth.app_secret.get_secret_value(),
                token_key_param=auth.token_key_param,
                token_secret_param=auth.token_secret_param,
            )
        if auth.client_id is not None and auth.client_secret is not None:
            values.update(client_id=auth.client_id, client_secret=auth.client_secret.get_secret_value())
    else:
        if args.auth_kind:
            values["auth_kind"] = args.auth_kind
        if args.encrypt:
            values["encrypt"] = True
    return MockPlatformConfig(**values), source


def agent_section_text(section: Mapping[str, object], *, with_secrets: bool) -> str:
    """The ``[platform]`` tables to paste into the agent's config (TOML)."""
    skip_auth = {
        "kind",
        "token_url",
        "ticket",
        "app_key",
        "app_secret",
        "client_id",
        "client_secret",
        "token_key_param",
        "token_secret_param",
    }

    def val(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return json.dumps(str(v), ensure_ascii=False)

    lines = [
        "[platform]",
        f"base_url = {val(section['base_url'])}",
        f"environment = {val(section['environment'])}",
        f"allow_plain_http = {val(section['allow_plain_http'])}",
    ]
    if with_secrets:
        lines += [
            f"org_app_id = {val(section['org_app_id'])}",
            f"org_app_secret = {val(section['org_app_secret'])}",
            f"encrypt = {val(section['encrypt'])}",
        ]
    auth = section["auth"]
    auth_items = auth.items() if isinstance(auth, Mapping) else ()
    auth_lines = [f"{k} = {val(v)}" for k, v in auth_items if with_secrets or k == "token_url" or k not in skip_auth]
    if not with_secrets:
        auth_lines = [line for line in auth_lines if line.startswith("token_url")]
    if auth_lines:
        lines += ["", "[platform.auth]", *auth_lines]
    return "\n".join(lines)


def cmd_mock_platform(args: argparse.Namespace) -> int:
    """run the mock provincial platform (bench tests, demo)

    Run a stand-in for the provincial platform: both business endpoints, both token endpoints,
    signature/time/field checks exactly like the spec, SM4, A2301/B2301, its own SQLite, fault injection.
    Loopback by default. See docs/mock-platform.md.
    """
    from agent.logsetup import setup_logging
    from agent.mock_platform import MockPlatform

    setup_logging(None)
    config, source = build_config(args)
    mock = MockPlatform(config, args.db)
    mock.start()
    url = mock.url
    loopback = config.host in ("127.0.0.1", "::1", "localhost")
    out = sys.stdout
    out.write(f"fvagent mock-platform: listening on {url} (database {args.db})\n")
    out.write(
        f"  auth {config.auth_kind}, SM4 {'required' if config.encrypt else 'off'}, "
        f"responses {'signed' if config.sign_responses else 'unsigned'}, "
        f"credentials from {source or 'the demo defaults (docs/mock-platform.md)'}\n"
    )
    if not loopback:
        out.write(
            "  WARNING: not loopback: no TLS, and anyone who reaches this port can read the records and "
            "change the faults (/_mock/*). Use it on a bench network only.\n"
        )
    active = {k: v for k, v in config.faults.model_dump().items() if v not in (False, None, 0, 0.0, 500)}
    if active:
        out.write(f"  faults: {json.dumps(active)}\n")
    if source:
        out.write(f"\nIn {source}, point the agent here (everything else stays):\n\n")
    else:
        out.write("\nPut this in the agent's config (bench use only: these are the demo credentials):\n\n")
    out.write(agent_section_text(mock.platform_section(), with_secrets=source is None) + "\n\n")
    out.write(
        f"Then: fvagent register --config {source or 'CONFIG'}; watch {url}/_mock/stats and "
        f"{url}/_mock/records\n"
        f"Faults while running: curl -X POST {url}/_mock/faults -d '{{\"down\": true}}'\n"
        "Ctrl-C stops it.\n"
    )
    out.flush()
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            if not mock.running:
                out.write("fvagent mock-platform: the server stopped\n")
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        mock.stop()
    return 0
