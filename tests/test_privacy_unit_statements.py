"""The privacy unit is stated truthfully: a k given by hand is never below the data's, a profile whose unit is the
image on data whose patients have several images says so and gives the per-patient numbers beside, and every
epsilon says whether it is per image or per patient."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpaudit.cli.main import app

runner = CliRunner()

#: A small demo profile (the demo's patients have up to 4 images each in a 60-image split: see the histogram check).
SMALL_PROFILE = ["--dataset", "demo", "--image-size", "16", "--max-images", "60", "--arch", "smallcnn",
                 "--epsilons", "8", "--no-non-private", "--seeds", "1", "--epochs", "1", "--batch-size", "8",
                 "--attack-images", "4", "--attack-epochs", "1", "--decoder", "strong"]


def _demo_k() -> int:
    """The most training images one demo patient has in the small profile's split (the data's k)."""
    from dpaudit.audit.profile.run import _data_spec
    from dpaudit.audit.profile.schema import ProfileConfig
    from dpaudit.data import privacy_unit

    config = ProfileConfig(dataset="demo", image_size=16, max_images=60, arch="smallcnn", epsilons=(8.0,))
    return privacy_unit(_data_spec(config).load(), "patient").records_per_patient


def test_check_records_per_patient_refuses_a_k_below_the_data() -> None:
    from dpaudit.config import check_records_per_patient
    from dpaudit.errors import DataError

    assert check_records_per_patient(4, "patient", 4) == 4 and check_records_per_patient(6, "patient", 4) == 6
    assert check_records_per_patient(3, "image", 1) == 3  # no patient ids: the given k stands
    assert check_records_per_patient(1, "patient", 4, unit="image") == 1  # per image: true as such
    for k, unit in ((2, "patient"), (3, "patient"), (1, "patient")):
        with pytest.raises(DataError) as e:
            check_records_per_patient(k, "patient", 4, unit=unit)
        msg = str(e.value)
        assert msg.startswith("records_per_patient must be at least 4 ") and f"got {k}." in msg
        assert "--records-per-patient 4" in msg and "\n" not in msg
    with pytest.raises(DataError, match="slices one volume"):
        check_records_per_patient(2, "volume", 8)


def test_profile_refuses_records_per_patient_below_the_data(tmp_path: Path) -> None:
    k = _demo_k()
    assert k > 2  # the demo's patients have several images: a k of 2 is below the data's
    res = runner.invoke(app, ["profile", *SMALL_PROFILE, "--records-per-patient", "2", "--out", str(tmp_path / "p"),
                              "--no-render"])
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("error: --records-per-patient must be at least")
    assert f"at least {k}" in line and "got 2" in line and f"--records-per-patient {k}" in line
    # The demo's ids are lesion ids: the sentence names the patient, as every other one does, and says what it is.
    assert "the most images one patient (one lesion id: the data carry no patient ids) has" in line
    assert "one lesion has" not in line
    assert "Traceback" not in res.output
    assert not (tmp_path / "p" / "checkpoints").exists()  # refused before any training


def test_bounds_model_refuses_records_per_patient_below_the_checkpoints_data(tmp_path: Path) -> None:
    from dpaudit.checkpoint import CheckpointMeta, save_checkpoint
    from dpaudit.config import DpSgdConfig
    from dpaudit.models import build_model

    meta = CheckpointMeta(arch="smallcnn", num_classes=2, arch_args={"width": 8}, input_shape=(3, 16, 16),
                          dataset="demo", n_train=209, dp=DpSgdConfig(0.8162, 0.3, 4, 1.0, 1e-5),
                          extra={"privacy_unit": "patient", "data_unit": "patient", "records_per_patient": 4,
                                 "images_per_unit_max": 4, "images_per_unit_mean": 209 / 206, "n_units": 206,
                                 "images_per_unit_histogram": "[[1, 205], [4, 1]]"})
    path = save_checkpoint(tmp_path / "model.pt", build_model("smallcnn", num_classes=2, width=8), meta)
    for cmd in (["bounds"], ["calibrate", "--max-rero", "0.05"]):
        res = runner.invoke(app, [*cmd, "--model", str(path), "--records-per-patient", "2"])
        assert res.exit_code == 2, res.output
        assert "at least 4" in res.output and "got 2" in res.output and "--records-per-patient 4" in res.output
        assert "Traceback" not in res.output
        # At or above the data's k, and k = 1 per image, stand.
        for extra in (["--records-per-patient", "4"], ["--records-per-patient", "5"],
                      ["--privacy-unit", "image", "--records-per-patient", "1"]):
            res = runner.invoke(app, [*cmd, "--model", str(path), *extra, "--json"])
            assert res.exit_code == 0, res.output
    # Without a checkpoint nothing is known of the data: the given k stands.
    res = runner.invoke(app, ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100", "--n-train", "200",
                              "--records-per-patient", "2", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["records_per_patient"] == 2


@pytest.fixture(scope="module")
def image_unit_profile(tmp_path_factory):
    """A small demo profile with --privacy-unit image (its patients have several images), the PDF rendered."""
    out = tmp_path_factory.mktemp("img") / "p"
    res = runner.invoke(app, ["profile", *SMALL_PROFILE, "--privacy-unit", "image", "--max-rero", "0.05",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, res


def test_image_unit_on_patient_data_gives_the_per_patient_risk_beside(image_unit_profile) -> None:
    from pypdf import PdfReader

    from dpaudit.audit.profile.schema import Profile

    out, res = image_unit_profile
    k = _demo_k()
    prof = Profile.from_json((out / "profile.json").read_text())
    pu = prof.privacy()
    assert pu.unit == "image" and pu.records_per_patient == 1 and pu.data_records_per_patient == k > 1
    (b,) = prof.bounds
    (r,) = prof.patient_risk
    # Reference: the bounds command on the same mechanism with k given (its per-patient epsilon and worst case).
    ref = json.loads(runner.invoke(app, [
        "bounds", "--sigma", repr(b.noise_multiplier), "--q", repr(b.sampling_probability), "--steps", str(b.steps),
        "--delta", repr(b.target_delta), "--kappa", repr(b.kappa_train), "--records-per-patient", str(k),
        "--json"]).stdout)
    assert r.records_per_patient == k and r.kappa == b.kappa_train
    assert r.epsilon_patient == pytest.approx(ref["epsilon_patient"], rel=1e-9)
    assert r.rero_worst_case == pytest.approx(min(1.0, ref["rero"][0]["worst_case"]), rel=1e-6)
    # Direction (group privacy): per patient is weaker than per image.
    assert r.epsilon_patient > b.epsilon and r.rero_worst_case >= b.at_kappa_train().worst_case
    assert "per patient" in json.loads((out / "profile.json").read_text())["labels"]["patient_risk[]"]
    # Console: the unit line says a patient has k images, and the per-patient numbers are printed.
    text = " ".join(res.stdout.split())
    assert f"one patient has up to {k} images" in text and "ε ≤" in text and "per patient" in text
    pu = prof.privacy()
    assert pu.data_unit == "lesion" and "each lesion counts as one patient" in pu.describe()
    # The decision stays per image but says the unit was the image, with the per-patient numbers.
    assert "Privacy unit: the image (--privacy-unit image)" in prof.decision.reason
    assert "per patient" in prof.decision.reason
    # The checklist's privacy unit and epsilon items.
    assert f"one patient has up to {k} images" in prof.checklist.get("privacy_unit").value
    assert "per patient" in prof.checklist.get("epsilon_delta").value
    # The report: first page (board summary) and the checklist page.
    pages = [" ".join((p.extract_text() or "").split()) for p in PdfReader(out / "report.pdf").pages]
    assert f"one patient has up to {k} images" in pages[0] and "per patient" in pages[0]
    assert any("Privacy unit" in p and f"one patient has up to {k} images in the training split" in p
               for p in pages[1:])


def test_every_epsilon_label_names_its_unit(image_unit_profile, tmp_path: Path) -> None:
    out, _ = image_unit_profile
    labels = json.loads((out / "profile.json").read_text())["labels"]
    assert "per image" in labels["bounds[].epsilon"] and "per patient" in labels["bounds[].epsilon_patient"]
    assert "per image" in labels["bounds[], bounds_curve[] (ReRo worst_case and relaxed, MIA tpr)"]
    remedy = json.loads((out / "profile.json").read_text())["decision"]["remedy"]
    assert "per image" in remedy["labels"]["epsilon"] and "per patient" in remedy["labels"]["epsilon_patient"]
    assert "per-image" in remedy["labels"]["epsilon_target"]
    # profile --json (every task reused: no training)
    res = runner.invoke(app, ["profile", *SMALL_PROFILE, "--privacy-unit", "image", "--max-rero", "0.05",
                              "--out", str(out), "--no-render", "--json"])
    assert res.exit_code == 0, res.output

    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    summary = json.loads(res.stdout, parse_constant=refuse)  # strict JSON: no Infinity/NaN, in either file
    json.loads((out / "profile.json").read_text(), parse_constant=refuse)
    assert "per image" in summary["labels"]["levels[].epsilon"]
    assert "per patient" in summary["labels"]["levels[].epsilon_patient"]
    assert summary["patient_risk"][0]["records_per_patient"] == _demo_k()
    assert "per image" in summary["decision"]["remedy"]["labels"]["epsilon"]
    # train: the JSON label and the console line say per image
    args = ["train", "--dataset", "demo", "--image-size", "16", "--max-images", "60", "--arch", "smallcnn",
            "--epsilon", "8", "--epochs", "1", "--batch-size", "8", "--threads", "1", "--out", str(tmp_path / "t")]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    assert "per image" in json.loads(res.stdout)["labels"]["epsilon_achieved"]
    res = runner.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert any(line.startswith("privacy: epsilon") and " per image (target 8" in line
               for line in res.stdout.splitlines())


def test_bounds_rows_with_k_say_per_patient(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from dpaudit.cli import bounds_cmd

    def table(args: list[str]) -> list[str]:  # one line per row: a console wide enough for the table
        monkeypatch.setattr(bounds_cmd, "out", Console(file=io.StringIO(), width=250))
        assert runner.invoke(app, args).exit_code == 0
        return bounds_cmd.out.file.getvalue().splitlines()

    base = ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100", "--n-train", "200"]
    rows = [line for line in table([*base, "--records-per-patient", "3"]) if "ReRo" in line or "membership" in line]
    assert len(rows) == 8 and all("per patient of 3 images" in line for line in rows)
    rows = [line for line in table(base) if "ReRo" in line or "membership" in line or "epsilon" in line]
    assert rows and not any("per patient" in line for line in rows)
    assert all("per image" in line for line in rows if "epsilon" in line)
    obj = json.loads(runner.invoke(app, [*base, "--records-per-patient", "3", "--json"]).stdout)
    assert obj["labels"]["rero"].endswith("per patient of 3 images") and obj["labels"]["mia"].endswith("3 images")


def test_privacy_info_sentences_name_the_data_k() -> None:
    from dpaudit.audit.profile.schema import PrivacyInfo

    # A profile written before a k below the data's was refused: the sentence says it does not hold.
    old = PrivacyInfo("patient", 2, "patient", "records_per_patient", 144, 4, 1.45, ((1, 94), (2, 36), (4, 1)))
    assert "BELOW the data's" in old.describe() and "4 images" in old.describe()
    # --records-per-patient 1: the image is the unit, said as such, with the data's k beside.
    one = PrivacyInfo("image", 1, "patient", "records_per_patient", 144, 4, 1.45, ((1, 94), (4, 1)))
    assert one.image_unit_hides_patients and one.unit_flag == "--records-per-patient 1"
    assert "--records-per-patient 1" in one.describe() and "up to 4 images" in one.describe()
    # No patient ids: nothing hidden, nothing claimed.
    plain = PrivacyInfo("image", 1, "image", "default", 60, 1, 1.0, ((1, 60),))
    assert not plain.image_unit_hides_patients and plain.describe().endswith("the data carry no patient ids)")


def test_train_image_unit_gives_the_per_patient_epsilon_as_profile_and_bounds_do(image_unit_profile,
                                                                                   tmp_path: Path) -> None:
    from dpaudit.audit.profile.schema import Profile

    k = _demo_k()
    args = ["train", "--dataset", "demo", "--image-size", "16", "--max-images", "60", "--arch", "smallcnn",
            "--epsilon", "8", "--epochs", "1", "--batch-size", "8", "--threads", "1", "--privacy-unit", "image",
            "--out", str(tmp_path / "t")]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["privacy"]["unit"] == "image" and obj["privacy"]["records_per_patient"] == 1
    assert obj["epsilon_patient"] > obj["epsilon_achieved"]  # group privacy: per patient is weaker
    label = obj["labels"]["epsilon_patient"]
    assert "sound upper bound" in label and "per patient" in label and f"= {k} images" in label
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["epsilon_patient"] == obj["epsilon_patient"]
    # The profile of the same data and budget under --privacy-unit image: its patient_risk is the same number,
    # and so is the epsilon_patient of the profile's own training runs.
    prof = Profile.from_json((image_unit_profile[0] / "profile.json").read_text())
    (r,) = prof.patient_risk
    (t,) = prof.train
    assert r.records_per_patient == k and t.epsilon_patient == pytest.approx(r.epsilon_patient, rel=1e-12)
    assert obj["epsilon_patient"] == pytest.approx(r.epsilon_patient, rel=1e-12)
    # bounds --model: per image by default, saying how to get the per-patient numbers; --privacy-unit patient
    # gives train's epsilon_patient.
    ckpt = str(tmp_path / "t" / "model.pt")
    res = runner.invoke(app, ["bounds", "--model", ckpt])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "privacy unit: image (the checkpoint was trained with --privacy-unit image" in text
    assert f"up to {k} images" in text and "pass --privacy-unit patient" in text
    ref = json.loads(runner.invoke(app, ["bounds", "--model", ckpt, "--privacy-unit", "patient", "--json"]).stdout)
    assert ref["records_per_patient"] == k
    assert ref["epsilon_patient"] == pytest.approx(obj["epsilon_patient"], rel=1e-12)
    assert ref["epsilon"] == pytest.approx(obj["epsilon_achieved"], rel=1e-12)
    # The console states it, with the data's k.
    res = runner.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.stdout.splitlines() if x.startswith("privacy per patient: epsilon"))
    assert f"k = {k} images of one patient" in line and "sound upper bound" in line


def test_image_unit_states_the_per_patient_risk_once_where_the_decision_is(image_unit_profile, tmp_path) -> None:
    # Page 1 and the console said it up to three times (the decision's reason, the unit line and a box): once now,
    # in the decision, with a short unit line pointing there.
    from pypdf import PdfReader

    from dpaudit.audit.profile.schema import Profile
    from dpaudit.numfmt import upper

    out, res = image_unit_profile
    prof = Profile.from_json((out / "profile.json").read_text())
    (r,) = prof.patient_risk
    eps = f"ε ≤ {upper(r.epsilon_patient)}"
    # rendered here: another test profiles the same folder again with --no-render, which sets report.pdf aside
    res_pdf = runner.invoke(app, ["report", str(out), "-o", str(tmp_path / "r.pdf")])
    assert res_pdf.exit_code == 0, res_pdf.output
    page1 = " ".join((PdfReader(tmp_path / "r.pdf").pages[0].extract_text() or "").split())
    assert page1.count(eps) == 1 and page1.count("--privacy-unit image to decide per patient") == 1
    assert "the per-patient ones are in the decision above" in page1
    console = " ".join(res.stdout.split())
    assert console.count(eps) == 1 and "the per-patient ones are in the decision below" in console


def test_the_image_unit_on_slices_of_volumes_says_slice() -> None:
    """Wording only: the unit's value stays "image" (JSON, --privacy-unit image), the sentences say slice."""
    from dpaudit.audit.profile.schema import PrivacyInfo
    from dpaudit.config import ImagesPerUnit, PrivacyUnit

    info = PrivacyInfo("image", 1, data_unit="volume", chosen_by="option", n_units=4, max_images_per_unit=16)
    unit = PrivacyUnit("image", "volume", 1, ImagesPerUnit("volume", 4, 16, 16.0, ((16, 4),)), chosen_by="option")
    for line in (info.describe(), unit.describe()):
        assert line.startswith("privacy unit: slice (one 2-D slice is one record;") and "16 slices" in line
        assert "per slice" in line and "image" not in line.replace("--privacy-unit image", "")
    assert info.unit == "image" and info.record == "slice"
    # Images stay images.
    assert "privacy unit: image (" in PrivacyInfo("image", 1).describe()


