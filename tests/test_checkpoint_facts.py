"""A checkpoint's record of its training split is checked as a whole: the privacy-unit facts `dpaudit train` writes
together (all or none), its images-per-unit histogram against n_train, n_units, images_per_unit_max and the mean, and
its sampling probability against batch_size / n_train. An edited file whose facts disagree would give bounds below
the run's (a smaller k, a smaller kappa = 1/n_train): it is refused with one line naming the file, the fields and a
fix whose flags exist on the command that read it (exit 2)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dpaudit.checkpoint import (
    UNIT_KEYS,
    CheckpointMeta,
    TrainingFactsError,
    check_recorded_unit,
    save_checkpoint,
)
from dpaudit.cli.main import app
from dpaudit.config import DpSgdConfig
from dpaudit.models import build_model

runner = CliRunner()

#: The reviewer's run (dpaudit train --dataset demo --max-images 200 --batch-size 32): N = 139, q = 32/139, its
#: training split's counts as train wrote them (97 lesions, at most 4 images of one).
N, BATCH = 139, 32
FACTS = {"privacy_unit": "patient", "data_unit": "lesion", "records_per_patient": 4, "images_per_unit_max": 4,
         "images_per_unit_mean": 139 / 97, "n_units": 97, "images_per_unit_histogram": "[[1, 65], [2, 23], [3, 8], [4, 1]]"}
DP = DpSgdConfig(0.777535781886367, BATCH / N, 5, target_delta=8e-7)


def _checkpoint(tmp_path: Path, extra: dict, top: dict | None = None, **edits: object) -> Path:
    """A valid checkpoint of that run, then edited in the file as a user would (``...`` deletes a key)."""
    meta = CheckpointMeta(arch="smallcnn", num_classes=2, arch_args={"width": 4}, input_shape=(3, 8, 8),
                          dataset="demo", n_train=N, dp=DP, epochs=1, batch_size=BATCH, extra={"seed": 0})
    path = save_checkpoint(tmp_path / "model.pt", build_model("smallcnn", num_classes=2, width=4), meta)
    payload = torch.load(path, weights_only=True)
    payload["extra"] = {"seed": 0, **extra}
    for key, value in edits.items():
        if value is ...:
            payload["extra"].pop(key, None)
        else:
            payload["extra"][key] = value
    payload.update(top or {})
    torch.save(payload, path)
    return path


def _refused(args: list[str], path: Path) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    line = " ".join(res.output.split())
    assert line.startswith(f"error: --model: checkpoint {str(path)!r}: ") and "Fix: " in line, line
    assert "must be not" not in line
    return line


def test_the_reviewers_partial_set_is_refused_not_read_as_a_smaller_k(tmp_path: Path) -> None:
    # data_unit and images_per_unit_max deleted, k 4 -> 2: it gave exit 0 and epsilon per patient 17.96 (k 2)
    # where the run's is 41.84 (k 4).
    path = _checkpoint(tmp_path, FACTS, data_unit=..., images_per_unit_max=..., records_per_patient=2)
    line = _refused(["bounds", "--model", str(path), "--json"], path)
    assert "extra['data_unit'] must be recorded" in line and "lacks data_unit, images_per_unit_max" in line


@pytest.mark.parametrize("key", UNIT_KEYS)
@pytest.mark.parametrize("how", ["deleted", "None"])
def test_each_unit_fact_missing_from_the_set_is_named(tmp_path: Path, key: str, how: str) -> None:
    path = _checkpoint(tmp_path, FACTS, **{key: ... if how == "deleted" else None})
    line = _refused(["bounds", "--model", str(path), "--json"], path)
    assert f"extra[{key!r}]" in line and "got None" in line


def test_no_unit_facts_at_all_is_a_hand_made_file_and_the_flags_give_the_unit(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, {})
    res = runner.invoke(app, ["bounds", "--model", str(path), "--records-per-patient", "4", "--json"])
    assert res.exit_code == 0, res.output
    ref = runner.invoke(app, ["bounds", "--model", str(_checkpoint(tmp_path, FACTS)), "--json"])
    assert json.loads(res.stdout)["epsilon_patient"] == json.loads(ref.stdout)["epsilon_patient"]


@pytest.mark.parametrize(("edits", "top", "words"), [
    ({"images_per_unit_histogram": "[[1, 10], [9, 3]]", "n_units": 13, "images_per_unit_mean": 37 / 13}, None,
     "images x units sum to 37, n_train is 139"),
    ({}, {"n_train": 10**6}, "images x units sum to 139, n_train is 1000000"),  # the reviewer's kappa 1e-6
    ({"n_units": 96}, None, "96 units (extra['n_units']), it counts 97"),
    ({"images_per_unit_histogram": "[[1, 65], [2, 23], [3, 8], [4, 1]]", "images_per_unit_max": 3,
      "records_per_patient": 3}, None, "largest bin of extra['images_per_unit_max'] (3) images, its largest is 4"),
    ({"images_per_unit_mean": 1.0}, None, "extra['images_per_unit_mean'] must be n_train / extra['n_units']"),
    ({"images_per_unit_histogram": "not json"}, None, "a JSON list of [images, units] pairs"),
    ({"images_per_unit_histogram": "[[1, 139], [1, 0]]"}, None, "a JSON list of [images, units] pairs"),
    ({"images_per_unit_histogram": "[[1, 65], [1, 23]]"}, None, "one per number of images"),
])
def test_a_histogram_that_disagrees_with_the_other_facts_is_refused(tmp_path: Path, edits: dict, top: dict | None,
                                                                    words: str) -> None:
    path = _checkpoint(tmp_path, {**FACTS, **edits}, top)
    line = _refused(["bounds", "--model", str(path), "--json"], path)
    assert words in line, line


@pytest.mark.parametrize(("top", "words"), [
    ({"n_train": 10**6}, "dp.sampling_probability must be batch_size / n_train (32 / 1000000 = 3.2e-05"),
    ({"n_train": 1390}, "dp.sampling_probability must be batch_size / n_train (32 / 1390"),
    ({"batch_size": 16}, "dp.sampling_probability must be batch_size / n_train (16 / 139"),
    ({"batch_size": 10**6}, "batch_size must be an integer in [1, n_train] (139"),
])
def test_a_sampling_probability_that_is_not_batch_size_over_n_train_is_refused(tmp_path: Path, top: dict,
                                                                                words: str) -> None:
    # Without unit facts only these three say the prior: n_train 10**6 gave kappa 1e-6 and a worst-case ReRo bound of
    # 11.8% where the run's (kappa 1/139) is 61.8%, with exit 0.
    path = _checkpoint(tmp_path, {}, top)
    line = _refused(["bounds", "--model", str(path), "--json"], path)
    assert words in line, line


def test_a_valid_checkpoint_still_loads_with_q_exactly_batch_size_over_n_train(tmp_path: Path) -> None:
    res = runner.invoke(app, ["bounds", "--model", str(_checkpoint(tmp_path, FACTS)), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["records_per_patient"] == 4


def test_a_volume_checkpoint_records_as_many_training_volumes_as_its_histogram_counts() -> None:
    facts = {"privacy_unit": "patient", "data_unit": "volume", "records_per_patient": 6, "images_per_unit_max": 6,
             "images_per_unit_mean": 5.0, "n_units": 4, "images_per_unit_histogram": "[[4, 2], [6, 2]]"}
    assert check_recorded_unit({**facts, "n_train_volumes": 4}, 20, "segmentation").records_per_patient == 6
    with pytest.raises(TrainingFactsError, match=r"extra\['n_train_volumes'\] must be extra\['n_units'\] \(4"):
        check_recorded_unit({**facts, "n_train_volumes": 10}, 20, "segmentation")


def _flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))


@pytest.mark.parametrize(("command", "args"), [
    ("bounds", ["--json"]),
    ("calibrate", ["--max-rero", "0.1", "--json"]),
    ("attack", ["--dataset", "demo", "--n-images", "2", "--sigmas", "0", "--json"]),
])
def test_each_command_names_its_own_flags_in_the_fix(tmp_path: Path, command: str, args: list[str]) -> None:
    path = _checkpoint(tmp_path, FACTS, records_per_patient=1)
    line = _refused([command, "--model", str(path), *args], path)
    fix = line.split(" Fix: ", 1)[1]
    assert "dpaudit train --out DIR" in fix
    helptext = runner.invoke(app, [command, "--help"], terminal_width=200).output
    missing = {f for f in _flags(fix) if f not in _flags(helptext) and f != "--out"}  # --out: train's flag
    assert not missing, (missing, fix)
    if command == "calibrate":
        assert "--sigma" not in _flags(fix)


def test_attack_refuses_a_checkpoint_whose_k_is_below_the_data_it_loaded(tmp_path: Path) -> None:
    # Consistent in itself (every lesion one image, k 1) but the training split loaded here has a lesion of 4
    # images: the recorded k would be no per-patient bound for it.
    one = {**FACTS, "records_per_patient": 1, "images_per_unit_max": 1, "images_per_unit_mean": 1.0, "n_units": N,
           "images_per_unit_histogram": f"[[1, {N}]]"}
    path = _checkpoint(tmp_path, one)
    res = runner.invoke(app, ["attack", "--model", str(path), "--dataset", "demo", "--max-images", "200",
                              "--n-images", "2", "--sigmas", "0", "--json"])
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert line.startswith(f"error: --model: checkpoint {str(path)!r} does not match the data loaded: its "
                           "extra['records_per_patient'] is 1, but one patient has 4 images"), line
    assert "dpaudit train --out DIR" in line and "Traceback" not in res.output
    # another split of the same data (a larger one, another seed) may hold more per patient than the model's did
    for other in (["--max-images", "300"], ["--max-images", "200", "--seed", "1"]):
        res = runner.invoke(app, ["attack", "--model", str(path), "--dataset", "demo", *other, "--n-images", "2",
                                  "--sigmas", "0", "--json"])
        assert res.exit_code == 0, (other, res.output)
    ok = runner.invoke(app, ["attack", "--model", str(_checkpoint(tmp_path, FACTS)), "--dataset", "demo",
                             "--max-images", "200", "--n-images", "2", "--sigmas", "0", "--json"])
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("unit", ["patient", "image"])
def test_what_train_writes_of_a_real_split_passes_the_checks(unit: str) -> None:
    from dpaudit.audit.train import _privacy_scalars
    from dpaudit.data import load_splits, privacy_unit

    splits = load_splits("demo", image_size=8, max_images=200)
    scalars = _privacy_scalars(privacy_unit(splits, unit))
    recorded = check_recorded_unit(scalars, len(splits.train), "classification")
    assert recorded is not None and recorded.privacy_unit == unit


def test_what_train_writes_of_a_segmentation_split_passes_the_checks() -> None:
    from dpaudit.audit.train import _privacy_scalars
    from dpaudit.data import privacy_unit
    from dpaudit.volumes import load_segmentation_splits

    splits = load_segmentation_splits("demo-ct", image_size=16, max_volumes=4)
    scalars = {**_privacy_scalars(privacy_unit(splits)), "n_train_volumes": splits.n_train_volumes}
    assert check_recorded_unit(scalars, len(splits.train), "segmentation").data_unit == "volume"
