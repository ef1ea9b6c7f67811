"""core.records: every rule of the platform's two payload tables, each with a test that breaks it.

Synthetic identities only: ID numbers are built with the GB 11643 check digit, names are invented.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import io
import itertools
import json
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from agent.config import DeviceSettings
from core import codes
from core.card import IdCard
from core.errors import RecordError
from core.images import MAX_IMAGE_BYTES, encode_jpeg
from core.records import (
    OPERATOR_PATTERN,
    DeviceRegistration,
    VerificationCapture,
    VerificationRecord,
    build_verification,
    natural_key,
    parse_registration,
    parse_verification,
    registration_payload,
    standard_base64_size,
    validate_operator,
)


def make_id(birth: str = "19900101", seq: str = "002", region: str = "450203") -> str:
    first17 = region + birth + seq
    return first17 + codes.resident_id_check_digit(first17)


def _tiny_jpeg() -> bytes:
    frame = np.zeros((16, 16, 3), dtype=np.uint8)
    frame[4:12, 4:12] = (40, 120, 200)
    return encode_jpeg(frame)


JPEG = _tiny_jpeg()
JPEG_B64 = base64.b64encode(JPEG).decode()
CARD_NO = make_id()

SPEC_ORDER = [
    "realName",
    "cardType",
    "cardNo",
    "sexCode",
    "sexName",
    "nationalCode",
    "nationalName",
    "operationUser",
    "birthday",
    "address",
    "police",
    "cardStartDate",
    "cardEndDate",
    "headImg",
    "cameraImg",
    "faceScore",
    "faceResult",
    "verifyDate",
    "verifyTime",
    "certTimeoutStatus",
    "deviceNo",
    "machineCode",
    "fingerCollectImg",
    "fingerScore",
    "fingerResult",
]
REQUIRED = SPEC_ORDER[:22]


def valid() -> dict[str, Any]:
    return {
        "realName": "韦测试",
        "cardType": 0,
        "cardNo": CARD_NO,
        "sexCode": "2",
        "sexName": "女",
        "nationalCode": "08",
        "nationalName": "壮",
        "operationUser": "覃护士",
        "birthday": "1990-01-01",
        "address": "广西壮族自治区南宁市青秀区测试路1号",
        "police": "南宁市公安局青秀分局",
        "cardStartDate": "2015-03-01",
        "cardEndDate": "2035-03-01",
        "headImg": JPEG_B64,
        "cameraImg": JPEG_B64,
        "faceScore": 0.86,
        "faceResult": 1,
        "verifyDate": "2024-06-11",
        "verifyTime": "2024-06-11 17:33:55",
        "certTimeoutStatus": 0,
        "deviceNo": "SN0001",
        "machineCode": "TS-SN0001",
    }


def problems_of(data: dict[str, Any], **kw: Any) -> list[tuple[str, str]]:
    with pytest.raises(RecordError) as info:
        parse_verification(data, **kw)
    return info.value.problems


def refused(field: str, value: Any, *, contains: str = "", **kw: Any) -> None:
    """Setting ``field`` to ``value`` is refused with a problem on ``field`` (and only that field)."""
    data = valid()
    data[field] = value
    problems = problems_of(data, **kw)
    assert [f for f, _ in problems] == [field], problems
    assert contains in problems[0][1], problems


def accepted(field: str, value: Any, **kw: Any) -> VerificationRecord:
    data = valid()
    data[field] = value
    return parse_verification(data, **kw)


# -- the valid record and the payload -------------------------------------------------------------------


def test_valid_record_round_trips_in_spec_order() -> None:
    record = parse_verification(valid())
    payload = record.to_payload()
    assert payload == valid()
    assert list(payload) == REQUIRED
    assert json.loads(json.dumps(payload, ensure_ascii=False)) == payload


def test_optional_fields_sent_when_set_in_spec_order() -> None:
    data = valid() | {"fingerCollectImg": JPEG_B64, "fingerScore": 0.5, "fingerResult": 1}
    payload = parse_verification(data).to_payload()
    assert list(payload) == SPEC_ORDER
    assert payload["fingerResult"] == 1


@pytest.mark.parametrize("field", ["fingerCollectImg", "fingerScore", "fingerResult"])
def test_optional_fields_may_be_absent_or_null(field: str) -> None:
    assert field not in parse_verification(valid()).to_payload()
    assert field not in accepted(field, None).to_payload()


@pytest.mark.parametrize(
    ("field", "given", "sent"),
    [
        ("cardType", "0", 0),
        ("cardType", 0, 0),
        ("faceResult", "1", 1),
        ("faceResult", 2, 2),
    ],
)
def test_card_type_and_face_result_are_sent_as_json_numbers(field: str, given: Any, sent: int) -> None:
    payload = accepted(field, given).to_payload()
    assert payload[field] == sent and isinstance(payload[field], int)


def test_face_score_integer_is_sent_as_number() -> None:
    payload = accepted("faceScore", 1).to_payload()
    assert payload["faceScore"] == 1.0 and isinstance(payload["faceScore"], float)


# -- presence and unknown fields ---------------------------------------------------------------------------


@pytest.mark.parametrize("field", REQUIRED)
def test_every_required_field_is_required(field: str) -> None:
    data = valid()
    del data[field]
    assert (field, "required") in problems_of(data)


@pytest.mark.parametrize("field", REQUIRED)
def test_null_is_refused_for_required_fields(field: str) -> None:
    refused(field, None, contains="required")


@pytest.mark.parametrize("name", ["extra", "cardno", "CardNo", "registerTime"])
def test_unknown_fields_are_refused(name: str) -> None:
    data = valid() | {name: "x"}
    assert [f for f, _ in problems_of(data)] == [name]


def test_not_an_object() -> None:
    with pytest.raises(RecordError, match="JSON object"):
        parse_verification(["not", "a", "record"])  # type: ignore[arg-type]


# -- JSON types -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("realName", 123, "must be a JSON string, got a number"),
        ("cardNo", 450203199001010021, "must be a JSON string"),
        ("sexCode", 2, "must be a JSON string, got a number"),
        ("nationalCode", 8, "must be a JSON string"),
        ("birthday", ["1990-01-01"], "got an array"),
        ("address", {"a": 1}, "got an object"),
        ("deviceNo", True, "got a boolean"),
        ("cardType", True, "got a boolean"),
        ("cardType", 0.0, "whole JSON number"),
        ("cardType", "00", "one-digit string"),
        ("faceResult", False, "got a boolean"),
        ("faceScore", "0.86", "must be a JSON number, got a string"),
        ("faceScore", True, "got a boolean"),
        ("certTimeoutStatus", "0", "must be a JSON integer, got a string"),
        ("certTimeoutStatus", 0.0, "whole JSON number"),
        ("fingerResult", "1", "must be a JSON integer, got a string"),
        ("fingerScore", "0.5", "must be a JSON number"),
        ("headImg", 12, "must be a JSON string"),
    ],
)
def test_json_types(field: str, value: Any, rule: str) -> None:
    refused(field, value, contains=rule)


# -- lengths: varchar(n) counts characters ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "limit"),
    [
        ("realName", 10),
        ("operationUser", 10),
        ("address", 100),
        ("police", 100),
        ("deviceNo", 50),
        ("machineCode", 50),
    ],
)
def test_varchar_limits_count_characters(field: str, limit: int) -> None:
    assert getattr(accepted(field, "桂" * limit), field) == "桂" * limit
    refused(field, "桂" * (limit + 1), contains=f"at most {limit} characters")


def test_card_no_limit_is_18() -> None:
    refused("cardNo", CARD_NO + "1", contains="at most 18 characters")
    data = valid() | {"cardType": 2, "cardNo": "ABC" + "1" * 15}
    assert parse_verification(data).cardNo == "ABC" + "1" * 15


@pytest.mark.parametrize("field", ["realName", "operationUser", "deviceNo", "machineCode", "cardNo"])
def test_empty_strings_refused(field: str) -> None:
    refused(field, "", contains="must not be empty")


@pytest.mark.parametrize(
    ("value", "contains"), [("   ", "must not be blank"), ("王\u0007护士", "must not contain control characters")]
)
def test_operation_user_follows_the_operator_rule(value: str, contains: str) -> None:
    refused("operationUser", value, contains=contains)
    with pytest.raises(ValueError, match="operator must"):
        validate_operator(value)


def test_the_operator_pattern_agrees_with_the_operator_rule() -> None:
    import re

    for name in ("王护士", " 王护士 ", "一二三四五六七八九十", "a b", "   ", "王\u0007护士", ""):
        try:
            validate_operator(name)
            ok = True
        except ValueError:
            ok = False
        assert ok == bool(re.search(OPERATOR_PATTERN, name)), name
    assert accepted("operationUser", " 王护士 ").operationUser == " 王护士 "  # nothing rewritten


@pytest.mark.parametrize("field", ["address", "police"])
def test_address_and_police_may_be_empty(field: str) -> None:
    # Foreign permanent resident cards carry no address; the field stays present and empty.
    assert getattr(accepted(field, ""), field) == ""


def test_nothing_is_truncated() -> None:
    data = valid() | {"realName": "阿依古丽·买买提艾力"}  # 10 characters: fits exactly
    assert parse_verification(data).realName == "阿依古丽·买买提艾力"
    with pytest.raises(RecordError):
        parse_verification(data | {"realName": data["realName"] + "江"})


# -- dates and times -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["birthday", "cardStartDate", "verifyDate"])
@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("1990/01/01", "yyyy-MM-dd"),
        ("1990-1-1", "yyyy-MM-dd"),
        ("19900101", "yyyy-MM-dd"),
        ("2019-11-30 23:58:14", "yyyy-MM-dd"),
        ("1990-02-30", "real calendar date"),
        ("", "yyyy-MM-dd"),
    ],
)
def test_date_fields(field: str, value: str, rule: str) -> None:
    data = valid()
    data[field] = value
    problems = problems_of(data)
    assert (field, next(r for f, r in problems if f == field)) in problems
    assert rule in dict(problems)[field]


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("2024-06-11T17:33:55", "yyyy-MM-dd HH:mm:ss"),
        ("2024-06-11 17:33", "yyyy-MM-dd HH:mm:ss"),
        ("2024-06-11 17:33:55.123", "yyyy-MM-dd HH:mm:ss"),
        ("2024-06-11 24:00:00", "real date and time"),
    ],
)
def test_verify_time_format(value: str, rule: str) -> None:
    data = valid() | {"verifyTime": value}
    assert rule in dict(problems_of(data))["verifyTime"]


def test_verify_date_must_be_the_date_of_verify_time() -> None:
    refused("verifyDate", "2024-06-12", contains="date part of verifyTime")


def test_birthday_not_after_verify_date() -> None:
    data = valid() | {"cardType": 9, "birthday": "2024-06-12"}
    assert problems_of(data) == [("birthday", "must not be after verifyDate")]


# -- cardEndDate, long-term cards, certTimeoutStatus -------------------------------------------------------


def test_long_term_card_default_text() -> None:
    assert accepted("cardEndDate", "长期").cardEndDate == "长期"


def test_long_term_card_configured_text() -> None:
    assert accepted("cardEndDate", "-", long_term_end="-").cardEndDate == "-"
    refused("cardEndDate", "-", contains="'长期'")
    refused("cardEndDate", "长期", long_term_end="-", contains="'-'")


@pytest.mark.parametrize("value", ["2029-02-04 13:19:12", "永久", "2035-02-30"])
def test_card_end_date_format(value: str) -> None:
    refused("cardEndDate", value, contains="yyyy-MM-dd")


def test_card_end_before_start_refused() -> None:
    data = valid() | {"cardStartDate": "2036-01-01"}
    assert problems_of(data) == [("cardEndDate", "must not be before cardStartDate")]
    # the boundary: one day apart is refused, the same day is a (short) valid card
    data = valid() | {"cardStartDate": "2035-03-02"}
    assert problems_of(data) == [("cardEndDate", "must not be before cardStartDate")]
    assert parse_verification(valid() | {"cardStartDate": "2035-03-01"}).cardStartDate == "2035-03-01"


@pytest.mark.parametrize(
    ("end", "status", "ok"),
    [
        ("2024-06-11", 0, True),  # valid through its last day
        ("2024-06-10", 1, True),  # expired the day before
        ("2024-06-10", 0, False),
        ("2024-06-11", 1, False),
        ("长期", 0, True),
        ("长期", 1, False),
    ],
)
def test_cert_timeout_status_agrees_with_dates(end: str, status: int, ok: bool) -> None:
    data = valid() | {"cardStartDate": "2004-06-10", "cardEndDate": end, "certTimeoutStatus": status}
    if ok:
        assert parse_verification(data).certTimeoutStatus == status
    else:
        assert [f for f, _ in problems_of(data)] == ["certTimeoutStatus"]


@pytest.mark.parametrize("value", [2, -1])
def test_cert_timeout_status_codes(value: int) -> None:
    refused("certTimeoutStatus", value, contains="one of 0, 1")


# -- code tables -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("card_type", [1, 2, 9, "1", "2", "9"])
def test_other_card_types_accepted_without_the_resident_id_rules(card_type: Any) -> None:
    data = valid() | {"cardType": card_type, "cardNo": "H12345678", "birthday": "1991-05-05"}
    assert parse_verification(data).cardType == int(card_type)


@pytest.mark.parametrize("value", [3, 8, -1, 10, "3", "A"])
def test_card_type_outside_the_table(value: Any) -> None:
    refused("cardType", value)


@pytest.mark.parametrize(("code", "name"), [("0", "未知"), ("1", "男"), ("2", "女"), ("9", "未说明")])
def test_each_sex_code_with_its_name(code: str, name: str) -> None:
    # 未说明 is 3 characters against varchar(2): the code table wins (see docs/configuration.md).
    record = parse_verification(valid() | {"sexCode": code, "sexName": name})
    assert (record.sexCode, record.sexName) == (code, name)


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("01", "one digit"),
        ("02", "one digit"),
        ("3", "one of '0', '1', '2', '9'"),
        ("F", "one of"),
    ],
)
def test_sex_code_is_one_gb_t_2261_1_digit(value: str, rule: str) -> None:
    data = valid() | {"sexCode": value}
    assert rule in dict(problems_of(data))["sexCode"]


def test_sex_name_must_match_sex_code() -> None:
    refused("sexName", "男", contains="must be '女' for sexCode '2'")


@pytest.mark.parametrize("value", ["F", "female", "女性"])
def test_sex_name_outside_the_table(value: str) -> None:
    refused("sexName", value, contains="GB/T 2261.1")


@pytest.mark.parametrize(("code", "name"), [(c, n) for c, n in codes.NATIONS.items()])
def test_every_nation_code_with_its_short_name(code: str, name: str) -> None:
    record = parse_verification(valid() | {"nationalCode": code, "nationalName": name})
    assert record.nationalName == name


@pytest.mark.parametrize(("code", "name"), [("36", "毛难"), ("46", "崩龙")])
def test_pre_rename_nation_names_accepted(code: str, name: str) -> None:
    assert parse_verification(valid() | {"nationalCode": code, "nationalName": name}).nationalName == name


@pytest.mark.parametrize("value", ["00", "57", "96", "99", "8", "008"])
def test_nation_code_outside_gb_t_3304(value: str) -> None:
    data = valid() | {"nationalCode": value}
    assert "GB/T 3304" in dict(problems_of(data))["nationalCode"]


def test_nation_name_must_match_code() -> None:
    refused("nationalName", "汉", contains="must be '壮' for nationalCode '08'")
    data = valid() | {"nationalCode": "36", "nationalName": "崩龙"}
    assert [f for f, _ in problems_of(data)] == ["nationalName"]


@pytest.mark.parametrize(("value", "rule"), [("壮族", "short name"), ("Zhuang", "GB/T 3304")])
def test_nation_name_is_the_short_name(value: str, rule: str) -> None:
    refused("nationalName", value, contains=rule)


# -- resident ID numbers (cardType 0) ------------------------------------------------------------------------


def test_resident_id_wrong_check_character() -> None:
    wrong = CARD_NO[:17] + ("0" if CARD_NO[17] != "0" else "1")
    refused("cardNo", wrong, contains="check character")
    # The same number is fine on a card type whose numbers are not GB 11643.
    assert parse_verification(valid() | {"cardType": 9, "cardNo": wrong}).cardNo == wrong


def test_resident_id_lower_case_x() -> None:
    seq = next(f"{i:03d}" for i in range(1000) if make_id(seq=f"{i:03d}")[-1] == "X")
    number = make_id(seq=seq)
    assert accepted("cardNo", number).cardNo == number
    refused("cardNo", number[:17] + "x", contains="upper-case X")


@pytest.mark.parametrize("length", [15, 17])
def test_resident_id_length(length: int) -> None:
    refused("cardNo", "4" * length, contains="18 characters")


def test_resident_id_birth_date_must_be_real() -> None:
    number = make_id(birth="19900231")
    data = valid() | {"cardNo": number, "birthday": "1990-02-28"}
    assert problems_of(data) == [
        ("cardNo", "cardType 0: the birth date inside the number (characters 7-14) is not a real date")
    ]


def test_birthday_must_agree_with_the_number() -> None:
    refused("birthday", "1990-01-02", contains="birth date inside cardNo")
    number = make_id(birth="19851231")
    assert parse_verification(valid() | {"cardNo": number, "birthday": "1985-12-31"}).birthday == "1985-12-31"


# -- images ------------------------------------------------------------------------------------------------------


IMAGE_FIELDS = ["headImg", "cameraImg", "fingerCollectImg"]


def _png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("field", IMAGE_FIELDS)
@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("not base64!", "standard base64"),
        ("data:image/jpeg;base64," + JPEG_B64, "standard base64"),
        (JPEG_B64[:40] + "\n" + JPEG_B64[40:], "standard base64"),
        (JPEG_B64[:-1], "standard base64"),
        (_png_b64(), "must be a JPEG image"),
        (base64.b64encode(b"\xff\xd8").decode(), "must be a JPEG image"),
        ("", "must not be empty"),
    ],
)
def test_images_must_be_base64_jpeg(field: str, value: str, rule: str) -> None:
    refused(field, value, contains=rule)


def test_base64_check_without_decoding_matches_b64decode_validate() -> None:
    # Every string of up to 7 characters over letters, the two symbols, padding, a line break, a
    # non-ASCII letter and a URL-safe letter: same verdict and decoded size as the stdlib's strict
    # decoding, except that padding must close the last group (Python 3.11 lets "AAAA=" through;
    # RFC 4648 and Java's decoder do not).
    symbols = "A/=\né-"
    for n in range(8):
        for chars in itertools.product(symbols, repeat=n):
            s = "".join(chars)
            try:
                expected: int | None = len(base64.b64decode(s, validate=True))
            except (binascii.Error, ValueError):
                expected = None
            if len(s) % 4 or len(s) - len(s.rstrip("=")) > 2:
                expected = None
            assert standard_base64_size(s) == expected, repr(s)
    for s in ("AAAA====", "AAAAAA==", "AAAAAAA=", "=AAAAAA=", "AA==AA=="):
        assert standard_base64_size(s) == (
            len(base64.b64decode(s, validate=True)) if s in ("AAAAAA==", "AAAAAAA=") else None
        ), s
    for data in (JPEG, JPEG[:-1], JPEG[:-2], b""):
        assert standard_base64_size(base64.b64encode(data).decode()) == len(data)


def test_a_jpeg_magic_split_by_padding_is_no_jpeg() -> None:
    refused("headImg", base64.b64encode(JPEG[:3]).decode()[:2] + "==", contains="must be a JPEG image")


@pytest.mark.parametrize("field", IMAGE_FIELDS)
def test_images_at_most_3_mb(field: str) -> None:
    at_limit = base64.b64encode(JPEG[:3] + b"\0" * (MAX_IMAGE_BYTES - 3)).decode()
    assert getattr(accepted(field, at_limit), field) == at_limit
    over = base64.b64encode(JPEG[:3] + b"\0" * (MAX_IMAGE_BYTES - 2)).decode()
    refused(field, over, contains="larger than 3 MB")


# -- scores and results ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["faceScore", "fingerScore"])
@pytest.mark.parametrize("value", [0, 0.0, 0.5, 1, 1.0])
def test_scores_in_range(field: str, value: float) -> None:
    assert getattr(accepted(field, value), field) == value


@pytest.mark.parametrize("field", ["faceScore", "fingerScore"])
@pytest.mark.parametrize("value", [-0.01, 1.0001, 86, float("nan"), float("inf")])
def test_scores_out_of_range(field: str, value: float) -> None:
    refused(field, value, contains="between 0 and 1")


@pytest.mark.parametrize("field", ["faceResult", "fingerResult"])
@pytest.mark.parametrize("value", [0, 1, 2])
def test_results_in_table(field: str, value: int) -> None:
    assert getattr(accepted(field, value), field) == value


@pytest.mark.parametrize("field", ["faceResult", "fingerResult"])
@pytest.mark.parametrize("value", [3, -1, 9])
def test_results_outside_table(field: str, value: int) -> None:
    refused(field, value, contains="one of 0, 1, 2")


# -- every problem at once, and privacy --------------------------------------------------------------------------


def test_every_bad_field_is_listed_at_once() -> None:
    data = valid() | {
        "realName": "桂" * 11,
        "sexCode": "01",
        "nationalName": "汉",
        "birthday": "1990-01-02",
        "headImg": "!!",
        "faceScore": 2,
        "faceResult": 5,
        "verifyTime": "2024-06-11",
        "certTimeoutStatus": 1,
        "unknownField": 1,
    }
    del data["police"]
    fields = [f for f, _ in problems_of(data)]
    assert sorted(fields) == sorted(
        [
            "realName",
            "sexCode",
            "police",
            "headImg",
            "faceScore",
            "faceResult",
            "verifyTime",
            "unknownField",
            "nationalName",
            "birthday",
            "certTimeoutStatus",
        ]
    )


def test_errors_and_repr_never_show_personal_data() -> None:
    data = valid() | {"realName": "韦测试" * 4, "birthday": "1990-01-02"}
    with pytest.raises(RecordError) as info:
        parse_verification(data)
    text = str(info.value)
    assert "韦测试" not in text and CARD_NO not in text and CARD_NO[6:14] not in text
    record = parse_verification(valid())
    for shown in (repr(record), str(record)):
        assert CARD_NO not in shown and "韦测试" not in shown and JPEG_B64[:20] not in shown


def test_record_is_frozen() -> None:
    record = parse_verification(valid())
    with pytest.raises(ValidationError):
        record.faceScore = 0.1  # type: ignore[misc]


def test_direct_model_validation_enforces_cross_field_rules() -> None:
    with pytest.raises(ValidationError, match="sexName"):
        VerificationRecord.model_validate(valid() | {"sexName": "男"})


def test_natural_key() -> None:
    record = parse_verification(valid())
    assert natural_key(record) == ("TS-SN0001", CARD_NO, "2024-06-11 17:33:55")
    assert natural_key(record.to_payload()) == natural_key(record)


# -- device registration ----------------------------------------------------------------------------------------


def device(**over: Any) -> DeviceSettings:
    base = dict(
        machine_code="TS-SN0001",
        device_no="SN0001",
        manufacturer="德生实名易",
        model="TSR-R3",
        purchase_date=dt.date(2024, 6, 1),
        dept_id="0601",
        dept_name="妇产科",
        register_user="覃工",
        operator="覃护士",
    )
    return DeviceSettings(**(base | over))


def registration() -> dict[str, Any]:
    return {
        "deptId": "0601",
        "deptName": "妇产科",
        "machineManufacturer": "德生实名易",
        "machineMode": "TSR-R3",
        "purchaseTime": "2024-06-01",
        "machineCode": "TS-SN0001",
        "deviceNo": "SN0001",
        "status": 0,
        "registerUser": "覃工",
    }


def test_registration_payload_from_settings() -> None:
    now = dt.datetime(2024, 6, 11, 7, 39, 15, 72246, tzinfo=dt.UTC)
    payload = registration_payload(device(), now=now)
    assert payload == registration() | {"registerTime": "2024-06-11T15:39:15.072"}
    assert list(payload)[-1] == "registerTime"


def test_registration_payload_default_now_is_china_local_time() -> None:
    before = dt.datetime.now(dt.UTC) + dt.timedelta(hours=8)
    stamp = dt.datetime.fromisoformat(registration_payload(device(status=1))["registerTime"])
    after = dt.datetime.now(dt.UTC) + dt.timedelta(hours=8)
    assert before.replace(tzinfo=None) - dt.timedelta(seconds=1) <= stamp <= after.replace(tzinfo=None)


def test_registration_parses_the_seed_example_time() -> None:
    reg = parse_registration(registration() | {"registerTime": "2024-06-11T15:39:15.0722461"})
    assert reg.registerTime == "2024-06-11T15:39:15.0722461"
    assert parse_registration(registration()).to_payload() == registration()


@pytest.mark.parametrize("field", list(registration()))
def test_registration_required_fields(field: str) -> None:
    data = registration()
    del data[field]
    with pytest.raises(RecordError) as info:
        parse_registration(data)
    assert info.value.problems == [(field, "required")]


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("deptId", "1" * 51, "at most 50"),
        ("deptName", "科" * 51, "at most 50"),
        ("machineManufacturer", "", "must not be empty"),
        ("machineMode", 3, "JSON string"),
        ("machineCode", "C" * 51, "at most 50"),
        ("deviceNo", "D" * 51, "at most 50"),
        ("registerUser", "U" * 51, "at most 50"),
        ("purchaseTime", "2024-6-1", "yyyy-MM-dd"),
        ("purchaseTime", "2024-02-30", "real calendar date"),
        ("status", "0", "JSON integer"),
        ("status", 2, "one of 0, 1"),
        ("status", True, "boolean"),
        ("registerTime", "2024-06-11 15:39:15", "ISO local time"),
        ("registerTime", "2024-06-11T15:39:15+08:00", "without a zone"),
        ("registerTime", "2024-06-31T15:39:15", "real date"),
        ("extra", 1, "unknown field"),
    ],
)
def test_registration_rules(field: str, value: Any, rule: str) -> None:
    with pytest.raises(RecordError) as info:
        parse_registration(registration() | {field: value})
    assert [f for f, _ in info.value.problems] == [field]
    assert rule in info.value.problems[0][1]


def test_registration_limits_count_characters() -> None:
    assert parse_registration(registration() | {"deptName": "科" * 50}).deptName == "科" * 50


REGISTRATION_TEXT_FIELDS = [
    "deptId",
    "deptName",
    "machineManufacturer",
    "machineMode",
    "machineCode",
    "deviceNo",
    "registerUser",
]


@pytest.mark.parametrize("field", REGISTRATION_TEXT_FIELDS)
def test_every_registration_text_field_is_varchar_50(field: str) -> None:
    assert getattr(parse_registration(registration() | {field: "桂" * 50}), field) == "桂" * 50
    for value, rule in (("桂" * 51, "at most 50 characters"), ("", "must not be empty")):
        with pytest.raises(RecordError) as info:
            parse_registration(registration() | {field: value})
        assert [f for f, _ in info.value.problems] == [field]
        assert rule in info.value.problems[0][1]


def test_registration_model_is_the_spec_table() -> None:
    assert list(DeviceRegistration.model_fields) == list(registration()) + ["registerTime"]


# -- build_verification from a card --------------------------------------------------------------------------


def card(**over: Any) -> IdCard:
    base = dict(
        card_type="0",
        name="韦测试",
        sex_code="2",
        birth_date=dt.date(1990, 1, 1),
        card_no=CARD_NO,
        valid_from=dt.date(2015, 3, 1),
        valid_to=dt.date(2035, 3, 1),
        nation_code="08",
        address="广西壮族自治区南宁市青秀区测试路1号",
        authority="南宁市公安局青秀分局",
    )
    return IdCard(**(base | over))  # type: ignore[arg-type]


def build(c: IdCard | None = None, **over: Any) -> VerificationRecord:
    kw: dict[str, Any] = dict(
        head_jpeg=JPEG,
        camera_jpeg=JPEG,
        face_score=0.86,
        face_result=1,
        operator="覃护士",
        verified_at=dt.datetime(2024, 6, 11, 17, 33, 55),
        device=device(),
    )
    return build_verification(VerificationCapture(c or card(), **(kw | over)))


def test_build_from_a_resident_card() -> None:
    assert build().to_payload() == valid()


def test_build_converts_an_aware_time_to_china_local_time() -> None:
    record = build(verified_at=dt.datetime(2024, 6, 11, 16, 30, 5, tzinfo=dt.UTC))
    assert (record.verifyDate, record.verifyTime) == ("2024-06-12", "2024-06-12 00:30:05")


def test_build_long_term_card() -> None:
    record = build(card(valid_to=None, valid_from=dt.date(2010, 1, 1)))
    assert (record.cardEndDate, record.certTimeoutStatus) == ("长期", 0)
    record = build(card(valid_to=None), long_term_end="-")
    assert record.cardEndDate == "-"


@pytest.mark.parametrize(("valid_to", "status"), [(dt.date(2024, 6, 11), 0), (dt.date(2024, 6, 10), 1)])
def test_build_cert_timeout_status(valid_to: dt.date, status: int) -> None:
    assert build(card(valid_from=dt.date(2004, 6, 10), valid_to=valid_to)).certTimeoutStatus == status


def test_build_foreign_card_without_nation_is_97_other() -> None:
    foreign = card(
        card_type="2",
        name="",
        english_name="ANNA TEST",
        nation_code=None,
        card_no="ABC123456789012",
        address="",
        authority="",
        nationality="CAN",
        birth_date=dt.date(1991, 5, 5),
    )
    payload = build(foreign).to_payload()
    assert (payload["cardType"], payload["nationalCode"], payload["nationalName"]) == (2, "97", "其他")
    assert payload["realName"] == "ANNA TEST" and payload["address"] == ""


def test_build_hk_macau_taiwan_card() -> None:
    number = make_id(region="810000", birth="19920202")
    payload = build(
        card(card_type="1", nation_code=None, card_no=number, birth_date=dt.date(1992, 2, 2), pass_no="H1234567801")
    ).to_payload()
    assert (payload["cardType"], payload["nationalCode"], payload["cardNo"]) == (1, "97", number)


def test_build_with_fingerprint() -> None:
    payload = build(finger_jpeg=JPEG, finger_score=0.9, finger_result=1).to_payload()
    assert payload["fingerCollectImg"] == JPEG_B64 and payload["fingerScore"] == 0.9


def test_build_refuses_rather_than_truncates() -> None:
    with pytest.raises(RecordError) as info:
        build(card(name="桂" * 11), operator="X" * 11, camera_jpeg=b"GIF89a")
    assert sorted(f for f, _ in info.value.problems) == ["cameraImg", "operationUser", "realName"]


def test_build_refuses_a_bad_number_and_unknown_codes() -> None:
    bad = dataclasses.replace(
        card(), card_no=CARD_NO[:17] + ("1" if CARD_NO[17] != "1" else "2"), sex_code="3", nation_code="60"
    )
    with pytest.raises(RecordError) as info:
        build(bad)
    assert sorted(f for f, _ in info.value.problems) == ["cardNo", "nationalCode", "sexCode"]
