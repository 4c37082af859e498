"""Line breaks inside CSV cells (the line-break rule of :mod:`dpaudit.tables`): a quote opened by mistake and
closed by a later stray quote swallows the rows between them, and is refused by every reader (``csv:`` manifests,
DICOM and NIfTI labels files, HAM10000 metadata); a quoted free-text note with a line break, in a column dpaudit
does not use, is legal and loads with every row.

Expected line numbers are counted from how the fixture text is written: the header is line 1, data row i is line
i + 1 where no cell above it spans lines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from medical_fixtures import dicom_file, nifti_file
from PIL import Image
from typer.testing import CliRunner

from dpaudit.cli.main import app
from dpaudit.data import DatasetSplits, load_splits
from dpaudit.errors import DataError
from dpaudit.tables import RowKey, Spanning, read_table

ROWS = 12
NOTE = "Follow-up CT advised, no change since prior.\nReviewed by a second reader."


def total(s: DatasetSplits) -> int:
    return len(s.train) + len(s.val) + len(s.test)


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(",".join(cells) for cells in [header, *rows]) + "\n"


def swallowing(rows: list[list[str]], column: int, closing_column: int) -> list[list[str]]:
    """The rows with a quote opened in data row 7's ``column`` and a stray one closing it in data row 12's
    ``closing_column``: data rows 8-11 (lines 9-12) are swallowed by one cell."""
    rows = [list(r) for r in rows]
    rows[6][column] = '"' + rows[6][column]
    rows[11][closing_column] = rows[11][closing_column] + '"'
    return rows


def with_note(rows: list[list[str]]) -> list[list[str]]:
    """Every third row's note (the last column) a quoted two-line text, commas included."""
    return [[*r[:-1], f'"{NOTE}"' if i % 3 == 0 else "none"] for i, r in enumerate(rows)]


def assert_swallowed(message: str, file: str, column: str) -> None:
    assert "\n" not in message and "Traceback" not in message
    assert f"{file} data row 7 (line 8), column {column!r}" in message, message
    assert "opens on line 8 and closes on line 13, and the 4 line(s) between them" in message, message
    assert "Fix: close the quote on line 8" in message and "delete the stray quote on line 13" in message
    assert "SECRET" not in message and "img" not in message and "ISIC" not in message  # never a cell's text


# ------------------------------------------------------------------------------------------- read_table itself


@pytest.mark.parametrize(("text", "row", "column", "lines"), [
    # a whole row swallowed (rule 3)
    ('path,label,note\na,0,"x\nb,1,y\nc,0,z"\n', 1, "note", (2, 4)),
    # the quote closes in the next row's path: that row's line, with the rest of the record, is a row (rule 3)
    ('path,label,note\na,0,x\nb,1,"y\nc",0,z\n', 2, "note", (3, 4)),
    # opened in a used column of a two-column file: the next row is swallowed (rule 3)
    ('path,label\na,"0\nb,1"\nc,0\n', 1, "label", (2, 3)),
    # a note in the middle column, closed early in the next row: the record outgrows the header (rule 4)
    ('path,note,label\na,"x\nb",1,extra\n', 1, "note", (2, 3)),
    # CRLF line ends and a lone CR count as one line each, as the reader counts them
    ('path,label,note\r\na,0,"x\r\nb,1,y\rc,0,z"\r\n', 1, "note", (2, 4)),
    # semicolons
    ('path;label;note\na;0;"x\nb;1;y"\n', 1, "note", (2, 3)),
])
def test_swallowed_rows_are_refused_naming_row_column_and_lines(tmp_path: Path, text: str, row: int, column: str,
                                                                lines: tuple[int, int]) -> None:
    path = tmp_path / "m.csv"
    path.write_text(text, newline="")
    with pytest.raises(DataError) as info:
        read_table(path, "csv:m.csv")
    message = str(info.value)
    assert message.startswith(f"csv:m.csv: m.csv data row {row} (line {lines[0]}), column {column!r}"), message
    assert f"opens on line {lines[0]} and closes on line {lines[1]}" in message and "\n" not in message