def test_mia_audit_says_what_its_epsilon_protects_as_train_does() -> None:
    """The canary audit trains like train does: its accountant epsilon is per image, and the privacy-unit line
    (k, and the epsilon per patient when a patient has several images) is the one train prints, in the console
    and in JSON."""
    args = ["--dataset", "demo", "--image-size", "8", "--max-images", "160", "--arch", "smallcnn", "--arch-args",
            '{"width": 4}', "--sigma", "1.0", "--epochs", "1", "--batch-size", "8", "--threads", "1"]
    audit = runner.invoke(app, ["mia", "audit", *args, "--canaries", "30", "--json"])
    assert audit.exit_code == 0, audit.output
    obj = json.loads(audit.stdout)
    lines = obj["privacy_unit"]
    assert lines[0].startswith("privacy unit: patient") and "k = " in lines[0]
    assert obj["epsilon_patient"] is not None and obj["epsilon_patient"] > obj["accountant_epsilon"]
    assert lines[1].startswith("privacy per patient: epsilon") and "per image" in obj["labels"]["accountant_epsilon"]
    console = runner.invoke(app, ["mia", "audit", *args, "--canaries", "30"])
    assert console.exit_code == 0, console.output
    assert all(line in console.stdout for line in lines)
    assert "per image" in next(x for x in console.stdout.splitlines() if x.startswith("accountant epsilon"))
