"""`dpaudit bounds` and `dpaudit calibrate` through typer's CliRunner."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpaudit.cli.main import app

runner = CliRunner()


def test_paper_example_human_output() -> None:
    # The README's example: epsilon 68.5204 (PLD at delta 8e-7), worst case / relaxed 76.02% / 52.03%, shown rounded
    # up (sound upper bounds never shown below their value): 68.53, 76.1%, 52.1%.
    res = runner.invoke(app, ["bounds", "--sigma", "0.34", "--q", "0.002", "--steps", "20000", "--delta", "8e-7",
                              "--kappa", "1e-6"])
    assert res.exit_code == 0, res.output
    assert "68.53" in res.output and "76.1%" in res.output and "52.1%" in res.output
    assert "sound upper bound" in res.output and "Assumptions" in res.output


def test_json_keys_and_values() -> None:
    res = runner.invoke(app, ["bounds", "--sigma", "1.0", "--q", "0.01", "--steps", "1000", "--kappa", "1e-3",
                              "--n-train", "100", "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    for key in ("noise_multiplier", "sampling_probability", "steps", "target_delta", "records_per_patient",
                "method", "epsilon", "epsilon_rdp", "rero", "mia"):
        assert key in obj
    assert [r["kappa"] for r in obj["rero"]] == [1e-3, 0.01]
    assert obj["rero"][0]["worst_case"] == pytest.approx(0.004068, rel=1e-3)  # spec table
    assert obj["rero"][0]["relaxed"] == pytest.approx(0.002293, rel=1e-3)
    assert [p["fpr"] for p in obj["mia"]["tpr_at_fpr"]] == [1e-5, 1e-4, 1e-3, 1e-2, 0.1]
    assert obj["epsilon"] < obj["epsilon_rdp"]


def test_roc_and_plot_files(tmp_path: Path) -> None:
    roc, png = tmp_path / "roc.csv", tmp_path / "gamma.png"
    res = runner.invoke(app, ["bounds", "--sigma", "1.0", "--q", "0.01", "--steps", "1000", "--n-candidates",
                              "1000", "--roc", str(roc), "--plot", str(png), "--json"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(roc.open()))
    assert rows[0].keys() == {"fpr", "tpr_worst_case", "tpr_relaxed", "label", "unit"}
    assert float(rows[-1]["fpr"]) == 1.0
    assert {(r["label"], r["unit"]) for r in rows} == {("sound upper bound", "per image")}
    # the TPRs are sound upper bounds: written at full precision (the float's repr), never rounded to nearest
    tprs = [r[c] for r in rows for c in ("tpr_worst_case", "tpr_relaxed")]
    assert all(repr(float(t)) == t for t in tprs) and any(len(t.lstrip("0.").replace(".", "")) > 9 for t in tprs)
    # with k images per patient the curve is per patient, and the file says so, as the JSON's labels do
    res = runner.invoke(app, ["bounds", "--sigma", "1.0", "--q", "0.01", "--steps", "1000", "--kappa", "1e-3", "--records-per-patient",
                              "3", "--roc", str(roc), "--json"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(roc.open()))
    assert {(r["label"], r["unit"]) for r in rows} == {("sound upper bound", "per patient of 3 images")}
    assert json.loads(res.stdout)["labels"]["mia"] == "sound upper bound, per patient of 3 images"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_edgeworth_method_and_patient_warning() -> None:
    res = runner.invoke(app, ["bounds", "--sigma", "1.66405", "--q", str(1 / 106), "--steps", "53000", "--delta",
                              "8e-7", "--n-train", "106", "--method", "edgeworth", "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert 100 * obj["rero"][0]["worst_case"] == pytest.approx(17.96, abs=0.005)  # seed paper Table 3
    assert 100 * obj["rero"][0]["relaxed"] == pytest.approx(3.68, abs=0.005)
    res = runner.invoke(app, ["bounds", "--sigma", "1.0", "--q", "0.01", "--steps", "100", "--kappa", "0.01",
                              "--records-per-patient", "3"])
    assert res.exit_code == 0 and "per patient" in res.output


def test_calibrate_json() -> None:
    res = runner.invoke(app, ["calibrate", "--max-rero", "0.05", "--q", "0.01", "--steps", "1000", "--kappa",
                              "1e-3", "--threat-model", "relaxed", "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert set(obj) == {"noise_multiplier", "sampling_probability", "steps", "kappa", "records_per_patient",
                        "privacy_unit", "target_delta", "epsilon", "epsilon_patient", "epsilon_target",
                        "threat_model", "max_rero", "achieved_rero",
                        "at_floor", "labels", "notes", "overrides", "phases"}
    assert obj["at_floor"] is False and obj["records_per_patient"] == 1 and obj["privacy_unit"] == "image"
    assert obj["target_delta"] == 8e-7 and len(obj["notes"]) == 1 and "N_train is not known" in obj["notes"][0]
    assert obj["labels"]["achieved_rero"] == "sound upper bound, per image"
    assert obj["phases"] == [[obj["noise_multiplier"], 0.01, 1000]]
    assert obj["achieved_rero"] <= obj["max_rero"] == 0.05 and obj["threat_model"] == "relaxed"


@pytest.mark.parametrize(("args", "flag"), [
    (["--sigma", "1", "--q", "1.5", "--steps", "10", "--kappa", "0.1"], "--q"),
    (["--sigma", "1", "--q", "0", "--steps", "10", "--kappa", "0.1"], "--q"),
    (["--sigma", "-1", "--q", "0.1", "--steps", "10", "--kappa", "0.1"], "--sigma"),
    (["--sigma", "1", "--q", "0.1", "--steps", "0", "--kappa", "0.1"], "--steps"),
    (["--sigma", "1", "--q", "0.1", "--steps", "10", "--kappa", "1.0"], "--kappa"),
    (["--sigma", "1", "--q", "0.1", "--steps", "10", "--kappa", "0"], "--kappa"),
    (["--sigma", "1", "--q", "0.1", "--steps", "10", "--kappa", "0.1", "--delta", "1"], "--delta"),
    (["--sigma", "1", "--q", "0.1", "--steps", "10", "--kappa", "0.1", "--delta", "0"], "--delta"),
    (["--sigma", "1", "--q", "0.1", "--steps", "10"], "--kappa"),
])
def test_bad_inputs_exit_2_without_traceback(args: list[str], flag: str) -> None:
    res = runner.invoke(app, ["bounds", *args])
    assert res.exit_code == 2
    assert flag in res.output and "Fix:" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_calibrate_bad_input() -> None:
    res = runner.invoke(app, ["calibrate", "--max-rero", "0.05", "--q", "2", "--steps", "10", "--kappa", "0.01"])
    assert res.exit_code == 2 and res.output.startswith("error: --q must be in (0, 1]")


def _checkpoint(tmp_path: Path, dp: object, phases: object = None) -> Path:
    from dpaudit.checkpoint import CheckpointMeta, save_checkpoint
    from dpaudit.models import build_model

    meta = CheckpointMeta(arch="smallcnn", num_classes=2, arch_args={"width": 8}, input_shape=(3, 16, 16),
                          dataset="demo", n_train=500, dp=dp, phases=phases)
    return save_checkpoint(tmp_path / "model.pt", build_model("smallcnn", num_classes=2, width=8), meta)


def test_model_checkpoint_supplies_the_mechanism_and_kappa(tmp_path: Path) -> None:
    # Reference: the same numbers given as flags (the checkpoint only carries them).
    from dpaudit.config import DpSgdConfig

    path = _checkpoint(tmp_path, DpSgdConfig(noise_multiplier=1.1, sampling_probability=0.02, steps=300,
                                             target_delta=1e-6))
    res = runner.invoke(app, ["bounds", "--model", str(path), "--json"])
    assert res.exit_code == 0, res.output
    ref = runner.invoke(app, ["bounds", "--sigma", "1.1", "--q", "0.02", "--steps", "300", "--delta", "1e-6",
                              "--n-train", "500", "--json"])
    got, want = json.loads(res.stdout), json.loads(ref.stdout)
    assert got == want and got["rero"][0]["kappa"] == pytest.approx(1 / 500)
    # A flag given beside --model takes precedence.
    res = runner.invoke(app, ["bounds", "--model", str(path), "--steps", "30", "--kappa", "0.01", "--json"])
    assert json.loads(res.stdout)["steps"] == 30 and json.loads(res.stdout)["rero"][0]["kappa"] == 0.01


def test_model_checkpoint_with_two_phases_bounds_its_schedule(tmp_path: Path) -> None:
    # Reference: the same phases given with --phase (the checkpoint only carries them).
    from dpaudit.config import DpSgdConfig

    phases = [[1.3, 0.01, 200], [0.9, 0.02, 100]]
    path = _checkpoint(tmp_path, DpSgdConfig(noise_multiplier=0.9, sampling_probability=0.02, steps=300,
                                             target_delta=1e-6), phases)
    res = runner.invoke(app, ["bounds", "--model", str(path), "--json"])
    assert res.exit_code == 0, res.output
    ref = runner.invoke(app, ["bounds", "--phase", "1.3,0.01,200", "--phase", "0.9,0.02,100", "--delta", "1e-6",
                              "--n-train", "500", "--json"])
    assert ref.exit_code == 0, ref.output
    got, want = json.loads(res.stdout), json.loads(ref.stdout)
    assert got == want and got["phases"] == phases and got["noise_multiplier"] is None
    # sigma, q or steps of one phase cannot override a schedule of several: a one-line error with the fix
    res = runner.invoke(app, ["bounds", "--model", str(path), "--sigma", "2.0"])
    assert res.exit_code == 2 and "--phase" in res.output and "Traceback" not in res.output


def test_model_without_dp_and_missing_mechanism_are_clear_errors(tmp_path: Path) -> None:
    res = runner.invoke(app, ["bounds", "--model", str(_checkpoint(tmp_path, None))])
    assert res.exit_code == 2 and "without DP" in " ".join(res.output.split())
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["bounds", "--q", "0.1", "--steps", "10", "--kappa", "0.1"])
    assert res.exit_code == 2 and "--sigma" in res.output and "--model" in res.output


# -- schedules: --history (Opacus' accountant history) and --phase --------------------------------------------------

def test_history_file_and_phases_agree_with_the_library(tmp_path: Path) -> None:
    from dpaudit.bounds import Schedule, epsilon_pld, rero_bound

    hist = [[1.0, 0.01, 500], [0.8, 0.02, 300]]  # what json.dump(accountant.history, f) writes
    path = tmp_path / "history.json"
    path.write_text(json.dumps(hist))
    a = runner.invoke(app, ["bounds", "--history", str(path), "--kappa", "1e-3", "--json"])
    b = runner.invoke(app, ["bounds", "--phase", "1.0,0.01,500", "--phase", "0.8,0.02,300", "--kappa", "1e-3",
                            "--json"])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    oa, ob = json.loads(a.stdout), json.loads(b.stdout)
    assert oa == ob
    assert oa["phases"] == hist and oa["steps"] == 800 and oa["noise_multiplier"] is None
    sched = Schedule.from_history(hist)
    assert oa["rero"][0]["worst_case"] == rero_bound(kappa=1e-3, schedule=sched).gamma[0]
    assert oa["epsilon"] == epsilon_pld(target_delta=8e-7, schedule=sched)  # the default delta without N
    # the accountant's state_dict() (a dict holding the history) reads the same
    path.write_text(json.dumps({"history": hist, "mechanism": "rdp"}))
    c = runner.invoke(app, ["bounds", "--history", str(path), "--kappa", "1e-3", "--json"])
    assert json.loads(c.stdout) == oa


def test_single_phase_equals_plain_flags() -> None:
    a = runner.invoke(app, ["bounds", "--phase", "1.0,0.01,1000", "--kappa", "1e-3", "--json"])
    b = runner.invoke(app, ["bounds", "--sigma", "1.0", "--q", "0.01", "--steps", "1000", "--kappa", "1e-3", "--json"])
    assert json.loads(a.stdout) == json.loads(b.stdout)


def test_calibrate_last_phase(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text(json.dumps([[1.0, 0.01, 500], [2.0, 0.02, 300]]))
    res = runner.invoke(app, ["calibrate", "--max-rero", "0.05", "--kappa", "1e-3", "--history", str(path), "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["achieved_rero"] <= 0.05
    assert obj["phases"][0] == [1.0, 0.01, 500] and obj["phases"][1][1:] == [0.02, 300]
    assert obj["phases"][1][0] == obj["noise_multiplier"]


@pytest.mark.parametrize(("args", "words"), [
    (["bounds", "--history", "missing.json", "--kappa", "1e-3"], "history"),
    (["bounds", "--phase", "1.0,0.01", "--kappa", "1e-3"], "SIGMA,Q,STEPS"),
    (["bounds", "--phase", "1.0,1.5,10", "--kappa", "1e-3"], "--phase '1.0,1.5,10': sampling_probability"),
    (["bounds", "--phase", "1.0,0.01,10", "--sigma", "1.0", "--kappa", "1e-3"], "--sigma"),
    (["calibrate", "--max-rero", "0.05", "--kappa", "1e-3"], "--history"),
])
def test_schedule_errors_are_one_line(args: list[str], words: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert words in res.output and "Fix:" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(("content", "words"), [
    ("", "not an empty file"),
    ("   \n", "not an empty file"),
    ("[]", "at least one phase, not []"),
    ('{"history": []}', "at least one phase, not []"),  # accountant.state_dict() of an accountant that took no step
    ("[[1.0, 0.01]]", "history[0] must be"),
    ("{not json", "a JSON file"),
])
def test_history_file_errors_name_the_file(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "h.json"
    path.write_text(content)
    for cmd in (["bounds", "--kappa", "1e-3"], ["calibrate", "--max-rero", "0.05", "--kappa", "1e-3"]):
        res = runner.invoke(app, [*cmd, "--history", str(path)])
        text = " ".join(res.output.split())
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) >= 1, res.output
        assert repr(str(path)) in text and words in text and "Fix:" in text, text
        assert text.startswith("error: --history"), text


@pytest.mark.parametrize(("args", "together", "dropped"), [
    (["bounds", "--sigma", "1", "--kappa", "1e-3"], "--history and --sigma given together", "drop --sigma"),
    (["bounds", "--q", "0.1", "--steps", "10", "--kappa", "1e-3"], "--history and --q/--steps given together",
     "drop --q/--steps"),
    (["bounds", "--phase", "1,0.01,10", "--kappa", "1e-3"], "--history and --phase given together", "drop --phase"),
    (["calibrate", "--max-rero", "0.05", "--kappa", "1e-3", "--q", "0.1"], "--history and --q given together",
     "drop --q"),
])
def test_two_schedule_sources_say_choose_one(tmp_path: Path, args: list[str], together: str, dropped: str) -> None:
    """--history with --sigma (or --phase, or --q/--steps) is refused by naming both and the choices, before the
    file is read (here it does not even exist)."""
    res = runner.invoke(app, [*args, "--history", str(tmp_path / "missing.json")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and together in text and "choose one of --history FILE, --phase SIGMA,Q,STEPS" in text
    assert f"Fix: {dropped}." in text


@pytest.mark.parametrize("flag, where", [("--plot", "missing-folder/x.png"), ("--plot", "."), ("--roc", "."),
                                         ("--roc", "missing/r.csv")])
def test_unwritable_output_paths_are_one_line_errors(tmp_path: Path, flag: str, where: str) -> None:
    path = tmp_path / where
    res = CliRunner().invoke(app, ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100", "--kappa", "1e-3",
                                   flag, str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    line = " ".join(res.stderr.split())
    assert line.startswith(f"error: {flag}") and str(path).rstrip("/.") in line and "Fix:" in line


def test_plot_in_a_format_matplotlib_cannot_write_is_refused_before_any_bound(tmp_path) -> None:
    res = runner.invoke(app, ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "1000", "--n-train", "10015",
                              "--plot", str(tmp_path / "x.jpgx")])
    assert res.exit_code == 2, res.output
    assert "--plot must be a file name ending in one of" in res.output and ".png" in res.output
    assert f"Fix: pass --plot {tmp_path / 'x.png'}" in " ".join(res.output.split())
    assert "Traceback" not in res.output
    ok = runner.invoke(app, ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100", "--kappa", "1e-3",
                             "--plot", str(tmp_path / "x.svg"), "--json"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "x.svg").read_text().lstrip().startswith("<?xml")


def test_plot_without_a_suffix_is_a_png_under_the_name_given(tmp_path) -> None:
    """Not NAME.png beside it (matplotlib's default): the file is where the user said; a folder is refused, above."""
    res = runner.invoke(app, ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100", "--kappa", "1e-3",
                              "--plot", str(tmp_path / "rero")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rero").read_bytes().startswith(b"\x89PNG") and not (tmp_path / "rero.png").exists()


@pytest.mark.parametrize("args", [
    ["bounds", "--sigma", "1e-9", "--q", "0.01", "--steps", "100", "--kappa", "1e-3"],
    ["bounds", "--phase", "1e-9,0.01,100", "--kappa", "1e-3"],
    ["train", "--sigma", "1e-9", "--epochs", "1"],
    ["federated", "train", "--sigma", "1e-9"],
])
def test_noise_below_the_accountants_floor_is_one_line_naming_sigma(args) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    if "--phase" in args:
        assert "--phase '1e-9,0.01,100': noise_multiplier must be at least 0.0001" in text
        assert "Fix: give SIGMA from 0.0001 to 1e+06" in text
    else:
        assert "--sigma must be at least 0.0001" in text and "got 1e-09" in text and "Fix: pass --sigma" in text
    assert "Traceback" not in res.output


@pytest.mark.parametrize("args", [
    ["bounds", "--sigma", "1e300", "--q", "0.01", "--steps", "100", "--kappa", "1e-3"],
    ["bounds", "--phase", "1e300,0.01,100", "--kappa", "1e-3"],
    ["mia", "self-audit", "--sigma", "1e300"],
    ["train", "--sigma", "1e300", "--epochs", "1"],
    ["federated", "train", "--sigma", "1e300"],
    ["attack", "--dataset", "demo", "--sigmas", "0,1e300"],  # replayed noise: no accountant, the same ceiling
    ["federated", "attack", "--sigmas", "1e300"],
])
def test_noise_above_the_accountants_ceiling_is_one_line_naming_sigma(args) -> None:
    """sigma ** 2 overflows a float from ~1.3e154: a huge sigma is refused as the floor is, not a traceback."""
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "must be at most 1e+06" in text and "got 1e+300" in text, text
    assert "Traceback" not in res.output and "OverflowError" not in res.output


def test_the_accountants_take_sigma_up_to_the_ceiling() -> None:
    from dpaudit.bounds import epsilon_pld, rero_bound
    from dpaudit.config import MAX_NOISE_MULTIPLIER
    from dpaudit.errors import ConfigError

    # At the ceiling the bounds are numbers at (or next to) their blind-guess values: kappa, and epsilon ~0.
    assert rero_bound(MAX_NOISE_MULTIPLIER, 0.01, 100, 1e-3).gamma[0] == pytest.approx(1e-3, rel=1e-3)
    assert 0 <= epsilon_pld(MAX_NOISE_MULTIPLIER, 0.01, 100, 1e-5) < 1e-3
    with pytest.raises(ConfigError, match="noise_multiplier must be at most"):
        epsilon_pld(MAX_NOISE_MULTIPLIER * 10, 0.01, 100, 1e-5)


def test_the_accountants_take_sigma_down_to_the_floor() -> None:
    from dpaudit.bounds import epsilon_pld, rero_bound
    from dpaudit.config import MIN_NOISE_MULTIPLIER
    from dpaudit.errors import ConfigError

    # At the floor the target, when sampled, is exposed: gamma >= P(sampled at least once) = 1 - (1 - q)^T.
    q, steps = 0.01, 100
    assert rero_bound(MIN_NOISE_MULTIPLIER, q, steps, 1e-3).gamma[0] >= 1 - (1 - q) ** steps - 1e-9
    with pytest.raises(ConfigError, match="noise_multiplier must be at least"):
        epsilon_pld(MIN_NOISE_MULTIPLIER / 10, q, steps, 1e-5)


def test_calibrate_protects_the_privacy_unit_like_bounds() -> None:
    # Calibrating for k images per patient gives the sigma whose per-patient ReRo bound (read back by `bounds`
    # with the same k) meets the target; the per-image sigma does not.
    base = ["--q", "0.2294", "--steps", "5", "--kappa", "0.00358"]
    per_image = json.loads(runner.invoke(app, ["calibrate", "--max-rero", "0.05", *base, "--json"]).stdout)
    res = runner.invoke(app, ["calibrate", "--max-rero", "0.05", *base, "--records-per-patient", "3", "--json"])
    assert res.exit_code == 0, res.output
    per_patient = json.loads(res.stdout)
    assert per_patient["privacy_unit"] == "patient" and per_patient["records_per_patient"] == 3
    assert per_patient["noise_multiplier"] > 2 * per_image["noise_multiplier"]
    for cal, k, ok in ((per_patient, 3, True), (per_image, 3, False)):
        bnd = json.loads(runner.invoke(app, ["bounds", "--sigma", repr(cal["noise_multiplier"]), *base,
                                             "--records-per-patient", str(k), "--json"]).stdout)
        assert (bnd["rero"][0]["worst_case"] <= 0.05) is ok
        assert bnd["target_delta"] == cal["target_delta"]
    human = runner.invoke(app, ["calibrate", "--max-rero", "0.05", *base, "--records-per-patient", "3"])
    assert "per patient of 3 images" in human.output and "privacy unit: patient" in human.output


def test_calibrate_takes_n_train_for_kappa_and_delta() -> None:
    res = runner.invoke(app, ["calibrate", "--max-rero", "0.05", "--q", "0.01", "--steps", "100", "--n-train",
                              "1000000", "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["kappa"] == 1e-6 and obj["target_delta"] == pytest.approx(1e-7)
    assert obj["notes"] == ["target_delta = 1e-07 by default: min(8e-7 (seed paper), 1/(10 N)) with N = 1000000"]
    res = runner.invoke(app, ["calibrate", "--max-rero", "0.05", "--q", "0.01", "--steps", "100"])
    assert res.exit_code == 2 and "--n-train" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("args", [
    ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100", "--kappa", "1e-3"],
    ["calibrate", "--max-rero", "0.05", "--q", "0.01", "--steps", "100", "--kappa", "1e-3"],
])
def test_one_default_delta_rule(args: list[str]) -> None:
    # the rule of train and profile: min(8e-7, 1/(10 N)); without N, 8e-7, and the output says so
    from dpaudit.bounds import default_delta

    obj = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert obj["target_delta"] == default_delta(None) == 8e-7
    assert any("N_train is not known" in n for n in obj["notes"])
    res = runner.invoke(app, args)
    assert "target_delta = 8e-07 by default" in res.output
    obj = json.loads(runner.invoke(app, [*args, "--n-train", "500000", "--json"]).stdout)
    assert obj["target_delta"] == pytest.approx(2e-7) == default_delta(500000)


def test_calibrate_reads_the_checkpoint_like_bounds(tmp_path: Path) -> None:
    # Reference: the same run given as flags; the checkpoint records q, steps, delta, N_train and k = 3 per patient
    # (what the profile's recommendation calibrates for).
    from dpaudit.checkpoint import CheckpointMeta, save_checkpoint
    from dpaudit.config import DpSgdConfig
    from dpaudit.models import build_model

    meta = CheckpointMeta(arch="smallcnn", num_classes=2, arch_args={"width": 8}, input_shape=(3, 16, 16),
                          dataset="demo", n_train=279, dp=DpSgdConfig(0.7766, 0.2294, 5, 1.0, 8e-7),
                          extra={"privacy_unit": "patient", "records_per_patient": 3, "data_unit": "patient",
                                 "images_per_unit_max": 3, "images_per_unit_mean": 279 / 277, "n_units": 277,
                                 "images_per_unit_histogram": "[[1, 276], [3, 1]]"})
    path = save_checkpoint(tmp_path / "model.pt", build_model("smallcnn", num_classes=2, width=8), meta)
    res = runner.invoke(app, ["calibrate", "--max-rero", "0.05", "--model", str(path), "--json"])
    assert res.exit_code == 0, res.output
    ref = runner.invoke(app, ["calibrate", "--max-rero", "0.05", "--q", "0.2294", "--steps", "5", "--n-train", "279",
                              "--delta", "8e-7", "--records-per-patient", "3", "--json"])
    got, want = json.loads(res.stdout), json.loads(ref.stdout)
    assert got == want and got["records_per_patient"] == 3 and got["noise_multiplier"] > 1.5
    res = runner.invoke(app, ["calibrate", "--max-rero", "0.05", "--model", str(path), "--privacy-unit", "image",
                              "--json"])
    assert json.loads(res.stdout)["records_per_patient"] == 1


def test_every_shown_upper_bound_is_rounded_up_with_the_same_digits() -> None:
    # One formatter for the console, the report and its checklist: an achieved 7.9912 is '7.992' everywhere, never
    # '7.99' (below the bound) or '8.00' (looks like the target).
    from dpaudit.audit.checklist import _up
    from dpaudit.audit.decision import _eps
    from dpaudit.audit.report_text import eps_down, eps_up
    from dpaudit.cli.bounds_cmd import _fmt_eps, _fmt_pct
    from dpaudit.numfmt import lower, upper

    for x in (7.99123, 0.998761, 68.52042, 3.0, 1234.5671):
        shown = {_up(x), _eps(x), eps_up(x), _fmt_eps(x), upper(x)}
        assert len(shown) == 1 and float(shown.pop()) >= x
    assert upper(7.99123) == "7.992" and lower(7.99123) == "7.991" == eps_down(7.99123)
    assert _fmt_pct(0.760225) == "76.1%" and _fmt_pct(0.05) == "5.0%" and float(_fmt_pct(0.00123456)[:-1]) >= 0.123456


def test_rounding_and_default_delta_doctests() -> None:
    import doctest

    import dpaudit.bounds._mechanism
    import dpaudit.numfmt

    for module in (dpaudit.numfmt, dpaudit.bounds._mechanism):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


@pytest.mark.parametrize("args", [
    ["attack", "--dataset", "demo", "--arch", "resnet9", "--epsilons", "8,inf", "--n-images", "2"],
    ["profile", "--dataset", "demo", "--epsilons", "inf", "--out", "unused"],
    ["train", "--dataset", "demo", "--epsilon", "inf", "--out", "unused"],
])
def test_every_epsilon_option_refuses_infinity_alike(args: list[str]) -> None:
    # one vocabulary: --epsilon(s) are finite budgets everywhere; no noise is --sigmas 0 / --non-private
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "finite number" in res.output and "got inf" in res.output and "Traceback" not in res.output


def test_threat_model_is_worst_case_in_json_whatever_the_spelling_typed() -> None:
    base = ["calibrate", "--max-rero", "0.05", "--q", "0.01", "--steps", "100", "--kappa", "1e-3", "--json"]
    a, b, c = (json.loads(runner.invoke(app, [*base, *extra]).stdout) for extra in
               ([], ["--threat-model", "worst-case"], ["--threat-model", "worst_case"]))
    assert a == b == c and a["threat_model"] == "worst_case"  # as profile.json's decision.limits and rero[].worst_case
    res = runner.invoke(app, [*base, "--threat-model", "bogus"])
    assert res.exit_code == 2 and res.output.startswith("error: --threat-model must be worst-case or relaxed")


@pytest.mark.parametrize("args", [
    ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100", "--kappa", "1e-3"],
    ["calibrate", "--max-rero", "0.05", "--q", "0.01", "--steps", "100", "--kappa", "1e-3"],
    ["mia", "bound", "--true-positives", "300", "--positives", "400", "--false-positives", "20", "--negatives", "500"],
    ["mia", "one-run", "--canaries", "1000", "--guesses", "100", "--correct", "90"],
])
def test_every_json_has_a_labels_block(args: list[str]) -> None:
    # README: every --json carries `labels` (never a lone `label`), each value one of the four kinds
    obj = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert "label" not in obj and obj["labels"]
    kinds = ("sound upper bound", "approximation", "estimate", "empirical", "smallest meeting", "search floor",
             "budget to train with")
    assert all(v.startswith(kinds) for v in obj["labels"].values()), obj["labels"]


def test_calibrate_prints_sigma_rounded_up_and_names_both_epsilons() -> None:
    """The printed sigma (rounded up) still meets the target when `bounds` evaluates it; with k > 1 the JSON's
    epsilon is per image and epsilon_patient per patient, as in profile.json and `bounds --json`."""
    args = ["--max-rero", "0.05", "--q", "0.30622", "--steps", "4", "--n-train", "209", "--records-per-patient", "4"]
    res = runner.invoke(app, ["calibrate", *args])
    assert res.exit_code == 0, res.output
    sigma = next(line for line in res.stdout.splitlines() if "noise multiplier" in line).split("│")[2].strip()
    cal = json.loads(runner.invoke(app, ["calibrate", *args, "--json"]).stdout)
    assert float(sigma) >= cal["noise_multiplier"] and cal["epsilon_patient"] > cal["epsilon"] >= cal["epsilon_target"]
    bound = json.loads(runner.invoke(app, ["bounds", "--sigma", sigma, "--q", "0.30622", "--steps", "4", "--n-train",
                                           "209", "--records-per-patient", "4", "--json"]).stdout)
    assert bound["rero"][0]["worst_case"] <= 0.05
    assert bound["epsilon"] == pytest.approx(cal["epsilon"], rel=1e-3)  # per image in both
    assert bound["epsilon_patient"] == pytest.approx(cal["epsilon_patient"], rel=1e-3)
    assert "per patient" in bound["labels"]["epsilon_patient"] and "per image" in bound["labels"]["epsilon"]


def test_monte_carlo_shows_its_interval_under_its_own_key() -> None:
    """--method mc is an estimate with a 95% interval: the interval is printed and stored as one; numerical_error
    (the tight method's proven gap to a sound lower bound) is not reused for it."""
    args = ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100", "--kappa", "1e-3", "--method", "mc"]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["numerical_error"] is None
    for row in obj["rero"]:
        for key in ("worst_case", "relaxed"):
            lo, hi = row[f"{key}_interval"]
            assert lo <= row[key] <= hi
    assert "95% interval" in runner.invoke(app, args).stdout
    tight = json.loads(runner.invoke(app, [*args[:-2], "--json"]).stdout)
    assert tight["rero"][0]["worst_case_interval"] is None and tight["numerical_error"]["worst_case"][0] >= 0


def test_monte_carlo_is_the_same_on_every_run() -> None:
    """An estimate a user reruns must not move: --method mc uses a fixed seed."""
    args = ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100", "--kappa", "1e-3", "--method", "mc", "--json"]
    first, second = (json.loads(runner.invoke(app, args).stdout)["rero"] for _ in range(2))
    assert first == second


def test_mc_samples_set_the_draws_and_a_note_says_when_too_few_lie_beyond_the_threshold() -> None:
    """--method mc takes --mc-samples; an estimate resting on fewer than MC_MIN_TAIL draws beyond its threshold (gamma
    times the draws) says so and how many draws would do. Compared with the tight bound, the sound upper bound: with
    enough draws the estimate's interval reaches it (the worst case at kappa 0.01, sigma 1, q 0.01, T 100)."""
    from dpaudit.bounds import rero_bound
    from dpaudit.bounds.rero import MC_MIN_TAIL

    base = ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100", "--kappa", "0.01", "--method", "mc", "--json"]
    tight = float(rero_bound(1.0, 0.01, 100, 0.01).gamma[0])
    few = json.loads(runner.invoke(app, [*base, "--mc-samples", "2000"]).stdout)
    many = json.loads(runner.invoke(app, [*base, "--mc-samples", "40000"]).stdout)
    assert round(few["rero"][0]["worst_case"] * 2000) < MC_MIN_TAIL
    assert any(n.startswith("Monte Carlo worst case: at kappa 0.01 the estimate rests on") and "--mc-samples" in n
               for n in few["notes"]), few["notes"]
    assert round(many["rero"][0]["worst_case"] * 40000) >= MC_MIN_TAIL
    assert not any(n.startswith("Monte Carlo worst case") for n in many["notes"]), many["notes"]
    low, high = many["rero"][0]["worst_case_interval"]
    assert low * 0.9 <= tight <= high * 1.1  # the estimate's interval, up to its own 10% resolution at 100 draws


@pytest.mark.parametrize(("args", "text"), [
    (["--mc-samples", "5000"], "--mc-samples must be given with --method mc"),
    (["--method", "mc", "--mc-samples", "5"], "--mc-samples must be an integer in [100, 10000000], got 5"),
])
def test_mc_samples_is_checked(args: list[str], text: str) -> None:
    res = runner.invoke(app, ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100", "--kappa", "0.01", *args])
    assert res.exit_code == 2 and text in " ".join(res.output.split()), res.output


def test_flags_over_the_checkpoint_are_said_with_both_values(tmp_path: Path) -> None:
    from dpaudit.config import DpSgdConfig

    path = _checkpoint(tmp_path, DpSgdConfig(noise_multiplier=1.1, sampling_probability=0.02, steps=300,
                                             target_delta=1e-6))
    res = runner.invoke(app, ["bounds", "--model", str(path), "--sigma", "2", "--q", "0.02", "--delta", "1e-5",
                              "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["noise_multiplier"] == 2.0 and got["target_delta"] == 1e-5
    want = [{"flag": "--delta", "field": "target_delta", "value": 1e-5, "checkpoint": 1e-6},
            {"flag": "--sigma", "field": "noise_multiplier", "value": 2.0, "checkpoint": 1.1}]
    assert sorted(got["overrides"], key=lambda o: o["flag"]) == want  # --q equals the checkpoint's: not said
    note = [n for n in got["notes"] if n.startswith("--model:")]
    assert len(note) == 1 and "--sigma 2 (the checkpoint's noise_multiplier: 1.1)" in note[0]
    stderr = [line for line in res.stderr.splitlines() if line.startswith("note: --model:")]
    assert len(stderr) == 1 and "--delta 1e-05 (the checkpoint's target_delta: 1e-06)" in stderr[0]
    # the console run says it too; no flag over the checkpoint, nothing said
    res = runner.invoke(app, ["bounds", "--model", str(path), "--steps", "30"])
    assert "--steps 30 (the checkpoint's steps: 300)" in " ".join(res.stderr.split())
    res = runner.invoke(app, ["bounds", "--model", str(path), "--json"])
    assert json.loads(res.stdout)["overrides"] == [] and "--model:" not in res.stderr


def test_calibrate_says_the_flags_over_the_checkpoint(tmp_path: Path) -> None:
    from dpaudit.config import DpSgdConfig

    path = _checkpoint(tmp_path, DpSgdConfig(noise_multiplier=1.1, sampling_probability=0.02, steps=300,
                                             target_delta=1e-6))
    res = runner.invoke(app, ["calibrate", "--model", str(path), "--max-rero", "0.05", "--steps", "30",
                              "--n-train", "1000", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert sorted((o["flag"], o["value"], o["checkpoint"]) for o in got["overrides"]) == [
        ("--n-train", 1000, 500), ("--steps", 30, 300)]
    assert any(n.startswith("--model:") for n in got["notes"]) and "note: --model:" in res.stderr


@pytest.mark.parametrize(("args", "text"), [
    (["--sigma", "1", "--q", "0.01", "--steps", "1000000"],
     "--mc-samples must be at most 500 for the 1,000,000 steps of --steps (--method mc draws --mc-samples x steps, "
     "at most 500,000,000 in all), got 20000 (the default: --mc-samples was not passed). Fix: pass --mc-samples 500 "
     "or fewer, or --method tight"),
    (["--sigma", "1", "--q", "0.01", "--steps", "1000000000000", "--mc-samples", "100"],
     "--steps must be at most 5,000,000 steps in all for --method mc"),
    (["--history", "HISTORY", "--mc-samples", "1000"], "--history must be at most 5,000,000 steps in all for --method mc"),
])
def test_monte_carlo_work_is_refused_before_any_draw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     args: list[str], text: str) -> None:
    """--method mc draws --mc-samples x steps losses: beyond MC_DRAWS_MAX it is refused up front (one line, exit 2,
    naming where the steps came from and --method tight), not run for hours, out of memory or with a traceback
    from numpy's shape limit. No draw is made (counted: sample_losses must not be called)."""
    import dpaudit.bounds.montecarlo as mc

    def no_draw(*_: object, **__: object) -> None:
        raise AssertionError("sampled")

    monkeypatch.setattr(mc, "sample_losses", no_draw)
    history = tmp_path / "h.json"
    history.write_text("[[1.0, 0.01, 1e30]]")
    args = [str(history) if a == "HISTORY" else a for a in args]
    res = runner.invoke(app, ["bounds", *args, "--method", "mc", "--n-train", "1000"])
    line = " ".join(res.output.split())
    assert res.exit_code == 2 and text in line and "Fix:" in line and "--method tight" in line, res.output
    assert "Traceback" not in res.output


def test_monte_carlo_work_limit_is_inclusive_and_the_library_checks_it_too() -> None:
    """Exactly MC_DRAWS_MAX draws pass (a normal run is unchanged); one step more is refused by rero_bound itself,
    so every caller of the Monte Carlo route is covered, not only the command."""
    from dpaudit.bounds import rero_bound
    from dpaudit.bounds.montecarlo import MC_DRAWS_MAX, check_mc_work
    from dpaudit.errors import ConfigError

    check_mc_work(MC_DRAWS_MAX // 20_000, 20_000)
    with pytest.raises(ConfigError, match=r"--mc-samples must be at most 19,999 for the 25,001 steps \("):
        rero_bound(1.0, 0.01, MC_DRAWS_MAX // 20_000 + 1, 1e-3, method="mc", mc_samples=20_000)


@pytest.mark.parametrize(("source", "flag", "fix"), [
    (["--steps", str(10**30), "--q", "0.01"], "--steps", "Fix: pass fewer --steps."),
    (["--history", "HISTORY"], "--history", "Fix: pass --history with fewer steps in all."),
])
def test_calibrate_names_the_steps_when_the_pld_does_not_fit(tmp_path: Path, source: list[str], flag: str,
                                                            fix: str) -> None:
    """A run whose composed PLD needs an FFT window past MAX_WINDOW (1e30 steps) has no bound below 1 to calibrate
    with: the error names the flag the steps came from, the value and a fix calibrate takes; not 'a coarser
    discretisation' (no such flag) or 'more noise' (what calibrate computes)."""
    history = tmp_path / "h.json"
    history.write_text("[[1.0, 0.01, 1e30]]")
    args = [str(history) if a == "HISTORY" else a for a in source]
    res = runner.invoke(app, ["calibrate", *args, "--n-train", "1000", "--max-rero", "0.5"])
    line = " ".join(res.output.split())
    assert res.exit_code == 2 and line.startswith(f"error: {flag} must be ") and line.endswith(fix), res.output
    assert "FFT window of" in line and "(the default" not in line and "coarser" not in line, res.output


def test_bounds_past_the_pld_window_gives_the_trivial_bound_without_a_fix_it_does_not_take() -> None:
    """bounds keeps gamma = 1 (sound) past the window, and its note no longer offers a discretisation or noise."""
    res = runner.invoke(app, ["bounds", "--sigma", "1", "--q", "0.01", "--steps", str(10**30), "--n-train", "1000",
                              "--json"])
    assert res.exit_code == 0, res.output
    notes = json.loads(res.stdout)["notes"]
    window = [n for n in notes if "FFT window of" in n]
    assert window and all("fewer steps give" in n and "coarser" not in n and "more noise" not in n for n in window)