def test_the_message_never_holds_the_swallowed_text(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('path,label,patient_id\na,0,"SECRET-1\nb,1,SECRET-2\nc,0,SECRET-3"\n')
    with pytest.raises(DataError) as info:
        read_table(path, "labels")
    assert "SECRET" not in str(info.value)


def test_a_column_name_over_two_lines_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('path,"label\n"\na,0\n')
    with pytest.raises(DataError, match=r"m\.csv has a quote .* the header \(line 1\), column number 2, that runs "
                                        r"over 2 lines\. Fix: put the column name on one line"):
        read_table(path, "labels")


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_legal_multi_line_cells_load_and_are_listed(tmp_path: Path, delimiter: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(delimiter.join(["path", "label", "note"]) + "\n"
                    + delimiter.join(["a", "0", '"one line\nand another"']) + "\n"
                    + delimiter.join(["b", "1", "plain"]) + "\n"
                    + delimiter.join(["c", "0", '"three\nlines\nof text"']) + "\n")
    table = read_table(path, "labels")
    assert [r["path"] for r in table.rows] == ["a", "b", "c"]
    assert table.rows[2]["note"] == "three\nlines\nof text"
    assert table.spanning == (Spanning(1, "note", 2, 3), Spanning(3, "note", 5, 7))
    table.refuse_line_breaks(["path", "label"], "labels")  # the note is not read
    with pytest.raises(DataError, match=r"m\.csv data row 1 \(line 2\), column 'note', has a quote .* opens on "
                                        r"line 2 and closes on line 3 \(a column dpaudit reads"):
        table.refuse_line_breaks(["path", "note"], "labels")


# ----------------------------------------------------------------------------------------------- csv: manifests


def manifest_rows(root: Path, rng: np.random.Generator) -> list[list[str]]:
    rows = []
    for i in range(ROWS):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(root / f"img{i}.png")
        rows.append([f"img{i}.png", str(i % 2), f"SECRET-{i}", "none"])
    return rows


HEADER = ["path", "label", "patient_id", "note"]


@pytest.mark.parametrize(("column", "closing"), [(1, 1), (3, 0)])
def test_a_manifest_with_swallowed_rows_is_refused(tmp_path: Path, rng: np.random.Generator, column: int,
                                                   closing: int) -> None:
    rows = manifest_rows(tmp_path, rng)
    (tmp_path / "m.csv").write_text(csv_text(HEADER, swallowing(rows, column, closing)))
    with pytest.raises(DataError) as info:
        load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=16)
    assert_swallowed(str(info.value), "m.csv", HEADER[column])


def test_a_manifest_with_a_multi_line_note_loads_every_row(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = manifest_rows(tmp_path, rng)
    (tmp_path / "m.csv").write_text(csv_text(HEADER, with_note(rows)))
    assert total(load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=16)) == ROWS


@pytest.mark.parametrize("column", ["path", "label", "patient_id", "sex"])
def test_a_line_break_in_a_column_the_manifest_reads_is_refused(tmp_path: Path, rng: np.random.Generator,
                                                                column: str) -> None:
    """A cell that spans lines without swallowing a row: a label ``"1\\n"`` would load as ``1`` today."""
    rows = [[*r, "F"] for r in manifest_rows(tmp_path, rng)]
    header = [*HEADER, "sex"]
    j = header.index(column)
    rows[2][j] = f'"{rows[2][j]}\n"'
    (tmp_path / "m.csv").write_text(csv_text(header, rows))
    with pytest.raises(DataError) as info:
        load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=16)
    message = str(info.value)
    assert f"m.csv data row 3 (line 4), column {column!r}, has a quote" in message, message
    assert "opens on line 4 and closes on line 5 (" in message and "SECRET" not in message


