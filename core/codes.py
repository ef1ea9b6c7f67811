"""The platform's code tables (seed 001, 附录1) and the GB 11643 resident ID number rules.

Pure functions and constants, no I/O:

- card types (0 resident ID, 1 HK/Macau/Taiwan, 2 foreign permanent resident, 9 other);
- GB/T 2261.1 sex codes with their names;
- GB/T 3304 nation codes 01..56 with the short names printed on the card (汉, 蒙古, 回 ...),
  plus 97 其他 and 98 外国血统中国籍人士; the pre-rename names 毛难 (36) and 崩龙 (46) are accepted
  when a name is mapped to a code;
- the GB 11643 check digit of an 18-character resident ID number.

The problem texts never contain the number itself, so they are safe to log and show.
"""

from __future__ import annotations

import datetime as dt
import re

CARD_TYPES: dict[int, str] = {
    0: "身份证",
    1: "港澳台",
    2: "外国人永久居住证",
    9: "其他",
}
"""Card type code -> the appendix's name."""

CARD_RESIDENT_ID = 0
CARD_HMT = 1
CARD_FOREIGN_PERMANENT = 2
CARD_OTHER = 9

SEX_NAMES: dict[str, str] = {
    "0": "未知",
    "1": "男",
    "2": "女",
    "9": "未说明",
}
"""GB/T 2261.1 sex code -> name. One digit, as the platform table's varchar(1) requires."""

NATIONS: dict[str, str] = {
    "01": "汉",
    "02": "蒙古",
    "03": "回",
    "04": "藏",
    "05": "维吾尔",
    "06": "苗",
    "07": "彝",
    "08": "壮",
    "09": "布依",
    "10": "朝鲜",
    "11": "满",
    "12": "侗",
    "13": "瑶",
    "14": "白",
    "15": "土家",
    "16": "哈尼",
    "17": "哈萨克",
    "18": "傣",
    "19": "黎",
    "20": "傈僳",
    "21": "佤",
    "22": "畲",
    "23": "高山",
    "24": "拉祜",
    "25": "水",
    "26": "东乡",
    "27": "纳西",
    "28": "景颇",
    "29": "柯尔克孜",
    "30": "土",
    "31": "达斡尔",
    "32": "仫佬",
    "33": "羌",
    "34": "布朗",
    "35": "撒拉",
    "36": "毛南",
    "37": "仡佬",
    "38": "锡伯",
    "39": "阿昌",
    "40": "普米",
    "41": "塔吉克",
    "42": "怒",
    "43": "乌孜别克",
    "44": "俄罗斯",
    "45": "鄂温克",
    "46": "德昂",
    "47": "保安",
    "48": "裕固",
    "49": "京",
    "50": "塔塔尔",
    "51": "独龙",
    "52": "鄂伦春",
    "53": "赫哲",
    "54": "门巴",
    "55": "珞巴",
    "56": "基诺",
    "97": "其他",
    "98": "外国血统中国籍人士",
}
"""GB/T 3304 nation code -> short name as printed on the card (汉, not 汉族)."""

NATION_ALIASES: dict[str, str] = {"毛难": "36", "崩龙": "46"}
"""Names used before the renames (毛难 -> 毛南 1986, 崩龙 -> 德昂 1985), still in older tables."""

NATION_OTHER = "97"
"""The code fvagent sends for a card that carries no nation (HK/Macau/Taiwan and foreign cards)."""

_NAME_TO_NATION = {name: code for code, name in NATIONS.items()} | NATION_ALIASES

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"
_RESIDENT_ID = re.compile(r"[0-9]{17}[0-9X]")


def card_type_name(code: int) -> str:
    """The appendix name of a card type code. Raises ``KeyError`` for an unknown code."""
    return CARD_TYPES[code]


def sex_name(code: str) -> str:
    """The GB/T 2261.1 name of a sex code ("2" -> "女"). Raises ``KeyError`` for an unknown code."""
    return SEX_NAMES[code]


def nation_name(code: str) -> str:
    """The short name of a GB/T 3304 code ("01" -> "汉"). Raises ``KeyError`` for an unknown code."""
    return NATIONS[code]


def nation_code(name: str) -> str | None:
    """The GB/T 3304 code of a nation name, or ``None``.

    Accepts the short name (汉), the full name with 族 (汉族, as the platform's appendix prints it),
    the appendix's spaced spelling (侗 族), and the pre-rename names 毛难 and 崩龙.
    """
    key = "".join(name.split())
    code = _NAME_TO_NATION.get(key)
    if code is None and key.endswith("族"):
        code = _NAME_TO_NATION.get(key[:-1])
    return code


def resident_id_check_digit(first17: str) -> str:
    """The GB 11643 check character ("0".."9" or "X") for the first 17 digits of a resident ID number.

    Raises ``ValueError`` unless ``first17`` is exactly 17 ASCII digits.
    """
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError("the first 17 characters of a resident ID number must be 17 digits")
    total = sum(int(ch) * w for ch, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARS[total % 11]


def resident_id_birth_date(number: str) -> dt.date | None:
    """The birth date inside an 18-character resident ID number, or ``None`` when it is not a real date."""
    try:
        return dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return None


def validate_resident_id(number: object) -> list[str]:
    """Every problem with an 18-character resident ID number (GB 11643); empty when it is valid.

    Checks: 18 characters, 17 digits then a digit or upper-case X, the birth date inside it is a real
    date, and the check character. The texts name the rule, never the number.
    """
    if not isinstance(number, str):
        return ["must be a string"]
    if len(number) != 18:
        return [f"a resident ID number has 18 characters, not {len(number)}"]
    if not _RESIDENT_ID.fullmatch(number):
        if _RESIDENT_ID.fullmatch(number[:17] + number[17].upper()):
            return ["the check character must be an upper-case X"]
        return ["a resident ID number is 17 digits followed by a digit or X"]
    problems = []
    if resident_id_birth_date(number) is None:
        problems.append("the birth date inside the number (characters 7-14) is not a real date")
    if resident_id_check_digit(number[:17]) != number[17]:
        problems.append("the check character does not match (GB 11643)")
    return problems
