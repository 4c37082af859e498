"""One type-driven JSON codec for every frozen result dataclass (``profile.json``, the task store, ``--json``).

Results are frozen dataclasses, never dicts. :func:`encode` turns them into plain JSON and :func:`decode` /
:func:`from_plain` back, driven by the type hints, so every result class gets a validated ``from_json`` for free:
a field of the wrong type, a missing field or an unknown key raises :class:`dpaudit.errors.ConfigError` naming the
path. Fields declared with ``metadata={"json": False}`` (per-image arrays, kept images) stay out of the JSON. A class
may name read-only properties in ``JSON_PROPERTIES`` (e.g. a decision rule or a caveat derived from the fields):
they are written after the fields, so that the JSON is self-describing, and ignored when read back.

One policy for non-finite numbers: JSON has no infinity or NaN. An infinite float (a bound with no finite value)
is written as the string ``"inf"`` or ``"-inf"``; a NaN, a number that is not defined (an MCC on a split with one
class), is written as ``null``, and the object that holds it says why under ``"undefined"`` (field name ->
reason: the class's ``UNDEFINED`` reasons, else :data:`UNDEFINED_REASON`). Both read back exactly
(``from_json(to_json(x)) == x`` also for non-private runs), with one exception: a NaN in an optional field
(``float | None``) reads back as None, since null is None there (both mean "no value"; the file keeps the reason).
The string ``"nan"`` of older files still reads as NaN.
A field that is None (null: not computed, or not applicable) gets its reason there too when the class's
``UNDEFINED`` names one (a bound not computed for a curve point), or the object's ``null_reasons`` property (field
-> reason, over the class's) does (a subgroup cell withheld as too small; also a list holding a withheld null).
numpy arrays and scalars become lists and numbers.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import json
import math
import types
import typing
from typing import Any, TypeVar

import numpy as np

from dpaudit.errors import ConfigError, invalid

T = TypeVar("T")

_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
#: The key beside the fields under which an object says why a field is null (not defined, not computed).
UNDEFINED_KEY = "undefined"
#: The reason given for a NaN field whose class names none.
UNDEFINED_REASON = "not defined for this data (no value can be computed)"


def _holds_nan(value: Any) -> bool:
    """Whether a field's value is NaN or holds one (a sequence or array of numbers)."""
    if isinstance(value, float | np.floating):
        return bool(np.isnan(value))
    if isinstance(value, np.ndarray):
        return value.dtype.kind == "f" and bool(np.isnan(value).any())
    if isinstance(value, list | tuple):
        return any(_holds_nan(v) for v in value)
    if isinstance(value, collections.abc.Mapping):
        return any(_holds_nan(v) for v in value.values())
    return False