def test_train_on_a_manifest_with_swallowed_rows_is_one_line_exit_2(tmp_path: Path, rng: np.random.Generator
                                                                    ) -> None:
    rows = manifest_rows(tmp_path, rng)
    (tmp_path / "m.csv").write_text(csv_text(HEADER, swallowing(rows, 1, 1)))
    res = CliRunner().invoke(app, ["train", "--dataset", f"csv:{tmp_path / 'm.csv'}", "--non-private",
                                   "--epochs", "1"])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert_swallowed(res.output.strip(), "m.csv", "label")


# ------------------------------------------------------------------------------------------ DICOM labels files


def dicom_rows(root: Path, rng: np.random.Generator) -> list[list[str]]:
    rows = []
    for i in range(ROWS):
        dicom_file(root / f"img{i}.dcm", rng.integers(0, 4096, (8, 8)), patient=f"SECRET-{i}")
        rows.append([f"img{i}.dcm", str(i % 2), "none"])
    return rows


def test_a_dicom_labels_file_with_swallowed_rows_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = dicom_rows(tmp_path / "d", rng)
    (tmp_path / "labels.csv").write_text(csv_text(["path", "label", "note"], swallowing(rows, 2, 0)))
    with pytest.raises(DataError) as info:
        load_splits(f"dicom:{tmp_path / 'd'}", image_size=16, labels=tmp_path / "labels.csv")
    assert_swallowed(str(info.value), "labels.csv", "note")


def test_a_dicom_labels_file_with_a_multi_line_note_loads_every_row(tmp_path: Path, rng: np.random.Generator
                                                                    ) -> None:
    rows = dicom_rows(tmp_path / "d", rng)
    (tmp_path / "labels.csv").write_text(csv_text(["path", "label", "note"], with_note(rows)))
    s = load_splits(f"dicom:{tmp_path / 'd'}", image_size=16, labels=tmp_path / "labels.csv")
    assert total(s) == ROWS


def test_a_line_break_in_a_labels_subgroup_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = [[*r[:2], "site1"] for r in dicom_rows(tmp_path / "d", rng)]
    rows[4][2] = '"site1\n"'
    (tmp_path / "labels.csv").write_text(csv_text(["path", "label", "site"], rows))
    with pytest.raises(DataError, match=r"labels\.csv data row 5 \(line 6\), column 'site', has a quote .* opens "
                                        r"on line 6 and closes on line 7 \(a column dpaudit reads"):
        load_splits(f"dicom:{tmp_path / 'd'}", image_size=16, labels=tmp_path / "labels.csv")


# ------------------------------------------------------------------------------------------ NIfTI labels files


def nifti_rows(root: Path, rng: np.random.Generator) -> list[list[str]]:
    rows = []
    for i in range(ROWS):
        nifti_file(root / f"img{i}.nii.gz", rng.random((8, 8, 1)).astype(np.float32))
        rows.append([f"img{i}.nii.gz", str(i % 2), f"SECRET-{i}", "none"])
    return rows


NIFTI_HEADER = ["file", "label", "patient_id", "note"]


def test_a_nifti_labels_file_with_swallowed_rows_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = nifti_rows(tmp_path, rng)
    (tmp_path / "labels.csv").write_text(csv_text(NIFTI_HEADER, swallowing(rows, 2, 2)))
    with pytest.raises(DataError) as info:
        load_splits(f"nifti:{tmp_path}", image_size=16)
    assert_swallowed(str(info.value), "labels.csv", "patient_id")


def test_a_nifti_labels_file_with_a_multi_line_note_loads_every_row(tmp_path: Path, rng: np.random.Generator
                                                                    ) -> None:
    rows = nifti_rows(tmp_path, rng)
    (tmp_path / "labels.csv").write_text(csv_text(NIFTI_HEADER, with_note(rows)))
    assert total(load_splits(f"nifti:{tmp_path}", image_size=16)) == ROWS


