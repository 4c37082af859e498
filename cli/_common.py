"""Shared pieces of the command line: error handling, JSON output, consoles, number parsing."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from dpaudit.codec import encode
from dpaudit.errors import DpAuditError, invalid

F = TypeVar("F", bound=Callable[..., Any])

#: Human output goes to stdout; progress bars, warnings and errors to stderr, so ``--json`` output stays clean.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def handle_errors(func: F) -> F:
    """Turn a :class:`DpAuditError` into one line on stderr and exit code 2 (no traceback, no locals)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DpAuditError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def json_text(obj: Any) -> str:
    """The JSON text of ``obj`` as every command writes it (one codec, one policy for non-finite numbers)."""
    return json.dumps(encode(obj), indent=2, allow_nan=False) + "\n"


def emit_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout (through :mod:`dpaudit.codec`: non-finite floats as "inf"/"nan")."""
    sys.stdout.write(json_text(obj))
    sys.stdout.flush()


def parse_float_list(field: str, text: str) -> list[float]:
    """Parse ``"1,8,20,1e9"`` into floats, naming the field and the bad item on error."""
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            values.append(float(item))
        except ValueError:
            raise invalid(field, item, "a comma-separated list of numbers, e.g. 1,8,20") from None
    if not values:
        raise invalid(field, text, "a non-empty comma-separated list of numbers, e.g. 1,8,20")
    return values
