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
from dpaudit.identifiers import (
    COMPLEMENT_REASON,
    MIN_SUBGROUP_UNITS,
    SITE_LABEL_CELL,
    withhold_histogram,
)

runner = CliRunner()
SMALL = ["--image-size", "16", "--arch", "smallcnn", "--arch-args", '{"width": 4}', "--threads", "1"]


def test_a_cell_counts_patients_not_images() -> None:
    """4 patients with 5 images each: 20 images, withheld; 5 patients with one image each: published. A third
    value (A, 5 images of 5 patients, the smallest published) is withheld as F's complement: the split's n and
    accuracy are published, and F's would follow by subtraction from them."""
    y = np.array([0, 1] * 10 + [0, 1, 0, 1, 0] * 2)
    groups = {"sex": np.array(["F"] * 20 + ["M"] * 5 + ["A"] * 5)}
    units = np.array([f"p{i // 5}" for i in range(20)] + [f"q{i}" for i in range(5)] + [f"r{i}" for i in range(5)])
    a, f, m = subgroup_metrics(y, y, groups, 2, units=units, unit="patient", split="test")
    assert f == GroupMetrics.withheld_cell("sex", "F", f"fewer than {MIN_SUBGROUP_UNITS} patients in the test split")
    assert (f.n, f.units, f.mcc, f.accuracy) == (None, None, None, None)
    assert a == GroupMetrics.withheld_cell("sex", "A", COMPLEMENT_REASON)
    assert not m.withheld and (m.n, m.units, m.accuracy) == (5, 5, 1.0) and m.mcc == pytest.approx(1.0)


def test_a_lone_withheld_value_takes_its_complement_with_it() -> None:
    """Two values: the small one's n and accuracy would be the split's less the other's, so both are withheld;
    two small values whose total leaves each more than one value need no complement."""
    y = np.array([0, 1] * 15)
    units = np.array([f"p{i}" for i in range(30)])
    two = subgroup_metrics(y, y, {"sex": np.array(["F"] * 27 + ["M"] * 3)}, 2, units=units, unit="patient")
    assert [(g.value, g.withheld, g.reason == COMPLEMENT_REASON) for g in two] == [("F", True, True),
                                                                                  ("M", True, False)]
    three = subgroup_metrics(y, y, {"site": np.array(["a"] * 25 + ["b"] * 3 + ["c"] * 2)}, 2, units=units,
                             unit="patient")
    assert [(g.value, g.withheld) for g in three] == [("a", False), ("b", True), ("c", True)]
    assert not any(g.reason == COMPLEMENT_REASON for g in three)


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
    # F is M's complement: the test split's n less F's would give M's
    assert f"subgroup sex = F (n withheld): withheld, {COMPLEMENT_REASON}" in " ".join(console.split())
    assert f"subgroup sex = F (n = {int((test.groups['sex'] == 'F').sum())})" not in console
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
                assert cells["M"]["withheld"] is True and cells["F"]["withheld"] is True
                assert cells["F"]["reason"] == COMPLEMENT_REASON and cells["F"]["units"] is None
            for g in cells.values():
                if g["withheld"]:
                    assert [g[k] for k in ("n", "units", "mcc", "accuracy")] == [None] * 4
                    assert g["reason"] in (f"fewer than 5 patients in the {split} split", COMPLEMENT_REASON)


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
    assert male.count("< 5 withheld") == 5  # every budget's row
    assert male.count(reason) == 1  # the reason once, under the table, not wrapped in every row
    assert not re.search(r"0\.\d{3} \(1\)", male)  # no MCC of the male cell
    assert "sex = female" in table and "700" in table


# -- attack success per subgroup --------------------------------------------------------------------------------


