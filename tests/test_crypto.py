"""agent.crypto against the published vectors and against gmssl, the independent pure-Python oracle.

gmssl is about 0.1 MB/s, so the random-input properties use small inputs and modest example counts.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from gmssl import func as gm_func
from gmssl import sm3 as gm_sm3
from gmssl.sm4 import SM4_DECRYPT, SM4_ENCRYPT, CryptSM4
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import crypto
from core.errors import CryptoError

KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")
ORACLE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- the oracle ------------------------------------------------------------------------------------


def gm_sm3_digest(data: bytes) -> bytes:
    return bytes.fromhex(gm_sm3.sm3_hash(gm_func.bytes_to_list(data)))


def gm_hmac_sm3(key: bytes, msg: bytes) -> bytes:
    """RFC 2104 from scratch over gmssl's SM3 (block size 64)."""
    if len(key) > 64:
        key = gm_sm3_digest(key)
    key = key.ljust(64, b"\0")
    inner = gm_sm3_digest(bytes(b ^ 0x36 for b in key) + msg)
    return gm_sm3_digest(bytes(b ^ 0x5C for b in key) + inner)


def gm_sm4_ecb(key: bytes, data: bytes, mode: int = SM4_ENCRYPT) -> bytes:
    assert len(key) == 16  # gmssl cuts longer keys silently and fails on shorter ones
    c = CryptSM4()
    c.set_key(key, mode)
    return bytes(c.crypt_ecb(data))


# ---- published vectors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "digest"),
    [
        (b"abc", "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"),
        (b"abcd" * 16, "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"),
    ],
)
def test_sm3_gbt32905_vectors_match_fvagent_and_gmssl(data: bytes, digest: str) -> None:
    assert crypto.sm3(data).hex() == digest
    assert gm_sm3_digest(data).hex() == digest


def test_sm4_gbt32907_one_block_fvagent_and_gmssl() -> None:
    expected = "681edf34d206965e86b3e94f536e4246"
    assert crypto.sm4_ecb_encrypt(KEY, KEY, padding="none").hex() == expected
    # gmssl always pads: its first block is the unpadded one.
    assert gm_sm4_ecb(KEY, KEY)[:16].hex() == expected
    assert crypto.sm4_ecb_decrypt(KEY, bytes.fromhex(expected), padding="none") == KEY


def test_sm4_gbt32907_million_encryptions() -> None:
    # GB/T 32907 App. A example 2: encrypt the block 1,000,000 times with the same key.
    enc = Cipher(algorithms.SM4(KEY), modes.ECB()).encryptor()
    block = KEY
    for _ in range(1_000_000):
        block = enc.update(block)
    assert block.hex() == "595298c7c6fd271f0402f804c33d3f66"


# GM/T 0042-2015 Appendix D.3, as carried by the Linux kernel's crypto/testmgr.h (hmac_sm3_tv_template).
HMAC_SM3_VECTORS = [
    (
        bytes(range(1, 33)),
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq" * 2,
        "ca05e144ed05d1857840d1f318a4a8669e559fc8391f414485bfdf7bb408963a",
    ),
    (bytes(range(1, 38)), b"\xcd" * 50, "220bf579ded555393f0159f66c99877822a3ecf610d1552154b41d44b94db3ae"),
    (b"\x0b" * 32, b"Hi There", "c0ba18c68b90c88bc07de794bfc7d2c8d19ec31ed8773bc2b390c9604e0be11e"),
    (b"Jefe", b"what do ya want for nothing?", "2e87f1d16862e6d964b50a5200bf2b10b764faa9680a296a2405f24bec39f882"),
]


@pytest.mark.parametrize(("key", "msg", "mac"), HMAC_SM3_VECTORS)
def test_hmac_sm3_gmt0042_vectors(key: bytes, msg: bytes, mac: str) -> None:
    assert crypto.hmac_sm3(key, msg).hex() == mac
    assert gm_hmac_sm3(key, msg).hex() == mac


# ---- random inputs against gmssl -------------------------------------------------------------------


@ORACLE
@given(st.binary(max_size=300))
def test_sm3_equals_gmssl(data: bytes) -> None:
    assert crypto.sm3(data) == gm_sm3_digest(data)


@ORACLE
@given(key=st.binary(max_size=150), msg=st.binary(max_size=200))
def test_hmac_sm3_equals_rfc2104_over_gmssl(key: bytes, msg: bytes) -> None:
    # Keys up to 150 bytes cover shorter than, equal to and longer than the 64-byte block.
    assert crypto.hmac_sm3(key, msg) == gm_hmac_sm3(key, msg)


