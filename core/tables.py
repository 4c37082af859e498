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
   reads as a row of its own that the quote swallowed: its cell in a column the reader finds rows by
   (:class:`RowKey`: a manifest's path, a labels file's key, HAM10000's image_id and lesion_id) looks like that
   column's real values: it matches the column's pattern (``ISIC_\\d+``), or names an existing file (resolved as
   the reader resolves paths), or has the extension or the shape (its kinds of characters) of the column's values
   in the other rows. How many delimiters the line holds does not matter then (a swallowed row may be shorter
   than every row left, a note's line may hold more commas than a row). Without a key column (:func:`read_table`
   called alone, or a header without one), a line that holds at least as many delimiters as the fewest of the
   file's single-line data rows (the header minus one where there are none) is refused;
4. a row that holds a multi-line cell has more cells than the header (the quote joined two rows);
5. a cell in a column the reader uses (path, label, patient, subgroup, ...) spans lines: the reader calls
   :meth:`Table.refuse_line_breaks` with those columns once it knows them.

A multi-line cell in a column dpaudit does not use, whose lines do not look like rows, is legal and loads as text,
even when a line holds as many delimiters as a row (a list of findings typed with commas).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dpaudit.errors import DataError

__all__ = ["FALLBACK_ENCODING", "MISSING_VALUES", "RowKey", "Spanning", "Table", "read_table"]

#: The single-byte encoding tried when a file is not valid UTF-8 (see the module docstring).
FALLBACK_ENCODING = "cp1252"

#: Cell texts that mean "no value": pandas' ``read_csv`` default ``na_values`` (``str(np.nan)`` is 'nan', R writes
#: 'NA', Excel '#N/A'). A label cell holding one is missing, as an empty cell is, never a class of its own; an age
#: cell holding one is an unknown age, never a number.
MISSING_VALUES = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
    "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


@dataclass(frozen=True)
class Spanning:
    """A cell that spans lines: its data row (1-based, blank lines not counted), its column, and the file lines
    (1-based, the header's first line is 1) where its quote opens and closes. Never its text."""

    row: int
    column: str
    first_line: int
    last_line: int


@dataclass(frozen=True)
class RowKey:
    """A column a reader finds each row's image by, and how to tell its real values (rule 3 of the module
    docstring): an embedded line whose cell in this column looks like one is a swallowed row.

    ``base`` is the folder the column's paths are relative to, as the reader resolves them (None: not paths);
    ``pattern`` a regular expression the column's values match in full by convention (HAM10000's ``ISIC_\\d+``).
    A cell looks like a real value when it matches the pattern, names an existing file below ``base``, or has the
    extension, or the shape (the kinds of characters it holds: letters, digits, each punctuation mark), of a value
    in the file's rows. Each is evidence enough: a note's line that passes one is refused (the user can reword
    it), a swallowed row that passes none would vanish.
    """

    column: str
    base: Path | None = None
    pattern: str | None = None

    def test(self, values: Iterable[str]) -> Callable[[str], bool]:
        """Whether a cell looks like a real value of this column, judged against ``values`` (the column's cells
        in the file's rows)."""
        match = re.compile(self.pattern).fullmatch if self.pattern is not None else None
        values = [v for v in values if v]
        shapes = {_shape(v) for v in values}
        suffixes = {_suffix(v) for v in values} - {""}

        def looks_like(cell: str) -> bool:
            if not cell:
                return False
            if (match is not None and match(cell)) or _shape(cell) in shapes or _suffix(cell) in suffixes:
                return True
            if self.base is None:
                return False
            try:
                target = self.base / cell.replace("\\", "/")
                return target.is_file() or target.is_symlink()  # a broken link is still a file the row names
            except (OSError, ValueError):  # a name the file system cannot hold (too long, a NUL)
                return False

        return looks_like


def _shape(value: str) -> frozenset[str]:
    """The kinds of characters a cell holds: letters, digits, and each other character itself (``img3.png`` and
    ``ct_17.png`` share {letter, digit, '.'}; ``pain`` is letters only)."""
    return frozenset("a" if c.isalpha() else "9" if c.isdigit() else c for c in value)


def _suffix(value: str) -> str:
    """A path's extension, lower case ('' for none; ``.gz`` for ``.nii.gz``); a space in it is not one."""
    suffix = Path(value.replace("\\", "/")).suffix.lower()
    return "" if " " in suffix else suffix


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
                    cells: list[str], first_line: int
                    ) -> tuple[list[Spanning], list[tuple[Spanning, list[str]]]]:
    """The cells of one data row that span lines, and their embedded lines (each with its cell, and split by the
    delimiter: rule 3 judges them); a :class:`DataError` for a row that outgrows the header (rule 4)."""
    out = []
    embedded = []
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
        if len(cells) > len(columns):  # rule 4
            raise DataError(_spanning_message(path, what, cell, f"the row then has {len(cells)} cells, the header "
                                              f"{len(columns)} columns"))
        # An embedded line as rule 3 reads it: a row's cells from its first column (the last line: followed by
        # the rest of the row's cells).
        for k, part in enumerate(parts[1:], start=1):
            embedded.append((cell, part.split(delimiter) + (cells[j + 1:] if k == len(parts) - 1 else [])))
        out.append(cell)
    return out, embedded


