"""Every value of every [platform.conventions] setting, checked against gmssl-built expectations."""

from __future__ import annotations

import base64
import json
import time

import pytest
from gmssl import func as gm_func
from gmssl import sm3 as gm_sm3
from gmssl.sm4 import SM4_ENCRYPT, CryptSM4
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import ConventionSettings
from agent.uplink import conventions as conv
from agent.uplink.conventions import Conventions
from core.errors import CryptoError, PlatformError

APP_ID = "HMPT450000000001"  # 16 characters, so nhsa_derive has a full key
SECRET16 = "Gx7#kP2!mQ9zR4tW"
SECRET_HEX = "00112233445566778899aabbccddeeff"
SECRET_LONG = "a-long-secret-of-more-than-16-bytes"
T = 1718091555.0722  # 2024-06-11 15:39:15.0722 in Asia/Shanghai


def make(secret: str = SECRET16, app_id: str = APP_ID, **kw: object) -> Conventions:
    return Conventions(ConventionSettings(**kw), app_id, secret)


def gm_sm3_digest(data: bytes) -> bytes:
    return bytes.fromhex(gm_sm3.sm3_hash(gm_func.bytes_to_list(data)))


def gm_hmac(key: bytes, msg: bytes) -> bytes:
    key = (gm_sm3_digest(key) if len(key) > 64 else key).ljust(64, b"\0")
    return gm_sm3_digest(bytes(b ^ 0x5C for b in key) + gm_sm3_digest(bytes(b ^ 0x36 for b in key) + msg))


def gm_sm4(key: bytes, data: bytes) -> bytes:
    c = CryptSM4()
    c.set_key(key, SM4_ENCRYPT)
    return bytes(c.crypt_ecb(data))


