"""Reading the CSV files users hand dpaudit (HAM10000 metadata, label files, manifests), whatever saved them.

Encoding rule (documented in the README, "Data"):

1. A UTF-16 byte-order mark (Excel's "Unicode text") decodes as UTF-16.
2. Otherwise UTF-8, with or without a byte-order mark (``utf-8-sig``).
3. If that fails, **cp1252** (Windows Western European, the single-byte encoding Excel and Notepad use on most
   Western Windows installations; a superset of ISO 8859-1's printable characters). The fallback is reported in
   :attr:`Table.encoding`.
4. Bytes that cp1252 does not define either (0x81, 0x8D, 0x8F, 0x90, 0x9D): a one-line :class:`DataError` naming
   the file and the byte offset, with the fix (save it as UTF-8).

The delimiter is a comma, or a semicolon or tab when the header line holds one of those and no comma (Excel's
"CSV" in locales with a decimal comma). Header names and cells are stripped of surrounding white space.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from dpaudit.errors import DataError

__all__ = ["FALLBACK_ENCODING", "Table", "read_table"]

#: The single-byte encoding tried when a file is not valid UTF-8 (see the module docstring).
FALLBACK_ENCODING = "cp1252"


@dataclass(frozen=True)
class Table:
    """A CSV file read as text: its column names (in file order), its rows, and the encoding that decoded it."""

    path: Path
    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]
    encoding: str

    def require(self, columns: tuple[str, ...] | list[str], what: str, fix: str) -> None:
        """Raise a :class:`DataError` naming the file when any of ``columns`` is missing."""
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise DataError(f"{what}: {self.path.name} lacks the column(s) {missing} (found {list(self.columns)}). "
                            f"Fix: {fix.rstrip('.')}.")


def _decode(path: Path, raw: bytes) -> tuple[str, str]:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as exc:
            raise DataError(f"{str(path)!r} starts with a UTF-16 byte-order mark but does not decode as UTF-16 "
                            f"(byte {exc.start}). Fix: save it as UTF-8 CSV.") from None
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode(FALLBACK_ENCODING), FALLBACK_ENCODING
    except UnicodeDecodeError as exc:
        raise DataError(f"{str(path)!r} is neither UTF-8 nor {FALLBACK_ENCODING} text (byte 0x{raw[exc.start]:02x} "
                        f"at offset {exc.start}). Fix: save it as UTF-8 CSV (in Excel: 'CSV UTF-8').") from None


#: Appended after a newline to find an unterminated quote: it is a row of its own unless a quoted field swallows it.
_SENTINEL = "x"


def _refuse_unterminated_quote(path: Path, text: str, delimiter: str, lines: list[list[str]], what: str) -> None:
    """Raise a :class:`DataError` when a quoted field runs to the end of the file.

    The non-strict reader (kept: ``strict=True`` also refuses quirks it reads as Excel does, such as ``"a"b``) ends
    such a field silently at the end of the file, and the rows it swallowed surface later as a wrong error (an
    empty label). Parsing the text again with a line appended finds it with the reader's own quoting rules: the
    line is a row of its own unless a quoted field is still open at the end of the text.
    """
    probe = list(csv.reader(io.StringIO(text + "\n" + _SENTINEL, newline=""), delimiter=delimiter))
    if probe and probe[-1] == [_SENTINEL]:
        return
    # The open field is the last cell of the last record; that record starts one line after the one before it.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    start = 1
    for _ in range(len(lines) - 1):
        next(reader)
        start = reader.line_num + 1
    last = lines[-1]
    before = [row for row in lines[:-1] if any(cell.strip() for cell in row)]  # the header, then the data rows
    if not before:
        where = f"the header (line {start})"
    else:
        header = before[0]
        column = repr(header[len(last) - 1].strip()) if len(last) <= len(header) else f"number {len(last)}"
        where = f"data row {len(before)} (line {start}), column {column},"
    raise DataError(f"{what}: {path.name} has a quote (\") in {where} that is never closed, so the rest of the "
                    "file reads as one cell. Fix: close the quote (a quote inside a quoted cell is written \"\").")


def read_table(path: str | Path, what: str) -> Table:
    """Read a CSV file by the encoding rule of the module docstring; ``what`` prefixes error messages."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{what}: {str(path)!r} cannot be read ({exc.strerror or type(exc).__name__}). Fix: pass "
                        "an existing, readable CSV file.") from None
    text, encoding = _decode(path, raw)
    first = text.split("\n", 1)[0]
    delimiter = ","
    if "," not in first:
        delimiter = ";" if ";" in first else "\t" if "\t" in first else ","
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        lines = [row for row in reader]
    except csv.Error as exc:
        raise DataError(f"{what}: {str(path)!r} is not a valid CSV file ({exc}). Fix: save it as CSV with a "
                        "header row.") from None
    _refuse_unterminated_quote(path, text, delimiter, lines, what)
    lines = [row for row in lines if any(cell.strip() for cell in row)]
    if not lines:
        raise DataError(f"{what}: {str(path)!r} is empty. Fix: pass a CSV file with a header row and one row per "
                        "image.")
    columns = tuple(c.strip() for c in lines[0])
    rows = []
    for line_no, row in enumerate(lines[1:], start=1):
        if len(row) > len(columns):
            raise DataError(f"{what}: {path.name} data row {line_no} has {len(row)} cells but the header names "
                            f"{len(columns)} columns. Fix: quote cells that hold the delimiter {delimiter!r}.")
        rows.append({c: (row[i].strip() if i < len(row) else "") for i, c in enumerate(columns)})
    return Table(path, columns, tuple(rows), encoding)
