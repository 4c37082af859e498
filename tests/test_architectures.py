"""Any architecture: registry names, monai:NAME, the user's own file.py:factory and
module:factory; every one checked for DP-SGD before use; pretrained initialisation and partial fine-tuning."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from dpaudit.audit.train import TrainConfig, check_dp_compatible, freeze, load_init, train
from dpaudit.checkpoint import load_checkpoint
from dpaudit.cli.main import app
from dpaudit.data import load_splits
from dpaudit.errors import CheckpointError, ConfigError
from dpaudit.models import build_model, parse_arch, replace_batchnorm

runner = CliRunner()

USER_NET = '''
from torch import nn


def build(num_classes, in_channels=3, width=8, norm="group"):
    """A user's small CNN; norm="batch" gives the BatchNorm variant DP-SGD cannot train."""
    def norm_layer(c):
        return nn.GroupNorm(4, c) if norm == "group" else nn.BatchNorm2d(c)
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), norm_layer(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1), norm_layer(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
'''

TINY = dict(epochs=1, batch_size=8, image_size=16, threads=1)


@pytest.fixture
def user_net(tmp_path: Path) -> str:
    path = tmp_path / "mynet.py"
    path.write_text(textwrap.dedent(USER_NET))
    return f"{path}:build"


def test_spec_forms() -> None:
    assert parse_arch("resnet9").kind == "registry"
    assert parse_arch("monai:DenseNet121").kind == "monai"
    assert parse_arch("models/mynet.py:build").kind == "file"
    assert parse_arch("torchvision_like.models:make").kind == "module"
    for bad in ("vgg", "monai:", "x.py:", "a b:c"):
        with pytest.raises(ConfigError, match="arch must be"):
            parse_arch(bad)


def test_user_file_factory_builds_and_passes_class_count(user_net: str) -> None:
    model = build_model(user_net, num_classes=5, in_channels=1, width=4)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 5)
    with pytest.raises(ConfigError, match="not arguments"):
        build_model(user_net, num_classes=2, depth=3)


def test_module_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hospital_nets.py").write_text(textwrap.dedent(USER_NET))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert build_model("hospital_nets:build", num_classes=3)(torch.zeros(1, 3, 8, 8)).shape == (1, 3)


def test_monai_network_with_its_own_argument_names() -> None:
    # DenseNet121's signature says spatial_dims/in_channels/out_channels; dpaudit fills them from the data.
    kw = dict(init_features=8, growth_rate=4, block_config=[1, 1])
    model = build_model("monai:DenseNet", num_classes=3, in_channels=1, **kw)
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 3)
    with pytest.raises(ConfigError, match="out_channels"):
        build_model("monai:DenseNet", num_classes=3, out_channels=4, **kw)
    with pytest.raises(ConfigError, match="--init"):
        build_model("monai:DenseNet121", num_classes=2, pretrained=True)


def test_a_spec_whose_file_is_not_python_names_arch_and_the_whole_spec(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("root:x:0:0\n")
    res = runner.invoke(app, ["attack", "--dataset", "demo", "--arch", f"{tmp_path / 'passwd'}:build"])
    assert res.exit_code == 2
    assert " ".join(res.output.split()).endswith(f"error: --arch must be FILE.py:factory with FILE a Python source "
                                                 f"file ({str(tmp_path / 'passwd')!r} is not a .py file), got "
                                                 f"'{tmp_path / 'passwd'}:build'. Fix: pass the .py file that "
                                                 "defines the factory, e.g. --arch models/mynet.py:build.")


def test_many_incompatible_layers_are_counted_not_all_named() -> None:
    pytest.importorskip("monai")
    with pytest.raises(ConfigError) as info:
        check_dp_compatible(build_model("monai:DenseNet121", num_classes=2))
    text = str(info.value)
    assert text.startswith("121 layer(s) cannot be trained with DP-SGD: 121 BatchNorm2d (features.norm0, ")
    assert "features.denseblock1.denselayer2.layers.norm1 and 117 more)" in text and len(text) < 600


def test_every_batchnorm_is_listed_and_the_replacement_is_reported(user_net: str) -> None:
    model = build_model(user_net, num_classes=2, norm="batch")
    with pytest.raises(ConfigError) as info:
        check_dp_compatible(model)
    text = str(info.value)
    assert text.startswith("2 layer(s)") and "2 BatchNorm2d (1, 5)" in text
    assert "--fix-batchnorm" in text
    replaced = replace_batchnorm(model)
    assert replaced == ["1 (BatchNorm2d(8) -> GroupNorm(8, 8))", "5 (BatchNorm2d(8) -> GroupNorm(8, 8))"]
    check_dp_compatible(model)  # gcd(32, 8) = 8 groups: Opacus' rule


def test_init_from_pretrained_and_trainable_head(tmp_path: Path, user_net: str, stripes_splits) -> None:
    pre = train(TrainConfig(arch=user_net, arch_args={"width": 4}, non_private=True, out=str(tmp_path / "pre"),
                            **TINY), splits=stripes_splits)
    demo = load_splits("demo", image_size=16, max_images=60, seed=0)
    # A plain state dict saved through DataParallel and Opacus: the init loads through the wrappers.
    ckpt = load_checkpoint(pre.checkpoint, arch=user_net)  # the user names their code again
    plain = tmp_path / "pre_plain.pt"
    torch.save({f"_module.module.{k}": v for k, v in ckpt.state_dict.items()}, plain)
    res = train(TrainConfig(arch=user_net, arch_args={"width": 4}, init=str(plain), trainable="head",
                            epsilon=50.0, out=str(tmp_path / "ft"), **TINY), splits=demo)
    assert res.frozen_parameters > 0 and res.trainable_parameters == 4 * 2 + 2  # Linear(4, 2)
    tuned = load_checkpoint(res.checkpoint, arch=user_net)
    assert tuned.extra["trainable"] == "head" and str(tuned.extra["init"]).startswith("pre_plain.pt (sha256 ")
    for key in ("0.weight", "1.weight", "4.weight"):  # frozen: unchanged from the init
        assert torch.equal(tuned.state_dict[key], ckpt.state_dict[key])
    assert not torch.equal(tuned.state_dict["9.weight"], ckpt.state_dict["9.weight"])  # the head trained
    assert res.trainable == "head" and res.init == "pre_plain.pt"


def test_freeze_last_n_and_bad_values(user_net: str) -> None:
    model = build_model(user_net, num_classes=2, width=4)
    on, off = freeze(model, "last-2")  # the last GroupNorm and the Linear head
    assert on == (4 + 4) + (4 * 2 + 2) and on + off == sum(p.numel() for p in model.parameters())
    for bad in ("last-0", "some", "last-99"):
        with pytest.raises(ConfigError, match="trainable"):
            freeze(build_model(user_net, num_classes=2, width=4), bad)


def test_init_that_does_not_fit_names_the_keys(tmp_path: Path, user_net: str) -> None:
    torch.save(build_model("smallcnn", num_classes=2, width=4).state_dict(), tmp_path / "other.pt")
    demo = load_splits("demo", image_size=16, max_images=60, seed=0)
    with pytest.raises(CheckpointError, match=r"init must be weights for .*mynet.py:build.* 8 tensors of the model "
                       r"are not in the file"):
        train(TrainConfig(arch=user_net, init=str(tmp_path / "other.pt"), non_private=True, **TINY), splits=demo)


def _smallcnn_state(num_classes: int = 2, width: int = 8) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return build_model("smallcnn", num_classes=num_classes, width=width).state_dict()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_init_whose_backbone_has_other_shapes_is_refused_naming_the_tensors(tmp_path: Path, suffix: str) -> None:
    # Every tensor one channel wider (a width-9 network) and a 3-class head: before, every differing tensor kept
    # its fresh initialisation and training went on from a random backbone.
    wrong = {k: torch.zeros(tuple(s + 1 if i == 0 else s for i, s in enumerate(v.shape)))
             for k, v in _smallcnn_state(2).items()}
    path = tmp_path / f"wrong{suffix}"
    if suffix == ".pt":
        torch.save(wrong, path)
    else:
        from safetensors.torch import save_file

        save_file(wrong, str(path))
    model = build_model("smallcnn", num_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_init(model, str(path), "smallcnn")
    text = str(info.value)
    assert text.startswith("init must be weights for smallcnn (only its final layer classifier may differ")
    assert "features.0.0.weight is (9, 3, 3, 3) in the file and (8, 3, 3, 3) in the model" in text
    assert "and 4 more have other shapes" in text and str(path) in text and "Fix: pass the --arch" in text
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded

    res = runner.invoke(app, ["train", "--dataset", "demo", "--arch", "smallcnn", "--init", str(path),
                              "--trainable", "head", "--epsilon", "8", "--epochs", "1", "--max-images", "60",
                              "--batch-size", "8", "--image-size", "16", "--threads", "1"])
    assert res.exit_code == 2 and res.output.startswith("error: --init must be weights for smallcnn")
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_init_for_another_number_of_classes_reinitialises_only_the_head(tmp_path: Path) -> None:
    five = _smallcnn_state(5)
    torch.save(five, tmp_path / "five.pt")
    model = build_model("smallcnn", num_classes=2)
    fresh_head = model.classifier.weight.detach().clone()
    (line,) = load_init(model, str(tmp_path / "five.pt"))
    assert line == ("final layer classifier freshly initialised for 2 outputs (the file's has 5 outputs): "
                    "classifier.weight, classifier.bias; the other 6 tensors loaded from the file")
    state = model.state_dict()
    assert all(torch.equal(state[k], five[k]) for k in five if not k.startswith("classifier."))
    assert torch.equal(state["classifier.weight"], fresh_head)
    # Weights saved without their head (a backbone): the head keeps its initialisation, said the same way.
    torch.save({k: v for k, v in five.items() if not k.startswith("classifier.")}, tmp_path / "backbone.pt")
    (line,) = load_init(build_model("smallcnn", num_classes=2), str(tmp_path / "backbone.pt"))
    assert "(the file has none)" in line


def test_init_whose_head_differs_in_more_than_the_class_count_is_refused(tmp_path: Path) -> None:
    state = _smallcnn_state(2)
    state["classifier.weight"] = torch.zeros(2, 32)  # another feature width feeds the head: not a class count
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"classifier.weight is \(2, 32\) in the file and \(2, 16\)"):
        load_init(build_model("smallcnn", num_classes=2), str(tmp_path / "w.pt"))


def test_init_that_would_load_no_parameter_is_refused(tmp_path: Path) -> None:
    # A network that is only its final layer: a file for another number of classes would load nothing.
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).state_dict(), tmp_path / "lin5.pt")
    with pytest.raises(CheckpointError, match=r"at least one parameter fits .* nothing would be loaded"):
        load_init(model, str(tmp_path / "lin5.pt"))


def test_attack_user_cnn_at_sigma_zero_reconstructs_everything(user_net: str) -> None:
    res = runner.invoke(app, ["attack", "--arch", user_net, "--dataset", "demo", "--image-size", "16",
                              "--n-images", "6", "--sigmas", "0", "--json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)["rows"]
    assert row["success_rate"] == 1.0  # no noise: the imprint block recovers every image exactly


def test_attack_refuses_batchnorm_listing_every_layer_then_fixes_it(user_net: str) -> None:
    base = ["attack", "--arch", user_net, "--arch-args", '{"norm": "batch"}', "--dataset", "demo",
            "--image-size", "16", "--n-images", "2", "--sigmas", "0", "--json"]
    res = runner.invoke(app, base)
    assert res.exit_code == 2 and "2 layer(s) cannot be trained with DP-SGD" in " ".join(res.output.split())
    res = runner.invoke(app, [*base, "--fix-batchnorm"])
    assert res.exit_code == 0, res.output


def test_checkpoint_of_user_code_is_rebuilt_only_when_named(tmp_path: Path, user_net: str) -> None:
    demo = load_splits("demo", image_size=16, max_images=60, seed=0)
    res = train(TrainConfig(arch=user_net, arch_args={"width": 4}, epsilon=20.0, out=str(tmp_path / "u"), **TINY),
                splits=demo)
    raw = torch.load(res.checkpoint, weights_only=True)  # data only: the spec string and arguments, no code
    assert raw["arch"] == user_net and raw["arch_args"] == {"width": 4}
    with pytest.raises(CheckpointError, match="--arch"):
        load_checkpoint(res.checkpoint).build_model()
    out = runner.invoke(app, ["bounds", "--model", res.checkpoint, "--json"])  # bounds needs no model code
    assert out.exit_code == 0, out.output
    att = runner.invoke(app, ["attack", "--model", res.checkpoint, "--arch", user_net, "--dataset", "demo",
                              "--n-images", "2", "--json"])
    assert att.exit_code == 0, att.output
    assert json.loads(att.stdout)["rows"][0]["epsilon"] == pytest.approx(res.epsilon_achieved, rel=1e-5)


def test_monai_densenet_trains_with_dp_after_the_reported_fix(tmp_path: Path) -> None:
    demo = load_splits("demo", image_size=16, max_images=60, seed=0)
    args = {"init_features": 8, "growth_rate": 4, "block_config": [1, 1]}
    with pytest.raises(ConfigError, match="--fix-batchnorm"):
        train(TrainConfig(arch="monai:DenseNet", arch_args=args, epsilon=8.0, **TINY), splits=demo)
    res = train(TrainConfig(arch="monai:DenseNet", arch_args=args, fix_batchnorm=True, epsilon=8.0,
                            out=str(tmp_path / "m"), **TINY), splits=demo)
    assert res.replaced_layers and all("GroupNorm" in r for r in res.replaced_layers)
    assert res.epsilon_achieved <= 8.0
    ckpt = load_checkpoint(res.checkpoint)
    assert ckpt.fix_batchnorm and ckpt.arch == "monai:DenseNet"
    x = torch.rand(2, 3, 16, 16)
    assert ckpt.build_model()(x).shape == (2, 2)
    # attack and bounds take the checkpoint as it is (MONAI is library code: no --arch needed)
    att = runner.invoke(app, ["attack", "--model", res.checkpoint, "--dataset", "demo", "--n-images", "2",
                              "--sigmas", "0", "--json"])
    assert att.exit_code == 0, att.output
    assert json.loads(att.stdout)["rows"][0]["success_rate"] == 1.0
    assert runner.invoke(app, ["bounds", "--model", res.checkpoint, "--json"]).exit_code == 0


def test_non_classifier_is_refused(tmp_path: Path) -> None:
    """A segmentation-style network (one map per class) is not an image classifier: named before training."""
    (tmp_path / "seg.py").write_text("from torch import nn\n\n\ndef build(num_classes, in_channels=3):\n"
                                     "    return nn.Conv2d(in_channels, num_classes, 1)\n")
    demo = load_splits("demo", image_size=16, max_images=60, seed=0)
    with pytest.raises(ConfigError, match=r"shape \(2, 2, 16, 16\).*must return logits of shape \(2, 2\)"):
        train(TrainConfig(arch=f"{tmp_path / 'seg.py'}:build", non_private=True, **TINY), splits=demo)


def test_factory_that_returns_no_module(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("def build(num_classes, in_channels=3):\n    return 'a model'\n")
    with pytest.raises(ConfigError, match=r"returns a torch\.nn\.Module"):
        build_model(f"{tmp_path / 'bad.py'}:build", num_classes=2)
    (tmp_path / "broken.py").write_text("import not_installed_anywhere\n")
    with pytest.raises(ConfigError, match=r"importing .* failed: ModuleNotFoundError"):
        build_model(f"{tmp_path / 'broken.py'}:build", num_classes=2)


def test_missing_monai_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from dpaudit.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "monai.networks.nets", None)  # as if MONAI were not installed
    with pytest.raises(MissingDependencyError, match=r"dpaudit\[monai\]"):
        build_model("monai:DenseNet121", num_classes=2)



def test_unknown_monai_network() -> None:
    with pytest.raises(ConfigError, match=r"a network in monai\.networks\.nets"):
        build_model("monai:NoSuchNet", num_classes=2)


def test_a_network_that_downsamples_below_one_pixel_is_told_a_larger_image_size() -> None:
    # monai:DenseNet121 at the demo's 28 px: "Output size is too small"; the fix names --image-size (the user had
    # already passed spatial_dims 2, which the old fix suggested).
    import pytest
    import torch.nn as nn

    from dpaudit.errors import ConfigError
    from dpaudit.models import check_classifier

    with pytest.raises(ConfigError, match=r"Fix: pass a larger --image-size \(e\.g\. --image-size 64\)"):
        check_classifier(nn.Sequential(nn.AvgPool2d(64), nn.Flatten()), (3, 28, 28), 2, "toy")