# ---- sendTime --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("epoch_ms", "1718091555072"),
        ("epoch_s", "1718091555"),
        ("yyyyMMddHHmmss", "20240611153915"),
        ("yyyy-MM-dd HH:mm:ss", "2024-06-11 15:39:15"),
    ],
)
def test_send_time_formats_in_shanghai_time_whatever_the_local_zone(
    fmt: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = make(send_time_format=fmt)
    for zone in ("UTC", "America/New_York", "Asia/Shanghai"):
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        assert c.send_time(T) == expected
    monkeypatch.delenv("TZ")
    time.tzset()
    assert c.parse_send_time(expected) == pytest.approx(T, abs=1.0)


def test_epoch_ms_is_13_digits_and_exact() -> None:
    c = make()
    assert c.send_time(T) == "1718091555072"
    assert c.parse_send_time("1718091555072") == 1718091555.072


@pytest.mark.parametrize(
    ("fmt", "bad"),
    [
        ("epoch_ms", "1718091555"),
        ("epoch_ms", "17180915550720"),
        ("epoch_ms", "abc"),
        ("epoch_ms", ""),
        ("epoch_s", "1718091555072"),
        ("epoch_s", "-718091555"),
        ("yyyyMMddHHmmss", "2024-06-11 15:39:15"),
        ("yyyyMMddHHmmss", "20241311153915"),
        ("yyyy-MM-dd HH:mm:ss", "20240611153915"),
        ("yyyy-MM-dd HH:mm:ss", "2024-06-11T15:39:15"),
    ],
)
def test_parse_send_time_refuses_other_formats(fmt: str, bad: str) -> None:
    with pytest.raises(PlatformError, match="send_time_format|not a sendTime"):
        make(send_time_format=fmt).parse_send_time(bad)


def test_clock_ok_honours_the_tolerance() -> None:
    c = make(clock_skew_tolerance_s=300)
    t = c.send_time(T)
    assert c.clock_ok(t, T + 299)
    assert c.clock_ok(t, T - 299)
    assert not c.clock_ok(t, T + 302)
    assert not c.clock_ok("garbage", T)


# ---- signature -------------------------------------------------------------------------------------


def test_default_sign_is_lower_hex_hmac_sm3_of_app_id_plus_time_keyed_by_utf8_secret() -> None:
    c = make()
    t = c.send_time(T)
    expected = gm_hmac(SECRET16.encode(), (APP_ID + t).encode())
    assert c.sign(t) == expected.hex()
    assert len(c.sign(t)) == 64 and c.sign(t) == c.sign(t).lower()


def test_sign_output_hex_upper_and_base64() -> None:
    mac = gm_hmac(SECRET16.encode(), (APP_ID + "1").encode())
    assert make(sign_output="hex_upper").sign("1") == mac.hex().upper()
    assert make(sign_output="base64").sign("1") == base64.b64encode(mac).decode()


def test_sign_key_encoding_hex_uses_the_decoded_secret() -> None:
    c = make(SECRET_HEX, sign_key_encoding="hex")
    assert c.sign("1") == gm_hmac(bytes.fromhex(SECRET_HEX), (APP_ID + "1").encode()).hex()
    assert c.sign("1") != make(SECRET_HEX).sign("1")


def test_sign_key_encoding_hex_refuses_a_non_hex_secret_naming_the_setting() -> None:
    with pytest.raises(CryptoError, match="sign_key_encoding"):
        make(SECRET16, sign_key_encoding="hex").sign("1")


def test_sign_covers_non_ascii_app_ids_as_utf8() -> None:
    c = make(app_id="桂妇儿01")
    assert c.sign("1") == gm_hmac(SECRET16.encode(), "桂妇儿011".encode()).hex()


@pytest.mark.parametrize("output", ["hex", "hex_upper", "base64"])
def test_verify_sign_accepts_its_own_and_rejects_everything_else(output: str) -> None:
    c = make(sign_output=output)
    t = c.send_time(T)
    good = c.sign(t)
    assert c.verify_sign(t, good)
    assert c.verify_sign(t, f"  {good} ")
    assert not c.verify_sign(c.send_time(T + 1), good)  # another time
    assert not c.verify_sign(t, make(secret="another-secret-x", sign_output=output).sign(t))
    assert not c.verify_sign(t, good[:-2])  # truncated
    assert not c.verify_sign(t, "")
    assert not c.verify_sign(t, "zz" * 32)  # not the encoding
    assert not c.verify_sign(t, None)  # a missing header


def test_verify_sign_hex_is_case_insensitive() -> None:
    for output in ("hex", "hex_upper"):
        c = make(sign_output=output)
        assert c.verify_sign("1", c.sign("1").lower())
        assert c.verify_sign("1", c.sign("1").upper())
        mixed = "".join(ch.upper() if i % 2 else ch for i, ch in enumerate(c.sign("1").lower()))
        assert c.verify_sign("1", mixed)


def test_verify_sign_checks_the_decoded_length() -> None:
    c = make()
    good = c.sign("1")
    assert not c.verify_sign("1", good + "00")
    b64 = make(sign_output="base64")
    assert not b64.verify_sign("1", base64.b64encode(bytes.fromhex(good) + b"\0").decode())


@settings(max_examples=25, deadline=None)
@given(app_id=st.text(min_size=1, max_size=20), secret=st.text(min_size=1, max_size=40), t=st.text(max_size=20))
def test_sign_matches_gmssl_for_any_strings(app_id: str, secret: str, t: str) -> None:
    c = Conventions(ConventionSettings(), app_id, secret)
    assert c.sign(t) == gm_hmac(secret.encode(), (app_id + t).encode()).hex()
    assert c.verify_sign(t, c.sign(t))


# ---- SM4 key rules ---------------------------------------------------------------------------------


def test_sm4_key_auto() -> None:
    assert make(SECRET16).sm4_key() == SECRET16.encode()
    assert make(SECRET_HEX).sm4_key() == bytes.fromhex(SECRET_HEX)
    assert make(SECRET_HEX.upper()).sm4_key() == bytes.fromhex(SECRET_HEX)
    with pytest.raises(CryptoError, match="sm4_key_mode") as err:
        make(SECRET_LONG).sm4_key()
    assert "35 bytes" in str(err.value) and err.value.hint and "probe" in err.value.hint


def test_sm4_key_raw16() -> None:
    assert make(SECRET16, sm4_key_mode="raw16").sm4_key() == SECRET16.encode()
    for bad in (SECRET_HEX, "short", "十六个字节不是十六个字"):
        with pytest.raises(CryptoError, match="raw16"):
            make(bad, sm4_key_mode="raw16").sm4_key()


def test_sm4_key_hex32() -> None:
    assert make(SECRET_HEX, sm4_key_mode="hex32").sm4_key() == bytes.fromhex(SECRET_HEX)
    for bad in (SECRET16, SECRET_HEX[:-1] + "g", SECRET_HEX + "00"):
        with pytest.raises(CryptoError, match="hex32"):
            make(bad, sm4_key_mode="hex32").sm4_key()


def test_sm4_key_first16() -> None:
    assert make(SECRET_LONG, sm4_key_mode="first16").sm4_key() == SECRET_LONG.encode()[:16]
    with pytest.raises(CryptoError, match="first16"):
        make("fifteen-bytes!!", sm4_key_mode="first16").sm4_key()


def test_sm4_key_sm3_trunc16() -> None:
    for secret in (SECRET16, SECRET_LONG, "x"):
        assert make(secret, sm4_key_mode="sm3_trunc16").sm4_key() == gm_sm3_digest(secret.encode())[:16]


def test_sm4_key_nhsa_derive() -> None:
    derived = gm_sm4(APP_ID.encode(), SECRET_LONG.encode()).hex().upper()[:16].encode()
    assert make(SECRET_LONG, sm4_key_mode="nhsa_derive").sm4_key() == derived
    # only the first 16 characters of the orgAppId matter
    assert make(SECRET_LONG, app_id=APP_ID + "-extra", sm4_key_mode="nhsa_derive").sm4_key() == derived
    with pytest.raises(CryptoError, match="orgAppId"):
        make(SECRET_LONG, app_id="short-id", sm4_key_mode="nhsa_derive").sm4_key()


# ---- data encryption -------------------------------------------------------------------------------


PLAIN = json.dumps({"realName": "韦小红", "faceScore": 0.86}, ensure_ascii=False).encode()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("base64", lambda b: base64.b64encode(b).decode()),
        ("hex_lower", lambda b: b.hex()),
        ("hex_upper", lambda b: b.hex().upper()),
    ],
)
def test_cipher_encodings_match_gmssl(encoding: str, encode) -> None:  # type: ignore[no-untyped-def]
    c = make(cipher_encoding=encoding)
    text = c.encrypt_data(PLAIN)
    assert text == encode(gm_sm4(SECRET16.encode(), PLAIN))
    assert c.decrypt_data(text) == PLAIN


