"""Subgroup values that name a few people are never published: a value held by fewer than MIN_SUBGROUP_UNITS
privacy units (patients; images when the data carry no patient ids) is reported as 'other' (small-cell
suppression), a column so merged that keeps fewer than two values is dropped; every column the name rules class as
a patient identifier is read as the patient (k never understated); a federated site is never a merged value."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dpaudit.cli.main import app
from dpaudit.data import load_splits, privacy_unit
from dpaudit.identifiers import MIN_SUBGROUP_UNITS, OTHER, is_patient_id_column, small_cells, subgroup_name

runner = CliRunner()
#: In every planted value (any case): searched for in everything a run writes.
PLANTED = "zyqx"
PATIENTS, PER_PATIENT = 24, 3
SMALL = ["--image-size", "16", "--arch", "smallcnn", "--arch-args", '{"width": 4}', "--threads", "1"]


def _manifest(root: Path, rng: np.random.Generator, columns: list[str],
              cells: Callable[[int, int], list[str]]) -> Path:
    """24 patients x 3 PNGs (label by patient parity), ``path,label,COLUMNS``: ``cells(p, j)`` gives patient p's
    image j its cells."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = [",".join(["path", "label", *columns])]
    for p in range(PATIENTS):
        for j in range(PER_PATIENT):
            name = f"im_{p}_{j}.png"
            Image.fromarray((rng.random((16, 16)) * 100 + 150 * (p % 2)).astype(np.uint8)).save(root / name)
            rows.append(",".join([name, "ab"[p % 2], *cells(p, j)]))
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def _groups(splits) -> dict[str, set[str]]:
    parts = (splits.train, splits.val, splits.test)
    return {g: set().union(*(set(p.groups[g].tolist()) for p in parts)) for g in splits.train.groups}


def _no_planted(*texts: str) -> None:
    for text in texts:
        assert PLANTED not in text.casefold(), text[max(0, text.casefold().find(PLANTED) - 200):][:400]


def test_small_cells_count_units_not_images() -> None:
    units = [f"p{i // 3}" for i in range(30)]  # 10 patients x 3 images
    values = [f"v{i // 12}" for i in range(30)]  # v0: 4 patients (12 images), v1: 4 patients, v2: 2 patients
    assert small_cells(values, units) == {"v0", "v1", "v2"}
    assert small_cells(["s"] * 15, [f"p{i}" for i in range(15)]) == set()
    assert small_cells(["unknown", OTHER], ["p1", "p2"]) == set() and MIN_SUBGROUP_UNITS == 5


