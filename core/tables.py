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

Line-break rule. A quoted cell may hold line breaks (a radiology note typed with Alt+Enter in Excel), but a quote
opened by mistake (``"nodule``) runs on to the next quote in the file, however many lines below, and every row in
between becomes part of one cell: its images vanish without a word. Such a file is refused, naming the file, the
data row, the column and the lines where the quote opens and closes (never the cell's text: it may hold patient
data), when

1. a quote is never closed (it runs to the end of the file);
2. a column name spans lines;
3. a cell's embedded line (each line after its first; for its last line, together with the rest of its row)
   holds at least as many delimiters as the header minus one: it reads as a row of its own that the quote
   swallowed;
4. a row that holds a multi-line cell has more cells than the header (the quote joined two rows);
5. a cell in a column the reader uses (path, label, patient, subgroup, ...) spans lines: the reader calls
   :meth:`Table.refuse_line_breaks` with those columns once it knows them.

A multi-line cell in a column dpaudit does not use, whose lines do not look like rows, is legal and loads as text.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dpaudit.errors import DataError

__all__ = ["FALLBACK_ENCODING", "Spanning", "Table", "read_table"]

#: The single-byte encoding tried when a file is not valid UTF-8 (see the module docstring).
FALLBACK_ENCODING = "cp1252"


@dataclass(frozen=True)
class Spanning:
    """A cell that spans lines: its data row (1-based, blank lines not counted), its column, and the file lines
    (1-based, the header's first line is 1) where its quote opens and closes. Never its text."""

    row: int
    column: str
    first_line: int
    last_line: int


@dataclass(frozen=True)
class Table:
    """A CSV file read as text: its column names (in file order), its rows, the encoding that decoded it, and the
    cells that span lines (legal so far; see :meth:`refuse_line_breaks`)."""

    path: Path
    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]
    encoding: str
    spanning: tuple[Spanning, ...] = ()

    @property
    def notes(self) -> tuple[str, ...]:
        """The loading note every reader adds (README, "Data": the encoding is reported): the file's name and its
        encoding when that is not UTF-8 (the cp1252 fallback, or UTF-16); none for UTF-8. One wording for every CSV
        a dataset reads (HAM10000 metadata, labels files, manifests)."""
        return (f"{self.path.name} read as {self.encoding}",) if self.encoding != "utf-8" else ()

    def refuse_line_breaks(self, columns: Iterable[str], what: str) -> None:
        """Raise a :class:`DataError` when a cell of one of ``columns`` (those the reader uses) spans lines.

        A line break has no place in a path, label, patient id or subgroup; where one shows up, a quote opened by
        mistake has usually swallowed the rows below it (rule 5 of the module docstring).
        """
        used = set(columns)
        cell = next((c for c in self.spanning if c.column in used), None)
        if cell is not None:
            raise DataError(_spanning_message(self.path, what, cell, "a column dpaudit reads, which must be one "
                                              "line", ", or put the cell on one line"))

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

#: A line break as the csv reader splits lines (``newline=""``): CRLF, LF or a lone CR.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _spanning_message(path: Path, what: str, cell: Spanning, why: str, fix: str = "") -> str:
    """One line naming the file, the row, the column and the lines of a cell that spans lines, never its text;
    ``fix`` is added to the fix."""
    inside = cell.last_line - cell.first_line - 1
    between = f", and the {inside} line(s) between them are read as part of that one cell" if inside else ""
    return (f"{what}: {path.name} data row {cell.row} (line {cell.first_line}), column {cell.column!r}, has a quote "
            f"(\") that opens on line {cell.first_line} and closes on line {cell.last_line}{between} ({why}). "
            f"Fix: close the quote on line {cell.first_line} (or delete it there), or delete the stray quote on line "
            f"{cell.last_line}{fix}; a quote inside a quoted cell is written \"\".")