def test_attack_success_per_subgroup_counts_the_attacked_images_patients() -> None:
    """6 attacked images of group M held by 2 patients: withheld (no count, no successes, no interval), with its
    complement; 6 images of 6 patients in F: published with their unit count."""
    from types import SimpleNamespace

    import torch

    from dpaudit.audit.profile.tasks import _subgroup_success
    from dpaudit.data import ImageDataset

    images = torch.full((18, 1, 4, 4), 0.5)
    train = ImageDataset(images, torch.zeros(18, dtype=torch.long), ("a", "b"),
                         groups={"sex": np.array(["A"] * 6 + ["F"] * 6 + ["M"] * 6)},
                         patient_ids=np.array([f"a{i}" for i in range(6)] + [f"f{i}" for i in range(6)]
                                              + ["m0"] * 3 + ["m1"] * 3))
    result = SimpleNamespace(success_ssim=0.8, rows=[SimpleNamespace(decoder="strong", ssim=[0.9] * 18)])
    a, f, m = _subgroup_success(result, train, np.arange(18), "patient")
    # A (6 images, the smallest published group, first by value) is M's complement: the decoder's total
    # successes less the others' would give M's
    assert a.withheld and a.reason == COMPLEMENT_REASON and a.n_images is None
    assert not f.withheld and (f.n_images, f.successes, f.units) == (6, 6, 6)
    assert m.withheld and (m.n_images, m.successes, m.ci_low, m.ci_high, m.units) == (None,) * 5
    assert m.reason == "fewer than 5 patients in the attacked training images"


def test_an_attack_subgroup_of_an_earlier_layout_with_few_images_is_withheld() -> None:
    from dpaudit.audit.profile.schema import AttackSubgroup
    from dpaudit.codec import encode, from_plain

    old = {"decoder": "strong", "attribute": "sex", "value": "M", "n_images": 3, "successes": 1, "ci_low": 0.01,
           "ci_high": 0.9}
    cell = from_plain(AttackSubgroup, old)
    assert cell.withheld and cell.successes is None and "fewer than 5 images" in (cell.reason or "")
    assert encode(cell)["undefined"]["successes"].startswith("withheld: fewer than 5 images")
    assert not from_plain(AttackSubgroup, {**old, "n_images": 30}).withheld


def test_the_report_withholds_a_small_attack_subgroup(tmp_path: Path) -> None:
    """A group held by >= 5 patients in the test split but < 5 among the attacked images: its utility stays, its
    attack success is withheld ('< 5', no successes, no rate), the reason once under the table."""
    from dataclasses import replace

    from dpaudit.audit.profile.schema import AttackSubgroup
    from dpaudit.audit.report import render_report
    from tests.test_report import _text, synthetic_profile

    prof = synthetic_profile(with_mia_audit=False, seeds=1)
    reason = "fewer than 5 patients in the attacked training images"
    attacks = tuple(replace(a, subgroups=tuple(
        AttackSubgroup(g.decoder, g.attribute, g.value, None, None, None, None, withheld=True, reason=reason)
        if g.value == "male" else g for g in a.subgroups)) for a in prof.attacks)
    pdf = render_report(replace(prof, attacks=attacks), tmp_path / "report.pdf")
    text = " ".join(" ".join(_text(pdf.read_bytes())).split())
    male = text.split("Subgroups: utility and reconstruction risk")[1].split("sex = male")[1]
    assert re.search(r"\d+ 0\.\d{3} \(1\) < 5 – withheld withheld ?1", male), male[:300]
    assert male.count(reason) == 1


# -- federated sites --------------------------------------------------------------------------------------------


