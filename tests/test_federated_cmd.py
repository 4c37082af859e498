"""`dpaudit federated train` and `dpaudit federated attack` through the CLI."""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from pathlib import Path

import numpy as np
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
    # The spread across sites is known only when two sites have a measured MCC; otherwise it is null (not
    # defined, with its reason), never 0.
    measured = [c["test_mcc"] for c in data["clients"] if isinstance(c["test_mcc"], float)]
    if len(measured) > 1:
        assert data["mcc_spread"] == pytest.approx(max(measured) - min(measured))
    else:
        assert data["mcc_spread"] is None and data["mcc_std"] is None
        assert "fewer than two published sites" in data["undefined"]["mcc_spread"]


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
    for name in ("dataset", "data_dir", "image_size", "max_images", "labels", "window", "slice_axis", "arch",
                 "fix_batchnorm", "clients", "batch_size", "seed"):
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


def _manifest(tmp_path: Path, split_patients: int) -> str:
    """40 patients x 4 PNGs, sites A and B; the first ``split_patients`` patients have images at both sites."""
    from PIL import Image

    rng = np.random.default_rng([40, split_patients])
    rows = ["path,label,patient_id,site"]
    for p in range(40):
        lab = p % 2
        for j in range(4):
            name = f"p{p}_{j}.png"
            Image.fromarray((rng.random((8, 8)) * 100 + 150 * lab).astype(np.uint8)).save(tmp_path / name)
            site = ("A" if j < 2 else "B") if p < split_patients else ("A" if p < 20 else "B")
            rows.append(f"{name},{lab},SMITH^JOHN{p},{site}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return f"csv:{tmp_path / 'm.csv'}"


def _one_line_error(res) -> str:
    line = res.output.strip()
    assert res.exit_code == 2 and line.startswith("error: ") and "\n" not in line and "Traceback" not in line, line
    return line


@pytest.mark.parametrize("dp_level", ["sample", "client"])
def test_a_site_column_that_splits_patients_is_refused_before_training(tmp_path, monkeypatch, dp_level) -> None:
    import dpaudit.audit.train

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the partition splits patients")

    monkeypatch.setattr(dpaudit.audit.train, "_run_one", no_training)
    res = CliRunner().invoke(app, ["federated", "train", "--dataset", _manifest(tmp_path, 5), "--image-size", "8",
                                   "--partition", "column:site", "--clients", "2", "--dp-level", dp_level,
                                   "--rounds", "1", "--epsilon", "8", "--arch", "smallcnn", "--threads", "1"])
    line = _one_line_error(res)
    assert re.search(r"--partition column:site puts the images of [1-5] patient\(s\) at more than one site", line)
    assert "Fix: pass --partition iid or --partition dirichlet:ALPHA" in line
    assert "SMITH" not in res.output and "JOHN" not in res.output


def test_the_profile_refuses_a_patient_splitting_site_column_before_any_task(tmp_path) -> None:
    from dpaudit.audit.profile import run_profile
    from dpaudit.audit.profile.schema import ProfileConfig
    from dpaudit.errors import ConfigError

    config = ProfileConfig(dataset=_manifest(tmp_path, 5), image_size=8, arch="smallcnn", epsilons=(8.0,),
                           non_private=False, seeds=1, epochs=1, batch_size=8, attack_images=2, federated=True,
                           federated_clients=2, federated_partition="column:site")
    with pytest.raises(ConfigError, match=r"--federated-partition column:site puts the images of"):
        run_profile(config, tmp_path / "out", threads=1)
    assert not any(p.suffix == ".json" for p in (tmp_path / "out").rglob("*"))  # no task ran


def test_a_site_column_that_keeps_patients_together_trains(tmp_path) -> None:
    res = CliRunner().invoke(app, ["federated", "train", "--dataset", _manifest(tmp_path, 0), "--image-size", "8",
                                   "--partition", "column:site", "--clients", "2", "--rounds", "1", "--epsilon", "8",
                                   "--batch-size", "8", "--arch", "smallcnn", "--arch-args", '{"width": 4}',
                                   "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    # every patient has its 4 images at its one site: k = 4 wherever a patient trains
    assert {c["records_per_patient"] for c in data["clients"]} == {4}


BATCHNORM_NET = """
from torch import nn


def build(num_classes, in_channels=3, width=4):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
"""


@pytest.mark.parametrize("command", [
    ["train", "--clients", "2", "--rounds", "1", "--batch-size", "8", "--epsilon", "8", "--max-images", "80"],
    ["attack", "--clients", "2", "--rounds", "1", "--bins", "8", "--sigmas", "0", "--max-images", "60"]])
def test_batchnorm_is_one_line_with_a_fix_the_command_has_and_the_fix_works(tmp_path, command) -> None:
    (tmp_path / "bn.py").write_text(textwrap.dedent(BATCHNORM_NET))
    args = ["federated", *command, "--image-size", "16", "--arch", f"{tmp_path / 'bn.py'}:build", "--threads", "1"]
    line = _one_line_error(CliRunner().invoke(app, args))
    assert "1 layer(s) cannot be trained with DP-SGD" in line and "pass --fix-batchnorm" in line
    res = CliRunner().invoke(app, [*args, "--fix-batchnorm", "--json"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(("command", "target"), [("train", "dpaudit.audit.federated.fedavg.run_federated"),
                                                 ("attack", "dpaudit.attacks.federated.run_federated_attack")])
def test_data_and_model_options_reach_the_configuration(monkeypatch, command, target) -> None:
    from dpaudit.errors import ConfigError

    seen = {}

    def capture(config, **kwargs):
        seen["config"] = config
        raise ConfigError("stopped before the run. Fix: none needed.")

    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(module + "." + name, capture)
    res = CliRunner().invoke(app, ["federated", command, "--dataset", "dicom:/nowhere", "--labels", "l.csv",
                                   "--window", "-100,200", "--arch", "smallcnn", "--arch-args", '{"width": 4}',
                                   "--fix-batchnorm", *(["--epsilon", "8"] if command == "train" else [])])
    assert res.exit_code == 2 and "stopped before the run" in res.output, res.output
    c = seen["config"]
    assert (c.labels, c.window, c.slice_axis, dict(c.arch_args), c.fix_batchnorm) == (
        "l.csv", (-100.0, 200.0), "axial", {"width": 4}, True)


def test_window_on_the_demo_is_refused_by_federated_commands() -> None:
    for command in (["train", "--epsilon", "8"], ["attack"]):
        line = _one_line_error(CliRunner().invoke(app, ["federated", *command, "--window", "0,1"]))
        assert "--window" in line


def _options(command: str) -> set[str]:
    import typer

    cmd = typer.main.get_command(app).commands["federated"].commands[command]  # type: ignore[attr-defined]
    return {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", ())) if o.startswith("--")}


def test_every_flag_the_federated_errors_name_is_an_option_of_the_command() -> None:
    """A static scan: each --flag written in the modules behind `federated train` (and the profile's partition
    check, whose prefix is --federated-) or `federated attack` is an option of that command."""
    import importlib
    import inspect

    modules = {"train": ["dpaudit.audit.federated.fedavg", "dpaudit.audit.federated.partition",
                         "dpaudit.audit.federated.accounting"],
               "attack": ["dpaudit.attacks.federated", "dpaudit.attacks.federated_results"]}
    for command, names in modules.items():
        options = _options(command)
        for f in names:
            text = inspect.getsource(importlib.import_module(f))
            flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z](?![\w-])", text))
            missing = flags - options
            assert not missing, (command, f, sorted(missing))
    assert {"--fix-batchnorm", "--arch-args", "--labels", "--window", "--slice-axis"} <= _options("train")
    assert {"--fix-batchnorm", "--arch-args", "--labels", "--window", "--slice-axis"} <= _options("attack")


def test_help_and_json_labels() -> None:
    res = CliRunner().invoke(app, ["federated", "train", "--help"], env={"COLUMNS": "400"})
    line = next(x for x in res.output.splitlines() if "--epsilon" in x)
    assert "per image" in line
    res = CliRunner().invoke(app, ["federated", "attack", "--image-size", "16", "--max-images", "60", "--arch",
                                   "smallcnn", "--clients", "2", "--bins", "8", "--sigmas", "0", "--rounds", "1",
                                   "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    # settings carry no label: the noise multiplier, and the per-view noise std it sets (sqrt(n) sigma C)
    numbers = {k for k, v in data["rows"][0].items() if isinstance(v, float)
               and k not in ("noise_multiplier", "noise_std_per_view")}
    labelled = {name.strip() for key in data["labels"] for name in key.split(",")}
    assert numbers <= labelled, numbers - labelled


def test_device_cpu_is_the_default_result_and_a_missing_gpu_is_one_line() -> None:
    """On a machine without a GPU ``auto`` is the CPU: explicit ``--device cpu`` gives the same numbers."""
    import torch

    train = ["federated", "train", "--image-size", "16", "--max-images", "80", "--arch", "smallcnn", "--clients",
             "2", "--rounds", "1", "--batch-size", "8", "--sigma", "1.0", "--threads", "1", "--json"]
    attack = ["federated", "attack", "--image-size", "16", "--max-images", "60", "--arch", "smallcnn", "--clients",
              "2", "--bins", "8", "--sigmas", "0,0.1", "--rounds", "1", "--threads", "1", "--json"]
    for args in (train, attack):
        cpu = CliRunner().invoke(app, [*args, "--device", "cpu"])
        assert cpu.exit_code == 0, cpu.output
        if not torch.cuda.is_available():
            auto = CliRunner().invoke(app, args)
            drop = ("wall_seconds",)
            a, b = json.loads(auto.stdout), json.loads(cpu.stdout)
            for key in drop:
                a.pop(key, None), b.pop(key, None)
            a.pop("config", None), b.pop("config", None)
            assert a == b
            line = _one_line_error(CliRunner().invoke(app, [*args, "--device", "cuda"]))
            assert "--device" in line and "Fix: pass --device cpu" in line


def test_cuda_gives_the_cpu_accounting_and_the_noise_free_attack() -> None:
    """Where a GPU is visible: the mechanism and every epsilon do not depend on the device; the attack at sigma 0
    reconstructs the same images; the models differ only in float32 rounding (MCC within a loose band)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible")
    train = ["federated", "train", "--image-size", "16", "--max-images", "80", "--arch", "smallcnn", "--clients",
             "2", "--rounds", "1", "--batch-size", "8", "--epsilon", "8", "--threads", "1", "--json"]
    attack = ["federated", "attack", "--image-size", "16", "--max-images", "60", "--arch", "smallcnn", "--clients",
              "2", "--bins", "8", "--sigmas", "0", "--rounds", "1", "--threads", "1", "--json"]
    runs = {}
    for device in ("cpu", "cuda"):
        for name, args in (("train", train), ("attack", attack)):
            res = CliRunner().invoke(app, [*args, "--device", device])
            assert res.exit_code == 0, res.output
            runs[name, device] = json.loads(res.stdout)
    cpu, gpu = runs["train", "cpu"], runs["train", "cuda"]
    assert gpu["noise_multiplier"] == cpu["noise_multiplier"] and gpu["epsilon"] == cpu["epsilon"]
    assert [c["epsilon"] for c in gpu["clients"]] == [c["epsilon"] for c in cpu["clients"]]
    assert abs(gpu["global_metrics"]["mcc"] - cpu["global_metrics"]["mcc"]) <= 0.5
    a, b = runs["attack", "cpu"]["rows"][0], runs["attack", "cuda"]["rows"][0]
    assert (a["success_rate"], a["alone_share"]) == (b["success_rate"], b["alone_share"])
    assert a["mean_ssim"] == pytest.approx(b["mean_ssim"], abs=1e-3)