def _refuse_unterminated_quote(path: Path, text: str, delimiter: str,
                               records: list[tuple[list[str], int, int]], what: str) -> None:
    """Raise a :class:`DataError` when a quoted field runs to the end of the file (rule 1).

    The non-strict reader (kept: ``strict=True`` also refuses quirks it reads as Excel does, such as ``"a"b``) ends
    such a field silently at the end of the file, and the rows it swallowed surface later as a wrong error (an
    empty label). Parsing the text again with a line appended finds it with the reader's own quoting rules: the
    line is a row of its own unless a quoted field is still open at the end of the text.
    """
    probe = list(csv.reader(io.StringIO(text + "\n" + _SENTINEL, newline=""), delimiter=delimiter))
    if probe and probe[-1] == [_SENTINEL]:
        return
    # The open field is the last cell of the last record.
    last, start, _ = records[-1]
    before = [row for row, _, _ in records[:-1] if any(cell.strip() for cell in row)]  # the header, then the data rows
    if not before:
        where = f"the header (line {start})"
    else:
        header = before[0]
        column = repr(header[len(last) - 1].strip()) if len(last) <= len(header) else f"number {len(last)}"
        where = f"data row {len(before)} (line {start}), column {column},"
    raise DataError(f"{what}: {path.name} has a quote (\") in {where} that is never closed, so the rest of the "
                    "file reads as one cell. Fix: close the quote (a quote inside a quoted cell is written \"\").")


def _spanning_cells(path: Path, what: str, columns: tuple[str, ...], delimiter: str, row_no: int,
                    cells: list[str], first_line: int) -> list[Spanning]:
    """The cells of one data row that span lines; a :class:`DataError` for one that swallowed a row (rules 3, 4)."""
    out = []
    line = first_line
    for j, value in enumerate(cells):
        if "\n" not in value and "\r" not in value:
            continue
        parts = _LINE_BREAK.split(value)
        if len(parts) == 1:
            continue
        column = columns[j] if j < len(columns) else f"number {j + 1}"
        cell = Spanning(row_no, column, line, line + len(parts) - 1)
        line = cell.last_line
        # Rule 3: an embedded line that holds as many delimiters as a row (its last one: with the rest of the row).
        after = len(cells) - j - 1
        counts = [part.count(delimiter) + (after if k == len(parts) - 1 else 0) for k, part in enumerate(parts)]
        if any(n >= len(columns) - 1 for n in counts[1:]):
            raise DataError(_spanning_message(path, what, cell, "a line inside the cell reads as a row of its own"))
        if len(cells) > len(columns):  # rule 4
            raise DataError(_spanning_message(path, what, cell, f"the row then has {len(cells)} cells, the header "
                                              f"{len(columns)} columns"))
        out.append(cell)
    return out


def read_table(path: str | Path, what: str) -> Table:
    """Read a CSV file by the encoding and line-break rules of the module docstring; ``what`` prefixes error
    messages. Cells that span lines legally are listed in :attr:`Table.spanning`: the reader refuses them in the
    columns it uses with :meth:`Table.refuse_line_breaks`."""
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
    records: list[tuple[list[str], int, int]] = []  # each record and the file lines it starts and ends on
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        start = 1
        for row in reader:
            records.append((row, start, reader.line_num))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{what}: {str(path)!r} is not a valid CSV file ({exc}). Fix: save it as CSV with a "
                        "header row.") from None
    if records:
        _refuse_unterminated_quote(path, text, delimiter, records, what)
    records = [record for record in records if any(cell.strip() for cell in record[0])]
    if not records:
        raise DataError(f"{what}: {str(path)!r} is empty. Fix: pass a CSV file with a header row and one row per "
                        "image.")
    header, header_line, _ = records[0]
    columns = tuple(c.strip() for c in header)
    broken = next((j for j, c in enumerate(header) if _LINE_BREAK.search(c)), None)
    if broken is not None:  # rule 2
        raise DataError(f"{what}: {path.name} has a quote (\") in the header (line {header_line}), column number "
                        f"{broken + 1}, that runs over {len(_LINE_BREAK.split(header[broken]))} lines. Fix: put the "
                        "column name on one line (close the quote where it opens, or delete the stray one).")
    rows = []
    spanning: list[Spanning] = []
    for row_no, (row, line, last_line) in enumerate(records[1:], start=1):
        if last_line > line:  # only a record over several lines can hold a cell that spans lines
            spanning += _spanning_cells(path, what, columns, delimiter, row_no, row, line)
        if len(row) > len(columns):
            raise DataError(f"{what}: {path.name} data row {row_no} has {len(row)} cells but the header names "
                            f"{len(columns)} columns. Fix: quote cells that hold the delimiter {delimiter!r}.")
        rows.append({c: (row[i].strip() if i < len(row) else "") for i, c in enumerate(columns)})
    return Table(path, columns, tuple(rows), encoding, tuple(spanning))
