"""Numbers as dpaudit shows them: every bound rounded in the direction that never under-states a risk, with the same
digits in the console, the report and its checklist.

A sound upper bound (the accountant's epsilon, a ReRo or membership bound) is rounded *up*, an empirical lower
bound (an audited epsilon) *down*, both to :data:`DIGITS` significant digits. JSON keeps the full float.
"""

from __future__ import annotations

import math

#: Significant digits of every epsilon shown (7.9912 -> '7.992': enough to tell an achieved 7.992 from the target 8).
DIGITS = 4


# -- what kind of number it is: the labels every number carries (console, JSON labels, report) -----------------

#: A proven maximum: the true value is at most this (the accountants' epsilon, ReRo and membership bounds).
LABEL_UPPER = "sound upper bound"
#: What an attack or a test set measured.
LABEL_EMPIRICAL = "empirical"
#: The realistic attack's success: measured, so a stronger attack may do better, never worse.
LABEL_REALISTIC = "empirical lower bound: the true risk is never smaller than the attack's result"
#: Opacus' Rényi-DP epsilon, shown beside the tight PLD one (equal when the RDP accountant gave the PLD value).
LABEL_RDP = "also a sound upper bound, usually the larger"


def empirical_epsilon_label(confidence: float = 0.95) -> str:
    """What the empirical epsilon of a membership audit is, at the audit's confidence.

    >>> empirical_epsilon_label(), empirical_epsilon_label(0.999)
    ('a lower bound at 95% confidence', 'a lower bound at 99.9% confidence')
    """
    return f"a lower bound at {100 * confidence:.4g}% confidence"


#: How an infinite bound reads wherever a person reads it (console, report, checklist): an epsilon per patient at
#: tiny noise is infinite. JSON keeps the number ("inf" through :mod:`dpaudit.codec`).
INFINITY = "∞"


def _rounded(value: float, digits: int, rounding) -> str:
    if math.isinf(value):
        return INFINITY if value > 0 else f"-{INFINITY}"
    if value == 0 or math.isnan(value):
        return f"{value:g}"
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(abs(value))))
    # 1e-9 of the last digit absorbs binary round-off (8.0 stored as 8.000000000000002 stays '8')
    shifted = value * scale
    r = rounding(shifted - 1e-9) if rounding is math.ceil else rounding(shifted + 1e-9)
    return f"{r / scale:.{digits}g}"


def upper(value: float | None, digits: int = DIGITS) -> str:
    """A sound upper bound, rounded up to ``digits`` significant digits.

    >>> upper(7.99123), upper(0.99876), upper(8.0), upper(68.5121), upper(1e9), upper(float("inf")), upper(None)
    ('7.992', '0.9988', '8', '68.52', '1e+09', '∞', 'n/a')
    """
    if value is None:
        return "n/a"
    return _rounded(float(value), digits, math.ceil)


def lower(value: float | None, digits: int = DIGITS) -> str:
    """An empirical lower bound, rounded down to ``digits`` significant digits.

    >>> lower(1.23456), lower(0.99876), lower(2.0), lower(float("inf")), lower(None)
    ('1.234', '0.9987', '2', '∞', 'n/a')
    """
    if value is None:
        return "n/a"
    return _rounded(float(value), digits, math.floor)


def at_least(value: float, digits: int = DIGITS) -> str:
    """``value`` rounded up to ``digits`` significant digits, strictly: the printed number is never below it.

    For a value a reader must *reach*, such as a noise multiplier that meets a limit: :func:`upper` lets binary
    round-off of 1e-9 of the last digit round down, which this does not (2.87524 -> '2.876', 2.875 -> '2.875').

    >>> at_least(2.87524048), at_least(11129.16, 5), at_least(2.875), at_least(0.1 + 0.2, 1)
    ('2.876', '11130', '2.875', '0.4')
    """
    return _strict(float(value), digits, up=True)


def at_most(value: float, digits: int = DIGITS) -> str:
    """``value`` rounded down to ``digits`` significant digits, strictly: the printed number is never above it.

    For a value a reader must *stay below*, such as the per-image epsilon target that gives enough noise.

    >>> at_most(1.18149), at_most(2.0), at_most(0.30000000000000004, 1)
    ('1.181', '2', '0.3')
    """
    return _strict(float(value), digits, up=False)


