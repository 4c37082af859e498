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