@ORACLE
@given(key=st.binary(min_size=16, max_size=16), data=st.binary(max_size=200))
def test_sm4_ecb_pkcs7_equals_gmssl(key: bytes, data: bytes) -> None:
    ct = crypto.sm4_ecb_encrypt(key, data)
    assert ct == gm_sm4_ecb(key, data)
    assert len(ct) == (len(data) // 16 + 1) * 16
    assert crypto.sm4_ecb_decrypt(key, ct) == data
    assert gm_sm4_ecb(key, ct, SM4_DECRYPT) == data


@ORACLE
@given(key=st.binary(min_size=16, max_size=16), blocks=st.integers(1, 8), seed=st.binary(min_size=16, max_size=16))
def test_sm4_ecb_nopad_equals_gmssl_block_for_block(key: bytes, blocks: int, seed: bytes) -> None:
    data = seed * blocks
    ct = crypto.sm4_ecb_encrypt(key, data, padding="none")
    assert ct == gm_sm4_ecb(key, data)[: 16 * blocks]
    assert crypto.sm4_ecb_decrypt(key, ct, padding="none") == data


# ---- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_key", [b"", b"short", b"x" * 15, b"x" * 17, b"x" * 32])
def test_sm4_refuses_keys_that_are_not_16_bytes(bad_key: bytes) -> None:
    for call in (
        lambda: crypto.sm4_ecb_encrypt(bad_key, b"data"),
        lambda: crypto.sm4_ecb_decrypt(bad_key, b"\0" * 16),
        lambda: crypto.sm4_gcm_seal(bad_key, b"data"),
        lambda: crypto.sm4_gcm_open(bad_key, b"\0" * 40),
    ):
        with pytest.raises(CryptoError, match="16 bytes"):
            call()


def test_sm4_key_must_be_bytes() -> None:
    with pytest.raises(CryptoError, match="bytes"):
        crypto.sm4_ecb_encrypt("0123456789abcdef", b"x")  # type: ignore[arg-type]


def test_sm4_decrypt_with_wrong_key_raises_where_gmssl_stays_silent() -> None:
    ct = crypto.sm4_ecb_encrypt(KEY, b"a record that matters")
    wrong = bytes(16)
    with pytest.raises(CryptoError, match="padding"):
        crypto.sm4_ecb_decrypt(wrong, ct)
    # the pitfall the spec warns about: gmssl hands back garbage instead of failing
    assert gm_sm4_ecb(wrong, ct, SM4_DECRYPT) != b"a record that matters"


@pytest.mark.parametrize("length", [0, 1, 15, 17, 31])
def test_sm4_decrypt_refuses_partial_blocks(length: int) -> None:
    with pytest.raises(CryptoError, match="whole 16-byte blocks"):
        crypto.sm4_ecb_decrypt(KEY, b"\1" * length)


def test_sm4_decrypt_refuses_each_kind_of_bad_padding() -> None:
    enc = Cipher(algorithms.SM4(KEY), modes.ECB()).encryptor()
    for last in (b"\0" * 16, b"A" * 15 + b"\x11", b"A" * 14 + b"\x01\x02"):
        with pytest.raises(CryptoError, match="padding"):
            crypto.sm4_ecb_decrypt(KEY, enc.update(last))


def test_sm4_nopad_refuses_unaligned_data_and_unknown_padding() -> None:
    with pytest.raises(CryptoError, match="whole 16-byte blocks"):
        crypto.sm4_ecb_encrypt(KEY, b"x" * 17, padding="none")
    with pytest.raises(CryptoError, match="unknown SM4 padding"):
        crypto.sm4_ecb_encrypt(KEY, b"x", padding="zero")
    with pytest.raises(CryptoError, match="unknown SM4 padding"):
        crypto.sm4_ecb_decrypt(KEY, b"x" * 16, padding="zero")


# ---- GCM (data at rest) ----------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(data=st.binary(max_size=2000), aad=st.binary(max_size=40))
def test_gcm_round_trip_and_layout(data: bytes, aad: bytes) -> None:
    sealed = crypto.sm4_gcm_seal(KEY, data, aad)
    assert len(sealed) == 12 + len(data) + 16
    assert crypto.sm4_gcm_open(KEY, sealed, aad) == data


def test_gcm_nonce_is_fresh_each_time() -> None:
    assert len({crypto.sm4_gcm_seal(KEY, b"same")[:12] for _ in range(20)}) == 20


def test_gcm_detects_every_single_bit_flip() -> None:
    sealed = crypto.sm4_gcm_seal(KEY, b"0123456789", b"row-7")
    for i in range(len(sealed)):
        for bit in (0x01, 0x80):
            damaged = bytearray(sealed)
            damaged[i] ^= bit
            with pytest.raises(CryptoError, match="authentication failed"):
                crypto.sm4_gcm_open(KEY, bytes(damaged), b"row-7")


def test_gcm_wrong_key_wrong_aad_and_truncation_fail() -> None:
    sealed = crypto.sm4_gcm_seal(KEY, b"secret", b"a")
    with pytest.raises(CryptoError):
        crypto.sm4_gcm_open(bytes(16), sealed, b"a")
    with pytest.raises(CryptoError):
        crypto.sm4_gcm_open(KEY, sealed, b"b")
    with pytest.raises(CryptoError):
        crypto.sm4_gcm_open(KEY, sealed)
    with pytest.raises(CryptoError, match="too short"):
        crypto.sm4_gcm_open(KEY, sealed[:27])


def test_self_test_passes_here() -> None:
    crypto.self_test()


def test_self_test_reports_a_wrong_result(monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate an OpenSSL whose SM3 is broken; the self-test must name the failing vector.
    monkeypatch.setattr(crypto, "SM3_ABC", bytes(32))
    with pytest.raises(CryptoError, match="SM3 'abc'"):
        crypto.self_test()