def test_padding_none_needs_aligned_data() -> None:
    c = make(padding="none")
    assert c.decrypt_data(c.encrypt_data(b"x" * 32)) == b"x" * 32
    assert len(base64.b64decode(c.encrypt_data(b"x" * 32))) == 32
    with pytest.raises(CryptoError, match="16-byte blocks"):
        c.encrypt_data(b"x" * 33)


def test_decrypt_data_errors_are_crypto_errors() -> None:
    c = make()
    with pytest.raises(CryptoError, match="base64"):
        c.decrypt_data("not base64!")
    with pytest.raises(CryptoError, match="whole 16-byte blocks"):
        c.decrypt_data(base64.b64encode(b"x" * 15).decode())
    with pytest.raises(CryptoError, match="padding"):
        c.decrypt_data(make("another-16-bytes").encrypt_data(PLAIN))
    with pytest.raises(CryptoError, match="hex_lower"):
        make(cipher_encoding="hex_lower").decrypt_data("xyz0")


def test_response_data_auto_true_false() -> None:
    auto, on, off = (make(response_encrypted=m) for m in ("auto", "true", "false"))
    enc = auto.encrypt_data(b'{"k":1}')
    assert auto.response_data(None) is None
    assert auto.response_data(enc) == {"k": 1}
    assert auto.response_data("plain text") == "plain text"  # not Base64 of whole blocks
    assert auto.response_data("aGVsbG8=") == "aGVsbG8="  # Base64, but of 5 bytes: not ciphertext
    assert auto.response_data({"k": 1}) == {"k": 1}
    assert off.response_data(enc) == enc
    assert on.response_data(enc) == {"k": 1}
    with pytest.raises(CryptoError):
        on.response_data("plain text")
    assert auto.response_data(auto.encrypt_data("长期".encode())) == "长期"


# ---- bodies and headers ----------------------------------------------------------------------------


