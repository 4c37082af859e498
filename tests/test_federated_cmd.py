"""`dpaudit federated train` and `dpaudit federated attack` through the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from dpaudit.cli.main import app


def test_train_json_reports_per_client_epsilon_and_mcc() -> None:
    res = CliRunner().invoke(app, ["federated", "train", "--image-size", "16", "--max-images", "80", "--arch",
                                   "smallcnn", "--clients", "2", "--rounds", "1", "--batch-size", "8", "--epsilon",
                                   "8", "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["dp_level"] == "sample" and len(data["clients"]) == 2
    assert all(c["epsilon"] <= 8 for c in data["clients"])
    assert "mcc" in data["global_metrics"] and all("test_mcc" in c for c in data["clients"])
    # The spread across sites is known only when two sites have a measured MCC; otherwise it is "nan", never 0.
    measured = [c["test_mcc"] for c in data["clients"] if isinstance(c["test_mcc"], float)]
    if len(measured) > 1:
        assert data["mcc_spread"] == pytest.approx(max(measured) - min(measured))
    else:
        assert data["mcc_spread"] == "nan" and data["mcc_std"] == "nan"


def test_attack_json_table() -> None:
    res = CliRunner().invoke(app, ["federated", "attack", "--image-size", "16", "--max-images", "60", "--arch",
                                   "smallcnn", "--clients", "2", "--batch-size", "2", "--bins", "8", "--sigmas",
                                   "0", "--rounds", "1", "--secure-aggregation", "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)["rows"][0]
    assert row["secure_aggregation"] is True and row["n_images"] == 4 and row["clients"] == 2


@pytest.mark.parametrize("args", [["train", "--partition", "shards", "--epsilon", "8"],
                                  ["train", "--dp-level", "client"],
                                  ["attack", "--sigmas", "-1"]])
def test_errors_are_one_line_exit_two(args) -> None:
    res = CliRunner().invoke(app, ["federated", *args])
    assert res.exit_code == 2
    assert "Fix:" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(("command", "config"), [("train", "FederatedConfig"), ("attack", "FederatedAttackConfig")])
def test_shared_options_default_to_the_config_dataclass(command, config) -> None:
    import typer

    from dpaudit.attacks.federated import FederatedAttackConfig
    from dpaudit.audit.federated import FederatedConfig

    cls = {"FederatedConfig": FederatedConfig, "FederatedAttackConfig": FederatedAttackConfig}[config]
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    cmd = typer.main.get_command(app).commands["federated"].commands[command]  # type: ignore[attr-defined]
    defaults = {p.name: p.default for p in cmd.params}
    for name in ("dataset", "data_dir", "image_size", "max_images", "arch", "clients", "batch_size", "seed"):
        assert defaults[name] == fields[name], (command, name)


def test_train_human_output_labels_every_number() -> None:
    res = CliRunner().invoke(app, ["federated", "train", "--image-size", "16", "--max-images", "80", "--arch",
                                   "smallcnn", "--clients", "2", "--rounds", "1", "--batch-size", "8", "--sigma",
                                   "1.0", "--secure-aggregation", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "sample level" in res.output and "sound upper bound" in res.output and "empirical" in res.output
    assert "only the sum" in res.output


def test_train_on_lesion_level_data_reports_the_per_patient_epsilon_as_train_does() -> None:
    """The demo carries lesion ids: as `dpaudit train`, the result states the privacy unit and the epsilon per
    patient, per site (that site's q_k, T_k and k_k, the k images of one patient moving together) and for the
    worst site; each is at least the site's per-record epsilon (group privacy) and is the tight PLD epsilon of that
    site's mechanism with k records."""
    from dpaudit.bounds import epsilon_bound

    args = ["federated", "train", "--image-size", "16", "--max-images", "80", "--arch", "smallcnn", "--clients", "2",
            "--rounds", "1", "--batch-size", "8", "--sigma", "1.0", "--threads", "1"]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["privacy"]["unit"] == "patient" and data["privacy"]["records_per_patient"] >= 2
    sites = [c for c in data["clients"] if c["epsilon_patient"] is not None]
    assert sites and all(c["records_per_patient"] >= 2 for c in sites)
    for c in sites:
        assert c["epsilon_patient"] > c["epsilon"]
        assert c["epsilon_patient"] == pytest.approx(epsilon_bound(
            1.0, c["sampling_probability"], c["steps"], data["target_delta"],
            records_per_patient=c["records_per_patient"]).value, rel=1e-12)
    assert data["epsilon_patient"] == max(c["epsilon_patient"] for c in sites)
    assert "epsilon_patient" in data["labels"] and "clients.epsilon_patient" in data["labels"]

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "privacy unit: patient" in res.output and "privacy per patient: worst-site epsilon" in res.output
    assert "eps/patient (UB)" in res.output

    # --privacy-unit image: the guarantee is per image, and the per-patient epsilon is given beside it with the
    # data's k, as `train --privacy-unit image` gives it
    patient = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    res = CliRunner().invoke(app, [*args, "--privacy-unit", "image", "--json"])
    data = json.loads(res.stdout)
    assert data["privacy"]["unit"] == "image" and data["privacy"]["records_per_patient"] == 1
    assert data["epsilon_patient"] == pytest.approx(patient["epsilon_patient"], rel=1e-12)
    assert [(c["records_per_patient"], c["epsilon_patient"]) for c in data["clients"]] == [
        (c["records_per_patient"], c["epsilon_patient"]) for c in patient["clients"]]


def test_client_level_dp_covers_each_patient_with_the_site_epsilon() -> None:
    res = CliRunner().invoke(app, ["federated", "train", "--image-size", "16", "--max-images", "80", "--arch",
                                   "smallcnn", "--clients", "2", "--rounds", "1", "--batch-size", "8", "--dp-level",
                                   "client", "--sigma", "1.0", "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["privacy"]["unit"] == "patient" and data["epsilon_patient"] == data["epsilon"]


@pytest.mark.parametrize(("args", "words"), [
    # Refused before loading: --max-images cannot hold 8 rounds x 4 clients x 2 images.
    (["--max-images", "12"], ["8 round(s) x 4 client(s) x batch 2 attack 64 distinct training images",
                              "--max-images 12 loads at most 12", "Fix: pass --max-images 95 or more",
                              "or fewer --rounds (about 1 fit)"]),
    # Not even one round fits: fewer clients or a smaller batch.
    (["--max-images", "5", "--rounds", "1"], ["Fix: pass --max-images 15 or more",
                                              "or fewer --clients or a smaller --batch-size (one round needs 8)"]),
    # Refused after loading: the training split (about 70%) holds fewer than the rounds need.
    (["--max-images", "60", "--rounds", "6"], ["attack 48 distinct training images", "the training split holds",
                                               "or fewer --rounds (at most"]),
])
def test_attack_with_too_few_images_says_so_and_how_to_fix_it(args, words) -> None:
    res = CliRunner().invoke(app, ["federated", "attack", "--image-size", "16", "--arch", "smallcnn", *args])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and text.startswith("error: too few training images for the attack"), text
    assert "at most 0" not in text and all(w in text for w in words), text
