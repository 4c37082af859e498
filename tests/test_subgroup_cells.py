"""Subgroup utility is published per split only for cells of at least MIN_SUBGROUP_UNITS privacy units there: a
value held by enough patients overall (so not merged at loading) may be held by one or two in the test split,
whose MCC or accuracy would be those patients' results. Such a cell is withheld everywhere (console, JSON, report):
no count, no metric, the reason."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dpaudit.audit.metrics import GroupMetrics, classify, subgroup_metrics
from dpaudit.cli.main import app
from dpaudit.data import load_splits
from dpaudit.errors import DataError
from dpaudit.identifiers import MIN_SUBGROUP_UNITS

runner = CliRunner()
SMALL = ["--image-size", "16", "--arch", "smallcnn", "--arch-args", '{"width": 4}', "--threads", "1"]


def test_a_cell_counts_patients_not_images() -> None:
    """4 patients with 5 images each: 20 images, withheld; 5 patients with one image each: published."""
    y = np.array([0, 1] * 10 + [0, 1, 0, 1, 0])
    groups = {"sex": np.array(["F"] * 20 + ["M"] * 5)}
    units = np.array([f"p{i // 5}" for i in range(20)] + [f"q{i}" for i in range(5)])
    f, m = subgroup_metrics(y, y, groups, 2, units=units, unit="patient", split="test")
    assert f == GroupMetrics.withheld_cell("sex", "F", f"fewer than {MIN_SUBGROUP_UNITS} patients in the test split")
    assert (f.n, f.units, f.mcc, f.accuracy) == (None, None, None, None)
    assert not m.withheld and (m.n, m.units, m.accuracy) == (5, 5, 1.0) and m.mcc == pytest.approx(1.0)


def test_subgroups_need_the_units() -> None:
    probs = np.tile([0.2, 0.8], (6, 1))
    with pytest.raises(DataError, match="units"):
        classify(np.ones(6, dtype=np.int64), probs, groups={"sex": np.array(["F"] * 6)})
    assert classify(np.ones(6, dtype=np.int64), probs).subgroups == ()  # no subgroups, nothing to count


def test_a_withheld_cell_holds_no_number() -> None:
    with pytest.raises(DataError, match="withheld_cell"):
        GroupMetrics("sex", "F", 3, 0.5, 0.5, withheld=True, reason="few")
    with pytest.raises(DataError, match="withheld_cell"):
        GroupMetrics("sex", "F", None, None, None)


def test_json_says_withheld_and_why_without_a_value() -> None:
    from dpaudit.audit.metrics import ClassificationMetrics
    from dpaudit.codec import encode, from_plain

    cell = GroupMetrics.withheld_cell("sex", "F", "fewer than 5 patients in the test split")
    m = ClassificationMetrics(n=10, mcc=0.5, balanced_accuracy=0.7, auroc=0.8, accuracy=0.7, loss=0.1,
                              subgroups=(cell, GroupMetrics("sex", "M", 8, 0.4, 0.75, units=6)))
    plain = encode(m)["subgroups"]
    assert plain[0] == {"group": "sex", "value": "F", "n": None, "mcc": None, "accuracy": None, "units": None,
                        "withheld": True, "reason": "fewer than 5 patients in the test split",
                        "undefined": dict.fromkeys(("n", "mcc", "accuracy", "units"),
                                                   "withheld: fewer than 5 patients in the test split")}
    assert plain[1]["withheld"] is False and plain[1]["mcc"] == 0.4 and "undefined" not in plain[1]
    assert from_plain(ClassificationMetrics, json.loads(json.dumps(encode(m)))).subgroups == m.subgroups


def test_a_cell_of_an_earlier_layout_is_withheld_when_it_holds_few_images() -> None:
    """Profiles written before units were counted: fewer than 5 images means fewer than 5 units."""
    from dpaudit.codec import from_plain

    old = {"group": "sex", "value": "F", "n": 3, "mcc": 0.2, "accuracy": 0.67}
    cell = from_plain(GroupMetrics, old)
    assert cell.withheld and cell.mcc is None and "fewer than 5 images" in (cell.reason or "")
    kept = from_plain(GroupMetrics, {**old, "n": 40})
    assert not kept.withheld and kept.n == 40 and kept.units is None


def _manifest(root: Path, rng: np.random.Generator) -> Path:
    """40 patients x 2 PNGs: sex F for 30 of them, M for 10 (>= 5 overall: kept at loading), label by parity."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = ["path,label,patient_id,sex"]
    for p in range(40):
        for j in range(2):
            name = f"im_{p}_{j}.png"
            Image.fromarray((rng.random((16, 16)) * 100 + 150 * (p % 2)).astype(np.uint8)).save(root / name)
            rows.append(f"{name},{'ab'[p % 2]},P{p},{'M' if p % 4 == 3 else 'F'}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def test_train_withholds_a_value_of_few_patients_in_the_test_split(tmp_path: Path,
                                                                  rng: np.random.Generator) -> None:
    manifest = _manifest(tmp_path / "data", rng)
    splits = load_splits(f"csv:{manifest}", image_size=16)
    test = splits.test
    held = {v: len(set(test.patient_ids[test.groups["sex"] == v].tolist())) for v in ("F", "M")}
    # the data as planned: M kept at loading (10 patients), held by fewer than 5 in the test split; F by more
    assert splits.unit == "patient" and set(splits.train.groups["sex"].tolist()) == {"F", "M"}
    assert held["M"] < MIN_SUBGROUP_UNITS <= held["F"], held
    out = tmp_path / "train"
    res = runner.invoke(app, ["train", "--dataset", f"csv:{manifest}", *SMALL, "--epsilon", "8", "--epochs", "1",
                              "--batch-size", "8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    console = " ".join(res.output.split())
    assert "subgroup sex = M (n < 5): withheld, fewer than 5 patients in the test split" in console
    assert f"subgroup sex = F (n = {int((test.groups['sex'] == 'F').sum())}): MCC" in console
    res = runner.invoke(app, ["train", "--dataset", f"csv:{manifest}", *SMALL, "--epsilon", "8", "--epochs", "1",
                              "--batch-size", "8", "--json"])
    assert res.exit_code == 0, res.output
    assert {k for k, _ in _metrics_blocks(json.loads(res.stdout))} == {"metrics", "val_metrics"}
    assert {k for p in out.rglob("*.json") for k, _ in _metrics_blocks(json.loads(p.read_text()))} == {
        "metrics", "val_metrics"}
    for written in (json.loads(res.stdout), *(json.loads(p.read_text()) for p in sorted(out.rglob("*.json")))):
        for key, metrics in _metrics_blocks(written):
            cells = {g["value"]: g for g in metrics["subgroups"]}
            split = "test" if key == "metrics" else "validation"
            if split == "test":
                assert cells["M"]["withheld"] is True and cells["F"]["withheld"] is False
                assert cells["F"]["units"] == held["F"] and cells["F"]["mcc"] is not None
            for g in cells.values():
                if g["withheld"]:
                    assert [g[k] for k in ("n", "units", "mcc", "accuracy")] == [None] * 4
                    assert g["reason"] == f"fewer than 5 patients in the {split} split"


def _metrics_blocks(obj: object) -> list[tuple[str, dict]]:
    """Every object with a 'subgroups' list of metric cells, at any depth, with its key."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict) and isinstance(v.get("subgroups"), list) and "mcc" in v:
                found.append((k, v))
            found += _metrics_blocks(v)
    elif isinstance(obj, list):
        for v in obj:
            found += _metrics_blocks(v)
    return found


def test_the_report_withholds_a_small_cell(tmp_path: Path) -> None:
    """The board report's subgroup table: a withheld cell shows '< 5', no MCC, and why; the others stay."""
    from dataclasses import replace

    from dpaudit.audit.report import render_report
    from tests.test_report import _text, synthetic_profile

    prof = synthetic_profile(with_mia_audit=False, seeds=1)
    reason = "fewer than 5 patients in the test split"
    train = tuple(replace(t, metrics=replace(t.metrics, subgroups=(
        t.metrics.subgroups[0], GroupMetrics.withheld_cell("sex", "male", reason)))) for t in prof.train)
    prof = replace(prof, train=train)
    pdf = render_report(prof, tmp_path / "report.pdf")
    text = " ".join(" ".join(_text(pdf.read_bytes())).split())
    table = text.split("Subgroups: utility and reconstruction risk")[1]
    male = table.split("sex = male")[1]
    assert male.count(reason) == male.count("< 5 withheld") == 5  # every budget's row
    assert not re.search(r"0\.\d{3} \(1\)", male)  # no MCC of the male cell
    assert "sex = female" in table and "700" in table
