"""`dpaudit profile --inits`: every budget trained from each initialisation, MCC per epsilon per init in the
report; budgets past the noise search range labelled with the epsilon actually used. The init is pretrained here, on other synthetic data (stripes), never downloaded."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pypdf import PdfReader
from typer.testing import CliRunner

from dpaudit.audit.profile import plan_training, run_profile
from dpaudit.audit.profile.schema import Profile, ProfileConfig
from dpaudit.audit.report import render_report
from dpaudit.audit.train import TrainConfig, train
from dpaudit.bounds.calibrate import SIGMA_RANGE
from dpaudit.cli.main import app
from dpaudit.errors import ConfigError, DpAuditError

TINY = dict(dataset="demo", image_size=16, max_images=60, arch="smallcnn", non_private=True, seeds=1, epochs=1,
            batch_size=8, attack_images=4, attack_epochs=1, decoders=("strong",))


@pytest.fixture
def pretrained(tmp_path: Path, stripes_splits) -> str:  # type: ignore[no-untyped-def]
    res = train(TrainConfig(arch="smallcnn", non_private=True, epochs=1, batch_size=8, image_size=16, threads=1,
                            out=str(tmp_path / "pre")), splits=stripes_splits)
    return str(res.checkpoint)


def test_scratch_keys_unchanged_and_bad_inits(tmp_path: Path, pretrained: str) -> None:
    plain = {t.key() for t in plan_training(ProfileConfig(epsilons=(8.0,), **TINY), tmp_path)}
    both = plan_training(ProfileConfig(epsilons=(8.0,), inits=("scratch", pretrained), **TINY), tmp_path)
    assert plain <= {t.key() for t in both} and len(both) == 2 * len(plain)  # scratch runs resume as before
    assert all(t.init_sha256 for t in both if t.init)
    for bad in (("scratch", "scratch"), ("missing.pt",), ()):
        with pytest.raises(ConfigError, match="inits"):
            ProfileConfig(epsilons=(8.0,), inits=bad, **TINY)
    with pytest.raises(ConfigError, match="trainable"):
        ProfileConfig(epsilons=(8.0,), trainable="some", **TINY)
    wide = ProfileConfig(epsilons=(8.0,), arch_args='{"width": 4}', fix_batchnorm=True, **TINY)
    assert "--arch-args" in wide.command() and "--fix-batchnorm" in wide.command()
    assert not {t.key() for t in plan_training(wide, tmp_path)} & plain  # other arguments, other runs
    with pytest.raises(ConfigError, match="arch_args"):
        ProfileConfig(epsilons=(8.0,), arch_args="[1, 2]", **TINY)


def test_profile_compares_inits_and_labels_budgets_past_the_range(tmp_path: Path, pretrained: str) -> None:
    config = ProfileConfig(epsilons=(8.0, 1e12), inits=("scratch", pretrained), trainable="head", **TINY)
    prof = run_profile(config, tmp_path / "run", threads=1)
    assert {t.init for t in prof.train} == {"scratch", "model.pt"}
    assert len(prof.train) == 2 * 3  # two inits x (8, 1e12, non-private) x one seed
    assert {t.trainable for t in prof.train if t.init == "model.pt"} == {"head"}
    levels = prof.levels()
    for lv in levels:
        assert list(lv.mcc_by_init) == ["scratch", "model.pt"]
        assert all(sp.n == 1 for sp in lv.mcc_by_init.values())
        assert all(t.init == "scratch" for t in lv.train)  # the first init drives bounds and attack
    huge = next(lv for lv in levels if lv.epsilon_target == 1e12)
    assert huge.train[0].noise_multiplier == SIGMA_RANGE[0]
    assert huge.epsilon_used < 1e12 and "asked" in huge.label and huge.notes
    assert huge.attack is not None and huge.attack.rows[0].epsilon < 1e12 and huge.attack.notes
    ok = next(lv for lv in levels if lv.epsilon_target == 8.0)
    assert ok.label == "ε = 8" and not ok.notes
    assert Profile.from_json(prof.to_json()) == prof  # the new fields round-trip through profile.json

    pdf = render_report(prof, tmp_path / "report.pdf")
    text = " ".join("".join(p.extract_text() for p in PdfReader(io.BytesIO(Path(pdf).read_bytes())).pages).split())
    assert "Utility per initialisation" in text and "from model.pt" in text and "from scratch" in text
    assert "fine-tuning data only" in text
    assert "beyond the noise search range" in text and "asked" in text


def test_cli_inits_flag(tmp_path: Path, pretrained: str) -> None:
    res = CliRunner().invoke(app, ["profile", "--dataset", "demo", "--image-size", "16", "--max-images", "60",
                                   "--arch", "smallcnn", "--epsilons", "8", "--no-non-private", "--seeds", "1",
                                   "--epochs", "1", "--batch-size", "8", "--attack-images", "4",
                                   "--attack-epochs", "1", "--decoder", "strong", "--inits", f"scratch,{pretrained}",
                                   "--threads", "1", "--no-render", "--out", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert "MCC (empirical) per initialisation" in " ".join(res.output.split())


def test_a_wrong_weights_file_stops_the_profile_before_any_run_trains(tmp_path: Path, pretrained: str,
                                                                      monkeypatch) -> None:
    # Weights for another width: the scratch runs come first in the plan, but nothing trains before the file is
    # refused (it was refused only when its own first run started).
    import dpaudit.audit.train as T

    wrong = tmp_path / "wide"
    train(TrainConfig(arch="smallcnn", arch_args={"width": 4}, non_private=True, epochs=1, batch_size=8,
                      image_size=16, max_images=60, threads=1, out=str(wrong)))
    trained: list[object] = []
    monkeypatch.setattr(T, "_run_one", lambda *a, **k: trained.append(a))
    config = ProfileConfig(epsilons=(8.0,), inits=("scratch", str(wrong / "model.pt")), **TINY)
    with pytest.raises(DpAuditError, match="init must be weights for smallcnn"):
        run_profile(config, tmp_path / "run", threads=1)
    assert not trained and not list((tmp_path / "run").glob("checkpoints/*/*/model.pt"))


def test_init_labels_are_unique_per_file() -> None:
    from dpaudit.audit.profile.tasks import init_labels_of

    assert init_labels_of([None, "/x/a.pt", "/y/b.pt"], [None, "1" * 64, "2" * 64]) == ("scratch", "a.pt", "b.pt")
    # `dpaudit train --out` always writes model.pt: two folders' model.pt are two inits, told apart by digest
    assert init_labels_of(["/c5/model.pt", "/tr5/model.pt"], ["ebdabf60" + "0" * 56, "64cb97ec" + "0" * 56]) == (
        "model.pt (ebdabf60)", "model.pt (64cb97ec)")
    # two copies of one file: still two labels (their place in --inits)
    copies = init_labels_of(["/a/model.pt", "/b/model.pt", "/c/scratch"], ["d" * 64, "d" * 64, "e" * 64])
    assert len(set(copies)) == 3 and copies[0] == "model.pt (dddddddd, #1 in --inits)"
    assert copies[2] == "scratch"


def test_two_init_files_of_one_name_are_never_pooled(tmp_path: Path, pretrained: str) -> None:
    import torch

    from dpaudit.models import build_model

    # a second model.pt in another folder: other weights, with a 5-class head (freshly initialised on load)
    other = tmp_path / "other" / "model.pt"
    other.parent.mkdir()
    torch.manual_seed(3)
    torch.save(build_model("smallcnn", num_classes=5, in_channels=3).state_dict(), other)
    res = CliRunner().invoke(app, ["profile", "--dataset", "demo", "--image-size", "16", "--max-images", "60",
                                   "--arch", "smallcnn", "--epsilons", "8", "--no-non-private", "--seeds", "1",
                                   "--epochs", "1", "--batch-size", "8", "--attack-images", "4",
                                   "--attack-epochs", "1", "--decoder", "strong", "--inits", f"{pretrained},{other}",
                                   "--threads", "1", "--out", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    prof = Profile.from_json((tmp_path / "cli" / "profile.json").read_text())
    labels = [t.init for t in prof.train]
    assert len(labels) == 2 and len(set(labels)) == 2 and all(lab.startswith("model.pt (") for lab in labels)
    (lv,) = prof.levels()
    assert list(lv.mcc_by_init) == labels and all(s.n == 1 for s in lv.mcc_by_init.values())
    assert len(lv.train) == 1 and lv.train[0].init == labels[0]  # the bounds and the attack: the first init only
    assert Profile.from_json(prof.to_json()) == prof
    # the head freshly initialised for the demo's classes is said once on the console and in the report
    text = " ".join(res.output.split())
    assert text.count("freshly initialised") == 1 and f"--inits {labels[1]}: final layer" in text
    pdf = " ".join("".join(p.extract_text() for p in PdfReader(tmp_path / "cli" / "report.pdf").pages).split())
    assert f"from {labels[0]}" in pdf and f"from {labels[1]}" in pdf
    assert f"Loading {labels[1]}: final layer" in pdf and "n = 2" not in pdf

    # A profile.json written when both runs carried the label 'model.pt' (pooled) reads them apart again, by
    # their checkpoint folders; one with plain, distinct names reads as it was.
    import json

    data = json.loads((tmp_path / "cli" / "profile.json").read_text())
    for t in data["train"]:
        t["init"] = "model.pt"
    old = Profile.from_json(json.dumps(data))
    assert [t.init for t in old.train] == labels
    for t, name in zip(data["train"], ("a.pt", "b.pt"), strict=True):
        t["init"] = name
    (plain,) = Profile.from_json(json.dumps(data)).levels()
    assert list(plain.mcc_by_init) == ["a.pt", "b.pt"]