def _refuse_swallowed_rows(table: Table, lines: list[tuple[Spanning, list[str]]], keys: Sequence[RowKey],
                           fewest: int, what: str) -> None:
    """Rule 3: refuse the first embedded line whose cell in a key column looks like the column's real values
    (:meth:`RowKey.test`); with no key column in the header, the first that holds ``fewest`` delimiters."""
    present = [k for k in keys if k.column in table.columns]
    tests = [(table.columns.index(k.column), k.column, k.test(r[k.column] for r in table.rows)) for k in present]
    for cell, split in lines:
        if not tests and len(split) - 1 >= fewest:
            raise DataError(_spanning_message(table.path, what, cell, "a line inside the cell holds as many "
                                              "delimiters as a row: it reads as a row of its own"))
        hit = next((name for i, name, looks_like in tests if i < len(split) and looks_like(split[i].strip())), None)
        if hit is not None:
            raise DataError(_spanning_message(table.path, what, cell, "a line inside the cell reads as a row of its "
                                              f"own: its {hit!r} cell looks like the other rows'"))


def read_table(path: str | Path, what: str, keys: Sequence[RowKey] = ()) -> Table:
    """Read a CSV file by the encoding and line-break rules of the module docstring; ``what`` prefixes error
    messages. ``keys``: the columns the reader finds each row's image by, whose cells tell a swallowed row from a
    note's line (rule 3; without one in the header, an embedded line with a row's delimiters is refused). Cells
    that span lines legally are listed in :attr:`Table.spanning`: the reader refuses them in the columns it uses
    with :meth:`Table.refuse_line_breaks`."""
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
    # Without a key column, rule 3 compares an embedded line with the file's single-line rows: the fewest
    # delimiters one holds (rows may omit empty trailing cells), else the header's.
    fewest = min((len(row) - 1 for row, line, last_line in records[1:] if last_line == line),
                 default=len(columns) - 1)
    rows = []
    spanning: list[Spanning] = []
    embedded: list[tuple[Spanning, list[str]]] = []
    for row_no, (row, line, last_line) in enumerate(records[1:], start=1):
        if last_line > line:  # only a record over several lines can hold a cell that spans lines
            cells, lines = _spanning_cells(path, what, columns, delimiter, row_no, row, line)
            spanning += cells
            embedded += lines
        if len(row) > len(columns):
            raise DataError(f"{what}: {path.name} data row {row_no} has {len(row)} cells but the header names "
                            f"{len(columns)} columns. Fix: quote cells that hold the delimiter {delimiter!r}.")
        rows.append({c: (row[i].strip() if i < len(row) else "") for i, c in enumerate(columns)})
    table = Table(path, columns, tuple(rows), encoding, tuple(spanning))
    _refuse_swallowed_rows(table, embedded, keys, fewest, what)
    return table