# -------------------------------------------------------------------------------------------- HAM10000 metadata

HAM_HEADER = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "note"]


def ham_rows(root: Path, rng: np.random.Generator) -> list[list[str]]:
    rows = []
    for i in range(ROWS):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / f"ISIC_{i:07d}.jpg")
        rows.append([f"HAM_{i:07d}", f"ISIC_{i:07d}", "mel" if i % 2 else "nv", "histo", "50", "male", "back",
                     "none"])
    return rows


def test_ham10000_metadata_with_swallowed_rows_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = ham_rows(tmp_path, rng)
    (tmp_path / "HAM10000_metadata.csv").write_text(csv_text(HAM_HEADER, swallowing(rows, 6, 6)))
    with pytest.raises(DataError) as info:
        load_splits("ham10000", data_dir=tmp_path, image_size=16)
    assert_swallowed(str(info.value), "HAM10000_metadata.csv", "localization")


def test_ham10000_metadata_with_a_multi_line_note_loads_every_row(tmp_path: Path, rng: np.random.Generator
                                                                  ) -> None:
    rows = ham_rows(tmp_path, rng)
    (tmp_path / "HAM10000_metadata.csv").write_text(csv_text(HAM_HEADER, with_note(rows)))
    assert total(load_splits("ham10000", data_dir=tmp_path, image_size=16)) == ROWS


def test_a_line_break_in_a_ham10000_column_dpaudit_reads_is_refused(tmp_path: Path, rng: np.random.Generator
                                                                    ) -> None:
    rows = ham_rows(tmp_path, rng)
    rows[0][5] = '"male\n"'
    (tmp_path / "HAM10000_metadata.csv").write_text(csv_text(HAM_HEADER, rows))
    with pytest.raises(DataError, match=r"HAM10000_metadata\.csv data row 1 \(line 2\), column 'sex', has a quote"):
        load_splits("ham10000", data_dir=tmp_path, image_size=16)


# ------------------------------------------- rule 3 on evidence: ragged files, notes whose lines hold commas

WORDS = ["pain", "swelling", "redness", "fever", "cough", "nausea", "rash", "itch", "fatigue"]


def findings(columns: int, last: bool) -> str:
    """A quoted two-line note, one of whose lines lists findings with as many commas as a row has delimiters
    (``columns`` - 1): the last line, or the first."""
    listed = ", ".join(WORDS[:columns])
    return f'"{listed}\nReviewed by a second reader."' if not last else f'"Findings:\n{listed}"'


def ragged_swallowing(rows: list[list[str]]) -> list[list[str]]:
    """The rows without their (empty) trailing note cell, but data row 5 whose note opens a quote (``,"first``) that a
    stray quote at the end of data row 8 closes: data rows 6-8 (lines 7-9) are swallowed by one note cell, and
    each of their lines holds one delimiter fewer than the header."""
    rows = [list(r[:-1]) for r in rows]
    rows[4].append('"first')
    rows[7][-1] += '"'
    return rows


def assert_ragged_swallowed(message: str, file: str) -> None:
    assert "\n" not in message and "Traceback" not in message
    assert f"{file} data row 5 (line 6), column 'note'" in message, message
    assert "opens on line 6 and closes on line 9, and the 2 line(s) between them" in message, message
    assert "reads as a row of its own" in message, message
    assert "SECRET" not in message and "img" not in message and "ISIC" not in message


def test_a_ragged_file_with_fewer_delimiters_per_row_is_still_read_as_rows(tmp_path: Path) -> None:
    """The fewest delimiters of the file's single-line rows, not the header's, make an embedded line a candidate."""
    path = tmp_path / "m.csv"
    path.write_text('path,label,sex,note\na.png,0,F\nb.png,1,F,"x\nc.png,0,M\nd.png,1,F"\ne.png,0,M\n')
    for keys in [(), [RowKey("path", base=tmp_path)]]:
        with pytest.raises(DataError, match=r"m\.csv data row 2 \(line 3\), column 'note', has a quote .* opens on "
                                            r"line 3 and closes on line 5"):
            read_table(path, "labels", keys)


