"""Damaged weights files and architecture arguments of the wrong kind: one line naming the file (or the flag), the
field and a fix every command that meets them can follow, exit code 2, never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from dpaudit.checkpoint import CheckpointMeta, load_checkpoint, load_state_dict, save_checkpoint
from dpaudit.cli.main import app
from dpaudit.config import DpSgdConfig
from dpaudit.errors import CheckpointError, ConfigError
from dpaudit.models import build_model, check_arch_args

runner = CliRunner()


def _checkpoint(tmp_path: Path, name: str = "model.pt", **changes: object) -> Path:
    """A valid DP checkpoint of a smallcnn (width 4) with payload fields replaced (a value ``...`` deletes it)."""
    meta = CheckpointMeta(arch="smallcnn", num_classes=2, in_channels=3, arch_args={"width": 4},
                          input_shape=(3, 16, 16), dataset="demo", n_train=100,
                          dp=DpSgdConfig(1.0, 0.05, 40, max_grad_norm=1.0, target_delta=8e-7), epochs=2, batch_size=5)
    path = save_checkpoint(tmp_path / name, build_model("smallcnn", num_classes=2, width=4), meta)
    payload = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if value is ...:
            del payload[key]
        else:
            payload[key] = value
    torch.save(payload, path)
    return path


def _flags(command: list[str]) -> set[str]:
    group = typer.main.get_command(app)
    for name in command:
        group = group.commands[name]  # type: ignore[attr-defined]
    return {opt for p in group.params for opt in (*p.opts, *getattr(p, "secondary_opts", ())) if opt.startswith("--")}


def _one_line_error(res, *words: str) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, AssertionError)
    line = res.output.strip().splitlines()[-1]
    for word in words:
        assert word in line, line
    return line


@pytest.mark.parametrize(("changes", "words"), [
    ({"state_dict": ...}, "lacks the field 'state_dict'"),
    ({"state_dict": [torch.zeros(1)]}, "state_dict must be a non-empty dict of parameter name -> tensor, got a list"),
    ({"state_dict": {"features.0.0.weight": [1.0]}}, "1 entry is not ('features.0.0.weight': list)"),
])
def test_every_loader_checks_the_weights_of_a_damaged_checkpoint(tmp_path: Path, changes: dict, words: str) -> None:
    path = _checkpoint(tmp_path, **changes)
    for load in (load_state_dict, load_checkpoint):  # --init, and --model
        with pytest.raises(CheckpointError) as info:
            load(path)
        msg = str(info.value)
        assert msg.startswith(f"checkpoint {str(path)!r}") and words in msg and "Fix: " in msg and "\n" not in msg


def test_a_plain_state_dict_with_a_non_tensor_entry_names_the_file(tmp_path: Path) -> None:
    state = {**build_model("smallcnn", num_classes=2, width=4).state_dict(), "epoch": 3}
    torch.save(state, tmp_path / "sd.pt")
    for call in (lambda: load_state_dict(tmp_path / "sd.pt"),
                 lambda: load_checkpoint(tmp_path / "sd.pt", arch="smallcnn", arch_args={"width": 4})):
        with pytest.raises(CheckpointError, match=re.escape(f"{str(tmp_path / 'sd.pt')!r}: the state dict must map "
                                                            "parameter names to tensors; 1 entry is not ('epoch': int)")):
            call()


@pytest.mark.parametrize("changes", [{"state_dict": ...}, {"state_dict": [torch.zeros(1)]}])
def test_train_init_from_a_damaged_checkpoint_is_one_line(tmp_path: Path, changes: dict) -> None:
    path = _checkpoint(tmp_path, **changes)
    res = runner.invoke(app, ["train", "--non-private", "--epochs", "1", "--arch", "smallcnn", "--width", "4",
                              "--image-size", "16", "--init", str(path), "--out", str(tmp_path / "out")])
    _one_line_error(res, "--init", str(path), "state_dict")


def test_check_arch_args_checks_each_registry_argument_by_the_kind_of_its_default() -> None:
    assert check_arch_args("smallcnn", {"width": 8.0}) == {"width": 8}
    assert check_arch_args("mynet.py:build", {"width": "x"}) == {"width": "x"}  # the user's code: its own checks
    for arch, args, field in (("smallcnn", {"width": "x"}, "arch_args.width"), ("smallcnn", {"width": 0}, "width"),
                              ("resnet9", {"width": 2.5}, "width"), ("resnet9", {"scale_norm": "yes"}, "scale_norm"),
                              ("resnet9", {"activation": 3}, "activation"), ("unet", {"groups": 0}, "groups")):
        with pytest.raises(ConfigError, match=f"arch_args.{field.split('.')[-1]} must be") as info:
            check_arch_args(arch, args, flag="--arch-args")
        assert "Fix: pass e.g. --arch-args '{" in str(info.value)
        with pytest.raises(ConfigError, match=f"arch_args.{field.split('.')[-1]} must be"):
            build_model(arch, num_classes=2, arch_args=args)  # where every model is built


@pytest.mark.parametrize("width", ['"x"', "0", "-3", "true"])
@pytest.mark.parametrize("command", [["attack"], ["federated", "attack"], ["federated", "train", "--sigma", "1"],
                                     ["train", "--sigma", "1"]])
def test_a_width_of_the_wrong_kind_is_refused_by_every_command(command: list[str], width: str) -> None:
    res = runner.invoke(app, [*command, "--arch", "smallcnn", "--arch-args", f'{{"width": {width}}}'])
    _one_line_error(res, "arch_args.width must be an integer >= 1", "--arch-args")


@pytest.mark.parametrize("command", [["attack", "--dataset", "demo"], ["profile", "--dataset", "demo"]])
def test_a_wrong_width_is_refused_before_the_data_load(tmp_path: Path, command: list[str], monkeypatch) -> None:
    # attack and profile read --arch-args before any data (as train does), and leave --out as it was
    import dpaudit.data

    def no_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the data were loaded")

    monkeypatch.setattr(dpaudit.data, "load_splits", no_load)
    res = runner.invoke(app, [*command, "--arch", "smallcnn", "--arch-args", '{"width": "x"}',
                              "--out", str(tmp_path / "out")])
    _one_line_error(res, "arch_args.width must be an integer >= 1", "--arch-args")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["bounds"], ["attack", "--dataset", "demo"]])
def test_a_checkpoint_with_a_wrong_width_is_refused_naming_the_file(tmp_path: Path, command: list[str]) -> None:
    path = _checkpoint(tmp_path, arch_args={"width": "x"})
    res = runner.invoke(app, [command[0], "--model", str(path), *command[1:]])
    line = _one_line_error(res, str(path), "arch_args.width must be an integer >= 1, got 'x'")
    assert "--arch-args" not in line  # the value came from the file: rewriting it is the fix


@pytest.mark.parametrize("changes", [{"arch": "nosuch"}, {"arch_args": {"width": "x"}}, {"n_train": -5},
                                     {"state_dict": ...}, {"mean": [0.5]}])
def test_the_fixes_bounds_prints_for_a_damaged_checkpoint_name_only_its_own_flags(tmp_path: Path,
                                                                                  changes: dict) -> None:
    path = _checkpoint(tmp_path, **changes)
    line = _one_line_error(runner.invoke(app, ["bounds", "--model", str(path)]), str(path), "Fix: ")
    assert set(re.findall(r"--[a-z][a-z-]*", line)) <= _flags(["bounds"]) | {"--out"}, line  # train --out DIR


def test_bounds_says_when_the_checkpoint_records_no_n_train(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, n_train=None)
    line = _one_line_error(runner.invoke(app, ["bounds", "--model", str(path)]), str(path),
                           "records no n_train", "--kappa", "--n-train")
    assert set(re.findall(r"--[a-z][a-z-]*", line)) <= _flags(["bounds"]) | {"--out"}
    assert runner.invoke(app, ["bounds", "--model", str(path), "--kappa", "1e-3"]).exit_code == 0


def _poisoned_state(value: float) -> tuple[dict, str, str]:
    """A smallcnn's (width 4) weights with ``value`` in two tensors, the second and the last of the model's order;
    and their names."""
    state = build_model("smallcnn", num_classes=2, width=4).state_dict()
    names = [k for k, v in state.items() if v.is_floating_point()]
    for name in (names[1], names[-1]):
        state[name] = state[name].clone()
        state[name].view(-1)[0] = value
    return state, names[1], names[-1]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_loader_refuses_non_finite_weights_naming_the_file_and_the_first_tensor(tmp_path: Path,
                                                                                      value: float) -> None:
    from safetensors.torch import save_file

    state, first, last = _poisoned_state(value)
    ckpt = _checkpoint(tmp_path, state_dict=state)
    torch.save(state, tmp_path / "plain.pt")
    save_file(state, str(tmp_path / "plain.safetensors"))
    calls = [(ckpt, lambda: load_checkpoint(ckpt)), (ckpt, lambda: load_state_dict(ckpt))]
    for plain in (tmp_path / "plain.pt", tmp_path / "plain.safetensors"):
        calls += [(plain, lambda p=plain: load_state_dict(p)),
                  (plain, lambda p=plain: load_checkpoint(p, arch="smallcnn", arch_args={"width": 4}))]
    for path, call in calls:
        with pytest.raises(CheckpointError) as info:
            call()
        msg = str(info.value)
        # the first in the file's order: the model's for torch.save; safetensors stores its own order
        named = [n for n in ((first,) if path.suffix == ".pt" else (first, last))
                 if f"the tensor {n!r} holds 1 non-finite value (nan or inf); 1 other tensor too" in msg]
        assert str(path) in msg and named and "Fix: " in msg and "\n" not in msg, msg
    with pytest.raises(CheckpointError, match="train again with a smaller --lr"):
        load_checkpoint(ckpt)


def test_non_finite_weights_are_one_line_on_the_command_line(tmp_path: Path) -> None:
    state, first, _ = _poisoned_state(float("nan"))
    path = _checkpoint(tmp_path, state_dict=state)
    res = runner.invoke(app, ["bounds", "--model", str(path)])
    _one_line_error(res, str(path), repr(first), "non-finite")
    res = runner.invoke(app, ["attack", "--model", str(path), "--dataset", "demo", "--n-images", "2", "--sigmas", "0"])
    _one_line_error(res, str(path), repr(first), "non-finite")
    res = runner.invoke(app, ["train", "--non-private", "--epochs", "1", "--arch", "smallcnn", "--width", "4",
                              "--image-size", "16", "--init", str(path), "--out", str(tmp_path / "out")])
    _one_line_error(res, "--init", str(path), repr(first), "non-finite")
    assert not (tmp_path / "out" / "model.pt").exists()


def test_integer_buffers_and_finite_weights_still_load(tmp_path: Path) -> None:
    state = build_model("smallcnn", num_classes=2, width=4).state_dict()
    path = _checkpoint(tmp_path, state_dict={**state, "counter": torch.tensor(3)})
    assert "counter" in load_state_dict(path)[1]


def _float64_state(value: float) -> tuple[dict, str]:
    """A smallcnn's (width 4) weights with its second floating tensor stored as float64 holding ``value`` (finite
    in float64); and that tensor's name."""
    state = build_model("smallcnn", num_classes=2, width=4).state_dict()
    name = [k for k, v in state.items() if v.is_floating_point()][1]
    state[name] = state[name].double()
    state[name].view(-1)[0] = value
    return state, name


