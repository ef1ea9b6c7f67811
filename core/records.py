"""The platform's two payloads as typed models that follow the spec tables field by field.

``VerificationRecord`` is the body of ``POST /verification/pregnant_woman/first``;
``DeviceRegistration`` is the body of ``POST /machine/info``. Field names are the platform's,
letter for letter. Validation enforces every rule of ``platform-api.md``: JSON types, lengths
(``varchar(n)`` counts characters), date formats, the code tables, the GB 11643 check digit, JPEG
images of at most 3 MB, score ranges, and the readings fvagent takes where the seed contradicts
itself (``cardType``/``faceResult`` are JSON numbers; ``sexCode`` is one digit; ``nationalName`` is
the short name; a long-term card's ``cardEndDate`` is the configured text, default ``长期``).

A bad record is refused with ``RecordError`` whose ``problems`` lists ``(field, rule)`` for every
fault at once. Nothing is truncated or rewritten to make a record pass. Rules never quote the
personal data they refer to, so the errors are safe to log.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from core import codes
from core.clock import CHINA_TZ, platform_local
from core.errors import RecordError
from core.images import JPEG_MAGIC, MAX_IMAGE_BYTES
from core.privacy import mask_card_no

if TYPE_CHECKING:
    from core.card import IdCard

LONG_TERM_END = "长期"
"""Default cardEndDate of a long-term card ([platform.conventions] long_term_end_date)."""
OPERATOR_MAX_LEN = 10
"""operationUser is varchar(10) in the platform spec."""
OPERATOR_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
"""The operator rule as a JSON Schema pattern: not all blank, no control characters."""

JsonObject = dict[str, object]
"""A JSON document that is built to be serialized or read field by field with checks (a summary, a
status, an API answer, a checkpoint)."""

# Any: a payload comes from json.loads (which returns Any) and is indexed by spec field name all the
# way downstream (sealing, the queue, the uploader, the local API, the mock platform). The record is
# validated by VerificationRecord / DeviceRegistration at the seam, so `object` here would only add casts.
Payload = dict[str, Any]
"""A record's spec-named JSON body (``VerificationRecord.to_payload()``, or a held record's raw fields)."""


class DeviceIdentity(Protocol):
    """What a payload needs to know of this device: the ``[device]`` settings satisfy it."""

    @property
    def machine_code(self) -> str: ...
    @property
    def device_no(self) -> str: ...


class DeviceDescription(DeviceIdentity, Protocol):
    """The whole ``[device]`` table, as POST /machine/info sends it."""

    @property
    def manufacturer(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def purchase_date(self) -> dt.date: ...
    @property
    def dept_id(self) -> str: ...
    @property
    def dept_name(self) -> str: ...
    @property
    def register_user(self) -> str: ...
    @property
    def status(self) -> int: ...


_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
_ISO_LOCAL = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]{1,9})?")
_MAX_B64_CHARS = 4 * math.ceil(MAX_IMAGE_BYTES / 3)
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

Check = Callable[[object, ValidationInfo], object]
TextCheck = Callable[[object, ValidationInfo], str]


# --------------------------------------------------------------------------------------------------
# Field rules. Each returns the normalized value or raises ValueError with the rule (never the value).


def _json_kind(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list | tuple):
        return "an array"
    if isinstance(v, Mapping):
        return "an object"
    return type(v).__name__


def _string(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError(f"must be a JSON string, got {_json_kind(v)}")
    return v


def _varchar(n: int, *, allow_empty: bool = False) -> TextCheck:
    def check(v: object, info: ValidationInfo) -> str:
        s = _string(v)
        if not s and not allow_empty:
            raise ValueError("must not be empty")
        if len(s) > n:
            raise ValueError(f"at most {n} characters (varchar({n})), got {len(s)}; shorten it at the source")
        return s

    return check


def _has_control_characters(s: str) -> bool:
    # Cs: a lone surrogate could not be written as UTF-8
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in s)


def _operation_user(v: object, info: ValidationInfo) -> str:
    s = _varchar(OPERATOR_MAX_LEN)(v, info)
    if not s.strip():
        raise ValueError("must not be blank")
    if _has_control_characters(s):
        raise ValueError("must not contain control characters")
    return s


def validate_operator(name: object) -> str:
    """Return ``name`` stripped, or raise ``ValueError`` saying what is wrong with it.

    The operationUser rule: 1..10 characters (the spec's varchar(10)), not all blank, without
    control characters or lone surrogates (which could not be written as UTF-8).
    """
    if not isinstance(name, str):
        raise ValueError("operator must be a string")
    value = name.strip()
    if not value:
        raise ValueError("operator must not be empty")
    if len(value) > OPERATOR_MAX_LEN:
        raise ValueError(
            f"operator must be at most {OPERATOR_MAX_LEN} characters (operationUser is varchar({OPERATOR_MAX_LEN}))"
        )
    if _has_control_characters(value):
        raise ValueError("operator must not contain control characters")
    return value


def _date(v: object, info: ValidationInfo) -> str:
    s = _string(v)
    if not _DATE.fullmatch(s):
        raise ValueError("must be a date as yyyy-MM-dd")
    try:
        dt.date.fromisoformat(s)
    except ValueError:
        raise ValueError("must be a real calendar date (yyyy-MM-dd)") from None
    return s


def _datetime19(v: object, info: ValidationInfo) -> str:
    s = _string(v)
    if not _DATETIME.fullmatch(s):
        raise ValueError("must be yyyy-MM-dd HH:mm:ss")
    try:
        dt.datetime.strptime(s, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise ValueError("must be a real date and time (yyyy-MM-dd HH:mm:ss)") from None
    return s


def _long_term_end(info: ValidationInfo | None) -> str:
    ctx = info.context if info is not None else None
    return str((ctx or {}).get("long_term_end") or LONG_TERM_END)


def _card_end_date(v: object, info: ValidationInfo) -> str:
    s = _string(v)
    long_term = _long_term_end(info)
    if s == long_term:
        return s
    try:
        return _date(s, info)
    except ValueError:
        raise ValueError(f"must be a date as yyyy-MM-dd, or {long_term!r} for a long-term card") from None


def _small_code(choices: tuple[int, ...], *, numeric_string: bool) -> Check:
    """A code sent as a JSON number; numeric strings accepted on input when ``numeric_string``."""
    listed = ", ".join(map(str, choices))

    def check(v: object, info: ValidationInfo) -> int:
        if isinstance(v, str) and numeric_string and len(v) == 1 and v.isdigit():
            v = int(v)
        if isinstance(v, float):
            raise ValueError(f"must be a whole JSON number, one of {listed} (no decimal point)")
        if isinstance(v, bool) or not isinstance(v, int):
            kind = "a JSON number (or a one-digit string)" if numeric_string else "a JSON integer"
            raise ValueError(f"must be {kind}, got {_json_kind(v)}")
        if v not in choices:
            raise ValueError(f"must be one of {listed}")
        return v

    return check


def _score(v: object, info: ValidationInfo) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"must be a JSON number, got {_json_kind(v)}")
    if not math.isfinite(v) or not 0 <= v <= 1:
        raise ValueError("must be between 0 and 1")
    return float(v)


def standard_base64_size(s: str) -> int | None:
    """How many bytes ``s`` decodes to when ``base64.b64decode(s, validate=True)`` accepts it, else None.

    The same rule without decoding: only A-Z a-z 0-9 + /, then at most two ``=`` at the very end,
    whole 4-character groups. Checking a 130 KB photo this way costs a sixth of decoding it, and
    every record's two photos are checked at capture and again by the mock platform."""
    if not s.isascii():
        return None
    data = s.encode("ascii")
    if len(data) % 4:
        return None
    outside = data.translate(None, _BASE64_ALPHABET)
    if outside not in (b"", b"=", b"==") or not data.endswith(outside):
        return None
    return len(data) // 4 * 3 - len(outside)


def _jpeg_base64(v: object, info: ValidationInfo) -> str:
    s = _string(v)
    if not s:
        raise ValueError("must not be empty: a base64 JPEG")
    if len(s) > _MAX_B64_CHARS:
        raise ValueError(f"image larger than 3 MB ({MAX_IMAGE_BYTES} bytes); re-encode it smaller")
    size = standard_base64_size(s)
    if size is None:
        raise ValueError("must be standard base64 (A-Z a-z 0-9 + / with = padding, no line breaks or data: prefix)")
    if size > MAX_IMAGE_BYTES:
        raise ValueError(f"image of {size} bytes is larger than 3 MB ({MAX_IMAGE_BYTES} bytes)")
    if not base64.b64decode(s[:4]).startswith(JPEG_MAGIC):  # the first group holds the first 3 bytes
        raise ValueError("must be a JPEG image (bytes FF D8 FF); convert it to JPEG")
    return s


def _sex_code(v: object, info: ValidationInfo) -> str:
    s = _string(v)
    if s not in codes.SEX_NAMES:
        if len(s) == 2 and s.startswith("0") and s[1:] in codes.SEX_NAMES:
            raise ValueError(f"must be one digit (GB/T 2261.1: '1' 男, '2' 女, '0' 未知, '9' 未说明), not {s!r}")
        raise ValueError("must be one of '0', '1', '2', '9' (GB/T 2261.1)")
    return s


def _sex_name(v: object, info: ValidationInfo) -> str:
    s = _string(v)
    # 未说明 is three characters against the table's varchar(2): the code table wins, because it is
    # the only name the spec gives for code 9 and refusing it would make such a record unsendable.
    if s not in codes.SEX_NAMES.values():
        raise ValueError("must be one of 未知, 男, 女, 未说明 (GB/T 2261.1)")
    return s


def _nation_code(v: object, info: ValidationInfo) -> str:
    s = _string(v)
    if s not in codes.NATIONS:
        raise ValueError("must be a two-digit GB/T 3304 code, 01..56, 97 or 98")
    return s


def _nation_name(v: object, info: ValidationInfo) -> str:
    s = _varchar(10)(v, info)
    if s not in codes.NATIONS.values() and s not in codes.NATION_ALIASES:
        if codes.nation_code(s) is not None:
            short = codes.NATIONS[codes.nation_code(s) or ""]
            raise ValueError(f"must be the short name as printed on the card, e.g. {short!r}")
        raise ValueError("must be a GB/T 3304 nation name as printed on the card, e.g. '汉'")
    return s


def _iso_local(v: object, info: ValidationInfo) -> str:
    s = _string(v)
    m = _ISO_LOCAL.fullmatch(s)
    if m is None:
        raise ValueError("must be ISO local time, yyyy-MM-ddTHH:mm:ss[.fraction], without a zone")
    try:
        dt.datetime.fromisoformat(m.group(1))
    except ValueError:
        raise ValueError("must be a real date and time") from None
    return s


def _optional(check: Check) -> Check:
    def optional(v: object, info: ValidationInfo) -> object:
        return None if v is None else check(v, info)

    return optional


@dataclasses.dataclass(frozen=True)
class _Rule:
    """One field's rule: the check pydantic runs on the raw JSON value, and the JSON Schema that
    describes it, so the local API's request schema is generated from the same place."""

    check: Check
    schema: dict[str, Any]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.with_info_before_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return dict(self.schema)


def _rule(check: Check, schema: Mapping[str, Any]) -> _Rule:
    return _Rule(check, dict(schema))


def _varchar_schema(n: int, *, allow_empty: bool = False) -> dict[str, Any]:
    return {"type": "string", "maxLength": n} if allow_empty else {"type": "string", "minLength": 1, "maxLength": n}


def _code_schema(choices: tuple[int, ...], *, numeric_string: bool) -> dict[str, Any]:
    if numeric_string:
        return {"type": ["integer", "string"], "enum": [*choices, *map(str, choices)]}
    return {"type": "integer", "enum": list(choices)}


_DATE_SCHEMA = {"type": "string", "pattern": "^" + _DATE.pattern + "$"}
_DATETIME_SCHEMA = {"type": "string", "pattern": "^" + _DATETIME.pattern + "$"}
_JPEG_SCHEMA = {
    "type": "string",
    "minLength": 4,
    "maxLength": _MAX_B64_CHARS,
    "description": "JPEG of at most 3 MB, base64",
}
_SCORE_SCHEMA = {"type": "number", "minimum": 0, "maximum": 1}
_CARD_TYPES = tuple(codes.CARD_TYPES)
_RESULTS = (0, 1, 2)


# --------------------------------------------------------------------------------------------------
# Models


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_payload(self) -> Payload:
        """The JSON-ready body: spec field names in table order, optional fields left out when unset."""
        return self.model_dump(mode="json", exclude_none=True)


class VerificationRecord(_Record):
    """One verification (人证核验结果), the body of POST /verification/pregnant_woman/first.

    Build it with ``parse_verification`` (from JSON data) or ``build_verification`` (from a card).
    Its ``repr`` masks the card number and leaves out names and images.
    """

    realName: Annotated[str, _rule(_varchar(10), _varchar_schema(10))]
    cardType: Annotated[
        int,
        _rule(
            _small_code(_CARD_TYPES, numeric_string=True),
            _code_schema(_CARD_TYPES, numeric_string=True),
        ),
    ]
    cardNo: Annotated[str, _rule(_varchar(18), _varchar_schema(18))]
    sexCode: Annotated[str, _rule(_sex_code, {"type": "string", "enum": list(codes.SEX_NAMES)})]
    sexName: Annotated[str, _rule(_sex_name, {"type": "string", "enum": list(codes.SEX_NAMES.values())})]
    nationalCode: Annotated[str, _rule(_nation_code, {"type": "string", "enum": list(codes.NATIONS)})]
    nationalName: Annotated[
        str,
        _rule(_nation_name, {"type": "string", "enum": [*codes.NATIONS.values(), *codes.NATION_ALIASES]}),
    ]
    operationUser: Annotated[
        str, _rule(_operation_user, {**_varchar_schema(OPERATOR_MAX_LEN), "pattern": OPERATOR_PATTERN})
    ]
    birthday: Annotated[str, _rule(_date, _DATE_SCHEMA)]
    address: Annotated[str, _rule(_varchar(100, allow_empty=True), _varchar_schema(100, allow_empty=True))]
    police: Annotated[str, _rule(_varchar(100, allow_empty=True), _varchar_schema(100, allow_empty=True))]
    cardStartDate: Annotated[str, _rule(_date, _DATE_SCHEMA)]
    # yyyy-MM-dd or the configured long-term text ([platform.conventions] long_term_end_date, <= 10)
    cardEndDate: Annotated[str, _rule(_card_end_date, _varchar_schema(10))]
    headImg: Annotated[str, _rule(_jpeg_base64, _JPEG_SCHEMA)]
    cameraImg: Annotated[str, _rule(_jpeg_base64, _JPEG_SCHEMA)]
    faceScore: Annotated[float, _rule(_score, _SCORE_SCHEMA)]
    faceResult: Annotated[
        int, _rule(_small_code(_RESULTS, numeric_string=True), _code_schema(_RESULTS, numeric_string=True))
    ]
    verifyDate: Annotated[str, _rule(_date, _DATE_SCHEMA)]
    verifyTime: Annotated[str, _rule(_datetime19, _DATETIME_SCHEMA)]
    certTimeoutStatus: Annotated[
        int, _rule(_small_code((0, 1), numeric_string=False), _code_schema((0, 1), numeric_string=False))
    ]
    deviceNo: Annotated[str, _rule(_varchar(50), _varchar_schema(50))]
    machineCode: Annotated[str, _rule(_varchar(50), _varchar_schema(50))]
    fingerCollectImg: Annotated[str | None, _rule(_optional(_jpeg_base64), _JPEG_SCHEMA)] = None
    fingerScore: Annotated[float | None, _rule(_optional(_score), _SCORE_SCHEMA)] = None
    fingerResult: Annotated[
        int | None,
        _rule(
            _optional(_small_code(_RESULTS, numeric_string=False)),
            _code_schema(_RESULTS, numeric_string=False),
        ),
    ] = None

    @model_validator(mode="after")
    def _cross_field_rules(self, info: ValidationInfo) -> VerificationRecord:
        problems = _verification_cross_problems(dict(self), _long_term_end(info))
        if problems:
            raise ValueError("; ".join(f"{f}: {r}" for f, r in problems))
        return self

    def __repr__(self) -> str:
        return (
            f"VerificationRecord(cardType={self.cardType}, cardNo={mask_card_no(self.cardNo)}, "
            f"verifyTime={self.verifyTime!r}, faceResult={self.faceResult}, machineCode={self.machineCode!r})"
        )

    __str__ = __repr__


class DeviceRegistration(_Record):
    """The device registration (设备登记), the body of POST /machine/info.

    ``registerTime`` is not in the spec's table but is in its example: fvagent always sends it (ISO
    local time); on input it may be absent.
    """

    deptId: Annotated[str, _rule(_varchar(50), _varchar_schema(50))]
    deptName: Annotated[str, _rule(_varchar(50), _varchar_schema(50))]
    machineManufacturer: Annotated[str, _rule(_varchar(50), _varchar_schema(50))]
    machineMode: Annotated[str, _rule(_varchar(50), _varchar_schema(50))]
    purchaseTime: Annotated[str, _rule(_date, _DATE_SCHEMA)]
    machineCode: Annotated[str, _rule(_varchar(50), _varchar_schema(50))]
    deviceNo: Annotated[str, _rule(_varchar(50), _varchar_schema(50))]
    status: Annotated[int, _rule(_small_code((0, 1), numeric_string=False), _code_schema((0, 1), numeric_string=False))]
    registerUser: Annotated[str, _rule(_varchar(50), _varchar_schema(50))]
    registerTime: Annotated[
        str | None,
        _rule(_optional(_iso_local), {"type": "string", "pattern": "^" + _ISO_LOCAL.pattern + "$"}),
    ] = None


def _text(values: Mapping[str, Any], name: str) -> str | None:
    """A field that passed its own rule as text, or None when it is absent (or failed)."""
    value = values.get(name)
    return value if isinstance(value, str) else None


def _verification_cross_problems(values: Mapping[str, Any], long_term_end: str) -> list[tuple[str, str]]:
    """Rules between fields, over the fields that are valid on their own (absent ones are skipped)."""
    problems: list[tuple[str, str]] = []
    sex_code, sex_name = _text(values, "sexCode"), _text(values, "sexName")
    nation_code, nation_name = _text(values, "nationalCode"), _text(values, "nationalName")
    card_no, birthday = _text(values, "cardNo"), _text(values, "birthday")
    verify_day, verify_time = _text(values, "verifyDate"), _text(values, "verifyTime")
    start, end = _text(values, "cardStartDate"), _text(values, "cardEndDate")
    cert_timeout = values.get("certTimeoutStatus")

    if sex_code is not None and sex_name is not None:
        expected = codes.SEX_NAMES[sex_code]
        if sex_name != expected:
            problems.append(("sexName", f"must be {expected!r} for sexCode {sex_code!r} (GB/T 2261.1)"))

    if nation_code is not None and nation_name is not None:
        expected = codes.NATIONS[nation_code]
        if nation_name != expected and codes.NATION_ALIASES.get(nation_name) != nation_code:
            problems.append(("nationalName", f"must be {expected!r} for nationalCode {nation_code!r} (GB/T 3304)"))

    if values.get("cardType") == codes.CARD_RESIDENT_ID and card_no is not None:
        id_problems = codes.validate_resident_id(card_no)
        problems += [("cardNo", f"cardType 0: {p}") for p in id_problems]
        if not id_problems and birthday is not None:
            inside = codes.resident_id_birth_date(card_no)
            if inside is not None and birthday != inside.isoformat():
                problems.append(("birthday", "must equal the birth date inside cardNo (characters 7-14)"))

    verify_date = dt.date.fromisoformat(verify_day) if verify_day is not None else None
    if verify_date is not None and verify_time is not None and verify_time[:10] != verify_day:
        problems.append(("verifyDate", "must be the date part of verifyTime"))
    if verify_date is not None and birthday is not None and dt.date.fromisoformat(birthday) > verify_date:
        problems.append(("birthday", "must not be after verifyDate"))

    end_date = dt.date.fromisoformat(end) if end is not None and end != long_term_end else None
    if end_date is not None and start is not None and dt.date.fromisoformat(start) > end_date:
        problems.append(("cardEndDate", "must not be before cardStartDate"))
    if end is not None and verify_date is not None and cert_timeout is not None:
        expired = end_date is not None and end_date < verify_date
        if cert_timeout != int(expired):
            rule = (
                "must be 1: cardEndDate is before verifyDate (the card had expired)"
                if expired
                else "must be 0: the card was valid on verifyDate"
            )
            problems.append(("certTimeoutStatus", rule))
    return problems


# --------------------------------------------------------------------------------------------------
# Parsing with every problem collected


def _field_adapters(model: type[BaseModel]) -> dict[str, TypeAdapter[Any]]:
    adapters: dict[str, TypeAdapter[Any]] = {}
    for name, field in model.model_fields.items():
        # a type built at run time: mypy cannot see it as a type form, pydantic takes it as one
        annotated: Any = Annotated[field.annotation, *field.metadata]
        adapters[name] = TypeAdapter(annotated)
    return adapters


_ADAPTERS: dict[type[BaseModel], dict[str, TypeAdapter[Any]]] = {
    VerificationRecord: _field_adapters(VerificationRecord),
    DeviceRegistration: _field_adapters(DeviceRegistration),
}


def _validate_fields(
    model: type[BaseModel], data: object, context: dict[str, Any], what: str
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Validate each field on its own: the values that passed, and a problem for every one that did not."""
    if not isinstance(data, Mapping):
        raise RecordError(
            f"a {what} must be a JSON object, got {_json_kind(data)}", problems=[("(record)", "must be a JSON object")]
        )
    values: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for name, field in model.model_fields.items():
        if name not in data:
            if field.is_required():
                problems.append((name, "required"))
            continue
        if data[name] is None and field.is_required():
            problems.append((name, "required, got null"))
            continue
        try:
            values[name] = _ADAPTERS[model][name].validate_python(data[name], context=context)
        except ValidationError as exc:
            problems.append((name, _message(exc.errors()[0])))
    for name in data:
        if name not in model.model_fields:
            problems.append((str(name), "unknown field: not in the platform spec (field names are case-sensitive)"))
    return values, problems


def _message(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", ""))
    return msg.removeprefix("Value error, ")


def _raise(what: str, problems: list[tuple[str, str]]) -> NoReturn:
    raise RecordError(
        f"{what} breaks the platform spec: {len(problems)} problem(s)",
        problems=problems,
        hint="fix each field named above; nothing was sent",
    )


def parse_verification(data: object, *, long_term_end: str = LONG_TERM_END) -> VerificationRecord:
    """Validate JSON data (spec field names) into a ``VerificationRecord``.

    ``long_term_end`` is the configured ``cardEndDate`` of a long-term card
    (``[platform.conventions] long_term_end_date``). Raises ``RecordError`` whose ``problems`` lists
    every bad field and its rule, cross-field rules included.
    """
    context = {"long_term_end": long_term_end}
    values, problems = _validate_fields(VerificationRecord, data, context, "verification record")
    problems += _verification_cross_problems(values, long_term_end)
    if problems:
        _raise("verification record", problems)
    # Every field and cross-field rule has just passed on exactly these values: construct without
    # running them (and decoding the images) a second time.
    return VerificationRecord.model_construct(**values)


def parse_registration(data: object) -> DeviceRegistration:
    """Validate JSON data (spec field names) into a ``DeviceRegistration``; ``RecordError`` lists every fault."""
    values, problems = _validate_fields(DeviceRegistration, data, {}, "device registration")
    if problems:
        _raise("device registration", problems)
    return DeviceRegistration.model_validate(values)


def registration_payload(device: DeviceDescription, *, now: dt.datetime | None = None) -> Payload:
    """The body of POST /machine/info for the ``[device]`` settings, stamped with ``registerTime``.

    ``now`` defaults to the current time; it is sent as China local time (ISO, milliseconds).
    Raises ``RecordError`` when the settings break the spec.
    """
    moment = platform_local(now if now is not None else dt.datetime.now(CHINA_TZ))
    data = {
        "deptId": device.dept_id,
        "deptName": device.dept_name,
        "machineManufacturer": device.manufacturer,
        "machineMode": device.model,
        "purchaseTime": device.purchase_date.isoformat(),
        "machineCode": device.machine_code,
        "deviceNo": device.device_no,
        "status": device.status,
        "registerUser": device.register_user,
        "registerTime": moment.isoformat(timespec="milliseconds"),
    }
    return parse_registration(data).to_payload()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclasses.dataclass(frozen=True)
class VerificationCapture:
    """What one verification captured, before it becomes platform fields: the card read, the photos,
    the face check, who and when, and this device. Its ``repr`` shows no personal data."""

    card: IdCard
    head_jpeg: bytes | None = dataclasses.field(repr=False)
    """The card photo (headImg); ``None`` while it waits for a WLT decoder (headImg left out)."""
    camera_jpeg: bytes = dataclasses.field(repr=False)
    face_score: float
    face_result: int
    operator: str = dataclasses.field(repr=False)
    verified_at: dt.datetime
    """The verification's time; a naive value is taken as China local time already."""
    device: DeviceIdentity
    long_term_end: str = LONG_TERM_END
    """The configured cardEndDate of a long-term card ([platform.conventions] long_term_end_date)."""
    finger_jpeg: bytes | None = dataclasses.field(default=None, repr=False)
    finger_score: float | None = None
    finger_result: int | None = None


def verification_fields(capture: VerificationCapture) -> Payload:
    """The platform fields of one verification, mapped from what it captured, unvalidated.

    The one card -> payload mapping: ``build_verification`` validates it into a record, and a card
    that cannot make a valid record is kept held with exactly these fields for a technician to fix.

    - names come from the code tables (``sexName`` from ``sex_code``, ``nationalName`` from
      ``nation_code``); a card without a nation (HK/Macau/Taiwan and foreign cards) is sent as
      97 其他, since the platform requires a GB/T 3304 code and the card has none;
    - ``realName`` is the Chinese name, or the English name when the card has no Chinese one;
    - ``verifyDate``/``verifyTime`` are ``verified_at`` in China local time;
    - ``cardEndDate`` is ``long_term_end`` for a long-term card; ``certTimeoutStatus`` is 1 when
      the card's last valid day is before the verify date, else 0;
    - ``headImg`` is left out when ``head_jpeg`` is None (a held record completed later).
    """
    card = capture.card
    local = platform_local(capture.verified_at)
    verify_date = local.date()
    expired = card.valid_to is not None and card.valid_to < verify_date
    nation_code = card.nation_code or codes.NATION_OTHER
    data: Payload = {
        "realName": card.name or (card.english_name or ""),
        "cardType": card.card_type,
        "cardNo": card.card_no,
        "sexCode": card.sex_code,
        "sexName": codes.SEX_NAMES.get(card.sex_code, ""),
        "nationalCode": nation_code,
        "nationalName": codes.NATIONS.get(nation_code, ""),
        "operationUser": capture.operator,
        "birthday": card.birth_date.isoformat(),
        "address": card.address,
        "police": card.authority,
        "cardStartDate": card.valid_from.isoformat(),
        "cardEndDate": card.valid_to.isoformat() if card.valid_to is not None else capture.long_term_end,
        "cameraImg": _b64(capture.camera_jpeg),
        "faceScore": capture.face_score,
        "faceResult": capture.face_result,
        "verifyDate": verify_date.isoformat(),
        "verifyTime": local.strftime("%Y-%m-%d %H:%M:%S"),
        "certTimeoutStatus": int(expired),
        "deviceNo": capture.device.device_no,
        "machineCode": capture.device.machine_code,
    }
    if capture.head_jpeg is not None:
        data["headImg"] = _b64(capture.head_jpeg)
    if capture.finger_jpeg is not None:
        data["fingerCollectImg"] = _b64(capture.finger_jpeg)
    if capture.finger_score is not None:
        data["fingerScore"] = capture.finger_score
    if capture.finger_result is not None:
        data["fingerResult"] = capture.finger_result
    return data


def build_verification(capture: VerificationCapture) -> VerificationRecord:
    """Build the record of one verification from what it captured (``verification_fields``, validated).

    Raises ``RecordError`` listing every field that breaks the spec (e.g. a name longer than 10
    characters, or no ``head_jpeg``): nothing is truncated to make it fit.
    """
    data = verification_fields(capture)
    try:
        return parse_verification(data, long_term_end=capture.long_term_end)
    except RecordError as exc:
        # A name derived from an unknown code adds nothing to the code's own problem.
        derived = {
            "sexName": capture.card.sex_code not in codes.SEX_NAMES,
            "nationalName": data["nationalCode"] not in codes.NATIONS,
        }
        _raise("verification record", [(f, r) for f, r in exc.problems if not derived.get(f)])


def natural_key(record: VerificationRecord | Mapping[str, object]) -> tuple[str, str, str]:
    """(machineCode, cardNo, verifyTime): the same verification always has the same key."""
    if isinstance(record, VerificationRecord):
        return (record.machineCode, record.cardNo, record.verifyTime)
    return (str(record["machineCode"]), str(record["cardNo"]), str(record["verifyTime"]))