def test_a_note_line_with_a_rows_delimiters_is_judged_by_the_key_column(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(csv_text(["path", "label", "note"], [["a.png", "0", "none"], ["b.png", "1", findings(3, True)]]))
    with pytest.raises(DataError, match=r"holds as many delimiters as a row"):  # no key: the delimiters decide
        read_table(path, "labels")
    table = read_table(path, "labels", [RowKey("path", base=tmp_path)])
    assert table.rows[1]["note"] == "Findings:\npain, swelling, redness"
    assert table.spanning == (Spanning(2, "note", 3, 4),)
    with pytest.raises(DataError, match=r"holds as many delimiters as a row"):  # no key in the header: likewise
        read_table(path, "labels", [RowKey("file", base=tmp_path)])


@pytest.mark.parametrize(("key", "cell", "row"), [
    (RowKey("path", base=Path(".")), "pain", False),
    (RowKey("path"), "c.png", True),  # the other rows' extension
    (RowKey("path"), "C.PNG", True),
    (RowKey("path"), "c7", True),  # the shape of a row's path without extension ('b2')
    (RowKey("path"), "see a.png, left", False),  # not an extension: it holds a space
    (RowKey("image_id", pattern=r"ISIC_\d+"), "ISIC_0024306", True),
    (RowKey("image_id", pattern=r"ISIC_\d+"), "nausea", False),
])
def test_what_looks_like_a_key_columns_value(key: RowKey, cell: str, row: bool) -> None:
    assert key.test(["a.png", "b2", ""])(cell) is row


def test_a_path_cell_naming_an_existing_file_looks_like_a_row(tmp_path: Path) -> None:
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "ct").write_bytes(b"")
    looks_like = RowKey("path", base=tmp_path).test(["a.dcm"])
    assert looks_like("scans/ct") and looks_like("scans\\ct") and not looks_like("scans/mr")


SEX_HEADER = ["path", "label", "patient_id", "sex", "note"]


def with_sex(rows: list[list[str]]) -> list[list[str]]:
    return [[*r[:-1], "F" if i % 2 else "M", r[-1]] for i, r in enumerate(rows)]


def test_a_ragged_manifest_with_swallowed_rows_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = with_sex(manifest_rows(tmp_path, rng))
    (tmp_path / "m.csv").write_text(csv_text(SEX_HEADER, ragged_swallowing(rows)))
    with pytest.raises(DataError) as info:
        load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=16)
    assert_ragged_swallowed(str(info.value), "m.csv")


def test_swallowed_rows_shorter_than_every_row_left_are_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    """The key column decides, not the delimiters: here only the swallowed rows omit their trailing note cell."""
    rows = with_sex(manifest_rows(tmp_path, rng))
    short = ragged_swallowing(rows)
    rows = [r if 4 <= i <= 7 else [*short[i], "none"] for i, r in enumerate(short)]
    (tmp_path / "m.csv").write_text(csv_text(SEX_HEADER, rows))
    with pytest.raises(DataError) as info:
        load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=16)
    assert_ragged_swallowed(str(info.value), "m.csv")


def test_a_ragged_manifest_without_a_swallowing_quote_loads_every_row(tmp_path: Path, rng: np.random.Generator
                                                                       ) -> None:
    rows = [r[:-1] for r in with_sex(manifest_rows(tmp_path, rng))]
    rows[4].append(findings(len(SEX_HEADER), True))
    (tmp_path / "m.csv").write_text(csv_text(SEX_HEADER, rows))
    assert total(load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=16)) == ROWS


