"""A run whose training diverges (loss or weights nan or inf) stops with one line naming the learning-rate flag
that drove it (``--lr``; the server's step: ``--server-lr``) and a smaller value, exit code 2: a model of nan
weights has no utility and nothing to audit, and must never be written or reported as a result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dpaudit.cli.main import app

runner = CliRunner()

#: The smallest runs each command takes (the demo at 16 px, a smallcnn, one epoch).
TRAIN = ["--dataset", "demo", "--arch", "smallcnn", "--image-size", "16", "--max-images", "60", "--epochs", "1",
         "--batch-size", "8", "--threads", "1"]


def _one_line(res, *words: str) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, AssertionError)
    line = " ".join(res.output[res.output.index("error: "):].split())  # after the progress lines, if any
    assert res.output.count("error:") == 1, res.output
    for word in words:
        assert word in line, line
    return line


@pytest.mark.parametrize("mechanism", [["--sigma", "1"], ["--non-private"]])
def test_train_that_diverges_names_lr_and_writes_nothing(tmp_path: Path, mechanism: list[str]) -> None:
    res = runner.invoke(app, ["train", *TRAIN, *mechanism, "--lr", "1e30", "--out", str(tmp_path / "out")])
    _one_line(res, "error: --lr must be small enough that training stays finite (it diverged at seed 0, epoch 1: ",
              "got 1e+30", "Fix: pass a smaller --lr, e.g. --lr 0.002")  # the classification default
    assert not (tmp_path / "out" / "model.pt").exists()


def test_the_smaller_lr_suggested_below_the_default_is_a_tenth() -> None:
    from dpaudit.audit.configs import TrainConfig
    from dpaudit.audit.train import diverged

    config = TrainConfig(dataset="demo", lr=1e-3, non_private=True)
    assert str(diverged(config, "x")).endswith("Fix: pass a smaller --lr, e.g. --lr 0.0001.")


def test_weights_that_become_non_finite_at_the_last_step_are_caught() -> None:
    from dpaudit.audit.train import Diverged, check_finite_weights
    from dpaudit.models import build_model

    model = build_model("smallcnn", num_classes=2, width=4)
    check_finite_weights(model)
    name = [k for k, v in model.state_dict().items() if v.is_floating_point()][2]
    with torch.no_grad():
        model.state_dict()[name].view(-1)[0] = float("inf")
    with pytest.raises(Diverged, match=f"first: {name!r}"):
        check_finite_weights(model)


def test_profile_that_diverges_names_lr(tmp_path: Path) -> None:
    res = runner.invoke(app, ["profile", "--out", str(tmp_path / "p"), *TRAIN[:-2], "--epsilons", "8",
                              "--no-non-private", "--seeds", "1", "--attack-images", "4", "--attack-epochs", "1",
                              "--no-render", "--lr", "1e30", "--threads", "1"])
    _one_line(res, "--lr must be small enough that training stays finite", "Fix: pass a smaller --lr")


def test_federated_client_that_diverges_names_lr_the_round_and_the_site() -> None:
    """The client is named by its round and site (as the console's site column), not by the seed derived for it
    (seed + round * clients + site: 'seed 5' here, a seed the user never typed for it); nothing about its data."""
    import re

    res = runner.invoke(app, ["federated", "train", "--image-size", "16", "--max-images", "80", "--arch", "smallcnn",
                              "--clients", "2", "--rounds", "1", "--batch-size", "8", "--epsilon", "8",
                              "--threads", "1", "--lr", "1e30", "--seed", "5"])
    line = _one_line(res, "--lr must be small enough that training stays finite", "Fix: pass a smaller --lr")
    assert re.search(r"\(it diverged at round 1, site [01], epoch 1: the (training loss|weights) became ", line), line
    assert "seed" not in line


def test_federated_server_step_that_diverges_names_server_lr() -> None:
    # finite client updates (the default lr), a server step of 1e300 times them: beyond float32's range
    res = runner.invoke(app, ["federated", "train", "--image-size", "16", "--max-images", "80", "--arch", "smallcnn",
                              "--clients", "2", "--rounds", "2", "--batch-size", "8", "--epsilon", "8",
                              "--threads", "1", "--server-lr", "1e300"])
    _one_line(res, "--server-lr must be small enough that the global model stays finite (round 1 of 2: the server's "
              "step made ", "got 1e+300", "Fix: pass a smaller --server-lr, e.g. --server-lr 1 (1: plain FedAvg)")


def test_federated_clients_that_diverge_after_a_large_server_step_name_server_lr() -> None:
    """A server step of 1e30 times the clients' mean update leaves float32 weights finite (~1e27), and the clients'
    next round diverges: the cause is the server's step, so the fix names --server-lr (1, plain FedAvg) before a
    smaller --lr, not --lr alone at its default."""
    res = runner.invoke(app, ["federated", "train", "--image-size", "8", "--max-images", "200", "--arch", "smallcnn",
                              "--arch-args", '{"width": 4}', "--clients", "2", "--rounds", "2", "--epsilon", "8",
                              "--threads", "1", "--server-lr", "1e30"])
    line = _one_line(res, "--server-lr must be small enough that training stays finite (it diverged at round 2, site ",
                     "after the server's step of round 1 of 2 scaled the clients' mean update by 1e+30", "got 1e+30",
                     "Fix: pass a smaller --server-lr, e.g. --server-lr 1 (plain FedAvg), or a smaller --lr")
    assert not line.startswith("error: --lr"), line