def _strict(value: float, digits: int, *, up: bool) -> str:
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    exponent = math.floor(math.log10(abs(value)))
    for _ in range(3):  # a step of one unit in the last digit fixes any binary round-off of the first try
        scale = 10.0 ** (digits - 1 - exponent)
        r = (math.ceil if up else math.floor)(value * scale)
        text = f"{r / scale:.{digits}g}"
        if (float(text) >= value) if up else (float(text) <= value):
            return _plain(text)
        value_fix = r + (1 if up else -1)
        text = f"{value_fix / scale:.{digits}g}"
        if (float(text) >= value) if up else (float(text) <= value):
            return _plain(text)
        exponent += 1 if up else -1
    raise ArithmeticError(f"cannot round {value!r} {'up' if up else 'down'} to {digits} digits")


def _plain(text: str) -> str:
    """'1.235e+05' -> '123500' (a command-line value reads better without an exponent); small numbers kept."""
    x = float(text)
    return f"{x:.0f}" if "e" in text and abs(x) >= 1 else text


def percent(value: float | None, *, direction: str = "nearest", digits: int | None = None) -> str:
    """A fraction in [0, 1] as a percentage, rounded in ``direction`` at the shown precision.

    ``"up"`` for an upper end (a sound upper bound, the upper end of a confidence interval: 0.60236 -> '60.3%'),
    ``"down"`` for a lower end (an empirical lower bound, the lower end of an interval), ``"nearest"`` only for a
    point estimate labelled as such (an empirical success rate). ``digits`` decimals, by default 1 from 10% up and
    2 below. A tiny positive value reads '< 0.01%' (a true statement) unless rounded down; 0 reads '0%'.

    >>> percent(0.60236, direction="up"), percent(0.60236, direction="down"), percent(0.60236)
    ('60.3%', '60.2%', '60.2%')
    >>> percent(0.0123401, direction="up"), percent(1e-6, direction="up"), percent(1e-6, direction="down")
    ('1.24%', '< 0.01%', '0.00%')
    >>> percent(0.99995, direction="up"), percent(0.0), percent(None), percent(float("nan"))
    ('100%', '0%', 'n/a', 'n/a')
    """
    if direction not in ("up", "down", "nearest"):
        raise ValueError(f"direction must be 'up', 'down' or 'nearest', got {direction!r}")
    if value is None or math.isnan(value):
        return "n/a"
    v = 100.0 * float(value)
    if v == 0:
        return "0%"
    if digits is None:
        digits = 2 if v < 10 else 1
    scale = 10**digits
    # 1e-9 of the last digit absorbs binary round-off, as in :func:`upper`
    if direction == "up":
        shown = min(math.ceil(v * scale - 1e-9) / scale, 100.0)
    elif direction == "down":
        shown = math.floor(v * scale + 1e-9) / scale
    else:
        shown = round(v * scale) / scale
    floor = 1 / scale
    if 0 < v < floor:
        return f"< {floor:.{digits}f}%" if direction != "down" else f"{0:.{digits}f}%"
    if shown >= 100:
        return "100%"
    return f"{shown:.{digits}f}%"


def percent_interval(low: float, high: float, *, digits: int | None = None) -> tuple[str, str]:
    """The two ends of a confidence interval of a rate as percentages, each rounded outward (the low end down, the
    high end up), so the shown interval always contains the computed one; the caller joins them.

    >>> percent_interval(0.0, 0.6023646)
    ('0%', '60.3%')
    >>> percent_interval(0.0527, 0.48732)
    ('5.27%', '48.8%')
    """
    return percent(low, direction="down", digits=digits), percent(high, direction="up", digits=digits)


#: How an undefined utility metric reads (MCC or AUROC of a group whose test images hold one class: NaN in JSON),
#: in the console as in the report's subgroup table ("n/a").
UNDEFINED_METRIC = "n/a (one class)"


def metric(value: float, digits: int = 4) -> str:
    """An empirical utility metric (MCC, AUROC, accuracy) to ``digits`` decimals; NaN, undefined when the images
    hold one class, reads :data:`UNDEFINED_METRIC`, never "nan".

    >>> metric(0.51234), metric(float("nan"))
    ('0.5123', 'n/a (one class)')
    """
    return UNDEFINED_METRIC if math.isnan(value) else f"{value:.{digits}f}"