@pytest.mark.parametrize("value", [1e300, -1e39])
def test_every_loader_refuses_float64_weights_beyond_float32(tmp_path: Path, value: float) -> None:
    """Finite in float64, inf once cast to float32 (the model's dtype): refused by every loader, naming the file
    and the tensor, not loaded as inf."""
    from safetensors.torch import save_file

    state, name = _float64_state(value)
    assert torch.isfinite(state[name]).all() and not torch.isfinite(state[name].float()).all()
    ckpt = _checkpoint(tmp_path, state_dict=state)
    torch.save(state, tmp_path / "plain.pt")
    save_file(state, str(tmp_path / "plain.safetensors"))
    calls = [(ckpt, lambda: load_checkpoint(ckpt)), (ckpt, lambda: load_state_dict(ckpt))]
    for plain in (tmp_path / "plain.pt", tmp_path / "plain.safetensors"):
        calls += [(plain, lambda p=plain: load_state_dict(p)),
                  (plain, lambda p=plain: load_checkpoint(p, arch="smallcnn", arch_args={"width": 4}))]
    for path, call in calls:
        with pytest.raises(CheckpointError) as info:
            call()
        msg = str(info.value)
        assert str(path) in msg and f"the tensor {name!r} (float64) holds 1 value beyond float32's range" in msg, msg
        assert "Fix: " in msg and "\n" not in msg, msg


def test_float64_weights_within_float32_still_load(tmp_path: Path) -> None:
    state, name = _float64_state(3e38)  # below float32's largest, 3.40e38
    assert name in load_state_dict(_checkpoint(tmp_path, state_dict=state))[1]


def test_float64_weights_beyond_float32_are_one_line_on_the_command_line(tmp_path: Path) -> None:
    state, name = _float64_state(1e300)
    path = _checkpoint(tmp_path, state_dict=state)
    res = runner.invoke(app, ["bounds", "--model", str(path)])
    _one_line_error(res, str(path), repr(name), "beyond float32's range")
    res = runner.invoke(app, ["attack", "--model", str(path), "--dataset", "demo", "--n-images", "2", "--sigmas", "0"])
    _one_line_error(res, str(path), repr(name), "beyond float32's range")
    res = runner.invoke(app, ["train", "--non-private", "--epochs", "1", "--arch", "smallcnn", "--width", "4",
                              "--image-size", "16", "--init", str(path), "--out", str(tmp_path / "out")])
    _one_line_error(res, "--init", str(path), repr(name), "beyond float32's range")
    assert not (tmp_path / "out" / "model.pt").exists()
