"""`dpaudit attack` end to end with CliRunner: demo, a HAM10000-layout fixture built here, checkpoints, bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dpaudit.attacks.results import SUCCESS_SSIM, AttackResult, AttackRow
from dpaudit.checkpoint import CheckpointMeta, save_checkpoint
from dpaudit.cli.main import app
from dpaudit.models import build_model

runner = CliRunner()


def _json_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("json", True)]


def make_ham10000(root: Path, rng: np.random.Generator, n_lesions: int = 12) -> None:
    """A tiny HAM10000 in the official layout: metadata CSV, ISIC_*.jpg images in the two part folders."""
    dxs = ["nv", "bkl", "df", "vasc", "akiec", "bcc", "mel"]
    rows = []
    for les in range(n_lesions):
        for k in range(1 + les % 2):
            rows.append({"lesion_id": f"HAM_{les:07d}", "image_id": f"ISIC_{24306 + 2 * les + k:07d}",
                         "dx": dxs[les % 7], "dx_type": "histo", "age": "45", "sex": "female",
                         "localization": "back"})
    yy, xx = np.mgrid[0:45, 0:60]
    for i, row in enumerate(rows):
        part = root / ("HAM10000_images_part_1" if i % 2 == 0 else "HAM10000_images_part_2")
        part.mkdir(parents=True, exist_ok=True)
        # A smooth lesion-like blob (JPEG keeps smooth images faithful).
        cy, cx = rng.uniform(15, 30), rng.uniform(20, 40)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(60, 200))
        img = np.stack([200 - 120 * blob, 160 - 100 * blob, 140 - 90 * blob], axis=-1)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(part / f"{row['image_id']}.jpg", quality=95)
    with (root / "HAM10000_metadata.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def run(*args: str):
    return runner.invoke(app, ["attack", *args])


def test_demo_json_has_exactly_the_documented_keys() -> None:
    res = run("--arch", "smallcnn", "--dataset", "demo", "--image-size", "24", "--n-images", "4",
              "--sigmas", "0,1e-4", "--decoder", "all", "--json")
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    # The AttackResult through the codec, as the profile stores its rows: per-image SSIM and eta included, the kept
    # reconstructions (patient images) never.
    assert list(obj) == [*_json_fields(AttackResult), "labels", "model", "device", "privacy_unit",
                         "records_per_patient", "records_per_patient_from"] and obj["model"] == "random smallcnn"
    assert obj["epsilon_mechanism"] is None  # noise given as multipliers: no epsilon, no mechanism
    # --device auto: where the passes ran, resolved
    assert obj["device"] == "cpu" if not torch.cuda.is_available() else obj["device"].startswith("cuda:")
    assert obj["notes"] == ["no --model: attacking a randomly initialised smallcnn (--arch smallcnn); pass --model "
                            "FILE to attack a trained checkpoint."]
    assert obj["success_ssim"] == SUCCESS_SSIM and obj["labels"]["rows[].success_rate"].startswith("empirical")
    assert obj["labels"]["rows[].epsilon"].startswith("sound upper bound")
    assert len(obj["rows"]) == 4 and all(list(r) == _json_fields(AttackRow) for r in obj["rows"])
    assert {r["decoder"] for r in obj["rows"]} == {"strong", "paper"}  # --decoder all: as in the profile
    at_zero = [r for r in obj["rows"] if r["noise_multiplier"] == 0]
    assert all(r["success_rate"] == 1.0 for r in at_zero)
    assert obj["image_shape"] == [3, 24, 24]


def test_ham10000_fixture_end_to_end_with_out(tmp_path: Path, rng: np.random.Generator) -> None:
    make_ham10000(tmp_path / "ham", rng)
    out = tmp_path / "out"
    res = run("--arch", "smallcnn", "--dataset", "ham10000", "--data-dir", str(tmp_path / "ham"), "--image-size",
              "32", "--n-images", "5", "--sigmas", "0,1e-3", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "strongest decoder" in res.stdout and "Clopper-Pearson" in res.stdout
    record = json.loads((out / "attack.json").read_text())
    assert record["result"]["rows"][0]["success_rate"] == 1.0 and record["result"]["rows"][0]["decoder"] == "strong"
    assert record["scenario"]["n_images"] == 5 and len(record["headline"]) == 2
    assert (out / "ssim_error_cdf.png").stat().st_size > 1000
    assert not (out / "best_reconstructions.png").exists()  # patient images only with --save-images


def test_checkpoint_and_save_images(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_model("smallcnn", num_classes=2)
    path = save_checkpoint(tmp_path / "m.pt", net, CheckpointMeta(arch="smallcnn", num_classes=2,
                                                                  input_shape=(3, 24, 24), dataset="demo"))
    out = tmp_path / "o"
    res = run("--model", str(path), "--dataset", "demo", "--n-images", "3", "--sigmas", "0", "--out", str(out),
              "--save-images", "--decoder", "paper")
    assert res.exit_code == 0, res.output
    assert (out / "best_reconstructions.png").exists()


def test_without_epsilons_or_sigmas_the_checkpoint_decides(tmp_path: Path) -> None:
    from dpaudit.attacks.reconstruction import noise_for_epsilons
    from dpaudit.config import DpSgdConfig

    net = build_model("smallcnn", num_classes=2)
    dp = DpSgdConfig(noise_multiplier=0.7, sampling_probability=0.05, steps=40, target_delta=1e-5)
    private = save_checkpoint(tmp_path / "dp.pt", net, CheckpointMeta(
        arch="smallcnn", num_classes=2, input_shape=(3, 16, 16), dataset="demo", n_train=200, dp=dp, epochs=2,
        extra={"epsilon_achieved": 6.5}))
    res = run("--model", str(private), "--dataset", "demo", "--n-images", "2", "--json")
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)["rows"]
    assert row["epsilon"] == 6.5
    want = noise_for_epsilons([6.5], n_train=200, epochs=2, target_delta=1e-5, accountant="pld")[0].noise_multiplier
    assert row["noise_multiplier"] == pytest.approx(want, rel=1e-9)
    public = save_checkpoint(tmp_path / "np.pt", net, CheckpointMeta(
        arch="smallcnn", num_classes=2, input_shape=(3, 16, 16), dataset="demo", n_train=200))
    res = run("--model", str(public), "--dataset", "demo", "--n-images", "2")
    assert res.exit_code == 0 and "trained without DP" in " ".join(res.output.split())
    res = run("--arch", "smallcnn", "--dataset", "demo", "--image-size", "16", "--n-images", "2", "--json")
    assert [r["noise_multiplier"] for r in json.loads(res.stdout)["rows"]] == [0.0, 1e-4, 1e-3, 0.02]


def test_attack_json_records_the_mechanism_behind_each_epsilon(tmp_path: Path) -> None:
    """An epsilon is a statement only with its q, T and delta: the attack scenario the checkpoint's budget was
    mapped through is stored in attack.json and --json (the scenario's own options stay null when not typed), and
    the rows' epsilon label names the delta."""
    from dpaudit.config import DpSgdConfig

    dp = DpSgdConfig(noise_multiplier=0.7, sampling_probability=0.05, steps=40, target_delta=8e-7)
    path = save_checkpoint(tmp_path / "dp.pt", build_model("smallcnn", num_classes=2), CheckpointMeta(
        arch="smallcnn", num_classes=2, input_shape=(3, 16, 16), dataset="demo", n_train=200, dp=dp, epochs=2,
        extra={"epsilon_achieved": 6.5}))
    res = run("--model", str(path), "--dataset", "demo", "--n-images", "2", "--out", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    assert "q = 1/200, T = 2 * 200 steps, delta = 8e-07" in " ".join(res.output.split())
    record = json.loads((tmp_path / "o" / "attack.json").read_text())
    mech = record["result"]["epsilon_mechanism"]
    assert mech == {"n_train": 200, "epochs": 2, "sampling_probability": 1 / 200, "steps": 400,
                    "target_delta": 8e-7, "accountant": "pld", "source": "checkpoint"}
    assert "delta = 8e-07" in record["labels"]["rows[].epsilon"] == record["result"]["labels"]["rows[].epsilon"]
    assert record["settings"]["privacy_unit"] in ("patient", "image")
    # Typed options are the scenario's and are said to be.
    res = run("--model", str(path), "--dataset", "demo", "--n-images", "2", "--epsilons", "8", "--delta", "1e-5",
              "--json")
    obj = json.loads(res.stdout)
    assert obj["epsilon_mechanism"]["target_delta"] == 1e-5 and obj["epsilon_mechanism"]["steps"] == 400
    assert obj["epsilon_mechanism"]["source"] == "scenario (target_delta), checkpoint (the rest)"
    assert "privacy_unit" in obj


#: What `dpaudit train` records of an image-level run on 200 images without patient ids (audit/train.py,
#: _privacy_scalars): the unit facts come together.
IMAGE_UNIT = {"privacy_unit": "image", "data_unit": "image", "records_per_patient": 1, "images_per_unit_max": 1,
              "images_per_unit_mean": 1.0, "n_units": 200, "images_per_unit_histogram": "[[1, 200]]"}


def test_images_other_than_the_training_data_are_said_to_be(tmp_path: Path) -> None:
    """Another image size or another dataset than the checkpoint records: the result's notes say so, and that the
    checkpoint's epsilon and k describe its training data only; the recorded-k line says it too. The training
    data themselves get no such note."""
    path = save_checkpoint(tmp_path / "m.pt", build_model("smallcnn", num_classes=2), CheckpointMeta(
        arch="smallcnn", num_classes=2, input_shape=(3, 16, 16), dataset="demo", n_train=200,
        extra=IMAGE_UNIT))
    same = run("--model", str(path), "--dataset", "demo", "--n-images", "2", "--sigmas", "0", "--json")
    assert same.exit_code == 0, same.output
    assert not [n for n in json.loads(same.stdout)["notes"] if "training data" in n]
    other_size = run("--model", str(path), "--dataset", "demo", "--n-images", "2", "--sigmas", "0",
                     "--image-size", "24", "--json")
    notes = " ".join(json.loads(other_size.stdout)["notes"])
    assert "the attacked images are 24x24 pixels, the model was trained on 16x16" in notes
    assert "describe its training data only" in notes and "leave out --image-size" in notes
    other = save_checkpoint(tmp_path / "o.pt", build_model("smallcnn", num_classes=2), CheckpointMeta(
        arch="smallcnn", num_classes=2, input_shape=(3, 16, 16), dataset="csv:/elsewhere/manifest.csv",
        n_train=200, extra=IMAGE_UNIT))
    res = run("--model", str(other), "--dataset", "demo", "--n-images", "2", "--sigmas", "0")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "the attacked images come from demo, the model was trained on csv:/elsewhere/manifest.csv" in text
    assert "k and epsilon are the model's training data's, not the attacked images'" in text


def test_checkpoint_with_phases_is_attacked_at_its_schedules_epsilon(tmp_path: Path) -> None:
    # A checkpoint whose extra lacks epsilon_achieved: the budget is its whole schedule's (every phase composed),
    # never "trained without DP". Reference: the library's epsilon of the same phases, mapped the same way.
    from dpaudit.attacks.reconstruction import noise_for_epsilons
    from dpaudit.bounds import Schedule, epsilon_pld
    from dpaudit.config import DpSgdConfig

    phases = [[2.0, 0.05, 20], [0.7, 0.05, 20]]
    dp = DpSgdConfig(noise_multiplier=0.7, sampling_probability=0.05, steps=40, target_delta=1e-5)
    path = save_checkpoint(tmp_path / "dp.pt", build_model("smallcnn", num_classes=2), CheckpointMeta(
        arch="smallcnn", num_classes=2, input_shape=(3, 16, 16), dataset="demo", n_train=200, dp=dp, epochs=2,
        phases=phases))
    eps = float(f"{epsilon_pld(target_delta=1e-5, schedule=Schedule.from_history(phases)):.6g}")
    res = run("--model", str(path), "--dataset", "demo", "--n-images", "2", "--json")
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)["rows"]
    assert row["epsilon"] == pytest.approx(eps, rel=1e-12)
    want = noise_for_epsilons([eps], n_train=200, epochs=2, target_delta=1e-5, accountant="pld")[0].noise_multiplier
    assert row["noise_multiplier"] == pytest.approx(want, rel=1e-9)
    res = run("--model", str(path), "--dataset", "demo", "--n-images", "2")
    assert res.exit_code == 0 and "2 phases" in res.output and "without DP" not in res.output


def test_epsilons_need_the_scenario() -> None:
    res = run("--arch", "smallcnn", "--n-images", "2", "--image-size", "16", "--epsilons", "8")
    assert res.exit_code == 2 and "--n-train" in res.output


@pytest.mark.parametrize("args, needle", [
    (["--sigmas", "0", "--epsilons", "1"], "at most one"),
    (["--sigmas", "0,x"], "comma-separated"),
    (["--sigmas", "-1"], "--sigmas must be a finite number >= 0"),
    (["--sigmas", "0", "--save-images"], "--out"),
    (["--sigmas", "0", "--dataset", "nosuch"], "dataset"),
    (["--sigmas", "0", "--dataset", "ham10000"], "data"),
    (["--sigmas", "0", "--observations", "0"], "--observations"),
    (["--sigmas", "0", "--n-images", "0"], "--n-images must be an integer >= 1"),
])
def test_bad_inputs_exit_2_without_traceback(args: list[str], needle: str) -> None:
    n_images = [] if "--n-images" in args else ["--n-images", "2"]  # each option once: a repeat is refused
    res = run("--arch", "smallcnn", "--image-size", "16", *n_images, *args)
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Fix:" in res.output and "Traceback" not in res.output


def test_no_model_and_no_arch_attacks_a_random_resnet9_and_says_so() -> None:
    """--arch defaults to resnet9 on every command (README); without --model the attack needs a model and takes a
    randomly initialised one of the default architecture and says so."""
    res = run("--sigmas", "0", "--n-images", "2", "--image-size", "16")
    assert res.exit_code == 0 and "no --model: attacking a randomly initialised resnet9 (--arch resnet9, the default)" in (
        " ".join(res.output.split()))


def test_privacy_unit_k_is_the_checkpoints_training_split_not_the_images_loaded(tmp_path: Path) -> None:
    """k (records per patient) is what the patient-level bounds use: the most images of one patient in the model's
    training split, as `dpaudit bounds --model` reads it from the checkpoint; attacking with a few images loaded
    (--max-images) or naming --privacy-unit patient must not recount it among the images loaded here."""
    from dpaudit.checkpoint import load_checkpoint

    common = ["--arch", "smallcnn", "--image-size", "16", "--max-images", "300", "--sigma", "1.0", "--epochs", "1",
              "--batch-size", "32", "--threads", "1"]
    for unit in ("patient", "image"):
        res = runner.invoke(app, ["train", *common, "--privacy-unit", unit, "--out", str(tmp_path / unit)])
        assert res.exit_code == 0, res.output
    extra = load_checkpoint(tmp_path / "patient" / "model.pt").extra
    k = int(extra["records_per_patient"])
    assert k > 1 and load_checkpoint(tmp_path / "image" / "model.pt").extra["images_per_unit_max"] == k
    bounds = json.loads(runner.invoke(app, ["bounds", "--model", str(tmp_path / "patient" / "model.pt"),
                                            "--json"]).stdout)
    assert bounds["records_per_patient"] == k

    def unit_line(model: Path, *args: str) -> str:
        res = run("--model", str(model), "--sigmas", "0", "--n-images", "2", "--max-images", "12", *args)
        assert res.exit_code == 0, res.output
        return next(line for line in res.output.splitlines() if line.startswith("privacy unit"))

    recorded = (f"privacy unit: patient (k = {k} images per patient at most in the model's training split, recorded "
                "in the checkpoint")
    assert unit_line(tmp_path / "patient" / "model.pt").startswith(recorded)
    assert unit_line(tmp_path / "patient" / "model.pt", "--privacy-unit", "patient").startswith(recorded)
    assert unit_line(tmp_path / "patient" / "model.pt", "--privacy-unit", "image").startswith(
        "privacy unit: image (--privacy-unit image; k = 1)")
    # Trained at the image level on data with lesion ids: the checkpoint's count gives the patient-level k.
    assert unit_line(tmp_path / "image" / "model.pt").startswith("privacy unit: image (recorded in the checkpoint")
    assert unit_line(tmp_path / "image" / "model.pt", "--privacy-unit", "patient").startswith(recorded)


def test_privacy_unit_without_a_record_counts_the_training_split_loaded_and_says_so(tmp_path: Path) -> None:
    """A random model's training data are the split loaded here; a plain state dict's are unknown, and the line
    says that the k counted here is its k only if it was trained on the same data."""
    args = ["--arch", "smallcnn", "--image-size", "16", "--sigmas", "0", "--n-images", "2", "--max-images", "40"]
    res = run(*args)
    assert res.exit_code == 0, res.output
    line = " ".join(next(ln for ln in res.output.splitlines() if ln.startswith("privacy unit")).split())
    assert "in the training split of the --max-images 40 loaded here (" in line and "does not record" not in line
    assert "leave out --max-images for its k" in line
    torch.save(build_model("smallcnn", num_classes=2).state_dict(), tmp_path / "plain.pt")
    res = run("--model", str(tmp_path / "plain.pt"), *args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "the checkpoint does not record its training data" in text
    assert "`dpaudit bounds --records-per-patient K`" in text


@pytest.mark.parametrize(("args", "flag"), [(["attack", "--arch", "smallcnn", "--sigmas", "0", "--n-images", "100000"],
                                             "--n-images"),
                                            (["attack", "--arch", "smallcnn", "--sigmas", "0", "--max-images", "5000"],
                                             "--max-images"),
                                            (["train", "--epsilon", "8", "--max-images", "100000"], "--max-images"),
                                            (["profile", "--max-images", "5000", "--out", "unused"], "--max-images")])
def test_the_demo_is_never_grown_past_its_documented_size(args: list[str], flag: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from dpaudit.data import DEMO_DEFAULT_SIZE, make_demo

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("dpaudit.data.make_demo", lambda *a, **k: pytest.fail("the demo was generated"))
    res = runner.invoke(app, [*args, "--dataset", "demo"])
    assert res.exit_code == 2, res.output
    assert res.output.startswith(f"error: {flag} must be at most") and f"Fix: pass {flag}" in res.output
    assert make_demo is not None and DEMO_DEFAULT_SIZE == 2000  # the size the README states


def test_a_long_attack_shows_progress_without_a_terminal() -> None:
    res = runner.invoke(app, ["attack", "--arch", "smallcnn", "--arch-args", "{\"width\": 4}", "--dataset", "demo", "--sigmas", "0",
                              "--n-images", "10", "--image-size", "16", "--threads", "1"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("attack: ")]
    # in the user's units: the images' gradient passes, then each noise level decoded
    assert 2 <= len(lines) <= 10 and lines[-1] == "attack: noise level 1/1 decoded (10 images, 1 decoder)"
    assert "attack: gradients of 10/10 images" in lines


def test_an_unavailable_gpu_is_one_line_naming_device(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = run("--arch", "smallcnn", "--image-size", "16", "--n-images", "2", "--sigmas", "0", "--device", "cuda")
    assert res.exit_code == 2, res.output
    assert "--device" in res.output and "pass --device cpu" in res.output and "Traceback" not in res.output
    res = run("--arch", "smallcnn", "--image-size", "16", "--n-images", "2", "--sigmas", "0", "--device", "gpu")
    assert res.exit_code == 2 and "auto, cpu, cuda or cuda:N" in res.output, res.output


def test_json_says_a_random_model_was_attacked_as_attack_json_does(tmp_path: Path) -> None:
    """Without --model the --json result says what was attacked (the stderr note, its notes and a model key), as
    attack.json's settings.model does; with --model, the model key names the checkpoint."""
    res = run("--arch", "resnet9", "--dataset", "demo", "--image-size", "16", "--n-images", "2", "--sigmas", "0,1e-3",
              "--json", "--out", str(tmp_path / "a"))
    assert res.exit_code == 0, res.output
    assert "no --model: attacking a randomly initialised resnet9" in " ".join(res.stderr.split())
    obj = json.loads(res.stdout)
    assert obj["model"] == "random resnet9" and any("randomly initialised resnet9" in n for n in obj["notes"])
    record = json.loads((tmp_path / "a" / "attack.json").read_text())
    assert record["settings"]["model"] == obj["model"] and record["result"]["notes"] == obj["notes"]
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model("smallcnn", num_classes=2),
                           CheckpointMeta(arch="smallcnn", num_classes=2, input_shape=(3, 16, 16), dataset="demo"))
    res = run("--model", str(ckpt), "--dataset", "demo", "--n-images", "2", "--sigmas", "0", "--json")
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["model"] == str(ckpt) and not any("randomly initialised" in n for n in obj["notes"])


@pytest.mark.parametrize(("args", "held"), [
    (["--dataset", "demo-ct", "--n-images", "5000"], "slices"),
    (["--dataset", "demo", "--max-images", "60", "--n-images", "500"], "images"),
])
def test_an_n_images_a_built_in_training_split_cannot_hold_is_refused(args: list[str], held: str,
                                                                       tmp_path: Path) -> None:
    """demo and demo-ct are built in: an --n-images their training split cannot hold is refused (as the demo's
    is before loading), counted in the split's own records (slices for demo-ct), and --out stays untouched."""
    res = run("--image-size", "16", "--sigmas", "0", *args, "--out", str(tmp_path / "a"))
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert line.startswith("error: --n-images must be at most") and f"{held})" in line and "Fix: pass --n-images" in line
    assert "Traceback" not in line and not (tmp_path / "a").exists()


def test_your_own_data_smaller_than_n_images_is_attacked_whole_and_said_so(tmp_path: Path,
                                                                           rng: np.random.Generator) -> None:
    for k in range(9):
        img = rng.integers(0, 255, size=(20, 20, 3), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / f"im{k}.png")
    res = run("--arch", "smallcnn", "--dataset", f"folder:{tmp_path}", "--image-size", "16", "--n-images", "50",
              "--sigmas", "0")
    assert res.exit_code == 0, res.output
    assert ("--n-images 50 asked, but the whole data's training split holds 6 images (as train splits it); "
            "attacking all 6.") in " ".join(res.output.split())


def test_attack_json_and_json_name_the_device_and_count_images_the_block_barely_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the model passes ran (resolved, in words) is in --json and attack.json's settings; images holding less
    than DEAD_BLOCK_RHO of their gradient in the block are counted in the notes both carry (and on stderr)."""
    import dpaudit.attacks.reconstruction as reconstruction
    from dpaudit.attacks.imprint import DEAD_BLOCK_RHO, ImageStatistics

    real = reconstruction.image_statistics

    def weak_first(*args, **kwargs) -> ImageStatistics:  # the first image's block holds 1/100 of the threshold
        s = real(*args, **kwargs)
        block = s.block_norm.copy()
        block[0] = s.grad_norm[0] * DEAD_BLOCK_RHO["linear"] / 100
        return ImageStatistics(s.delta, s.active_rows, s.grad_norm, block, s.x_norm1)

    monkeypatch.setattr(reconstruction, "image_statistics", weak_first)
    res = run("--arch", "smallcnn", "--dataset", "demo", "--image-size", "16", "--n-images", "3", "--sigmas", "0",
              "--device", "cpu", "--json", "--out", str(tmp_path / "a"))
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    record = json.loads((tmp_path / "a" / "attack.json").read_text())
    assert obj["device"] == record["settings"]["device"] == "cpu"
    weak = [n for n in obj["notes"] if "imprint block" in n]
    assert weak == [f"1 of {obj['rows'][0]['n_images']} images hold less than 0.1 of their per-sample gradient norm "
                    "in the imprint block (linear connection); their reconstructions are noisier, so the success "
                    "rate may understate the risk for them"]
    assert record["result"]["notes"] == obj["notes"]
    assert "1 of" in " ".join(res.stderr.split()) and "understate the risk" in " ".join(res.stderr.split())


def test_progress_without_a_terminal_ends_each_stage_at_its_total() -> None:
    """In a log (no terminal) the progress lines come at every tenth of the work, and every stage's last step
    is shown: with 8 images and 3 noise levels a tenth fell on image 7, and "8/8" never appeared."""
    res = CliRunner().invoke(app, ["attack", "--dataset", "demo", "--image-size", "16", "--max-images", "60",
                                   "--arch", "smallcnn", "--n-images", "8", "--sigmas", "0,0.1,1", "--threads", "1"])
    assert res.exit_code == 0, res.output
    lines = [x for x in res.stderr.splitlines() if x.startswith("attack: ")]
    assert "attack: gradients of 8/8 images" in lines and lines[-1].startswith("attack: noise level 3/3"), lines
    assert len(lines) == len(set(lines))  # no step twice


def _patients_manifest(root: Path, rng: np.random.Generator, sizes: list[int]) -> Path:
    """A CSV manifest (path,label,patient_id) of small PNGs: patient i holds sizes[i] images, labels alternating."""
    rows = ["path,label,patient_id"]
    for pat, size in enumerate(sizes):
        for j in range(size):
            name = f"p{pat}_{j}.png"
            Image.fromarray(rng.integers(0, 255, size=(20, 20), dtype=np.uint8)).save(root / name)
            rows.append(f"{name},{'ab'[(pat + j) % 2]},P{pat}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def test_a_random_model_is_attacked_on_the_whole_datas_training_split_with_trains_k(
        tmp_path: Path, rng: np.random.Generator) -> None:
    """Patients with several images: a part of the data split on its own held too few training images (whole
    patients are kept together) and fewer per patient. The attack loads the data as train does: --n-images images
    are attacked, and k and its source are train's."""
    from dpaudit.data import load_splits, privacy_unit

    sizes = [6, 5, 6, 4, 6, 5, 3, 6, 2, 6, 5, 6]
    manifest = _patients_manifest(tmp_path, rng, sizes)
    dataset = f"csv:{manifest}"
    full = load_splits(dataset, image_size=16, seed=0)
    # What the attack used to load (enough images for --n-images 4 at a 70% training share): short, and a smaller k.
    part = load_splits(dataset, image_size=16, seed=0, max_images=9)
    assert len(part.train) < 4 < len(full.train)
    assert privacy_unit(part).records_per_patient < privacy_unit(full).records_per_patient
    trained = runner.invoke(app, ["train", "--dataset", dataset, "--arch", "smallcnn", "--image-size", "16",
                                  "--non-private", "--epochs", "1", "--batch-size", "8", "--threads", "1", "--json"])
    assert trained.exit_code == 0, trained.output
    privacy = json.loads(trained.stdout)["privacy"]
    res = run("--dataset", dataset, "--arch", "smallcnn", "--image-size", "16", "--n-images", "4", "--sigmas", "0",
              "--threads", "1", "--json")
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert [r["n_images"] for r in obj["rows"]] == [4]
    assert obj["records_per_patient"] == privacy["records_per_patient"] == privacy_unit(full).records_per_patient
    n = len(full.train)
    assert obj["records_per_patient_from"] == f"the whole data's training split, as train splits it ({n} images)"
    assert "warning" not in res.stderr

    # More than the whole data's training split holds: attacked whole, and the warning gives its true counts.
    res = run("--dataset", dataset, "--arch", "smallcnn", "--image-size", "16", "--n-images", "500",
              "--sigmas", "0", "--threads", "1", "--json")
    assert res.exit_code == 0, res.output
    assert [r["n_images"] for r in json.loads(res.stdout)["rows"]] == [n]
    units = full.images_per_unit().n_units
    assert (f"warning: --n-images 500 asked, but the whole data's training split holds {n} images of {units} "
            f"patients (as train splits it); attacking all {n}.") in " ".join(res.stderr.split())


def test_a_max_images_part_too_small_says_so_with_its_counts_and_the_fix(tmp_path: Path,
                                                                           rng: np.random.Generator) -> None:
    """--max-images loads a part, split on its own: a training split short of --n-images is named with the part's
    true counts and the fix (a flag of attack), and k is labelled as the part's."""
    manifest = _patients_manifest(tmp_path, rng, [6, 5, 6, 4, 6, 5, 3, 6, 2, 6, 5, 6])
    res = run("--dataset", f"csv:{manifest}", "--arch", "smallcnn", "--image-size", "16", "--n-images", "8",
              "--max-images", "9", "--sigmas", "0", "--threads", "1", "--json")
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    held = obj["rows"][0]["n_images"]
    assert held < 8
    err = " ".join(res.stderr.split())
    assert "warning: --n-images 8 asked, but the training split of the" in err
    assert "that --max-images 9 loaded holds" in err and f"attacking all {held}." in err
    assert "Fix: leave out --max-images (all the data), or pass --max-images 18 or more." in err
    assert obj["records_per_patient_from"].startswith("the training split of the --max-images 9 loaded here (")
