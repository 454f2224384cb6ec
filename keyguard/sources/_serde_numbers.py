"""Which JSON numbers the safetensors library refuses as "out of range".

The library parses headers with serde_json, built without its ``float_roundtrip`` feature. That parser keeps up to
19-20 significant digits in a 64-bit integer, drops the rest (counting them in the exponent), then multiplies by a
table of powers of ten and refuses the number when the product is infinite. Its rounding is not Python's, so near
the largest double the two disagree (``17976931348623157`` followed by 292 zeros is the largest double exactly, and
serde_json refuses it). This module replays serde_json's arithmetic step by step, with the same IEEE doubles, so
keyguard refuses exactly the numbers the library refuses.
"""

from __future__ import annotations

import math
import re
from typing import Final

_U64_MAX: Final = 2**64 - 1
_I32_MAX: Final = 2**31 - 1
_POW10: Final = tuple(float(f"1e{i}") for i in range(309))
_NUMBER: Final = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?(?:[eE]([+-]?)([0-9]+))?")
#: Numbers whose magnitude Python reads below this are in range for serde_json too, whatever its rounding.
SAFE_MAGNITUDE: Final = 1e300


def _overflows(significand: int, digit: int) -> bool:
    """serde_json's ``overflow!(significand * 10 + digit, u64::MAX)``."""
    limit, last = divmod(_U64_MAX, 10)
    return significand >= limit and (significand > limit or digit > last)


def out_of_range(text: str) -> bool:
    """True when serde_json refuses the JSON number ``text`` with "number out of range".

    ``text`` must be a valid JSON number (as Python's json module accepted it).
    """
    match = _NUMBER.fullmatch(text)
    if match is None:  # pragma: no cover - the JSON decoder only hands over valid numbers
        return False
    integer, fraction, sign, exponent_digits = match.groups()
    significand = exponent = 0
    for index, char in enumerate(integer):
        digit = ord(char) - 48
        if _overflows(significand, digit):
            exponent = len(integer) - index  # this digit and the rest only scale the 64-bit significand
            break
        significand = significand * 10 + digit
    for char in fraction or "":
        digit = ord(char) - 48
        if _overflows(significand, digit):
            break  # the remaining fraction digits are ignored
        significand = significand * 10 + digit
        exponent -= 1
    if exponent_digits is not None:
        digits = exponent_digits.lstrip("0") or "0"
        value = int(digits) if len(digits) < 12 else _I32_MAX + 1
        if value > _I32_MAX:  # the exponent overflows i32: out of range unless it is a zero or it shrinks
            return significand != 0 and sign != "-"
        exponent = exponent - value if sign == "-" else exponent + value
    return _from_parts(significand, exponent)


def _from_parts(significand: int, exponent: int) -> bool:
    """serde_json's ``f64_from_parts``: True when the result is infinite (an error)."""
    result = float(significand)  # u64 as f64: round to nearest, ties to even, as Python does
    while True:
        if abs(exponent) < len(_POW10):
            if exponent >= 0:
                result *= _POW10[exponent]
                return math.isinf(result)
            return False  # a division never overflows
        if result == 0.0:
            return False
        if exponent >= 0:
            return True
        result /= 1e308
        exponent += 308
