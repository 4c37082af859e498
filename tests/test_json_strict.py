"""Every JSON dpaudit writes is strict JSON: no ``Infinity``, ``-Infinity`` or ``NaN`` (which Python's ``json``
writes and reads by default, but which are not JSON); infinite numbers are the strings "inf", "-inf", a number
that is not defined (NaN) is null with its reason under "undefined" (:mod:`dpaudit.codec`). And wherever a person reads an infinite bound (console, report, checklist) it is '∞'."""

from __future__ import annotations

import json
import re
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


def test_a_number_that_is_not_defined_is_null_with_its_reason() -> None:
    """NaN (an MCC on a split with one class) is null in JSON, never the string "nan", and the object holding it
    says why; it reads back as NaN (and the "nan" of older files too)."""
    import math

    from dpaudit.audit.federated.fedavg import ClientSummary
    from dpaudit.audit.metrics import ClassificationMetrics, GroupMetrics
    from dpaudit.codec import decode, dumps, encode, from_plain

    site = ClientSummary(client=0, n_train=10, n_test=0, label_histogram=(5, 5), rounds_participated=1,
                         sampling_probability=0.1, steps=10, epsilon=8.0, test_mcc=float("nan"))
    text = dumps(site)
    plain = strict_loads(text)
    assert plain["test_mcc"] is None and '"nan"' not in text
    assert plain["undefined"] == {"test_mcc": ClientSummary.UNDEFINED["test_mcc"]}
    back = from_plain(ClientSummary, plain)
    assert math.isnan(back.test_mcc) and dumps(back) == text
    m = ClassificationMetrics(n=3, mcc=float("nan"), balanced_accuracy=0.5, auroc=float("nan"), accuracy=1.0,
                              loss=0.1, subgroups=(GroupMetrics("sex", "F", 2, float("nan"), 1.0),))
    plain = encode(m)
    assert plain["mcc"] is None and set(plain["undefined"]) == {"mcc", "auroc", "mcc_argmax"}
    assert plain["subgroups"][0]["undefined"] == {"mcc": GroupMetrics.UNDEFINED["mcc"]}
    assert "one class" in plain["undefined"]["mcc"]
    assert math.isnan(decode(float, "nan")) and math.isnan(decode(float, None))
    assert encode({"e": float("inf")}) == {"e": "inf"}


@pytest.mark.parametrize("records_per_patient", [1, 4])
def test_a_bound_not_computed_is_null_with_its_reason(records_per_patient: int) -> None:
    """profile.json's bounds_curve[] points are computed without the membership-inference curve: their
    mia_advantage is null and says why under "undefined", as a NaN does (and epsilon_patient where the unit holds
    one record); a trained budget's bounds[] row, which has both, carries no reason. Every null of a bounds
    outcome has its reason, and each reads back equal."""
    from dpaudit.audit.profile.schema import BoundsOutcome
    from dpaudit.audit.profile.tasks import BoundsTask
    from dpaudit.codec import encode

    common = {"sampling_probability": 0.46, "steps": 3, "target_delta": 8e-7,
              "records_per_patient": records_per_patient, "kappa_train": 1 / 139}
    point = BoundsTask(0.5, None, kappas=(), curves=False, **common).run()
    row = BoundsTask(2.0, 2.3, kappas=(), curves=True, **common).run()
    plain = strict_loads(point.to_json())
    assert plain["mia_advantage"] is None and plain["mia_roc"] == [] and plain["rero_curve"] == []
    nulls = {k for k, v in plain.items() if v is None}
    assert nulls == {"mia_advantage"} | ({"epsilon_patient"} if records_per_patient == 1 else set())
    assert plain["undefined"] == {k: BoundsOutcome.UNDEFINED[k] for k in nulls}
    assert "bounds_curve[]" in plain["undefined"]["mia_advantage"]
    assert BoundsOutcome.from_json(point.to_json()) == point
    assert encode(row)["mia_advantage"] > 0 and "mia_advantage" not in encode(row).get("undefined", {})


def test_strict_loads_refuses_what_json_dumps_writes_by_default() -> None:
    for value in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(ValueError, match="not JSON"):
            strict_loads(json.dumps({"x": value}))


