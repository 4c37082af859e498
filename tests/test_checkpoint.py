"""dpaudit checkpoints: round trip through weights_only loading, plain state dicts, refusal of unsafe pickles."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from dpaudit.checkpoint import Checkpoint, CheckpointMeta, load_checkpoint, load_model, save_checkpoint
from dpaudit.config import DpSgdConfig
from dpaudit.errors import CheckpointError, ConfigError
from dpaudit.models import build_model


def _meta(**kw: object) -> CheckpointMeta:
    base = dict(arch="smallcnn", num_classes=2, in_channels=3, arch_args={"width": 4}, input_shape=(3, 16, 16),
                dataset="demo", n_train=100, label_names=("not immediate", "immediate treatment"),
                dp=DpSgdConfig(0.9, 0.05, 40, max_grad_norm=1.5, target_delta=8e-7), epochs=2, batch_size=5,
                extra={"epsilon_achieved": 7.9, "seed": 0})
    base.update(kw)
    return CheckpointMeta(**base)  # type: ignore[arg-type]


def test_round_trip_through_weights_only_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("smallcnn", num_classes=2, in_channels=3, width=4)
    path = save_checkpoint(tmp_path / "run" / "model.pt", model, _meta())
    raw = torch.load(path, weights_only=True)  # the contract: plain torch can read it safely
    assert raw["format"] == "dpaudit-checkpoint" and raw["dp"]["noise_multiplier"] == 0.9
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt, Checkpoint) and ckpt.source == "dpaudit"
    assert ckpt.dp == DpSgdConfig(0.9, 0.05, 40, max_grad_norm=1.5, target_delta=8e-7)
    assert (ckpt.noise_multiplier, ckpt.sampling_probability, ckpt.steps) == (0.9, 0.05, 40)
    assert ckpt.epochs == 2 and ckpt.batch_size == 5 and ckpt.n_train == 100
    assert ckpt.input_shape == (3, 16, 16) and ckpt.mean == (0.5,) * 3 and ckpt.std == (0.5,) * 3
    assert ckpt.extra["epsilon_achieved"] == 7.9 and ckpt.meta == _meta()
    rebuilt = ckpt.build_model()
    x = torch.rand(3, 3, 16, 16)
    model.eval()
    assert torch.equal(rebuilt(x), model(x))


def test_non_private_checkpoint_has_no_dp(tmp_path: Path) -> None:
    model = build_model("resnet9", num_classes=3, in_channels=1, width=4)
    path = save_checkpoint(tmp_path / "m.pt", model, _meta(arch="resnet9", num_classes=3, in_channels=1,
                                                             input_shape=(1, 8, 8), dp=None, label_names=()))
    ckpt = load_checkpoint(path)
    assert ckpt.dp is None and ckpt.noise_multiplier is None
    assert ckpt.label_names == ("0", "1", "2") and ckpt.mean == (0.5,)


def test_unsafe_pickle_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "whole_model.pt"
    torch.save(build_model("smallcnn", num_classes=2, width=4), path)  # pickles the nn.Module class
    with pytest.raises(CheckpointError, match="cannot be loaded safely") as info:
        load_checkpoint(path, arch="smallcnn")
    assert "state_dict()" in str(info.value) and "trusted code" not in str(info.value)


def test_plain_state_dict_with_arch_and_opacus_prefix(tmp_path: Path) -> None:
    model = build_model("smallcnn", num_classes=5, in_channels=1, width=4)
    wrapped = collections.OrderedDict((f"_module.{k}", v) for k, v in model.state_dict().items())
    torch.save(wrapped, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="--arch"):
        load_checkpoint(tmp_path / "sd.pt")
    ckpt = load_model(tmp_path / "sd.pt", arch="smallcnn", arch_args={"width": 4}, image_size=12)
    assert ckpt.source == "state_dict" and ckpt.num_classes == 5 and ckpt.in_channels == 1
    assert ckpt.input_shape == (1, 12, 12) and ckpt.dp is None
    x = torch.rand(2, 1, 12, 12)
    assert torch.equal(ckpt.build_model()(x), model.eval()(x))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "sd.pt", arch="smallcnn", arch_args={"width": 8})


def test_random_init_and_errors(tmp_path: Path) -> None:
    a = load_model(None, arch="resnet9", num_classes=2, image_size=32, seed=1)
    assert a.source == "random" and a.input_shape == (3, 32, 32)
    state = torch.get_rng_state()
    m1, m2 = a.build_model(), a.build_model()
    assert torch.equal(torch.get_rng_state(), state)  # no side effect on the global generator
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters(), strict=True))
    with pytest.raises(CheckpointError, match="--arch"):
        load_model(None)
    with pytest.raises(ConfigError, match="arch must be a registry name"):
        load_model(None, arch="vgg")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        save_checkpoint(tmp_path / "x.pt", build_model("smallcnn", num_classes=2, width=8), _meta())


# -- the DP schedule as phases (Opacus' accountant.history layout) -------------------------------------------------

_TWO_PHASES = [[1.2, 0.02, 10], [0.9, 0.05, 30]]  # the last phase is _meta()'s dp (0.9, 0.05), 40 steps in all


def test_phases_round_trip(tmp_path: Path) -> None:
    from dpaudit.bounds import Schedule, schedule_of_checkpoint

    model = build_model("smallcnn", num_classes=2, in_channels=3, width=4)
    path = save_checkpoint(tmp_path / "m.pt", model, _meta(phases=_TWO_PHASES))
    assert torch.load(path, weights_only=True)["phases"] == _TWO_PHASES  # plain lists, as Opacus stores them
    ckpt = load_checkpoint(path)
    assert ckpt.phases == ((1.2, 0.02, 10), (0.9, 0.05, 30)) and ckpt.meta == _meta(phases=_TWO_PHASES)
    assert schedule_of_checkpoint(ckpt) == Schedule.from_history(_TWO_PHASES)
    # one phase by default (what training writes today), none without DP
    one = load_checkpoint(save_checkpoint(tmp_path / "one.pt", model, _meta()))
    assert one.phases == ((0.9, 0.05, 40),)
    assert torch.load(tmp_path / "one.pt", weights_only=True)["phases"] == [[0.9, 0.05, 40]]
    assert _meta(dp=None).phases is None


def test_checkpoint_without_phases_loads_with_its_one_phase(tmp_path: Path) -> None:
    from dpaudit.bounds import Schedule, schedule_of_checkpoint

    path = save_checkpoint(tmp_path / "m.pt", build_model("smallcnn", num_classes=2, width=4), _meta())
    payload = torch.load(path, weights_only=True)
    del payload["phases"]  # a checkpoint written before phases were stored
    torch.save(payload, path)
    ckpt = load_checkpoint(path)
    assert ckpt.phases == ((0.9, 0.05, 40),)
    assert schedule_of_checkpoint(ckpt) == Schedule.single(0.9, 0.05, 40)


@pytest.mark.parametrize(("phases", "field"), [
    ("1.0,0.01,40", "phases"),
    ([], "phases"),
    ({"noise_multiplier": 0.9}, "phases"),
    ([[0.9, 0.05]], "phases[0]"),
    ([[1.2, 0.02, 10], [0.0, 0.05, 30]], "phases[1]"),
    ([[float("nan"), 0.05, 40]], "phases[0]"),
    ([[0.9, 1.5, 40]], "phases[0]"),
    ([[0.9, 0.05, 40.5]], "phases[0]"),
    ([[0.9, 0.05, True]], "phases[0]"),
    ([[0.9, 0.05, "40"]], "phases[0]"),
    ([[1.2, 0.02, 10], [0.9, 0.05, 20]], "phases"),  # 30 steps, dp says 40
    ([[0.9, 0.05, 10], [1.2, 0.02, 30]], "phases"),  # the last phase is not dp's
])
def test_malformed_phases_are_a_one_line_error_naming_file_and_field(tmp_path: Path, phases: object,
                                                                      field: str) -> None:
    path = save_checkpoint(tmp_path / "m.pt", build_model("smallcnn", num_classes=2, width=4), _meta())
    payload = torch.load(path, weights_only=True)
    payload["phases"] = phases
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert f"checkpoint {str(path)!r}: {field} must be" in msg and "Fix:" in msg and "\n" not in msg


def test_phases_on_a_non_private_checkpoint_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="phases must be None for a model trained without DP"):
        _meta(dp=None, phases=_TWO_PHASES)


@pytest.mark.parametrize(("field", "value", "named"), [
    ("label_names", ["not immediate", "immediate treatment"], "label_names must be one name per class, 5"),
    ("num_classes", 0, "num_classes must be an integer >= 1, got 0"),
    ("in_channels", 2.5, "in_channels must be an integer >= 1, got 2.5"),
    ("n_train", 0, "n_train must be an integer >= 1, got 0"),
    ("mean", [0.5], "mean/std must be 3 values each"),
    ("input_shape", [1, 16, 16], "input_shape must be (C, H, W) with C = in_channels = 3"),
    ("extra", {"seed": [1, 2]}, "extra['seed'] must be a number, string, bool or None"),
    ("dp", {"noise_multiplier": -1.0, "sampling_probability": 0.05, "steps": 40}, "dp.noise_multiplier must be"),
    ("dp", {"noise_multiplier": 0.9, "bogus": 1}, "holds a field of the wrong kind"),
    ("arch", "vgg", "arch must be"),
    ("state_dict", {"w": 1}, "state_dict must map parameter names to tensors; 1 entry is not ('w': int)"),
    ("state_dict", [1, 2], "state_dict must be a non-empty dict of parameter name -> tensor, got a list"),
    ("state_dict", {}, "state_dict must be a non-empty dict of parameter name -> tensor, got an empty dict"),
    ("state_dict", {0: torch.zeros(1)}, "state_dict must map parameter names (text) to tensors, got the key(s) 0"),
    ("arch_args", {"width": "x"}, "arch_args.width must be an integer >= 1, got 'x'"),
    ("arch_args", {"width": 0}, "arch_args.width must be an integer >= 1, got 0"),
])
def test_every_invalid_metadata_field_names_the_file_the_field_and_a_fix(tmp_path: Path, field: str, value: object,
                                                                         named: str) -> None:
    path = save_checkpoint(tmp_path / "m.pt", build_model("smallcnn", num_classes=5, width=4),
                           _meta(num_classes=5, label_names=()))
    payload = torch.load(path, weights_only=True)
    payload[field] = value
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"checkpoint {str(path)!r}") and named in msg and "\n" not in msg
    # the fix is about the file, not a flag (load_checkpoint serves bounds, which has no --arch or --arch-args)
    assert "Fix: " in msg and "--sigma" not in msg and "--arch" not in msg


def test_bounds_and_attack_name_model_for_a_checkpoint_with_invalid_metadata(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dpaudit.cli.main import app

    path = save_checkpoint(tmp_path / "ck5.pt", build_model("smallcnn", num_classes=5, width=4),
                           _meta(num_classes=5, label_names=()))
    payload = torch.load(path, weights_only=True)
    payload["label_names"] = ["not immediate", "immediate treatment"]
    torch.save(payload, path)
    for command in (["bounds", "--model", str(path)], ["attack", "--model", str(path), "--dataset", "demo"]):
        res = CliRunner().invoke(app, command)
        assert res.exit_code == 2 and "Traceback" not in res.output
        line = " ".join(res.output.split())
        assert line.startswith(f"error: --model: checkpoint {str(path)!r}: label_names must be one name per class")
        assert "Fix: write the checkpoint again with `dpaudit train --out DIR`" in line


def test_a_folder_given_as_model_names_the_flag_even_with_a_short_name(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from dpaudit.cli.main import app

    (tmp_path / "m1").mkdir()
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["bounds", "--model", "m1"])
    assert res.exit_code == 2 and res.output.startswith("error: --model: 'm1' is a folder, not a weights file.")
