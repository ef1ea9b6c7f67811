"""agent.config and `fvagent config check`: sections, key-path errors, secrets, the example file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pydantic
import pytest
from pydantic import BaseModel, SecretStr

from agent import cli
from agent.config import (
    AuthSettings,
    ConventionSettings,
    DeviceSettings,
    DriverSection,
    FaceSettings,
    LocalApiSettings,
    LoggingSettings,
    PlatformSettings,
    Settings,
    StorageSettings,
    UploaderSettings,
    config_warnings,
    load_config,
    parse_config,
    read_secret_file,
)
from core.errors import ConfigError, SecretError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "fvagent.example.toml"
SECRET = "s3cret-16-bytes!"
TICKET = "esb-ticket-0123456789"

MINIMAL = f"""
[device]
machine_code = "TSR-000123"
device_no = "000123"
manufacturer = "德生实名易"
model = "TSR-R3"
purchase_date = 2024-06-01
dept_id = "0601"
dept_name = "妇产科"
register_user = "设备管理员"
operator = "分娩登记"

[platform]
base_url = "https://gfe.platform.test/api/"
org_app_id = "ORG-APP-ID"
org_app_secret = "{SECRET}"

[platform.auth]
kind = "static"
ticket = "{TICKET}"

[card_reader]
driver = "sam-serial"