@pytest.mark.parametrize("last", [True, False])
def test_a_manifest_note_listing_findings_with_commas_loads_every_row(tmp_path: Path, rng: np.random.Generator,
                                                                      last: bool) -> None:
    rows = with_sex(manifest_rows(tmp_path, rng))
    rows[4][-1] = findings(len(SEX_HEADER), last)
    (tmp_path / "m.csv").write_text(csv_text(SEX_HEADER, rows))
    assert total(load_splits(f"csv:{tmp_path / 'm.csv'}", image_size=16)) == ROWS


def test_a_ragged_dicom_labels_file_with_swallowed_rows_is_refused(tmp_path: Path, rng: np.random.Generator
                                                                   ) -> None:
    rows = [[*r[:2], "F", "none"] for r in dicom_rows(tmp_path / "d", rng)]
    (tmp_path / "labels.csv").write_text(csv_text(["path", "label", "sex", "note"], ragged_swallowing(rows)))
    with pytest.raises(DataError) as info:
        load_splits(f"dicom:{tmp_path / 'd'}", image_size=16, labels=tmp_path / "labels.csv")
    assert_ragged_swallowed(str(info.value), "labels.csv")


@pytest.mark.parametrize("last", [True, False])
def test_a_dicom_labels_note_listing_findings_with_commas_loads_every_row(tmp_path: Path, rng: np.random.Generator,
                                                                          last: bool) -> None:
    rows = [[*r[:2], "F", "none"] for r in dicom_rows(tmp_path / "d", rng)]
    rows[4][-1] = findings(4, last)
    (tmp_path / "labels.csv").write_text(csv_text(["path", "label", "sex", "note"], rows))
    s = load_splits(f"dicom:{tmp_path / 'd'}", image_size=16, labels=tmp_path / "labels.csv")
    assert total(s) == ROWS


NIFTI_SEX_HEADER = ["file", "label", "patient_id", "sex", "note"]


def test_a_ragged_nifti_labels_file_with_swallowed_rows_is_refused(tmp_path: Path, rng: np.random.Generator
                                                                   ) -> None:
    rows = with_sex(nifti_rows(tmp_path, rng))
    (tmp_path / "labels.csv").write_text(csv_text(NIFTI_SEX_HEADER, ragged_swallowing(rows)))
    with pytest.raises(DataError) as info:
        load_splits(f"nifti:{tmp_path}", image_size=16)
    assert_ragged_swallowed(str(info.value), "labels.csv")


@pytest.mark.parametrize("last", [True, False])
def test_a_nifti_labels_note_listing_findings_with_commas_loads_every_row(tmp_path: Path, rng: np.random.Generator,
                                                                          last: bool) -> None:
    rows = with_sex(nifti_rows(tmp_path, rng))
    rows[4][-1] = findings(len(NIFTI_SEX_HEADER), last)
    (tmp_path / "labels.csv").write_text(csv_text(NIFTI_SEX_HEADER, rows))
    assert total(load_splits(f"nifti:{tmp_path}", image_size=16)) == ROWS


def test_ragged_ham10000_metadata_with_swallowed_rows_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = ham_rows(tmp_path, rng)
    (tmp_path / "HAM10000_metadata.csv").write_text(csv_text(HAM_HEADER, ragged_swallowing(rows)))
    with pytest.raises(DataError) as info:
        load_splits("ham10000", data_dir=tmp_path, image_size=16)
    assert_ragged_swallowed(str(info.value), "HAM10000_metadata.csv")


@pytest.mark.parametrize("last", [True, False])
def test_a_ham10000_note_listing_findings_with_commas_loads_every_row(tmp_path: Path, rng: np.random.Generator,
                                                                      last: bool) -> None:
    rows = ham_rows(tmp_path, rng)
    rows[4][-1] = findings(len(HAM_HEADER), last)
    (tmp_path / "HAM10000_metadata.csv").write_text(csv_text(HAM_HEADER, rows))
    assert total(load_splits("ham10000", data_dir=tmp_path, image_size=16)) == ROWS