def test_dumps_is_compact_utf8_unless_ensure_ascii() -> None:
    obj = {"deptName": "妇产科", "status": 0}
    assert make().dumps(obj) == '{"deptName":"妇产科","status":0}'.encode()
    assert make(json_ensure_ascii=True).dumps(obj) == b'{"deptName":"\\u5987\\u4ea7\\u79d1","status":0}'


def test_request_body_plain_and_encrypted_and_the_server_side_opens_both() -> None:
    client, server = make(), make()
    payload = {"deptName": "妇产科", "status": 0}
    plain = client.request_body(payload, encrypt=False)
    assert plain == client.dumps(payload)
    assert server.open_request_body(plain) == (payload, plain.decode(), False)
    sealed = client.request_body(payload, encrypt=True)
    outer = json.loads(sealed)
    assert list(outer) == ["data"]
    assert client.decrypt_data(outer["data"]) == client.dumps(payload)
    assert server.open_request_body(sealed) == (payload, client.dumps(payload).decode(), True)
    with pytest.raises(CryptoError):
        make("another-16-bytes").open_request_body(sealed)


@pytest.mark.parametrize("ensure_ascii", [False, True])
@pytest.mark.parametrize(
    "big",
    [
        "/9j/" + "Ab+/" * 2000 + "==",
        "A" * 5000 + '"',
        "A" * 5000 + "\\",
        "A" * 5000 + "\n",
        "A" * 5000 + "\x7f",
        "A" * 5000 + "\x00",
        "韦" * 5000,
    ],
)
def test_dumps_copying_long_strings_is_byte_for_byte_json_dumps(ensure_ascii: bool, big: str) -> None:
    conv = make(json_ensure_ascii=ensure_ascii)
    for obj in (
        {"realName": "韦测试", "headImg": big, "faceScore": 0.86, "cameraImg": big, "n": None},
        {1: big, "a": [big]},
        [big],
        big,
    ):
        assert conv.dumps(obj) == json.dumps(obj, ensure_ascii=ensure_ascii, separators=(",", ":")).encode()


@pytest.mark.parametrize("encoding", ["base64", "hex_lower", "hex_upper"])
@pytest.mark.parametrize("ensure_ascii", [False, True])
def test_encrypted_body_is_byte_for_byte_the_serialized_envelope(encoding: str, ensure_ascii: bool) -> None:
    # The envelope is joined, not serialized: it must still be exactly what json.dumps makes.
    conv = make(cipher_encoding=encoding, json_ensure_ascii=ensure_ascii)
    payload = {"realName": "韦测试", "headImg": "/9j/" + "A" * 5000 + "==", "faceScore": 0.86}
    body = conv.request_body(payload, encrypt=True)
    data = json.loads(body)["data"]
    assert body == conv.dumps({"data": data})
    assert json.loads(conv.decrypt_data(data)) == payload


def test_request_headers_are_the_five_and_signed() -> None:
    c = make()
    t = c.send_time(T)
    headers = c.request_headers("a" * 32, t, "ticket-123")
    assert headers == {
        "hmpt-portal-sign": c.sign(t),
        "hmpt-portal-time": t,
        "hmpt-portal-request-id": "a" * 32,
        "hmpt-portal-org-app-id": APP_ID,
        "Authorization": "ticket-123",
    }
    assert tuple(headers) == (
        conv.HEADER_SIGN,
        conv.HEADER_TIME,
        conv.HEADER_REQUEST_ID,
        conv.HEADER_ORG_APP_ID,
        conv.HEADER_AUTHORIZATION,
    )


def test_response_headers_verify_on_the_other_side() -> None:
    server, client = make(sign_output="base64"), make(sign_output="base64")
    h = server.response_headers("1718091555072")
    assert client.verify_sign(h["hmpt-portal-time"], h["hmpt-portal-sign"])


def test_from_platform_and_repr_hide_the_secret() -> None:
    from agent.config import PlatformSettings

    p = PlatformSettings(
        base_url="https://example.invalid/api",
        org_app_id=APP_ID,
        org_app_secret=SECRET16,
        auth={"kind": "static", "ticket": "t"},
    )
    c = Conventions.from_platform(p)
    assert c.sm4_key() == SECRET16.encode()
    assert SECRET16 not in repr(c)