#: Commands whose --json output may hold non-finite numbers: an infinite epsilon per patient at tiny noise, an
#: audit with every guess right.
CHEAP = [
    (["bounds", "--sigma", "0.3", "--q", "0.5", "--steps", "2000", "--records-per-patient", "40",
      "--kappa", "1e-3", "--json"], set()),
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


def test_an_infinite_epsilon_reads_the_same_in_the_console_and_json(monkeypatch) -> None:
    import math

    import dpaudit.bounds.rdp as rdp
    from dpaudit.numfmt import lower, upper

    assert upper(float("inf")) == lower(float("inf")) == "∞" and upper(float("-inf")) == "-∞"
    # Per patient at tiny noise the k-record PLD is infinite (loss cap) and the dominating mechanism's RDP is a huge
    # finite number (19.6 million here): an RDP that is infinite too stands in for every infinite epsilon.
    monkeypatch.setattr(rdp, "epsilon_rdp", lambda *a, **k: math.inf)
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


# ------------------------------------------------------------------------------------------------ labels
#: Numbers that say what ran, not what was measured or bounded: the settings, counts and timings (wall-clock
#: ``seconds``, ``wall_seconds``, ``reference_seconds``) a result echoes. Every other number must have a label of
#: one of the four kinds (KINDS).
SETTINGS = {"seed", "seconds", "wall_seconds", "reference_seconds", "n_images", "n_train", "n_test", "n_val", "n",
            "bins", "observations", "canaries", "members", "clients", "rounds", "batch_size", "image_shape",
            "n_excluded", "keep_images", "max_grad_norm", "success_ssim", "epochs", "records_per_patient",
            "client", "label_histogram", "steps", "sampling_probability", "target_delta", "noise_multiplier",
            "epsilon_target", "confidence", "delta", "kappa", "rounds_participated", "images_per_unit", "privacy",
            "fpr_target", "true_positives", "positives", "false_positives", "negatives", "guesses", "correct",
            "guesses_positive", "guesses_negative", "tries", "candidates", "threshold", "max_images_per_unit",
            "mean_images_per_unit", "n_units", "histogram", "lr", "epoch", "trainable_parameters",
            "frozen_parameters", "client_sampling_probability", "schema_version", "tasks_run", "tasks_reused",
            "binding", "noise_multiplier_used", "skipped", "phases", "images_per_view", "noise_std_per_view",
            "centralised_noise_multiplier"}
#: The four kinds of number (the report's reading guide): every label starts with one.
KINDS = ("sound upper bound", "approximation", "estimate", "empirical")
#: Blocks that hold the run's configuration (what was asked), echoed beside the result.
SETTING_BLOCKS = {"scenario", "settings", "config", "epsilon_mechanism", "arch_args"}


def _label_parts(key: str) -> list[str]:
    """'rows[].ci_low, rows[].ci_high (exact)' -> ['rows.ci_low', 'rows.ci_high']."""
    key = re.sub(r"\([^)]*\)", "", key)
    return [p.replace("[]", "").strip() for p in key.split(",") if p.strip()]


def _covered(path: str, labels: dict) -> bool:
    """A label covers the field it names, every field under it, and (as the rows' own columns) a field whose last
    names it ends with."""
    norm = path.replace("[]", "")
    return any(norm == p or norm.startswith(p + ".") or norm.endswith("." + p)
               for key in labels for p in _label_parts(key))


def unlabelled(obj, labels: dict | None = None, path: str = "") -> set[str]:
    """The numeric fields of a JSON result that no ``labels`` block covers (the nearest enclosing one: an object
    with its own ``labels`` states them relative to itself)."""
    if isinstance(obj, dict):
        own = obj.get("labels")
        base = "" if isinstance(own, dict) else path
        labels = own if isinstance(own, dict) else labels
        found: set[str] = set()
        for k, v in obj.items():
            if (k == "labels" and isinstance(v, dict)) or k in SETTINGS or k in SETTING_BLOCKS:
                continue
            found |= unlabelled(v, labels, f"{base}.{k}" if base else k)
        return found
    if isinstance(obj, list):
        return set().union(*(unlabelled(v, labels, path + "[]") for v in obj)) if obj else set()
    numeric = (isinstance(obj, (int, float)) and not isinstance(obj, bool)) or obj in ("inf", "-inf", "nan")
    return {path} if numeric and (labels is None or not _covered(path, labels)) else set()


def wrong_kinds(obj) -> set[str]:
    """The labels (of every ``labels`` block) that do not start with one of the four KINDS."""
    if isinstance(obj, dict):
        own = obj.get("labels")
        found = {f"{k}: {v}" for k, v in own.items() if not str(v).startswith(KINDS)} if isinstance(own, dict) else set()
        return found.union(*(wrong_kinds(v) for k, v in obj.items() if k != "labels"))
    if isinstance(obj, list):
        return set().union(*(wrong_kinds(v) for v in obj))
    return set()


def test_the_label_checker_finds_an_unlabelled_number() -> None:
    assert unlabelled({"a": 1.0, "labels": {}}) == {"a"}
    assert unlabelled({"rows": [{"eta": [1.0], "seed": 0}], "labels": {"rows[].eta": "empirical"}}) == set()
    assert unlabelled({"x": {"labels": {"y": "empirical"}, "y": 1, "z": 2}, "labels": {}}) == {"z"}
    assert unlabelled({"config": {"lr": 0.1}, "labels": {}}) == set()
    assert wrong_kinds({"rows": [{"labels": {"ci_low": "exact interval", "a": "empirical"}}]}) == {
        "ci_low: exact interval"}


LABELLED = [
    ["bounds", "--sigma", "1.0", "--q", "0.01", "--steps", "1000", "--kappa", "1e-3", "--json"],
    ["bounds", "--sigma", "1.0", "--q", "0.01", "--steps", "1000", "--kappa", "1e-3", "--records-per-patient", "3", "--json"],
    ["bounds", "--sigma", "1.0", "--q", "0.01", "--steps", "1000", "--kappa", "1e-3", "--method", "edgeworth", "--json"],
    ["bounds", "--sigma", "1.0", "--q", "0.01", "--steps", "100", "--kappa", "1e-3", "--method", "mc", "--mc-samples", "2000",
     "--json"],
    ["mia", "bound", "--true-positives", "90", "--positives", "100", "--false-positives", "3", "--negatives", "100",
     "--json"],
    ["mia", "one-run", "--canaries", "1000", "--guesses", "100", "--correct", "90", "--json"],
    ["attack", "--arch", "smallcnn", "--dataset", "demo", "--image-size", "16", "--n-images", "2", "--sigmas",
     "0,0.1", "--threads", "1", "--json"],
    ["mia", "audit", "--dataset", "demo", "--image-size", "8", "--max-images", "160", "--arch", "smallcnn",
     "--arch-args", '{"width": 4}', "--sigma", "1.0", "--epochs", "1", "--batch-size", "8", "--canaries", "30",
     "--threads", "1", "--json"],
    ["train", "--dataset", "demo", "--image-size", "8", "--max-images", "120", "--arch", "smallcnn", "--arch-args",
     '{"width": 4}', "--epsilon", "8", "--epochs", "1", "--batch-size", "8", "--threads", "1", "--json"],
    ["federated", "train", "--dataset", "demo", "--image-size", "8", "--max-images", "160", "--arch", "smallcnn",
     "--arch-args", '{"width": 4}', "--clients", "2", "--rounds", "1", "--epsilon", "8", "--batch-size", "8",
     "--threads", "1", "--json"],
    ["federated", "attack", "--dataset", "demo", "--image-size", "16", "--arch", "smallcnn", "--clients", "2",
     "--batch-size", "2", "--bins", "4", "--sigmas", "0", "--threads", "1", "--json"],
]


@pytest.mark.parametrize("args", LABELLED, ids=lambda a: " ".join(a[:2]))
def test_every_number_a_command_prints_has_a_label(args: list[str]) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    obj = strict_loads(res.stdout)
    assert unlabelled(obj) == set()
    assert wrong_kinds(obj) == set()
    assert "nan" not in _non_finite_strings(obj)  # a number that is not defined is null, with its reason