def _site_manifest(root: Path, rng: np.random.Generator) -> Path:
    """40 patients x 2 PNGs at sites A (32 patients) and B (8: >= 5 overall), label by parity."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = ["path,label,patient_id,site"]
    for p in range(40):
        for j in range(2):
            name = f"im_{p}_{j}.png"
            Image.fromarray((rng.random((16, 16)) * 100 + 150 * (p % 2)).astype(np.uint8)).save(root / name)
            rows.append(f"{name},{'ab'[p % 2]},P{p},{'B' if p >= 32 else 'A'}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def test_federated_train_withholds_a_site_of_few_test_patients(tmp_path: Path, rng: np.random.Generator) -> None:
    from dpaudit.audit.federated.partition import partition_splits

    manifest = _site_manifest(tmp_path / "data", rng)
    splits = load_splits(f"csv:{manifest}", image_size=16)
    test_idx = partition_splits(splits, "column:site", 2, seed=0)[2]  # FederatedConfig's default seed
    held = [len(set(splits.test.patient_ids[i].tolist())) for i in test_idx]
    small = [k for k, h in enumerate(held) if h < MIN_SUBGROUP_UNITS]
    assert len(small) == 1 and 0 < held[small[0]], held  # the data as planned: B is small in its test split
    (b,), (a,) = small, [k for k in range(2) if k not in small]
    args = ["federated", "train", "--dataset", f"csv:{manifest}", "--partition", "column:site", "--clients", "2",
            "--rounds", "1", "--epsilon", "8", *SMALL, "--batch-size", "8", "--baselines"]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    site = data["clients"][b]
    assert site["withheld"] is True and site["n_test"] is None and site["test_mcc"] is None
    assert site["reason"] == "fewer than 5 patients in the site's test split"
    assert site["undefined"]["test_mcc"] == "withheld: fewer than 5 patients in the site's test split"
    # the pooled test split's n is published: A's n_test goes with B's (its complement), A's MCC stays
    other = data["clients"][a]
    assert other["withheld"] is False and other["n_test"] is None and other["test_mcc"] is not None
    assert other["n_test_withheld"] == COMPLEMENT_REASON and other["undefined"]["n_test"] == COMPLEMENT_REASON
    assert data["global_metrics"]["n"] == len(splits.test)  # the total a subtraction would start from
    # the spread is over published sites only: one is left, so it is not defined
    assert data["mcc_spread"] is None and "published" in data["undefined"]["mcc_spread"]
    per_site = data["baselines"]["nonprivate_fedavg_per_client_mcc"]
    assert per_site[b] is None and per_site[a] is not None
    assert "withheld" in data["baselines"]["undefined"]["nonprivate_fedavg_per_client_mcc"]
    res = runner.invoke(app, [*args[:-1]])
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if line.lstrip().startswith(f"{b}  "))
    assert "< 5" in row and "withheld*" in row and str(held[b]) not in row.split()[2:3]
    row_a = next(line for line in res.output.splitlines() if line.lstrip().startswith(f"{a}  "))
    assert row_a.split()[2] == "x", row_a
    console = " ".join(res.output.split())
    assert f"* withheld (sites {b}): fewer than 5 patients in the site's test split" in console
    assert "N_test withheld at 2 of 2 sites: 1 as a small cell ('< 5', its test MCC too), 1 as the complement" in console
    assert "spread (max - min) over the 1 published sites" in console
    # site B's training split: each label held by at most 4 of its 8 patients, so no count of it is published
    train_idx = partition_splits(splits, "column:site", 2, seed=0)[0]
    for k, site in enumerate(data["clients"]):
        ids, y = splits.train.patient_ids[train_idx[k]], splits.train.labels.numpy()[train_idx[k]]
        counts = np.bincount(y, minlength=2).tolist()
        expected = withhold_histogram(counts, [len(set(ids[y == c].tolist())) for c in range(2)], "patient",
                                      SITE_LABEL_CELL)
        assert (tuple(site["label_histogram"]), tuple(site["label_histogram_withheld"])) == expected
        assert (None in site["label_histogram"]) == (k == b), site
    small = data["clients"][b]
    assert small["label_histogram"] == [None, None] and "label_histogram" in small["undefined"]
    assert "fewer than 5 patients in the site's training images of this label" in small["label_histogram_withheld"]
    assert "[< 5, < 5]" in row, row  # no count of B's labels
    assert "labels '< 5': fewer than 5 patients in the site's training images of this label" in console


def _published() -> tuple:
    """Two sites, both published (12 and 9 test images)."""
    from dpaudit.audit.profile.schema import FederatedSite

    return (FederatedSite(0, 40, 12, (20, 20), 0.2, 10, 7.9, 1 / 40, 0.3, 0.61),
            FederatedSite(1, 30, 9, (15, 15), 0.27, 10, 8.0, 1 / 30, 0.35, 0.42))


def _sites() -> tuple:
    """The two of :func:`_published` and a third withheld as a small cell: site 1's n_test (the next smallest)
    is withheld as its complement, its MCC published."""
    from dataclasses import replace

    from dpaudit.audit.profile.schema import FederatedSite

    reason = "fewer than 5 patients in the site's test split"
    first, second = _published()
    return (first, replace(second, n_test=None, n_test_withheld=COMPLEMENT_REASON),
            FederatedSite(2, 12, None, (6, 6), 0.67, 10, 8.0, 1 / 12, 0.5, None, withheld=True, reason=reason))


def test_the_report_withholds_a_small_site_and_spreads_over_published_sites(tmp_path: Path) -> None:
    from dataclasses import replace

    from dpaudit.audit.profile.schema import FederatedOutcome
    from dpaudit.audit.report import render_report
    from tests.test_report import _text, synthetic_profile

    fed = FederatedOutcome(8.0, "sample", "one image", "column:site", 3, 1, 1.1, 1e-5, 8.0, _sites(), 0.55,
                           0.61 - 0.42, (), 1.0)
    pdf = render_report(replace(synthetic_profile(with_mia_audit=False, seeds=1), federated=fed),
                        tmp_path / "report.pdf")
    text = " ".join(" ".join(_text(pdf.read_bytes())).split())
    page = text.split("Federated learning: privacy per site")[1]
    assert "withheld" in page and page.count("fewer than 5 patients in the site's test split") == 1
    assert "spread across sites (max – min) over the 2 published sites 0.190" in page


def test_a_federated_section_of_an_earlier_layout_withholds_small_sites_and_their_spread() -> None:
    from dpaudit.audit.profile.schema import FederatedOutcome
    from dpaudit.codec import encode, from_plain

    plain = encode(FederatedOutcome(8.0, "sample", "one image", "iid", 3, 1, 1.1, 1e-5, 8.0, _published(), 0.55,
                                    0.19, (), 1.0))
    for s in plain["sites"]:
        del s["withheld"], s["reason"], s["n_test_withheld"]
    plain["sites"].append({**plain["sites"][0], "client": 2, "n_test": 3, "test_mcc": 1.0})  # 3 images
    plain["mcc_spread"] = 1.0 - 0.42
    fed = from_plain(FederatedOutcome, plain)
    assert fed.sites[2].withheld and fed.sites[2].test_mcc is None and "fewer than 5 images" in fed.sites[2].reason
    assert fed.mcc_spread == pytest.approx(0.61 - 0.42) and not fed.sites[0].withheld
    # its complement too: site 1's n_test (9, the next smallest) would be the total less 12 and 3
    assert (fed.sites[1].n_test, fed.sites[1].n_test_withheld, fed.sites[1].test_mcc) == (None, COMPLEMENT_REASON,
                                                                                           0.42)
    assert fed.sites[0].n_test == 12


def test_a_published_undefined_mcc_reads_back_as_nan_and_a_withheld_one_as_none() -> None:
    """null means NaN (not defined) in a published cell or site and 'withheld' in a withheld one: both read back."""
    import math
    from dataclasses import replace

    from dpaudit.audit.federated.fedavg import ClientSummary
    from dpaudit.audit.profile.schema import FederatedSite
    from dpaudit.codec import dumps, loads

    cell = GroupMetrics("sex", "F", 6, float("nan"), 1.0, units=6)
    assert math.isnan(loads(GroupMetrics, dumps(cell)).mcc)
    site = ClientSummary(0, 10, 6, (5, 5), 1, 0.1, 10, 8.0, float("nan"))
    assert math.isnan(loads(ClientSummary, dumps(site)).test_mcc)
    small = replace(site, n_test=None, test_mcc=None, withheld=True, reason="fewer than 5 patients in the site's "
                                                                             "test split")
    assert loads(ClientSummary, dumps(small)) == small
    fed_site = replace(_sites()[0], test_mcc=float("nan"))
    assert math.isnan(loads(FederatedSite, dumps(fed_site)).test_mcc)
    assert loads(FederatedSite, dumps(_sites()[2])) == _sites()[2]


# -- a site's label histogram -----------------------------------------------------------------------------------

SMALL_LABEL = f"fewer than 5 patients in {SITE_LABEL_CELL}"


def test_a_label_of_few_patients_is_withheld_with_its_complement() -> None:
    """One small cell alone would follow from n_train by subtraction: the next smallest non-empty cell goes too,
    an empty one stays 0."""
    values, reasons = withhold_histogram([120, 0, 3, 40, 60], [60, 0, 2, 20, 30], "patient", SITE_LABEL_CELL)
    assert values == (120, 0, None, None, 60)
    assert reasons == (None, None, SMALL_LABEL, COMPLEMENT_REASON, None)
    # patients, not images: 20 images of 4 patients are withheld (the complement: the next smallest, 5 images of
    # 5 patients); 5 images of 5 patients alone are published
    assert withhold_histogram([20, 5, 50], [4, 5, 25], "patient", SITE_LABEL_CELL)[0] == (None, None, 50)
    assert withhold_histogram([20, 5, 50], [5, 5, 25], "patient", SITE_LABEL_CELL)[0] == (20, 5, 50)
    # two small cells whose total leaves each more than one value: no complement needed
    assert withhold_histogram([100, 1, 2], [50, 1, 2], "patient", SITE_LABEL_CELL)[0] == (100, None, None)
    # two small cells of one image each: their total (2) would give each (1): a complement joins them
    assert withhold_histogram([100, 1, 1], [50, 1, 1], "patient", SITE_LABEL_CELL)[0] == (None, None, None)
    # no small cell: all published, 0 included
    assert withhold_histogram([100, 0, 7], [50, 0, 5], "patient", SITE_LABEL_CELL) == ((100, 0, 7), (None,) * 3)


def test_no_withheld_cell_follows_from_the_total(rng: np.random.Generator) -> None:
    """For random histograms, every withheld cell can take more than one value given n_train, the published
    cells and each withheld non-empty cell's holding at least one image (an attacker's exact recovery fails)."""
    for _ in range(300):
        n = int(rng.integers(2, 5))
        held = rng.integers(0, 9, size=n)
        counts = [int(h * rng.integers(1, 3)) for h in held]
        values, reasons = withhold_histogram(counts, held.tolist(), "patient", SITE_LABEL_CELL)
        hidden = [i for i, v in enumerate(values) if v is None]
        assert all(values[i] == counts[i] for i in range(n) if i not in hidden)
        assert all((reasons[i] == SMALL_LABEL) == (0 < held[i] < MIN_SUBGROUP_UNITS) for i in range(n))
        if not hidden or len(hidden) == n:
            continue  # nothing withheld; or every cell, and n_train is all that is known
        rest = sum(counts) - sum(v for v in values if v is not None)
        # the values the withheld cells can take: each >= 1 (a complement of 0 only when nothing else was left);
        # cell j ranges over [low_j, rest - the others' lows], the others absorbing the remainder
        low = [0 if counts[i] == 0 else 1 for i in hidden]
        for j in range(len(hidden)):
            options = range(low[j], rest - (sum(low) - low[j]) + 1)
            assert len(options) > 1, (counts, held.tolist(), values)


def test_a_histogram_and_its_reasons_must_agree() -> None:
    from dpaudit.audit.federated.fedavg import ClientSummary

    with pytest.raises(DataError, match="label_histogram"):
        ClientSummary(0, 10, 6, (None, 5), 1, 0.1, 10, 8.0, 0.5)  # a null cell without its reason
    with pytest.raises(DataError, match="label_histogram"):
        ClientSummary(0, 10, 6, (5, 5), 1, 0.1, 10, 8.0, 0.5, label_histogram_withheld=(SMALL_LABEL, None))


def test_a_withheld_histogram_says_why_in_json_and_reads_back() -> None:
    from dataclasses import replace

    from dpaudit.audit.federated.fedavg import ClientSummary
    from dpaudit.audit.profile.schema import FederatedSite
    from dpaudit.codec import dumps, encode, loads

    site = ClientSummary(0, 50, 6, (None, None, 40), 1, 0.1, 10, 8.0, 0.5,
                         label_histogram_withheld=(SMALL_LABEL, COMPLEMENT_REASON, None))
    plain = encode(site)
    assert plain["label_histogram"] == [None, None, 40]
    assert plain["label_histogram_withheld"] == [SMALL_LABEL, COMPLEMENT_REASON, None]
    assert "withheld" in plain["undefined"]["label_histogram"] and "test_mcc" not in plain["undefined"]
    assert loads(ClientSummary, dumps(site)) == site
    published = ClientSummary(0, 50, 6, (10, 40), 1, 0.1, 10, 8.0, 0.5)
    assert published.label_histogram_withheld == (None, None) and "undefined" not in encode(published)
    assert loads(ClientSummary, dumps(published)) == published
    fed_site = replace(_sites()[0], label_histogram=(None, None, 15), label_histogram_withheld=(
        SMALL_LABEL, COMPLEMENT_REASON, None))
    assert loads(FederatedSite, dumps(fed_site)) == fed_site


def test_a_histogram_of_an_earlier_layout_is_withheld_by_image_counts() -> None:
    from dpaudit.audit.federated.fedavg import ClientSummary
    from dpaudit.audit.profile.schema import FederatedOutcome
    from dpaudit.codec import encode, from_plain

    plain = encode(FederatedOutcome(8.0, "sample", "one image", "iid", 3, 1, 1.1, 1e-5, 8.0, _published(), 0.55,
                                    0.19, (), 1.0))
    for s in plain["sites"]:
        del s["label_histogram_withheld"]
    plain["sites"][1]["label_histogram"] = [27, 3]  # 3 images: at most 3 patients
    fed = from_plain(FederatedOutcome, plain)
    assert fed.sites[0].label_histogram == (20, 20) and fed.sites[0].label_histogram_withheld == (None, None)
    assert fed.sites[1].label_histogram == (None, None)
    complement, small = fed.sites[1].label_histogram_withheld
    assert small.startswith("fewer than 5 images") and "predates" in small and complement == COMPLEMENT_REASON
    old = encode(ClientSummary(0, 30, 6, (28, 2), 1, 0.1, 10, 8.0, 0.5))
    del old["label_histogram_withheld"]
    assert from_plain(ClientSummary, old).label_histogram == (None, None)


def test_the_report_withholds_a_small_label_cell(tmp_path: Path) -> None:
    from dataclasses import replace

    from dpaudit.audit.profile.schema import FederatedOutcome
    from dpaudit.audit.report import render_report
    from tests.test_report import _text, synthetic_profile

    sites = _sites()
    sites = (replace(sites[0], label_histogram=(37, None, None), label_histogram_withheld=(
        None, SMALL_LABEL, COMPLEMENT_REASON)), *sites[1:])
    fed = FederatedOutcome(8.0, "sample", "one image", "column:site", 3, 1, 1.1, 1e-5, 8.0, sites, 0.55,
                           0.61 - 0.42, (), 1.0)
    pdf = render_report(replace(synthetic_profile(with_mia_audit=False, seeds=1), federated=fed),
                        tmp_path / "report.pdf")
    (tmp_path / "page.pdf").write_bytes(pdf.read_bytes())
    text = " ".join(" ".join(_text(pdf.read_bytes())).split())
    page = text.split("Federated learning: privacy per site")[1]
    assert "37/< 5/x" in page and "15/15" in page, page[:600]
    assert page.count(f"labels '< 5': {SMALL_LABEL}") == 1
    assert "'x': withheld as the complement" in page


# -- a site's n_test beside the pooled test split's n ----------------------------------------------------------


def test_a_lone_withheld_site_takes_its_complement_with_it() -> None:
    """The pooled test split's n is published: one withheld site's n_test would be n less the others'. The next
    smallest published site's n_test goes with it (marked 'x'); its MCC stays."""
    from dpaudit.identifiers import site_test_reasons

    small = "fewer than 5 patients in the site's test split"
    assert site_test_reasons([40, 3, 12, 25], [20, 2, 6, 12], "patient") == (None, small, COMPLEMENT_REASON, None)
    assert site_test_reasons([40, 0, 12], [20, 0, 6], "patient") == (None,) * 3  # none small: all published
    # two small sites of one image each: their total (2) gives each (1), so a complement joins them
    assert site_test_reasons([40, 1, 1], [20, 1, 1], "patient") == (COMPLEMENT_REASON, small, small)
    assert site_test_reasons([40, 2, 3], [20, 2, 3], "patient") == (None, small, small)