[camera]
driver = "opencv"
"""


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def raw(text: str = MINIMAL) -> dict[str, Any]:
    return tomllib.loads(text)


def problems(data: dict[str, Any], **kw: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, validate_drivers=False, **kw)
    return dict(info.value.problems)


def write(tmp_path: Path, text: str, name: str = "fvagent.toml", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def secret_file(tmp_path: Path, value: str, name: str, mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


# -- sections and fixed key names ----------------------------------------------------------------------------


def test_minimal_file_gives_typed_settings_with_defaults() -> None:
    s = parse_config(raw(), validate_drivers=False)
    assert s.device.purchase_date.isoformat() == "2024-06-01"
    assert s.platform.base_url == "https://gfe.platform.test/api"  # trailing slash dropped
    assert s.platform.org_app_secret.get_secret_value() == SECRET
    assert s.platform.enabled is True and s.platform.encrypt is False
    assert s.platform.auth.kind == "static"
    assert s.platform.conventions.long_term_end_date == "长期"
    assert s.card_reader.driver == "sam-serial" and s.camera.driver == "opencv"
    assert s.face.mode == "compute" and s.local_api.listen == "127.0.0.1:8787"


FIXED_KEYS = {
    DeviceSettings: [
        "machine_code",
        "device_no",
        "manufacturer",
        "model",
        "purchase_date",
        "dept_id",
        "dept_name",
        "register_user",
        "operator",
    ],
    PlatformSettings: [
        "base_url",
        "org_app_id",
        "org_app_secret",
        "enabled",
        "encrypt",
        "ca_bundle",
        "auth",
        "conventions",
    ],
    AuthSettings: ["kind", "ticket"],
    StorageSettings: ["dir"],
    FaceSettings: ["mode", "threshold"],
    LocalApiSettings: ["listen"],
    DriverSection: ["driver"],
}


@pytest.mark.parametrize(("model", "keys"), list(FIXED_KEYS.items()), ids=lambda x: getattr(x, "__name__", ""))
def test_fixed_key_names_exist(model: type[BaseModel], keys: list[str]) -> None:
    assert set(keys) <= set(model.model_fields)


def test_sections() -> None:
    assert list(Settings.model_fields) == [
        "device",
        "platform",
        "storage",
        "uploader",
        "card_reader",
        "camera",
        "face",
        "local_api",
        "logging",
        "source",
    ]


def test_settings_are_frozen() -> None:
    s = parse_config(raw(), validate_drivers=False)
    with pytest.raises(pydantic.ValidationError):
        s.platform.enabled = False  # type: ignore[misc]


@pytest.mark.parametrize(("kind", "value"), [("static", "static"), ("token", "token"), ("oauth2", "oauth2")])
def test_auth_kinds(kind: str, value: str) -> None:
    data = raw()
    data["platform"]["auth"] = {
        "static": {"kind": "static", "ticket": "t"},
        "token": {
            "kind": "token",
            "token_url": "http://127.0.0.1:1/auth/accesstoken/create",
            "app_key": "k",
            "app_secret": "s",
        },
        "oauth2": {
            "kind": "oauth2",
            "token_url": "https://127.0.0.1/connect/token",
            "client_id": "c",
            "client_secret": "s",
        },
    }[kind]
    assert parse_config(data, validate_drivers=False).platform.auth.kind == value


@pytest.mark.parametrize("mode", ["compute", "relay", "both"])
def test_face_modes(mode: str) -> None:
    data = raw() | {"face": {"mode": mode, "threshold": 0.6}}
    assert parse_config(data, validate_drivers=False).face.mode == mode


def test_upstream_switch_off() -> None:
    data = raw()
    data["platform"]["enabled"] = False
    assert parse_config(data, validate_drivers=False).platform.enabled is False


def test_driver_sections_keep_the_drivers_own_keys() -> None:
    data = raw() | {"card_reader": {"driver": "sam-serial", "port": "/dev/ttyUSB0", "baud": 115200}}
    s = parse_config(data, validate_drivers=False)
    assert s.card_reader.driver == "sam-serial"
    assert s.card_reader.options == {"port": "/dev/ttyUSB0", "baud": 115200}


# -- errors with key paths ------------------------------------------------------------------------------------


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    *parents, last = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("key", "value", "path", "rule"),
    [
        ("platform.base_url", "gfe.example.gov.cn/api", "platform.base_url", "must be an http(s) URL"),
        ("platform.base_url", "ftp://gfe.example.gov.cn", "platform.base_url", "must be an http(s) URL"),
        ("platform.base_url", "https://", "platform.base_url", "must be an http(s) URL"),
        ("device.machine_code", _DELETE, "device.machine_code", "required"),
        ("device.operator", _DELETE, "device.operator", "required"),
        ("device.machine_code", "C" * 51, "device.machine_code", "must have at most 50 characters"),
        ("device.dept_name", "科" * 51, "device.dept_name", "must have at most 50 characters"),
        ("device.operator", "护" * 11, "device.operator", "must be at most 10 characters"),
        # the operationUser rule itself (core.records.validate_operator), as the desk's PUT gets it
        ("device.operator", "   ", "device.operator", "must not be empty"),
        ("device.operator", "护\x07士", "device.operator", "must not contain control characters"),
        ("device.manufacturer", "", "device.manufacturer", "must have at least 1 character"),
        ("device.purchase_date", "2024-02-30", "device.purchase_date", "must be a valid date"),
        ("device.status", 2, "device.status", "must be 0 or 1"),
        ("device.serial", "x", "device.serial", "unknown key"),
        ("platform.encrpyt", True, "platform.encrpyt", "unknown key (did you mean 'encrypt'?)"),
        ("platform.enabled", "yes please", "platform.enabled", "must be a valid boolean"),
        ("platform.org_app_id", _DELETE, "platform.org_app_id", "required"),
        ("platform.org_app_secret", _DELETE, "platform.org_app_secret", "required"),
        ("platform.auth.kind", "basic", "platform.auth.kind", "must be 'static', 'token' or 'oauth2'"),
        (
            "platform.auth.ticket",
            _DELETE,
            "platform.auth.ticket",
            "required when kind = \"static\" (or ticket_file, or the systemd credential 'ticket')",
        ),
        ("platform.ca_bundle", "/nonexistent/ca.pem", "platform.ca_bundle", "file /nonexistent/ca.pem does not exist"),
        ("platform.conventions.sign_output", "HEX", "platform.conventions.sign_output", "must be 'hex'"),
        (
            "platform.conventions.long_term_end_date",
            "长" * 11,
            "platform.conventions.long_term_end_date",
            "at most 10 characters",
        ),
        ("face.mode", "magic", "face.mode", "must be 'compute', 'relay' or 'both'"),
        ("face.threshold", 1.5, "face.threshold", "must be less than or equal to 1"),
        ("local_api.listen", "8787", "local_api.listen", "must be host:port"),
        ("card_reader", "fake", "card_reader", "must be a table ([card_reader])"),
        ("fingerprint", {"driver": "x"}, "fingerprint", "unknown key"),
        ("source", "/etc/passwd", "source", "unknown key"),
    ],
)
def test_errors_name_the_key_and_the_rule(key: str, value: Any, path: str, rule: str) -> None:
    found = problems(_set(raw(), key, value))
    assert path in found, found
    assert rule in found[path]


def test_missing_sections() -> None:
    found = problems({})
    assert found == {"device": "required", "platform": "required"}


def test_platform_auth_required() -> None:
    data = raw()
    del data["platform"]["auth"]
    assert problems(data) == {"platform.auth": "required"}


@pytest.mark.parametrize(
    ("auth", "missing"),
    [
        ({"kind": "token"}, ["token_url", "app_key", "app_secret"]),
        ({"kind": "oauth2"}, ["token_url", "client_id", "client_secret"]),
        ({"kind": "oauth2", "token_url": "https://a/connect/token", "client_id": "c"}, ["client_secret"]),
    ],
)
def test_auth_kind_names_each_missing_key(auth: dict[str, Any], missing: list[str]) -> None:
    data = raw()
    data["platform"]["auth"] = auth
    found = problems(data)
    assert sorted(found) == sorted(f"platform.auth.{k}" for k in missing)
    assert all(f'required when kind = "{auth["kind"]}"' in rule for rule in found.values())


def test_token_url_must_be_http() -> None:
    data = raw()
    data["platform"]["auth"] = {"kind": "oauth2", "token_url": "connect/token", "client_id": "c", "client_secret": "s"}
    assert problems(data) == {"platform.auth.token_url": "must be an http(s) URL"}


def test_client_key_needs_client_cert(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("x")
    assert problems(_set(raw(), "platform.client_key", str(key))) == {"platform.client_key": "needs client_cert"}


def test_section_validator_message_is_put_on_the_key() -> None:
    data = raw() | {"storage": {"keep_sent_days": 10, "keep_sent_rows_days": 5}}
    assert problems(data) == {"storage.keep_sent_rows_days": "must be >= keep_sent_days"}


def test_every_error_is_reported_at_once() -> None:
    data = raw()
    data["platform"]["base_url"] = "nope"
    del data["device"]["operator"]
    data["face"] = {"threshold": 7}
    data["platform"]["auth"] = {"kind": "oauth2"}
    data["logging"] = {"level": "LOUD"}
    found = problems(data)
    assert {
        "platform.base_url",
        "device.operator",
        "face.threshold",
        "platform.auth.token_url",
        "platform.auth.client_id",
        "platform.auth.client_secret",
        "logging.level",
    } <= set(found)


def test_error_text_lists_each_problem_on_its_own_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_set(raw(), "platform.base_url", "nope"), validate_drivers=False)
    assert "  platform.base_url: must be an http(s) URL" in str(info.value).splitlines()
    assert info.value.hint and "fvagent.example.toml" in info.value.hint


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(tmp_path / "missing.toml")
    assert "fvagent.example.toml" in (info.value.hint or "")
    bad = write(tmp_path, "[device\nmachine_code = 1\n", "bad.toml")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(bad)
    assert info.value.problems[0][0] == "(file)" and "line 1" in info.value.problems[0][1]
    latin = tmp_path / "latin.toml"
    latin.write_bytes("[device]\ndept_name = '产科'\n".encode("gb18030"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin)


# -- secrets ------------------------------------------------------------------------------------------------------


def _without_inline(text: str = MINIMAL) -> str:
    return text.replace(f'org_app_secret = "{SECRET}"\n', "").replace(f'ticket = "{TICKET}"\n', "")


def test_secrets_from_files(tmp_path: Path) -> None:
    a = secret_file(tmp_path, SECRET, "org_app_secret")
    t = secret_file(tmp_path, TICKET, "ticket")
    text = _without_inline().replace(
        'org_app_id = "ORG-APP-ID"', f'org_app_id = "ORG-APP-ID"\norg_app_secret_file = "{a}"'
    )
    text = text.replace('kind = "static"', f'kind = "static"\nticket_file = "{t}"')
    s = load_config(write(tmp_path, text), validate_drivers=False)
    assert s.platform.org_app_secret.get_secret_value() == SECRET  # trailing newline stripped
    assert s.platform.auth.ticket is not None and s.platform.auth.ticket.get_secret_value() == TICKET
    assert s.secret_sources == {"platform.org_app_secret": f"file {a}", "platform.auth.ticket": f"file {t}"}


def test_relative_secret_file_is_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    secret_file(conf_dir, TICKET, "ticket")
    text = _without_inline().replace(
        'org_app_id = "ORG-APP-ID"', f'org_app_id = "ORG-APP-ID"\norg_app_secret = "{SECRET}"'
    )
    text = text.replace('kind = "static"', 'kind = "static"\nticket_file = "ticket"')
    path = write(conf_dir, text)
    monkeypatch.chdir(tmp_path)  # not the config's directory
    s = load_config(path, validate_drivers=False)
    assert s.platform.auth.ticket is not None and s.platform.auth.ticket.get_secret_value() == TICKET


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_secret_file_readable_by_group_or_others_is_refused_with_the_chmod(tmp_path: Path, mode: int) -> None:
    t = secret_file(tmp_path, TICKET, "ticket", mode=mode)
    data = raw()
    del data["platform"]["auth"]["ticket"]
    data["platform"]["auth"]["ticket_file"] = str(t)
    found = problems(data)
    assert list(found) == ["platform.auth.ticket_file"]
    assert f"chmod 600 {t}" in found["platform.auth.ticket_file"]
    assert f"{mode:04o}" in found["platform.auth.ticket_file"]
    t.chmod(0o400)
    assert parse_config(data, validate_drivers=False).platform.auth.ticket is not None


def test_read_secret_file_hint_is_the_chmod(tmp_path: Path) -> None:
    t = secret_file(tmp_path, TICKET, "ticket", mode=0o644)
    with pytest.raises(SecretError) as info:
        read_secret_file(t, key="platform.auth.ticket_file")
    assert info.value.hint == f"chmod 600 {t}"


@pytest.mark.parametrize(
    ("setup", "rule"),
    [
        ("missing", "does not exist"),
        ("empty", "is empty"),
        ("dir", "not a regular file"),
    ],
)
def test_bad_secret_files(tmp_path: Path, setup: str, rule: str) -> None:
    path = tmp_path / "org_app_secret"
    if setup == "empty":
        secret_file(tmp_path, "  ", "org_app_secret")
    elif setup == "dir":
        path.mkdir()
    data = raw()
    del data["platform"]["org_app_secret"]
    data["platform"]["org_app_secret_file"] = str(path)
    found = problems(data)
    assert list(found) == ["platform.org_app_secret_file"]  # not also "org_app_secret: required"
    assert rule in found["platform.org_app_secret_file"]


def test_inline_and_file_together_is_an_error(tmp_path: Path) -> None:
    data = raw()
    data["platform"]["org_app_secret_file"] = str(secret_file(tmp_path, SECRET, "s"))
    assert problems(data) == {"platform.org_app_secret": "give either org_app_secret or org_app_secret_file, not both"}


def test_systemd_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    secret_file(creds, SECRET, "org_app_secret", mode=0o440)  # systemd guards the directory itself
    secret_file(creds, "from-credential", "ticket")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    data = raw(_without_inline())
    s = parse_config(data, validate_drivers=False)
    assert s.platform.org_app_secret.get_secret_value() == SECRET
    assert s.secret_sources["platform.org_app_secret"] == "systemd credential 'org_app_secret'"
    # An inline value wins over the credential.
    data["platform"]["auth"]["ticket"] = "inline-ticket"
    s = parse_config(data, validate_drivers=False)
    assert s.platform.auth.ticket is not None and s.platform.auth.ticket.get_secret_value() == "inline-ticket"
    assert s.secret_sources["platform.auth.ticket"] == "inline"


def test_systemd_credential_absent_means_required(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    found = problems(raw(_without_inline()))
    assert found["platform.org_app_secret"] == "required"
    assert "systemd credential 'ticket'" in found["platform.auth.ticket"]


@pytest.mark.parametrize("value", [3, ""])
def test_secret_file_key_must_be_a_path(value: Any) -> None:
    data = raw()
    del data["platform"]["auth"]["ticket"]
    data["platform"]["auth"]["ticket_file"] = value
    assert problems(data) == {"platform.auth.ticket_file": "must be the path of a file holding the secret"}


def test_masked_shows_no_secret() -> None:
    data = raw()
    data["local_api"] = {"token": "api-token-xyz", "full_data_token": "full-token-xyz", "listen": "0.0.0.0:8787"}
    s = parse_config(data, validate_drivers=False)
    masked = s.masked()
    dumped = json.dumps(masked, ensure_ascii=False)
    for secret in (SECRET, TICKET, "api-token-xyz", "full-token-xyz"):
        assert secret not in dumped and secret not in repr(s) and secret not in str(s)
    assert masked["platform"]["org_app_secret"] == "********"
    assert masked["platform"]["auth"]["ticket"] == "********"
    assert masked["local_api"]["token"] == "********"
    assert isinstance(s.local_api.token, SecretStr)


def test_warning_for_inline_secrets_in_a_world_readable_file(tmp_path: Path) -> None:
    s = load_config(write(tmp_path, MINIMAL, mode=0o644), validate_drivers=False)
    (warning,) = config_warnings(s)
    assert "platform.auth.ticket" in warning and "platform.org_app_secret" in warning and "chmod 640" in warning
    assert SECRET not in warning
    assert config_warnings(load_config(write(tmp_path, MINIMAL, "b.toml", mode=0o640), validate_drivers=False)) == []


# -- the example file -------------------------------------------------------------------------------------------


def test_example_parses() -> None:
    s = load_config(EXAMPLE, validate_drivers=False)
    assert s.card_reader.driver == "sam-serial" and s.camera.driver == "opencv"  # the fakes only in comments
    assert s.platform.auth.kind == "static" and s.platform.environment == "production"


def test_example_parses_with_the_drivers() -> None:
    s = load_config(EXAMPLE)  # the drivers' own option checks run too
    assert s.card_reader.driver == "sam-serial" and s.camera.driver == "opencv"


def _example_keys() -> dict[str, set[str]]:
    """Section -> keys shown in the example, set or commented out (`# key = ...`)."""
    keys: dict[str, set[str]] = {"": set()}
    section = ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        header = re.fullmatch(r"\s*\[([a-z_.]+)\]\s*(#.*)?", line)
        if header:
            section = header.group(1)
            keys.setdefault(section, set())
            continue
        key = re.match(r"\s*#?\s*([a-z_0-9]+)\s*=", line)
        if key:
            keys[section].add(key.group(1))
    return keys


def _model_fields(model: type[BaseModel], path: str = "") -> list[tuple[str, str, type[BaseModel]]]:
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _model_fields(annotation, f"{path}.{name}".lstrip("."))
        elif name != "source":
            out.append((path, name, model))
    return out


SECRET_KEYS = {
    ("platform", "org_app_secret"),
    ("platform.auth", "ticket"),
    ("platform.auth", "app_secret"),
    ("platform.auth", "client_secret"),
    ("local_api", "token"),
    ("local_api", "full_data_token"),
}


def test_example_covers_every_key_of_every_section() -> None:
    shown = _example_keys()
    missing = [
        f"{section}.{name}" for section, name, _ in _model_fields(Settings) if name not in shown.get(section, set())
    ]
    missing += [f"{section}.{name}_file" for section, name in SECRET_KEYS if f"{name}_file" not in shown[section]]
    assert not missing, f"deploy/fvagent.example.toml does not show: {', '.join(missing)}"


def test_example_shows_no_key_that_does_not_exist() -> None:
    known = {(s, n) for s, n, _ in _model_fields(Settings)} | {(s, f"{n}_file") for s, n in SECRET_KEYS}
    for section, names in _example_keys().items():
        if section in ("", "card_reader", "camera"):
            continue
        for name in names:
            assert (section, name) in known, f"[{section}] {name} is in the example but not a setting"


def test_secret_keys_are_the_secret_fields() -> None:
    secret_fields = {
        (s, n) for s, n, model in _model_fields(Settings) if "SecretStr" in str(model.model_fields[n].annotation)
    }
    assert secret_fields == SECRET_KEYS


@pytest.mark.parametrize(
    "model",
    [
        DeviceSettings,
        PlatformSettings,
        AuthSettings,
        ConventionSettings,
        StorageSettings,
        UploaderSettings,
        FaceSettings,
        LocalApiSettings,
        LoggingSettings,
    ],
)
def test_unknown_keys_are_errors_in_every_section(model: type[BaseModel]) -> None:
    assert model.model_config.get("extra") == "forbid"


# -- fvagent config check -----------------------------------------------------------------------------------------


def test_check_prints_the_effective_config_masked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, MINIMAL)
    assert cli.main(["config", "check", str(path), "--no-drivers"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out and TICKET not in out
    shown = tomllib.loads(out)  # the output is TOML; unset keys are comments
    expected = load_config(path, validate_drivers=False).masked()
    assert shown["platform"]["org_app_secret"] == "********"
    assert shown["platform"]["auth"]["ticket"] == "********"
    assert shown["device"]["dept_name"] == expected["device"]["dept_name"] == "妇产科"
    assert shown["face"]["threshold"] == expected["face"]["threshold"]
    assert "# platform.auth.ticket: from inline" in out
    assert "# ca_bundle = (not set)" in out


def test_check_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, MINIMAL)
    assert cli.main(["config", "check", "--config", str(path), "--json", "--no-drivers"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == load_config(path, validate_drivers=False).masked()


def test_check_prints_every_error_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = (
        MINIMAL.replace("https://gfe.platform.test/api/", "gfe.example.gov.cn").replace(
            'operator = "分娩登记"', 'operator = "分娩登记室值班护士长甲"'
        )
        + '\n[face]\nmode = "magic"\n'
    )
    path = write(tmp_path, bad)
    assert cli.main(["config", "check", str(path), "--no-drivers"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert "  platform.base_url: must be an http(s) URL" in lines
    assert any(line.startswith("  device.operator: operator must be at most 10 characters") for line in lines)
    assert any(line.startswith("  face.mode: must be 'compute', 'relay' or 'both'") for line in lines)
    assert "has 3 error(s)" in captured.err


def test_check_uses_fvagent_config_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FVAGENT_CONFIG", str(write(tmp_path, MINIMAL)))
    assert cli.main(["config", "check", "--no-drivers"]) == 0
    assert "[platform.auth]" in capsys.readouterr().out


def test_check_refuses_two_different_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = write(tmp_path, MINIMAL, "a.toml"), write(tmp_path, MINIMAL, "b.toml")
    assert cli.main(["config", "check", str(a), "--config", str(b), "--no-drivers"]) == 2
    assert "two different files" in capsys.readouterr().err


def test_check_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "check", str(tmp_path / "none.toml")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "hint" in err


def test_config_without_subcommand_shows_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config"]) == 2
    assert "check" in capsys.readouterr().err


def test_check_in_a_real_process(tmp_path: Path) -> None:
    good = write(tmp_path, MINIMAL)
    env = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", "FVAGENT_CONFIG")}
    done = subprocess.run(
        [sys.executable, "-m", "agent", "config", "check", str(good), "--no-drivers"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert tomllib.loads(done.stdout)["platform"]["org_app_secret"] == "********"
    assert SECRET not in done.stdout + done.stderr
    bad = write(tmp_path, MINIMAL.replace('kind = "static"', 'kind = "sso"'), "bad.toml")
    done = subprocess.run(
        [sys.executable, "-m", "agent", "config", "check", str(bad), "--no-drivers"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 2
    assert "platform.auth.kind: must be 'static', 'token' or 'oauth2'" in done.stderr
