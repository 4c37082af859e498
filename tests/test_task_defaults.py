"""The options whose default depends on the task come from one table (dpaudit.config), are recorded when taken,
and --help states the value per task."""

from __future__ import annotations

import pytest

from dpaudit.audit.configs import TrainConfig
from dpaudit.audit.profile.schema import ProfileConfig
from dpaudit.codec import dumps, loads
from dpaudit.config import PROFILE_DEFAULTS, TRAIN_DEFAULTS, describe_task_defaults
from dpaudit.errors import ConfigError


@pytest.mark.parametrize(("cls", "table", "dataset", "task"), [
    (TrainConfig, TRAIN_DEFAULTS, "demo", "classification"), (TrainConfig, TRAIN_DEFAULTS, "demo-ct", "segmentation"),
    (ProfileConfig, PROFILE_DEFAULTS, "demo", "classification"),
    (ProfileConfig, PROFILE_DEFAULTS, "demo-ct", "segmentation")])
def test_options_left_out_take_their_tasks_default_and_say_so(cls, table, dataset, task) -> None:
    extra = {"non_private": True} if cls is TrainConfig else {}
    c = cls(dataset=dataset, **extra)
    assert c.task == task
    for name, value in table[task].items():
        assert getattr(c, name) == value, name
    assert c.task_defaults == tuple(table[task])
    given = cls(dataset=dataset, epochs=3, lr=0.05, **extra)
    assert given.epochs == 3 and given.lr == 0.05
    assert "epochs" not in given.task_defaults and "lr" not in given.task_defaults
    line = describe_task_defaults(given)
    assert line.startswith(f"{task} defaults: arch ") and "epochs" not in line


def test_the_classification_profile_keeps_its_measured_defaults() -> None:
    """Regression values: the demo profile's defaults before the per-task table (ProfileConfig's comments)."""
    c = ProfileConfig()
    assert (c.arch, c.image_size, c.seeds, c.epochs, c.batch_size, c.lr) == ("resnet9", 28, 3, 4, 64, 2e-3)
    assert c.epsilons == (1.0, 8.0, 20.0, 1e9) and c.class_weights == ()
    t = TrainConfig(non_private=True)  # the image size is the dataset's (28 for the built-in demos), not the task's
    assert (t.arch, t.image_size, t.epochs, t.batch_size, t.lr) == ("resnet9", 28, 10, 64, 2e-3)


def test_segmentation_training_is_the_same_for_train_and_profile() -> None:
    p, t = PROFILE_DEFAULTS["segmentation"], TRAIN_DEFAULTS["segmentation"]
    assert {k: p[k] for k in t} == t


def test_the_record_survives_profile_json_and_is_checked() -> None:
    c = ProfileConfig(dataset="demo-ct", epochs=2)
    back = loads(ProfileConfig, dumps(c))
    assert back == c and back.task_defaults == c.task_defaults
    with pytest.raises(ConfigError, match="task_defaults"):  # epochs was given, not the default
        ProfileConfig(dataset="demo-ct", epochs=2, task_defaults=("epochs",))


def test_a_classifier_is_refused_for_segmentation_not_replaced() -> None:
    with pytest.raises(ConfigError, match=r"arch must be one of unet \(.*got 'resnet9'"):
        TrainConfig(dataset="demo-ct", arch="resnet9", non_private=True)
    with pytest.raises(ConfigError, match=r"arch must be one of unet \("):
        ProfileConfig(dataset="demo-ct", arch="resnet9")  # before any training
    with pytest.raises(ConfigError, match="arch must be a classifier for classification"):
        ProfileConfig(dataset="demo", arch="unet")
    assert TrainConfig(dataset="demo-ct", non_private=True).arch == "unet"


@pytest.mark.parametrize(("command", "table"), [("train", TRAIN_DEFAULTS), ("profile", PROFILE_DEFAULTS)])
def test_help_states_the_default_of_each_task(command, table) -> None:
    import typer

    from dpaudit.cli.main import app

    cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    helps = {p.name: p.help for p in cmd.params}
    assert helps["epochs"].endswith(f"Default: {table['classification']['epochs']} (classification), "
                                    f"{table['segmentation']['epochs']} (segmentation).")
    assert "Default: none (classification), 0.1,0.4,0.5 (segmentation)." in helps["class_weights"]
    for name in ("arch", "epochs", "batch_size", "lr", "class_weights"):
        assert {p.name: p.default for p in cmd.params}[name] is None, name


def test_a_profile_json_from_before_class_weights_reads_as_unweighted() -> None:
    """Its runs trained with the plain loss: reading it must not claim today's segmentation default."""
    import json

    data = json.loads(dumps(ProfileConfig(dataset="demo-ct", class_weights="none")))
    del data["class_weights"]
    data["task_defaults"] = [n for n in data["task_defaults"] if n != "class_weights"]
    old = loads(ProfileConfig, json.dumps(data))
    assert old.class_weights == () and "class_weights" not in old.task_defaults


def test_mia_audit_states_the_classification_defaults_only() -> None:
    import typer

    from dpaudit.cli.main import app

    cmd = typer.main.get_command(app).commands["mia"].commands["audit"]  # type: ignore[attr-defined]
    helps = {p.name: p.help for p in cmd.params}
    assert helps["epochs"].endswith(f"Default: {TRAIN_DEFAULTS['classification']['epochs']}.")
