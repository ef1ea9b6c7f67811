"""The code tables and GB 11643 rules of core.codes."""

from __future__ import annotations

import datetime as dt

import pytest

from core import codes


def make_id(region: str = "450203", birth: str = "19900101", seq: str = "002") -> str:
    """A synthetic resident ID number with a correct check character."""
    first17 = region + birth + seq
    return first17 + codes.resident_id_check_digit(first17)


# -- card types and sex ------------------------------------------------------------------------------


def test_card_types_are_the_appendix_table() -> None:
    assert codes.CARD_TYPES == {0: "身份证", 1: "港澳台", 2: "外国人永久居住证", 9: "其他"}
    assert codes.card_type_name(2) == "外国人永久居住证"
    with pytest.raises(KeyError):
        codes.card_type_name(3)


@pytest.mark.parametrize(("code", "name"), [("0", "未知"), ("1", "男"), ("2", "女"), ("9", "未说明")])
def test_sex_codes_gb_t_2261_1(code: str, name: str) -> None:
    assert codes.sex_name(code) == name


def test_sex_codes_are_one_digit_only() -> None:
    assert set(codes.SEX_NAMES) == {"0", "1", "2", "9"}
    with pytest.raises(KeyError):
        codes.sex_name("01")  # the seed's example spelling is not a GB/T 2261.1 code


# -- nations --------------------------------------------------------------------------------------------


def test_nation_table_is_complete() -> None:
    expected = [f"{i:02d}" for i in range(1, 57)] + ["97", "98"]
    assert list(codes.NATIONS) == expected
    assert len(set(codes.NATIONS.values())) == len(expected)


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("01", "汉"),
        ("02", "蒙古"),
        ("03", "回"),
        ("08", "壮"),
        ("12", "侗"),
        ("36", "毛南"),
        ("43", "乌孜别克"),
        ("46", "德昂"),
        ("56", "基诺"),
        ("97", "其他"),
        ("98", "外国血统中国籍人士"),
    ],
)
def test_nation_short_names_as_printed_on_the_card(code: str, name: str) -> None:
    assert codes.nation_name(code) == name
    assert codes.nation_code(name) == code


def test_no_nation_name_ends_with_zu() -> None:
    # The card prints 汉, not 汉族; every short name is within the platform's varchar(10).
    for name in codes.NATIONS.values():
        assert not name.endswith("族")
        assert 1 <= len(name) <= 10


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("毛难", "36"),
        ("崩龙", "46"),
        ("汉族", "01"),
        ("侗 族", "12"),
        ("毛难族", "36"),
        ("基诺族", "56"),
    ],
)
def test_nation_code_accepts_aliases_and_appendix_spellings(name: str, code: str) -> None:
    assert codes.nation_code(name) == code


@pytest.mark.parametrize("name", ["", "族", "火星", "Han"])
def test_nation_code_unknown_is_none(name: str) -> None:
    assert codes.nation_code(name) is None


def test_nation_unknown_code_raises() -> None:
    with pytest.raises(KeyError):
        codes.nation_name("57")


# -- GB 11643 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["11010519491231002X", "440524188001010014"])
def test_check_digit_matches_the_standards_examples(number: str) -> None:
    assert codes.resident_id_check_digit(number[:17]) == number[17]
    assert codes.validate_resident_id(number) == []


def test_check_digit_covers_every_remainder() -> None:
    seen = {codes.resident_id_check_digit(f"4502031990010100{i}") for i in range(10)}
    seen |= {codes.resident_id_check_digit(f"450203199001010{i}0") for i in range(10)}
    assert "X" in seen and len(seen) >= 8


def _iso7064_mod11_2(first17: str) -> str:
    """The check character by its definition (ISO 7064 MOD 11-2), not by the lookup table under test:
    the character c makes sum(a_i * 2^(18-i) mod 11, with c in position 18) = 1 (mod 11)."""
    total = sum(int(ch) * pow(2, 17 - i, 11) for i, ch in enumerate(first17))
    value = (12 - total % 11) % 11
    return "X" if value == 10 else str(value)


def test_check_digit_is_iso_7064_mod_11_2_for_every_remainder() -> None:
    remainders: dict[int, str] = {}
    for n in range(2000):
        first17 = f"450203199001{n:05d}"
        expected = _iso7064_mod11_2(first17)
        assert codes.resident_id_check_digit(first17) == expected, first17
        remainders[sum(int(c) * w for c, w in zip(first17, codes._WEIGHTS, strict=True)) % 11] = expected
    assert sorted(remainders) == list(range(11))  # every row of the table was exercised


@pytest.mark.parametrize("bad", ["", "1234567890123456", "123456789012345678", "4502031990010100a"])
def test_check_digit_refuses_non_17_digits(bad: str) -> None:
    with pytest.raises(ValueError):
        codes.resident_id_check_digit(bad)


def test_valid_synthetic_number() -> None:
    number = make_id()
    assert codes.validate_resident_id(number) == []
    assert codes.resident_id_birth_date(number) == dt.date(1990, 1, 1)


def test_wrong_check_character() -> None:
    number = make_id()
    wrong = number[:17] + ("0" if number[17] != "0" else "1")
    assert codes.validate_resident_id(wrong) == ["the check character does not match (GB 11643)"]


def test_lower_case_x_is_refused_with_the_fix() -> None:
    first17 = next(
        f"45020319900101{i:03d}" for i in range(1000) if codes.resident_id_check_digit(f"45020319900101{i:03d}") == "X"
    )
    assert codes.validate_resident_id(first17 + "X") == []
    assert codes.validate_resident_id(first17 + "x") == ["the check character must be an upper-case X"]


@pytest.mark.parametrize("birth", ["19900230", "19901301", "20230229", "19900100"])
def test_birth_date_inside_the_number_must_be_real(birth: str) -> None:
    problems = codes.validate_resident_id(make_id(birth=birth))
    assert problems == ["the birth date inside the number (characters 7-14) is not a real date"]


def test_leap_day_is_a_real_date() -> None:
    assert codes.validate_resident_id(make_id(birth="20000229")) == []


@pytest.mark.parametrize(
    ("number", "rule"),
    [
        ("45020319900101002", "a resident ID number has 18 characters, not 17"),
        ("4502031990010100212", "a resident ID number has 18 characters, not 19"),
        ("45020319900101A021", "a resident ID number is 17 digits followed by a digit or X"),
        ("４50203199001010021", "a resident ID number is 17 digits followed by a digit or X"),
    ],
)
def test_shape_rules(number: str, rule: str) -> None:
    assert codes.validate_resident_id(number) == [rule]


def test_problems_never_contain_the_number() -> None:
    number = make_id()
    bad = number[:12] + "99" + number[14:]
    for problem in codes.validate_resident_id(bad):
        assert number[:6] not in problem and bad not in problem