def test_a_subgroup_value_of_few_images_is_not_published_without_patient_ids(tmp_path: Path,
                                                                               rng: np.random.Generator) -> None:
    """No patient column, a site per person (3 images each): each value is held by 3 units (images), so every
    value is merged and the site is not reported; no value reaches the console, the JSON or metrics.json."""
    manifest = _manifest(tmp_path / "data", rng, ["site"], lambda p, j: [f"zyqxDoe{p}"])
    splits = load_splits(f"csv:{manifest}", image_size=16)
    assert splits.unit == "image" and _groups(splits) == {}
    assert "subgroup 'site': 24 value(s) held by fewer than 5 images each reported as 'other (small groups)' (small-cell " \
           "suppression: such a value singles out its images)" in splits.notes
    assert "subgroup 'site' not reported: fewer than 2 of its values are held by 5 images or more" in splits.notes
    out = tmp_path / "train"
    res = runner.invoke(app, ["train", "--dataset", f"csv:{manifest}", *SMALL, "--epsilon", "8", "--epochs", "1",
                              "--batch-size", "8", "--privacy-unit", "image", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["metrics"]["subgroups"] == []
    _no_planted(res.output, *(p.read_text() for p in sorted(out.rglob("*.json"))))


@pytest.mark.parametrize(("cells", "reported"), [
    (lambda p: f"zyqxFamily{p // 2}", None),  # 2 patients per value: all merged, the site dropped
    (lambda p: "zyqxRareDoe" if p in (1, 3, 5) else "common", None),  # one common value beside 'other': dropped
    # two rare values beside three shared ones (so not an identifier by content): the rare ones merged
    (lambda p: f"zyqxDoe{p}" if p in (1, 3) else "ABC"[p % 3], {"A", "B", "C", OTHER}),
])
def test_a_subgroup_value_of_few_patients_is_reported_as_other(tmp_path: Path, rng: np.random.Generator,
                                                               cells: Callable[[int], str],
                                                               reported: set[str] | None) -> None:
    manifest = _manifest(tmp_path / "data", rng, ["patient_id", "site"], lambda p, j: [f"P{p}", cells(p)])
    splits = load_splits(f"csv:{manifest}", image_size=16)
    assert splits.unit == "patient" and privacy_unit(splits).records_per_patient == PER_PATIENT
    assert _groups(splits).get("site") == reported
    assert any(n.startswith("subgroup 'site': ") and "reported as 'other (small groups)'" in n for n in splits.notes)
    _no_planted(*splits.notes, str(_groups(splits)))


def test_an_age_outside_human_range_or_not_a_number_is_unknown(tmp_path: Path, rng: np.random.Generator) -> None:
    """420 (a typo), -3 (a placeholder), 999Y (a DICOM Age String of 999 years), inf, 1e400 (inf as a float) and
    'forty' (text) are 'unknown' and counted; 'nan' and 'NA' are missing values (pandas', R's): 'unknown', not
    counted. Patients 8 and up are 44 to 89 years old: banded. Nothing else may reach a band."""
    ages = {0: "420", 1: "-3", 2: "999Y", 3: "inf", 4: "1e400", 5: "forty", 6: "nan", 7: "NA"}
    manifest = _manifest(tmp_path / "data", rng, ["patient_id", "age"],
                         lambda p, j: [f"P{p}", ages.get(p, str(20 + 3 * p))])
    splits = load_splits(f"csv:{manifest}", image_size=16)
    parts = (splits.train, splits.val, splits.test)
    band = {pid: g for part in parts for pid, g in zip(part.patient_ids, part.groups["age_band"], strict=True)}
    assert sorted(band.values()).count("unknown") == 8  # one patient each: ids are pseudonyms, so count
    assert set(band.values()) == {"unknown", "40-59", "60+"}
    assert f"{6 * PER_PATIENT} age value(s) outside [0, 130] years (or not finite, or not a number) read as " \
           "'unknown'" in splits.notes


#: Spellings of a patient identifier column not in the exact list before, and names holding a patient-id part.
PATIENT_SPELLINGS = ["PatientID_1", "patient_id_hash", "subgroup_patient_id", "PID", "Patient-Nr", "Patienten-ID",
                     "pseudonym", "record_id", "sub_id", "NHS No", "Krankenversicherungsnummer"]


@pytest.mark.parametrize("column", PATIENT_SPELLINGS)
def test_every_patient_identifier_column_is_read_as_the_patient(column: str, tmp_path: Path,
                                                                rng: np.random.Generator) -> None:
    assert is_patient_id_column(column)
    manifest = _manifest(tmp_path / "data", rng, [f'"{column}"', "site"], lambda p, j: [f"zyqx{p}", "AB"[p // 12]])
    splits = load_splits(f"csv:{manifest}", image_size=16)
    assert splits.unit == "patient" and privacy_unit(splits).records_per_patient == PER_PATIENT  # k = 3, not 1
    assert _groups(splits) == {"site": {"A", "B"}}
    _no_planted(*splits.notes, str(np.concatenate([splits.train.patient_ids, splits.test.patient_ids]).tolist()))


def test_an_issuer_is_not_read_as_the_patient() -> None:
    assert not is_patient_id_column("IssuerOfPatientID") and not is_patient_id_column("issuer_of_patient_id")


@pytest.mark.usefixtures("library_log")
def test_a_dropped_column_repeating_across_images_is_warned_about(tmp_path: Path, rng: np.random.Generator,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Image-level data (no patient column) with a column 'ref' holding each patient's value on every image: it
    may name the patient, so a note and a warning say so (the column's name only), and k stays 1 as stated."""
    manifest = _manifest(tmp_path / "data", rng, ["ref", "site"], lambda p, j: [f"zyqx{p}", "AB"[p // 12]])
    splits = load_splits(f"csv:{manifest}", image_size=16)
    said = ("column 'ref' of the manifest repeats its values across images: if it names the patient, rename it "
            "patient_id (each of its values one patient); as it is, every image is its own unit (k = 1)")
    assert splits.unit == "image" and said in splits.notes
    assert any(said in r.getMessage() for r in caplog.records)
    _no_planted(*splits.notes, *(r.getMessage() for r in caplog.records))
    # with a patient column the data are patient-level: no such warning
    manifest = _manifest(tmp_path / "with", rng, ["patient_id", "ref"], lambda p, j: [f"P{p}", f"zyqx{p}"])
    assert not any("repeats its values" in n for n in load_splits(f"csv:{manifest}", image_size=16).notes)


def test_a_marker_ignores_case_and_punctuation_and_a_bare_marker_is_told_to_name_one(
        tmp_path: Path, rng: np.random.Generator) -> None:
    assert subgroup_name("Subgroup Site") == "Site" and subgroup_name("subgroup-scanner") == "scanner"
    manifest = _manifest(tmp_path / "data", rng, ["patient_id", "Subgroup Site", "subgroup_"],
                         lambda p, j: [f"P{p}", "AB"[p // 12], "x"])
    splits = load_splits(f"csv:{manifest}", image_size=16)
    assert _groups(splits) == {"Site": {"A", "B"}}
    note = next(n for n in splits.notes if n.startswith("column 'subgroup_'"))
    assert "name the subgroup after the marker (e.g. subgroup_site)" in note and "subgroup_subgroup" not in note


def _federated(manifest: Path, partition: str, clients: int) -> object:
    return runner.invoke(app, ["federated", "train", "--dataset", f"csv:{manifest}", *SMALL, "--clients",
                               str(clients), "--rounds", "1", "--epsilon", "8", "--batch-size", "4", "--partition",
                               partition, "--json"])


def test_a_partition_names_the_tables_column_and_refuses_merged_sites(tmp_path: Path,
                                                                      rng: np.random.Generator) -> None:
    manifest = _manifest(tmp_path / "data", rng, ["patient_id", "subgroup_hospital", "age"],
                         lambda p, j: [f"P{p}", "AB"[p // 12], str(30 + 2 * p)])
    # ages 30..76: 5 patients under 40, 10 of 40-59, 9 of 60+: three sites
    for partition, clients in (("column:subgroup_hospital", 2), ("column:hospital", 2), ("column:age", 3),
                               ("column:age_band", 3)):
        res = _federated(manifest, partition, clients)
        assert res.exit_code == 0, (partition, res.output)
    rare = _manifest(tmp_path / "rare", rng, ["patient_id", "site"],
                     lambda p, j: [f"P{p}", f"zyqxDoe{p}" if p in (1, 3, 5) else "ABC"[p % 3]])
    res = _federated(rare, "column:site", 4)
    line = res.output.strip().splitlines()[-1]
    assert res.exit_code == 2 and line.startswith("error: --partition column:site: column 'site' holds 'other (small groups)'")
    assert "Fix: pass --partition iid, or --partition column:NAME with a column whose every site holds 5 " \
           "patients or more." in line and "Traceback" not in res.output
    _no_planted(res.output)
    # a wrong --clients counts the sites, never lists them
    res = _federated(manifest, "column:hospital", 3)
    assert res.exit_code == 2 and "(2)" in res.output and "'A'" not in res.output and "A, B" not in res.output


def test_a_dicom_header_age_outside_human_range_is_unknown(tmp_path: Path, rng: np.random.Generator) -> None:
    from medical_fixtures import dicom_file

    for p in range(10):
        age = {0: "999Y", 1: "999Y", 2: "4X5Y"}.get(p, "045Y")
        with warnings.catch_warnings():  # pydicom warns when it writes the invalid Age String: it is the point
            warnings.simplefilter("ignore", UserWarning)
            dicom_file(tmp_path / "d" / ("ab"[p % 2]) / f"p{p}.dcm", (rng.random((8, 8)) * 1000).astype(np.uint16),
                       patient=f"P{p}", age=age)
    splits = load_splits(f"dicom:{tmp_path / 'd'}", image_size=8)
    # 999 years: out of range; 4X5Y: no Age String (PS3.5 AS is nnnD/W/M/Y)
    assert "3 age value(s) outside [0, 130] years (or not finite, or not a number) read as 'unknown'" in splits.notes
    assert _groups(splits)["age_band"] <= {"40-59", "unknown"}


def test_a_partition_on_a_subgroup_dropped_for_small_cells_names_no_value(tmp_path: Path,
                                                                          rng: np.random.Generator) -> None:
    one = _manifest(tmp_path / "one", rng, ["patient_id", "site"],
                    lambda p, j: [f"P{p}", "zyqxRareDoe" if p in (1, 3, 5) else "common"])
    res = _federated(one, "column:site", 2)
    line = res.output.strip().splitlines()[-1]
    assert res.exit_code == 2 and line.startswith("error: --partition column:site: the dataset has no metadata column")
    assert "fewer than 5 patients" in line and "rename the column subgroup_site" not in line
    assert "common" not in res.output.split("error:")[-1]
    _no_planted(res.output)


def test_a_partition_names_a_column_as_the_table_writes_it_spaces_included() -> None:
    """--partition column:NAME takes a table's column name as written ('Subgroup Scanner', a marker with a space);
    an empty name is refused."""
    from dpaudit.audit.federated.partition import parse_partition
    from dpaudit.errors import ConfigError

    assert parse_partition("column:Subgroup Scanner").column == "Subgroup Scanner"
    assert parse_partition("column: site ").column == "site"
    with pytest.raises(ConfigError, match="column:NAME"):
        parse_partition("column: ")
