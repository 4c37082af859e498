"""The exception hierarchy.

Every error a user can cause derives from :class:`DpAuditError` (a ``ValueError``), names the field, the value
found, what is allowed, and the fix. The CLI turns these into one line on stderr and exit code 2, never a
traceback (tracebacks with locals may hold patient data).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, TypeVar


class DpAuditError(ValueError):
    """Base class of every error caused by the user's input.

    An error built by :func:`invalid` also carries its parts (``field``, ``value``, ``allowed``, ``fix``), so that
    the command line can name the flag the user typed for a configuration field (``--sigmas`` for
    ``noise_multiplier``) and supply a fix where the library gave none; other errors have ``field`` None.
    """

    field: str | None = None
    value: Any = None
    allowed: str | None = None
    fix: str | None = None


class ConfigError(DpAuditError):
    """A parameter is outside its allowed range or inconsistent with another one."""


class DataError(DpAuditError):
    """A dataset is missing, in the wrong layout, or holds a file that does not decode."""


class CheckpointError(DpAuditError):
    """A checkpoint cannot be loaded safely or does not match what is asked of it."""


class MissingDependencyError(DpAuditError):
    """An optional dependency is not installed."""


class NumericalError(DpAuditError):
    """A computation cannot deliver a sound result for these inputs (the message says what to change)."""


def _short(value: Any) -> str:
    """``repr(value)``, shortened: at most 240 characters for a text or a path (a user needs the whole path to find
    the file), 80 for anything else (a list or an array); a longer one keeps its start and its end, joined by "...".
    A list (the values of a repeated option) reads as its items, comma-separated, without Python's brackets; an
    empty one as "nothing". A tuple (a shape) keeps its parentheses.

    >>> _short(["foo"])
    "'foo'"
    >>> _short(list(range(40)))
    '0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12...0, 31, 32, 33, 34, 35, 36, 37, 38, 39'
    >>> _short("/data/" + "x" * 300 + "/history.json")[-19:]
    "xxxxx/history.json'"
    """
    if isinstance(value, list):
        text = ", ".join(repr(_plain(v)) for v in value) or "nothing"
    else:
        text = repr(_plain(value))
    limit = 240 if isinstance(value, str | os.PathLike) else 80
    if len(text) <= limit:
        return text
    tail = limit // 2 - 3
    return text[:limit - tail - 3] + "..." + text[-tail:]


def _plain(value: Any) -> Any:
    """A value as the user typed or would type it: a path as its text, and a numpy or torch scalar (a value read
    from an array: ``np.int64(9)``, ``tensor(9)`` in repr) as the Python number it holds."""
    if isinstance(value, os.PathLike):
        return str(value)
    if type(value).__module__ in ("numpy", "torch") and getattr(value, "ndim", None) == 0:
        try:
            return value.item()
        except (AttributeError, TypeError, ValueError, RuntimeError):
            return value
    return value


E = TypeVar("E", bound=DpAuditError)


def naming_file(exc: E, path: str | os.PathLike[str], shown: str, prefix: str = "") -> E:
    """``exc``, an error a reader raised about ``path`` (named ``repr(str(path))``, the path the loader gave it:
    absolute for a manifest's row), with that file named ``shown`` instead (a path as the user wrote it, quoted:
    :func:`shown_path`, or with a manifest's data row) and ``prefix`` (the dataset's name) before it; unchanged
    when its message does not name ``path``.

    >>> e = DataError("image '/data/x/a.png' does not decode. Fix: replace it.")
    >>> str(naming_file(e, "/data/x/a.png", "'x/a.png' (data row 3)", "csv:m.csv: "))
    "csv:m.csv: image 'x/a.png' (data row 3) does not decode. Fix: replace it."
    """
    text = str(exc)
    if repr(str(path)) not in text:
        return exc
    renamed = type(exc)(prefix + text.replace(repr(str(path)), shown))
    renamed.__dict__.update(vars(exc))
    return renamed


def shown_path(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
    """How a message names a file of a folder dataset: its path relative to the dataset's ``root`` (POSIX
    separators), quoted; the path as given when it does not lie below ``root``. The one rule for every loader, so
    that an absolute ``--dataset`` does not make every message absolute.

    >>> shown_path("/data/scans/sub-01/anat/t1.nii.gz", "/data/scans"), shown_path("b/c.png", "a")
    ("'sub-01/anat/t1.nii.gz'", "'b/c.png'")
    """
    p, r = os.fspath(path), os.fspath(root)
    rel = os.path.relpath(p, r) if r else p
    if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        rel = p
    return repr(rel.replace(os.sep, "/"))


def library_reason(exc: BaseException, path: str | os.PathLike[str]) -> str:
    """A library's exception as the reason of a message that names the file already: ``Type: text`` with the
    path it repeats taken out (as given, absolute or resolved, quoted or as a ``PosixPath(...)``), so that the file
    is named once; a text that does not repeat it is kept whole.

    >>> library_reason(OSError("cannot identify image file '/d/x.png'"), "/d/x.png")
    'OSError: cannot identify image file'
    >>> library_reason(ValueError('Cannot work out file type of "/d/x.nii"'), "/d/x.nii")
    'ValueError: Cannot work out file type'
    >>> library_reason(FileNotFoundError("no such file: PosixPath('/d/x.nii')"), "/d/x.nii")
    'FileNotFoundError: no such file'
    >>> library_reason(ValueError("expected 2 dimensions, got 3 in"), "/d/x.nii")
    'ValueError: expected 2 dimensions, got 3 in'
    >>> library_reason(ValueError("(131072 bytes) does not match the expected length (262144 bytes)"), "1")
    'ValueError: (131072 bytes) does not match the expected length (262144 bytes)'
    >>> library_reason(OSError("cannot read 1: truncated"), "1")
    'OSError: cannot read: truncated'
    """
    text = original = str(exc)
    p = os.fspath(path)
    # Longest form first: a relative path is a part of its absolute form, whose rest would be left behind.
    for form in sorted({p, os.path.abspath(p), os.path.realpath(p)}, key=len, reverse=True):
        # whole path only: a path '1' (a DICOM file named 1) inside '131072 bytes' or 'frames in a' is no path
        bare = r"(?<![\w/.\\-])" + re.escape(form) + r"(?![\w/.\\-])"
        quoted = r"(?:'|\"|`)" + re.escape(form) + r"(?:'|\"|`)"
        as_object = r"\w*Path\((?:'|\")" + re.escape(form) + r"(?:'|\")\)"  # PosixPath('...') in a repr
        text = re.sub(r"\s*(?:" + as_object + "|" + quoted + "|" + bare + ")", "", text)
    if text != original:  # a sentence left ending in the preposition that led to the path, or in punctuation
        text = re.sub(r"(?:\s+(?:of|in|at|from|for|to))?\s*[:,]?\s*$", "", text.strip())
    return f"{type(exc).__name__}: {text.strip() or 'no reason given'}"


def invalid(field: str, value: Any, allowed: str, fix: str | None = None, *, cls: type[DpAuditError] = ConfigError) -> DpAuditError:
    """Build an error that names the field, the value found, the allowed range and the fix.

    >>> str(invalid("sampling_probability", 1.5, "in (0, 1]", "pass the batch size divided by the dataset size"))
    'sampling_probability must be in (0, 1], got 1.5. Fix: pass the batch size divided by the dataset size.'
    """
    exc = cls(message_of(field, value, allowed, fix))
    exc.field, exc.value, exc.allowed, exc.fix = field, value, allowed, fix
    return exc


def message_of(field: str, value: Any, allowed: str, fix: str | None) -> str:
    """The one line of an :func:`invalid` error: field, allowed range, value found, fix."""
    message = f"{field} must be {allowed}, got {_short(value)}."
    if fix:
        message += f" Fix: {fix.rstrip('.')}."
    return message


def check_probability(field: str, value: float, *, open_low: bool = True, open_high: bool = True, fix: str | None = None) -> float:
    """Validate a probability-like number and return it as float."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise invalid(field, value, "a number", fix) from None
    lo_ok = v > 0 if open_low else v >= 0
    hi_ok = v < 1 if open_high else v <= 1
    if not (lo_ok and hi_ok) or v != v:
        allowed = f"in {'(' if open_low else '['}0, 1{')' if open_high else ']'}"
        raise invalid(field, value, allowed, fix)
    return v


def check_positive(field: str, value: float, *, allow_zero: bool = False, fix: str | None = None) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise invalid(field, value, "a number", fix) from None
    if v != v or v == float("inf") or (v < 0 if allow_zero else v <= 0):
        raise invalid(field, value, "a finite number >= 0" if allow_zero else "a finite number > 0", fix)
    return v


def check_int(field: str, value: int, *, minimum: int = 1, fix: str | None = None) -> int:
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or (isinstance(value, float) and not math.isfinite(value)) or int(value) != value):
        raise invalid(field, value, f"an integer >= {minimum}", fix)
    v = int(value)
    if v < minimum:
        raise invalid(field, value, f"an integer >= {minimum}", fix)
    return v
