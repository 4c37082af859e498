"""`dpaudit train`: DP-SGD and the non-private baseline on tiny fixtures of every loader, epsilon calibration,
checkpoints, metrics against independent references, bad inputs, the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data import make_folder, make_ham10000, make_medmnist
from torch import nn
from typer.testing import CliRunner

import dpaudit.audit.train as train_mod
from dpaudit.audit.metrics import auroc, balanced_accuracy, mcc
from dpaudit.audit.results import TrainResult
from dpaudit.audit.train import TrainConfig, _calibrate, check_dp_compatible, default_delta, train
from dpaudit.checkpoint import load_checkpoint
from dpaudit.cli.main import app
from dpaudit.codec import encode
from dpaudit.data import load_splits
from dpaudit.errors import ConfigError

TINY = dict(arch="smallcnn", arch_args={"width": 4}, epochs=1, batch_size=8, image_size=16, threads=1)


@pytest.fixture(scope="module")
def demo_splits():  # type: ignore[no-untyped-def]
    return load_splits("demo", image_size=16, max_images=160, seed=0)


# ------------------------------------------------------------------------------------------------ metrics


def test_mcc_equals_pearson_correlation_of_indicators(rng: np.random.Generator) -> None:
    # Binary MCC is the Pearson correlation of the 0/1 vectors (Matthews 1975); K-class R_K (Gorodkin 2004) is
    # the correlation of the one-hot matrices: sum cov / sqrt(sum var * sum var). numpy's corrcoef/cov as reference.
    y, p = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    assert mcc(y, p, 2) == pytest.approx(np.corrcoef(y, p)[0, 1], rel=1e-12)
    y3, p3 = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    ty, tp = np.eye(4)[y3], np.eye(4)[p3]
    cov = sum(np.cov(ty[:, k], tp[:, k])[0, 1] for k in range(4))
    var_y = sum(np.var(ty[:, k], ddof=1) for k in range(4))
    var_p = sum(np.var(tp[:, k], ddof=1) for k in range(4))
    assert mcc(y3, p3, 4) == pytest.approx(cov / np.sqrt(var_y * var_p), rel=1e-10)
    assert mcc(y, y, 2) == 1.0 and mcc(y, 1 - y, 2) == -1.0
    assert mcc(y, np.zeros_like(y), 2) == 0.0  # constant prediction: the 0/0 convention (Chicco & Jurman 2020)
    assert np.isnan(mcc(np.zeros(5, int), np.zeros(5, int), 2))  # one true class: undefined


def test_auroc_equals_pairwise_count_and_balanced_accuracy(rng: np.random.Generator) -> None:
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 1)  # rounded: many ties
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert auroc(y, np.stack([1 - s, s], 1)) == pytest.approx(brute, rel=1e-12)
    yt, yp = np.array([0, 0, 0, 0, 1, 1]), np.array([0, 0, 0, 1, 1, 0])
    assert balanced_accuracy(yt, yp, 2) == pytest.approx((3 / 4 + 1 / 2) / 2)


# ------------------------------------------------------------------------------------------------ config


def test_bad_inputs_give_clear_errors(demo_splits) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="epsilon must be a finite number > 0"):
        TrainConfig(epsilon=0.0)
    with pytest.raises(ConfigError, match="epsilon must be"):
        TrainConfig(epsilon=-1.0)
    with pytest.raises(ConfigError, match="arch must be a registry name"):
        TrainConfig(epsilon=8.0, arch="vgg16")
    with pytest.raises(ConfigError, match="exactly one of"):
        TrainConfig()
    with pytest.raises(ConfigError, match="exactly one of"):
        TrainConfig(epsilon=8.0, non_private=True)
    big = TrainConfig(non_private=True, **{**TINY, "batch_size": len(demo_splits.train) + 1})
    with pytest.raises(ConfigError, match="batch_size must be at most the number of training images"):
        train(big, splits=demo_splits)


def test_device_names_are_checked_and_auto_follows_cuda(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N"):
        TrainConfig(epsilon=8.0, device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_mod.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="pass --device cpu"):
        train_mod.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert train_mod.resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ConfigError, match="cuda:0 to cuda:0"):
        train_mod.resolve_device("cuda:3")


def test_model_check_lists_every_incompatible_layer() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4)),
                          nn.InstanceNorm2d(4, affine=True, track_running_stats=True))
    with pytest.raises(ConfigError) as info:
        check_dp_compatible(model)
    text = str(info.value)
    assert text.startswith("3 layer(s)")
    for name in ("1 BatchNorm2d (1)", "1 BatchNorm1d (2.0)", "1 InstanceNorm2d (3)", "GroupNorm",
                 "track_running_stats"):
        assert name in text
    check_dp_compatible(train_mod.build_model("resnet9", num_classes=2, scale_norm=True))


def test_default_delta_is_paper_value_or_one_over_ten_n() -> None:
    assert default_delta(10015) == 8e-7  # seed paper, section 4.4
    assert default_delta(1_000_000) == pytest.approx(1e-7)


def _check_calibration(grid: list[tuple[float, float, int]]) -> None:
    from dpaudit.bounds import epsilon_pld

    for eps, q, steps in grid:
        cfg = TrainConfig(epsilon=eps)
        sigma, achieved, achieved_rdp, _ = _calibrate(cfg, q, steps, 8e-7)
        assert achieved is not None and achieved_rdp is not None
        assert achieved <= eps
        assert achieved == pytest.approx(epsilon_pld(sigma, q, steps, 8e-7))
        # Tight: 2% more noise would already drop below the target by more than the calibration slack.
        assert epsilon_pld(sigma * 0.98, q, steps, 8e-7) > eps * 0.98
        assert achieved_rdp >= achieved * 0.999  # RDP is the looser of the two upper bounds


def test_achieved_epsilon_never_exceeds_target() -> None:
    _check_calibration([(8.0, 0.05, 40)])


@pytest.mark.slow
def test_achieved_epsilon_never_exceeds_target_across_a_grid() -> None:
    _check_calibration([(0.5, 0.05, 40), (1.0, 0.05, 40), (8.0, 0.05, 40), (8.0, 0.01, 500), (50.0, 0.2, 10),
                        (1e3, 0.02, 2000)])


# ------------------------------------------------------------------------------------------------ training


def test_dp_and_non_private_share_the_training_loop(demo_splits, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    calls: list[bool] = []
    original = train_mod._epoch

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[7])  # the `private` flag
        return original(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_epoch", spy)
    dp = train(TrainConfig(noise_multiplier=1.0, **TINY), splits=demo_splits)
    base = train(TrainConfig(non_private=True, **TINY), splits=demo_splits)
    assert calls == [True, False]
    assert dp.dp is not None and dp.dp.noise_multiplier == 1.0 and base.dp is None
    assert dp.steps == base.steps == -(-len(demo_splits.train) // 8)
    assert dp.epsilon_achieved is not None and dp.epsilon_achieved <= dp.epsilon_rdp + 1e-9  # type: ignore[operator]
    assert base.epsilon_achieved is None and base.noise_multiplier == 0.0
    for r in (dp, base):
        assert -1 <= r.metrics.mcc <= 1 and r.metrics.n == len(demo_splits.test)
        assert {g.group for g in r.metrics.subgroups} == {"sex", "age_band"}


def test_checkpoint_round_trips_and_outputs_exist(demo_splits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = TrainConfig(noise_multiplier=0.8, out=str(tmp_path / "run"), physical_batch_size=3,
                      augment_multiplicity=2, **TINY)
    result = train(cfg, splits=demo_splits)
    raw = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert raw["dp"]["noise_multiplier"] == 0.8
    dp = result.dp
    assert raw["phases"] == [[0.8, dp.sampling_probability, dp.steps]]  # the run's one phase, as Opacus' history
    ckpt = load_checkpoint(tmp_path / "run" / "model.pt")
    assert ckpt.dp == result.dp and ckpt.n_train == len(demo_splits.train) and ckpt.epochs == 1
    assert ckpt.batch_size == 8 and ckpt.input_shape == (3, 16, 16) and ckpt.mean == demo_splits.mean
    # The rebuilt model reproduces the reported test MCC.
    model = ckpt.build_model()
    x = (demo_splits.test.images - 0.5) / 0.5
    with torch.no_grad():
        probs = torch.softmax(model(x), 1).numpy()
    y = demo_splits.test.labels.numpy()
    assert mcc(y, probs.argmax(1), 2) == pytest.approx(result.metrics.mcc_argmax, abs=1e-12) or \
        np.isnan(result.metrics.mcc_argmax)
    # ... and at the operating point chosen on the validation split.
    if result.metrics.threshold is not None:
        pred = (probs[:, 1] >= result.metrics.threshold).astype(int)
        assert mcc(y, pred, 2) == pytest.approx(result.metrics.mcc, abs=1e-9)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epsilon_achieved"] == pytest.approx(result.epsilon_achieved)
    assert (tmp_path / "run" / "training_curve.png").stat().st_size > 1000


def test_a_few_steps_on_every_loader(tmp_path: Path, rng: np.random.Generator) -> None:
    make_ham10000(tmp_path / "ham", rng, n_lesions=30)
    (tmp_path / "mm").mkdir()
    make_medmnist(tmp_path / "mm" / "dermamnist.npz", rng, colour=True, counts=(24, 6, 6))
    make_medmnist(tmp_path / "mm" / "pneumoniamnist.npz", rng, colour=False, counts=(24, 6, 6), n_classes=2)
    make_folder(tmp_path / "folder", rng, {"a": 12, "b": 12})
    cases = [("ham10000", str(tmp_path / "ham"), 3), ("dermamnist", str(tmp_path / "mm"), 3),
             ("pneumoniamnist", str(tmp_path / "mm"), 1), (f"folder:{tmp_path / 'folder'}", None, 3)]
    for name, data_dir, channels in cases:
        r = train(TrainConfig(dataset=name, data_dir=data_dir, noise_multiplier=1.0,
                              out=str(tmp_path / "out" / str(abs(hash(name)))), **TINY))
        ckpt = load_checkpoint(r.checkpoint)  # type: ignore[arg-type]
        assert ckpt.in_channels == channels and ckpt.dp is not None and r.steps >= 1


def test_seeds_report_mean_and_std(demo_splits) -> None:  # type: ignore[no-untyped-def]
    r = train(TrainConfig(non_private=True, seeds=2, **TINY), splits=demo_splits)
    assert len(r.per_seed) == 2
    accs = [m.accuracy for m in r.per_seed]
    assert r.seed_summary["accuracy"] == pytest.approx((np.mean(accs), np.std(accs, ddof=1)))
    assert json.loads(r.to_json())["seed_summary"]["accuracy"] == list(r.seed_summary["accuracy"])


def test_one_seed_has_no_std_as_the_profile_writes_it(demo_splits) -> None:  # type: ignore[no-untyped-def]
    """One seed: the std is not estimable, null in JSON (a 0 would read as "no spread"), as the profile's
    per-budget summary (Spread.std) writes it."""
    from dpaudit.audit.profile.schema import Spread

    r = train(TrainConfig(non_private=True, seeds=1, **TINY), splits=demo_splits)
    obj = json.loads(r.to_json())
    assert obj["seed_summary"]["mcc"] == [r.metrics.mcc, None]
    assert type(r).from_json(r.to_json()).seed_summary["mcc"] == (r.metrics.mcc, None)
    assert Spread.of([r.metrics.mcc]).std is None


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_json_object_and_error_exit(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["train", "--dataset", "demo", "--max-images", "120", "--image-size", "16", "--arch", "smallcnn",
            "--width", "4", "--sigma", "1.0", "--epochs", "1", "--batch-size", "8", "--threads", "1",
            "--out", str(tmp_path / "r"), "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    # The TrainResult through the codec (the same object metrics.json and profile.json store), with its labels.
    assert list(obj) == [f.name for f in dataclasses.fields(TrainResult)] + ["labels"]
    assert encode(TrainResult.from_json(res.stdout)) == obj
    assert obj["privacy"]["unit"] == "patient" and obj["labels"]["epsilon_achieved"].startswith("sound upper bound")
    assert obj["epsilon_target"] is None and obj["noise_multiplier"] == 1.0 and obj["target_delta"] == 8e-7
    assert {"mcc", "balanced_accuracy", "auroc", "accuracy"} <= set(obj["metrics"])
    assert Path(obj["checkpoint"]).is_file()
    bad = runner.invoke(app, ["train", "--epsilon", "-1"])
    assert bad.exit_code == 2 and "epsilon must be" in bad.output and "Traceback" not in bad.output


def test_augmentation_multiplicity_averages_per_image_gradients_before_clipping() -> None:
    # Reference: autograd on each image's K views separately (De et al. 2022, section 3.1: the per-image
    # gradient is the mean over its views, and that mean is what gets clipped).
    from dpaudit.audit.grad_sample import FastConvGradSampleModule

    torch.manual_seed(0)
    model = train_mod.build_model("smallcnn", num_classes=2, width=4)
    x, y, k = torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 1]), 2
    captured: dict[str, torch.Tensor] = {}

    class Capture:
        def step(self) -> None:
            for name, p in model.named_parameters():
                captured[name] = p.grad_sample.clone()

        def zero_grad(self, set_to_none: bool = True) -> None:
            model.zero_grad(set_to_none=True)

    net = FastConvGradSampleModule(model, batch_first=True, loss_reduction="mean")
    train_mod._epoch(net, Capture(), [(x, y)], None, nn.CrossEntropyLoss(), k,  # type: ignore[arg-type]
                     torch.Generator().manual_seed(5), True)
    views = train_mod._augment(x, k, torch.Generator().manual_seed(5))
    net.disable_hooks()
    for i in range(3):
        model.zero_grad()
        loss = sum(nn.functional.cross_entropy(model(views[i * k + j:i * k + j + 1]), y[i:i + 1])
                   for j in range(k)) / k
        loss.backward()  # type: ignore[union-attr]
        for name, p in model.named_parameters():
            assert torch.allclose(captured[name][i], p.grad, atol=1e-5, rtol=1e-4), name


def test_operating_point_maximises_validation_mcc_against_brute_force(rng: np.random.Generator) -> None:
    """choose_threshold against an exhaustive search over every cut (independent reference)."""
    from dpaudit.audit.metrics import choose_threshold

    for _ in range(20):
        n = int(rng.integers(10, 60))
        y = (rng.random(n) < 0.25).astype(np.int64)
        if y.sum() in (0, n):
            continue
        p1 = np.clip(0.2 * y + rng.normal(0.3, 0.2, n), 0, 1)
        probs = np.stack([1 - p1, p1], 1)
        t = choose_threshold(y, probs)
        best = max(mcc(y, (p1 >= c).astype(int), 2) for c in np.unique(p1))
        assert t is not None
        assert mcc(y, (p1 >= t).astype(int), 2) == pytest.approx(best, abs=1e-12)


def test_operating_point_keeps_argmax_for_uninformative_scores() -> None:
    from dpaudit.audit.metrics import choose_threshold

    y = np.array([0, 1, 0, 1])
    assert choose_threshold(y, np.full((4, 2), 0.5)) is None
    assert choose_threshold(np.zeros(4, dtype=np.int64), np.full((4, 2), 0.5)) is None


def test_a_one_class_subgroup_prints_its_mcc_as_undefined_not_nan(tmp_path: Path, rng: np.random.Generator) -> None:
    """Site B holds class 0 only: its MCC is undefined (NaN in JSON); the console says so as the report does (400
    images, B a quarter of them, so that B is held by well over 5 images of the test split and not withheld)."""
    from PIL import Image

    from dpaudit.numfmt import UNDEFINED_METRIC

    rows = ["path,label,site"]
    for i in range(400):
        lab = i % 2
        Image.fromarray((rng.random((8, 8)) * 100 + 150 * lab).astype(np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{lab},{'B' if lab == 0 and i % 4 == 0 else 'A'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    res = CliRunner().invoke(app, ["train", "--dataset", f"csv:{tmp_path / 'm.csv'}", "--image-size", "8", "--arch",
                                   "smallcnn", "--arch-args", '{"width": 4}', "--epsilon", "8", "--epochs", "1",
                                   "--batch-size", "8", "--threads", "1"])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.stdout.splitlines() if "subgroup site = B" in x)
    assert f"MCC {UNDEFINED_METRIC}," in line and "nan" not in res.stdout.lower()