def test_no_withheld_site_follows_from_the_pooled_total_in_json_or_report(tmp_path: Path,
                                                                           rng: np.random.Generator) -> None:
    """Random federations: given the pooled test split's n and every published n_test, each withheld n_test can
    take more than one value (each withheld site holds at least one image). And end to end: the sites of
    profile.json (also an earlier file's, upgraded on load) and the report's site table leave the small site's
    count unrecoverable."""
    from dataclasses import replace

    from dpaudit.audit.profile.schema import FederatedOutcome
    from dpaudit.audit.report import render_report
    from dpaudit.codec import encode, from_plain
    from dpaudit.identifiers import site_test_reasons
    from tests.test_report import _text, synthetic_profile

    def recoverable(n_test: list[int], published: list[int | None]) -> bool:
        hidden = [n for n, p in zip(n_test, published, strict=True) if p is None]
        rest = sum(n_test) - sum(p for p in published if p is not None)  # what a subtraction leaves
        # exact recovery: one withheld site, or every withheld site forced to hold one image
        return len(hidden) == 1 or (len(hidden) > 1 and rest == len(hidden) and all(h > 0 for h in hidden))

    for _ in range(300):
        held = rng.integers(0, 9, size=int(rng.integers(2, 6)))
        n_test = [int(h * rng.integers(1, 3)) for h in held]
        reasons = site_test_reasons(n_test, held.tolist(), "patient")
        assert not recoverable(n_test, [None if r else n for n, r in zip(n_test, reasons, strict=True)]), n_test

    fed = FederatedOutcome(8.0, "sample", "one image", "column:site", 3, 1, 1.1, 1e-5, 8.0, _sites(), 0.55,
                           0.61 - 0.42, (), 1.0)
    n_test = [12, 9, 3]  # the sites' true counts; the pooled test split holds 24
    plain = encode(fed)
    assert not recoverable(n_test, [s["n_test"] for s in plain["sites"]])
    assert plain["sites"][1]["undefined"]["n_test"] == COMPLEMENT_REASON and plain["sites"][1]["test_mcc"] == 0.42
    # a file written before the complement: site 1's 9 is published beside the withheld site 2
    old = encode(replace(fed, sites=_published()))
    for s in old["sites"]:
        del s["n_test_withheld"]
    old["sites"].append(encode(_sites()[2]) | {"n_test_withheld": None})
    del old["sites"][2]["n_test_withheld"]
    assert recoverable(n_test, [s["n_test"] for s in old["sites"]])  # as written
    upgraded = from_plain(FederatedOutcome, old)
    assert upgraded.sites[1].n_test_withheld == COMPLEMENT_REASON
    assert not recoverable(n_test, [s["n_test"] for s in encode(upgraded)["sites"]])
    with pytest.raises(DataError, match="subtraction"):  # a lone withheld site is refused when built
        replace(fed, sites=(*_published(), _sites()[2]))

    prof = synthetic_profile(with_mia_audit=False, seeds=1)
    prof = replace(prof, federated=upgraded, dataset=replace(prof.dataset, n_test=sum(n_test)))
    text = _text(render_report(prof, tmp_path / "report.pdf").read_bytes())
    words = " ".join(" ".join(text).split())
    assert f"{sum(n_test)} test images" in words  # the total is printed
    page = words.split("Federated learning: privacy per site")[1]
    table = page.split("Test MCC", 1)[1].split("ε_k and ReRo")[0]
    cells = re.findall(r"(\d) (\d+) (\d+|x|< 5) \d+/\d+", table)  # Site, N_k, N_test, ... Labels
    assert cells == [("0", "40", "12"), ("1", "30", "x"), ("2", "12", "< 5")], table
    assert not recoverable(n_test, [12, None, None])
    assert "N_test withheld at 2 of 3 sites: 1 as a small cell ('< 5', its test MCC too), 1 as the complement" in page
