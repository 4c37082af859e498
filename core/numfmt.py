"""Numbers as dpaudit shows them: every bound rounded in the direction that never under-states a risk, with the same
digits in the console, the report and its checklist.

A sound upper bound (the accountant's epsilon, a ReRo or membership bound) is rounded *up*, an empirical lower
bound (an audited epsilon) *down*, both to :data:`DIGITS` significant digits. JSON keeps the full float.
"""

from __future__ import annotations

import math

#: Significant digits of every epsilon shown (7.9912 -> '7.992': enough to tell an achieved 7.992 from the target 8).
DIGITS = 4


def _rounded(value: float, digits: int, rounding) -> str:
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(abs(value))))
    # 1e-9 of the last digit absorbs binary round-off (8.0 stored as 8.000000000000002 stays '8')
    shifted = value * scale
    r = rounding(shifted - 1e-9) if rounding is math.ceil else rounding(shifted + 1e-9)
    return f"{r / scale:.{digits}g}"


def upper(value: float | None, digits: int = DIGITS) -> str:
    """A sound upper bound, rounded up to ``digits`` significant digits.

    >>> upper(7.99123), upper(0.99876), upper(8.0), upper(68.5121), upper(1e9), upper(float("inf")), upper(None)
    ('7.992', '0.9988', '8', '68.52', '1e+09', 'inf', 'n/a')
    """
    if value is None:
        return "n/a"
    return _rounded(float(value), digits, math.ceil)


def lower(value: float | None, digits: int = DIGITS) -> str:
    """An empirical lower bound, rounded down to ``digits`` significant digits.

    >>> lower(1.23456), lower(0.99876), lower(2.0), lower(None)
    ('1.234', '0.9987', '2', 'n/a')
    """
    if value is None:
        return "n/a"
    return _rounded(float(value), digits, math.floor)