def encode(obj: Any) -> Any:
    """A plain-JSON view of ``obj`` (dataclasses become objects, tuples lists, infinities strings, NaN null with
    its reason under ``"undefined"``, and None too where the class's ``UNDEFINED`` names its reason)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.metadata.get("json", True)}
        out.update({name: encode(getattr(obj, name)) for name in getattr(obj, "JSON_PROPERTIES", ())})
        # the class's reasons, then the object's own where it has any (a withheld small cell's null metrics)
        own = getattr(obj, "null_reasons", {})
        reasons = {**getattr(obj, "UNDEFINED", {}), **own}
        undefined = {name: reasons.get(name, UNDEFINED_REASON) for name in out
                     if _holds_nan(value := getattr(obj, name)) or (value is None and name in reasons)
                     or name in own}  # the object's own: also a sequence holding a withheld (null) entry
        if undefined:
            out[UNDEFINED_KEY] = undefined
        return out
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, tuple | list):
        return [encode(v) for v in obj]
    if isinstance(obj, collections.abc.Mapping):
        return {str(k): encode(v) for k, v in obj.items()}
    if getattr(obj, "ndim", 0) and hasattr(obj, "tolist"):  # numpy / torch arrays
        return encode(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return encode(obj.item())
    raise invalid("JSON value", type(obj).__name__, "a dataclass, number, string, list or dict",
                  "convert the value before storing it in a result")


def dumps(obj: Any) -> str:
    """Deterministic JSON text (sorted keys are not used: field order is the schema's order)."""
    return json.dumps(encode(obj), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def _fail(path: str, value: Any, expected: str) -> ConfigError:
    return invalid(path, value, expected, "re-create the file with this dpaudit version or fix the field")  # type: ignore[return-value]


def decode(tp: Any, value: Any, path: str = "$") -> Any:
    """Build a value of type ``tp`` from its plain-JSON form, validating as it goes."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return decode(arg, value, path)
            except ConfigError:
                continue
        raise _fail(path, value, " or ".join(getattr(a, "__name__", str(a)) for a in args))
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise _fail(path, value, "a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise _fail(path, value, f"a list of {len(args)} items")
        return tuple(decode(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is tuple:  # a bare ``tuple``: its items as they are in JSON
        if not isinstance(value, list):
            raise _fail(path, value, "a list")
        return tuple(value)
    if tp is np.ndarray:
        if not isinstance(value, list):
            raise _fail(path, value, "a list of numbers")
        return np.array([decode(float, v, f"{path}[{i}]") for i, v in enumerate(value)], dtype=float)
    if origin in (dict, collections.abc.Mapping):
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise _fail(path, value, "an object")
        return {decode(key_tp, k, path): decode(val_tp, v, f"{path}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise _fail(path, value, f"one of {', '.join(map(str, typing.get_args(tp)))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_plain(tp, value, path)
    if tp is float:
        if value is None:  # a number that is not defined (NaN)
            return math.nan
        if isinstance(value, str) and value in _NONFINITE:
            return _NONFINITE[value]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(path, value, "a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, value, "an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(path, value, "true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _fail(path, value, "a string")
        return value
    if tp is Any:
        return value
    raise _fail(path, value, f"a value of type {tp!r}")


def from_plain(cls: type[T], data: Any, path: str = "$") -> T:
    """Build dataclass ``cls`` from a plain-JSON object; unknown and missing keys are errors."""
    if not isinstance(data, dict):
        raise _fail(path, data, f"an object for {cls.__name__}")
    upgrade = getattr(cls, "json_upgrade", None)
    if upgrade is not None:  # a class that reads files of an earlier layout says how
        data = upgrade(data)
    derived = (*getattr(cls, "JSON_PROPERTIES", ()), UNDEFINED_KEY)
    # written for the reader (recomputed from the fields; why a field is null)
    data = {k: v for k, v in data.items() if k not in derived}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise _fail(f"{path}.{unknown[0]}", data[unknown[0]], f"absent (no such field in {cls.__name__})")
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            continue
        if f.name in data:
            kwargs[f.name] = decode(hints[f.name], data[f.name], f"{path}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _fail(f"{path}.{f.name}", None, "present")
    return cls(**kwargs)


def loads(cls: type[T], text: str) -> T:
    """Parse JSON text into dataclass ``cls``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid("JSON", f"line {exc.lineno} column {exc.colno}", "valid JSON",
                      "the file is damaged; re-create it") from None
    return from_plain(cls, data)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(tp: Any, value: Any) -> Any:
    """Normalise numbers and sequences to the declared type (1 -> 1.0, list -> tuple, numpy scalar -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(args[0], value) if len(args) == 1 else value
    if tp is float and not isinstance(value, bool) and hasattr(value, "__float__") and not isinstance(value, str):
        return float(value)
    if tp is int and not isinstance(value, bool) and hasattr(value, "__index__"):
        return int(value)
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(value)
    return value


class JsonResult:
    """Mixin: ``to_json`` / ``from_json`` through the type-driven codec above, type normalisation at construction,
    and equality by JSON form: two results are equal when they serialise to the same JSON (NaN equals NaN, as
    ``null`` does; fields kept out of the JSON are not compared). Declare subclasses with
    ``@dataclass(frozen=True, eq=False)`` so that the dataclass does not replace this equality."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            fixed = _coerce(hints[f.name], value)
            if fixed is not value:
                object.__setattr__(self, f.name, fixed)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and encode(self) == encode(other)

    def __hash__(self) -> int:
        return hash(dumps(self))

    def to_json(self) -> str:
        return dumps(self)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:  # type: ignore[misc]
        return loads(cls, text)
