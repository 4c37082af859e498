"""Faults a new user meets in the input: a CSV quote that is never closed, thousands of unreadable files, a run
stopped by the scheduler (SIGTERM)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from child_process import sigint_as_default
from medical_fixtures import dicom_file, nifti_file
from typer.testing import CliRunner

from dpaudit.cli.main import app
from dpaudit.errors import DataError
from dpaudit.tables import read_table

runner = CliRunner()

# ------------------------------------------------------------------------------------ unterminated quotes in a CSV


@pytest.mark.parametrize(("text", "where"), [
    ('path,label\n"unterminated,1\n', "data row 1 (line 2), column 'path',"),
    ('path,label\na.png,0\n\nb.png,"1\nc.png,0\n', "data row 2 (line 4), column 'label',"),
    ('path;label\na.png;"0\n', "data row 1 (line 2), column 'label',"),
    ('path,"label\na.png,0\n', "the header (line 1)"),
    ('path,label\n"a\nb.png",0\nc.png,"1', "data row 2 (line 4), column 'label',"),  # after a closed multi-line cell
])
def test_an_unterminated_quote_is_named_with_its_row(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_table(path, "csv:m.csv")
    message = str(info.value)
    assert message.startswith("csv:m.csv: m.csv has a quote") and where in message and "\n" not in message
    assert "Fix: close the quote" in message


def test_an_unterminated_quote_in_a_utf16_file_is_named_too(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes('path,label\n"x.png,1\n'.encode("utf-16"))
    with pytest.raises(DataError, match=r"m\.csv has a quote .* data row 1 \(line 2\)"):
        read_table(path, "labels")


@pytest.mark.parametrize(("text", "cells"), [
    ('path,label\n"a"b,1\n', ["ab", "1"]),  # text after a closing quote: strict mode refuses it
    ('path,label\n"a ""quoted"" name",1\n', ['a "quoted" name', "1"]),
    ('path,label,note\na,1,"b\nc"\n', ["a", "1"]),  # a quoted line break in a third column
    ('path,label\na"b,1\n', ['a"b', "1"]),  # a quote inside an unquoted cell is text
    ('path,label\n"a.png","1"', ["a.png", "1"]),  # no line break at the end
])
def test_quoting_read_correctly_today_still_reads(tmp_path: Path, text: str, cells: list[str]) -> None:
    path = tmp_path / "m.csv"
    path.write_text(text, newline="")
    table = read_table(path, "labels")
    assert [table.rows[0]["path"], table.rows[0]["label"]] == cells


def test_strict_mode_would_refuse_a_file_read_correctly_today() -> None:
    """Why the check does not use ``csv.reader(strict=True)``: it refuses ``"a"b``, which reads as Excel reads it."""
    with pytest.raises(csv.Error):
        list(csv.reader(io.StringIO('path,label\n"a"b,1\n'), strict=True))


def test_train_on_a_manifest_with_an_unterminated_quote_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text('path,label\n"unterminated,1\n')
    res = runner.invoke(app, ["train", "--dataset", f"csv:{bad}", "--non-private", "--epochs", "1"])
    assert res.exit_code == 2, res.output
    assert "bad.csv has a quote" in res.output and "data row 1 (line 2)" in res.output
    assert "no label" not in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_a_dicom_labels_file_with_an_unterminated_quote_is_one_line_exit_2(tmp_path: Path,
                                                                            rng: np.random.Generator) -> None:
    root = tmp_path / "dicom"
    for i in range(4):
        dicom_file(root / f"{i}.dcm", rng.integers(0, 4096, (8, 8)), patient=f"P{i}")
    labels = tmp_path / "labels.csv"
    labels.write_text('path,label\n0.dcm,0\n1.dcm,"1\n2.dcm,0\n3.dcm,1\n')
    res = runner.invoke(app, ["train", "--dataset", f"dicom:{root}", "--labels", str(labels), "--non-private",
                              "--epochs", "1"])
    assert res.exit_code == 2, res.output
    assert "labels.csv has a quote" in res.output and "data row 2 (line 3), column 'label'" in res.output
    assert "Traceback" not in res.output


# ------------------------------------------------------------------------------ thousands of unreadable files


def _write_dataset(kind: str, root: Path, rng: np.random.Generator, readable: int, unreadable: int) -> str:
    """``readable`` images and ``unreadable`` broken files in two classes; the patients are named SECRET-..."""
    from PIL import Image

    for i in range(readable + unreadable):
        cls = "ab"[i % 2]
        if kind == "folder":
            path = root / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if i < readable:
                Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(path)
        elif kind == "dicom":
            path = root / cls / f"IM{i}.dcm"
            dicom_file(path, rng.integers(0, 4096, (12, 12)).astype(np.uint16), patient=f"SECRET-{i // 2:03d}")
        else:
            path = root / cls / f"v{i}.nii.gz"
            nifti_file(path, rng.random((12, 12, 2)).astype(np.float32))
        if i >= readable:
            # a folder's file is no image; a DICOM file's pixel data and a NIfTI file's header are cut short
            cut = b"not an image" if kind == "folder" else path.read_bytes()[:-100 if kind == "dicom" else 40]
            path.write_bytes(cut)
    return f"{kind}:{root}"


@pytest.mark.parametrize("kind", ["folder", "dicom", "nifti"])
def test_many_unreadable_files_say_ten_lines_and_one_count(tmp_path: Path, rng: np.random.Generator,
                                                           kind: str) -> None:
    from dpaudit.images import PER_FILE_LINES

    dataset = _write_dataset(kind, tmp_path / "data", rng, readable=16, unreadable=PER_FILE_LINES + 27)
    res = runner.invoke(app, ["train", "--dataset", dataset, "--non-private", "--epochs", "1", "--arch",
                              "smallcnn", "--image-size", "16", "--batch-size", "4", "--privacy-unit", "image",
                              "--json"])
    assert res.exit_code == 0, res.output
    named = [line for line in res.stderr.splitlines() if line.startswith("warning: skipped an unreadable file")]
    assert len(named) == PER_FILE_LINES
    assert "warning: ... and 27 more unreadable files (counted in the dataset's notes)" in res.stderr
    assert f"{PER_FILE_LINES + 27} unreadable" in " ".join(json.loads(res.stdout)["data_notes"])  # exact
    assert "SECRET" not in res.stderr + res.stdout


def test_a_load_of_only_unreadable_files_says_the_count_before_its_error(tmp_path: Path) -> None:
    for i in range(40):
        (tmp_path / "a" / f"{i}.png").parent.mkdir(exist_ok=True)
        (tmp_path / "a" / f"{i}.png").write_bytes(b"not an image")
    res = runner.invoke(app, ["train", "--dataset", f"folder:{tmp_path}", "--non-private", "--epochs", "1"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 10 + 2 and "... and 30 more unreadable files" in lines[-2]
    assert lines[-1].startswith("error: ") and "40 unreadable" in lines[-1]


def test_the_library_outside_a_load_names_every_file() -> None:
    """The cap belongs to a data load (load_splits); a loader called on its own names every file it skips. The lines
    are collected by a handler of our own on the logger: whether the ``dpaudit`` logger propagates to the root (and so
    to pytest's caplog) depends on whether a CLI test ran before in the same process."""
    import logging

    from dpaudit.images import UnreadableImageError, per_file_lines, skipped_unreadable

    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    log = logging.getLogger("dpaudit.data.skipped")
    lines, level = Lines(), log.level
    log.addHandler(lines)
    log.setLevel(logging.WARNING)
    try:
        for i in range(15):
            skipped_unreadable(UnreadableImageError(f"f{i}"))
        assert len(lines.messages) == 15
        lines.messages.clear()
        with per_file_lines(), per_file_lines():  # nested: one count
            for i in range(15):
                skipped_unreadable(UnreadableImageError(f"g{i}"))
        assert lines.messages[-1] == "... and 5 more unreadable files (counted in the dataset's notes)"
        assert len(lines.messages) == 11
    finally:
        log.removeHandler(lines)
        log.setLevel(level)


# ------------------------------------------------------------------------------ a profile stopped by a signal

PROFILE_ARGS = ["--dataset", "demo", "--image-size", "16", "--max-images", "60", "--arch", "smallcnn", "--epsilons",
                "8", "--seeds", "1", "--epochs", "200", "--batch-size", "8", "--attack-images", "6",
                "--attack-epochs", "1", "--no-render", "--threads", "1"]  # trains long enough to be stopped


@pytest.mark.parametrize(("signame", "code", "said"), [("SIGTERM", 143, "stopped by SIGTERM"),
                                                       ("SIGINT", 130, "interrupted")])
def test_a_stopped_profile_says_how_to_resume(tmp_path: Path, signame: str, code: int, said: str) -> None:
    """A scheduler's stop (SIGTERM) is said as Ctrl-C (SIGINT) is, with how to resume; the exit codes stay the
    shell's 128 + the signal's number."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "p"
    proc = subprocess.Popen([sys.executable, "-m", "dpaudit.cli.main", "profile", *PROFILE_ARGS, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_default)
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:  # bounded: the command prints a few lines before it trains
            lines.append(line)
            if " train 0/" in line:
                break
        assert any(" train 0/" in x for x in lines), "".join(lines)
        proc.send_signal(getattr(signal, signame))
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, rest
    last = rest.strip().splitlines()[-1]
    assert last == f"{said}: the same command again resumes it (the tasks finished are kept in {out / 'tasks'})"
    assert "Traceback" not in rest


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 2.5, "3", True])
def test_check_int_refuses_what_is_no_integer_with_the_field_named(value: object) -> None:
    # int(nan) and int(inf) raised ValueError / OverflowError, a traceback for any untrusted number read through it
    from dpaudit.errors import DpAuditError, check_int

    with pytest.raises(DpAuditError, match="n_train"):
        check_int("n_train", value)  # type: ignore[arg-type]
