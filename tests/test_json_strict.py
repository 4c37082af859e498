"""Every JSON dpaudit writes is strict JSON: no ``Infinity``, ``-Infinity`` or ``NaN`` (which Python's ``json``
writes and reads by default, but which are not JSON); non-finite numbers are the strings "inf", "-inf", "nan"
(:mod:`dpaudit.codec`). And wherever a person reads an infinite bound (console, report, checklist) it is '∞'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpaudit.cli.main import app

runner = CliRunner()


def strict_loads(text: str):
    """``json.loads`` that refuses the non-JSON constants Infinity, -Infinity and NaN."""

    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def _non_finite_strings(obj) -> set[str]:
    if isinstance(obj, dict):
        return set().union(*(_non_finite_strings(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_non_finite_strings(v) for v in obj)) if obj else set()
    return {obj} if obj in ("inf", "-inf", "nan") else set()


def test_strict_loads_refuses_what_json_dumps_writes_by_default() -> None:
    for value in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(ValueError, match="not JSON"):
            strict_loads(json.dumps({"x": value}))


#: Commands whose --json output may hold non-finite numbers: an infinite epsilon per patient at tiny noise, an
#: audit with every guess right.
CHEAP = [
    (["bounds", "--sigma", "0.3", "--q", "0.5", "--steps", "2000", "--records-per-patient", "40",
      "--kappa", "1e-3", "--json"], {"inf"}),
    (["calibrate", "--max-rero", "0.05", "--q", "0.01", "--steps", "100", "--kappa", "1e-3",
      "--records-per-patient", "3", "--json"], set()),
    (["mia", "bound", "--true-positives", "100", "--positives", "100", "--false-positives", "0",
      "--negatives", "100", "--json"], set()),
    (["mia", "one-run", "--canaries", "1000", "--guesses", "100", "--correct", "100", "--json"], set()),
]


@pytest.mark.parametrize(("args", "expected"), CHEAP, ids=lambda a: " ".join(a[:2]) if isinstance(a, list) else "")
def test_bounds_and_audit_json_is_strict(args: list[str], expected: set[str]) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    obj = strict_loads(res.stdout)
    assert expected <= _non_finite_strings(obj)


def test_an_infinite_epsilon_reads_the_same_in_the_console_and_json() -> None:
    from dpaudit.numfmt import lower, upper

    assert upper(float("inf")) == lower(float("inf")) == "∞" and upper(float("-inf")) == "-∞"
    args = CHEAP[0][0][:-1]
    obj = strict_loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert obj["epsilon_patient"] == "inf"
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "∞" in res.stdout and " inf " not in res.stdout


def test_train_attack_federated_json_and_files_are_strict(tmp_path: Path) -> None:
    small = ["--dataset", "demo", "--image-size", "16", "--max-images", "60", "--arch", "smallcnn", "--threads", "1"]
    res = runner.invoke(app, ["train", *small, "--non-private", "--epochs", "1", "--batch-size", "8",
                              "--out", str(tmp_path / "t"), "--json"])
    assert res.exit_code == 0, res.output
    obj = strict_loads(res.stdout)
    assert obj["epsilon_achieved"] is None and obj["noise_multiplier"] == 0
    strict_loads((tmp_path / "t" / "metrics.json").read_text())
    res = runner.invoke(app, ["attack", *small, "--n-images", "2", "--sigmas", "0,1e-3", "--decoder", "strong",
                              "--out", str(tmp_path / "a"), "--json"])
    assert res.exit_code == 0, res.output
    strict_loads(res.stdout)
    strict_loads((tmp_path / "a" / "attack.json").read_text())
    res = runner.invoke(app, ["federated", "train", *small[2:], "--clients", "2", "--rounds", "1",
                              "--batch-size", "8", "--epsilon", "8", "--json"])
    assert res.exit_code == 0, res.output
    strict_loads(res.stdout)
    for name in (".dpaudit-run.json",):
        for folder in ("t", "a"):
            if (tmp_path / folder / name).exists():
                strict_loads((tmp_path / folder / name).read_text())
