"""The board's decision on constructed profiles: all within, none within, ties, missing evidence, and the remedy.

The profiles are the synthetic HAM10000-like profile of ``test_report`` (seed paper Table 3 rows: worst-case
bound at kappa = 1/N_train 0.03% / 1.22% / 22.3% / 100% and mean MCC 0.156 / 0.375 / 0.428 / 0.520 at epsilon
1 / 8 / 20 / 1e9; realistic attack 0% on every private budget, 100% without DP), edited per test.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from test_report import synthetic_profile

from dpaudit.audit.decision import Decision, Limit, decide, limits_from_options
from dpaudit.audit.profile.schema import Profile
from dpaudit.audit.results import TrainResult
from dpaudit.errors import ConfigError


def _no_calibration(limit, bounds):  # pragma: no cover - a test that reaches it fails
    raise AssertionError("calibration is only needed when no budget is within the limits")


def _with_mcc(profile: Profile, mcc: dict[float | None, float]) -> Profile:
    """Every seed of the listed budgets gets exactly this MCC."""
    train = tuple(dataclasses.replace(t, metrics=dataclasses.replace(t.metrics, mcc=mcc[t.epsilon_target]))
                  if t.epsilon_target in mcc else t for t in profile.train)
    return dataclasses.replace(profile, train=train)


def _with_realistic(profile: Profile, rate: float, ci_high: float | None = None) -> Profile:
    """Every private budget's realistic attack succeeds at ``rate`` (both decoders), 95% interval up to ``ci_high``
    (default rate + 0.1)."""
    high = min(1.0, rate + 0.1) if ci_high is None else ci_high
    attacks = tuple(dataclasses.replace(a, rows=tuple(dataclasses.replace(r, success_rate=rate, ci_low=0.0,
                                                                           ci_high=high)
                                                      for r in a.rows)) if a.epsilon_target is not None else a
                    for a in profile.attacks)
    return dataclasses.replace(profile, attacks=attacks)


def test_some_within_recommends_the_best_utility_among_them() -> None:
    d = decide(synthetic_profile(), [Limit("rero", 0.05)], calibrate_fn=_no_calibration)
    assert d.within == ("ε = 1", "ε = 8")  # worst case 0.03% and 1.22% <= 5%; 22.3% and 100% are not
    assert d.recommended == "ε = 8"  # MCC 0.375 > 0.156
    assert "ε = 8" in d.reason and "1 / 5" not in d.reason and d.remedy is None
    over = d.checks_of("ε = 20").checks[0]
    assert not over.within and over.value == pytest.approx(0.2230) and over.label == "sound upper bound"
    assert not d.checks_of("non-private").within  # no guarantee: 100%


def test_all_within_recommends_the_best_private_budget_never_the_baseline() -> None:
    prof = _with_mcc(synthetic_profile(), {None: 0.9})  # the baseline is better still, but has no guarantee
    prof = _with_realistic(prof, 0.0, ci_high=0.04)  # a conclusive 0%: the whole interval within 5%
    d = decide(prof, [Limit("rero", 0.05, "realistic")], calibrate_fn=_no_calibration)
    assert d.within == ("ε = 1", "ε = 8", "ε = 20", "ε = 10⁹")
    assert d.recommended == "ε = 10⁹"
    assert d.checks_of("non-private").checks[0].value == 1.0  # the attack reconstructs everything without DP
    assert "(empirical lower bound: the true risk is never smaller than the attack's result; " in d.reason  # what it compares


def test_ties_go_to_the_smaller_epsilon() -> None:
    prof = _with_mcc(synthetic_profile(), {1.0: 0.4, 8.0: 0.4})
    d = decide(prof, [Limit("rero", 0.05)], calibrate_fn=_no_calibration)
    assert d.recommended == "ε = 1"
    assert "ties" in d.reason and "ε = 8" in d.reason


def test_none_within_names_the_failing_limit_and_the_noise_that_meets_it() -> None:
    calls = []

    def fake(limit, bounds):
        calls.append((limit, bounds.epsilon_target))
        return (2.5, 0.31, None, 0.3099) if limit.threat_model == "worst_case" else (1.5, 0.9, None, 0.8999)

    limits = [Limit("rero", 0.0002), Limit("rero", 0.00005 + 1 / 8000, "relaxed"),
              Limit("rero", 0.05, "realistic")]
    d = decide(synthetic_profile(), limits, calibrate_fn=fake)
    assert d.within == () and d.recommended is None
    # Only the most private budget (epsilon 1: worst 0.03% > 0.02%; relaxed 0.01% within) is calibrated.
    assert calls == [(limits[0], 1.0)]
    assert d.remedy.budget == "ε = 1" and d.remedy.binding == 0 and d.remedy.noise_multiplier == 2.5
    assert d.remedy.noise_multiplier_used == pytest.approx(0.92)
    assert "fails first" in d.reason and "σ ≥ 2.5 " in d.reason and "worst-case reconstruction" in d.reason
    assert "--epsilons 0.3099" in d.reason and d.remedy.epsilon_target == 0.3099


def test_none_within_binding_limit_is_the_one_needing_most_noise() -> None:
    def fake(limit, bounds):
        return {"rero": (2.0, 0.5, None, 0.5), "mia_tpr": (3.0, 0.2, None, 0.2)}[limit.kind]

    # Epsilon 1 fails both: worst case 0.03% > 0.02%, and TPR at FPR 0.1% is 0.27% > 0.2% (see below).
    d = decide(synthetic_profile(), [Limit("rero", 0.0002), Limit("mia_tpr", 0.002, at_fpr=1e-3)],
               calibrate_fn=fake)
    assert d.remedy.binding == 1 and d.remedy.noise_multiplier == 3.0
    assert "every other failing bound" in d.reason


def test_none_within_on_the_realistic_attack_has_no_calibration() -> None:
    d = decide(_with_realistic(synthetic_profile(), 0.5), [Limit("rero", 0.05, "realistic")],
               calibrate_fn=_no_calibration)
    assert d.within == () and d.remedy is None
    assert "profile smaller budgets" in d.reason


def test_a_limit_below_the_blind_guess_cannot_be_met() -> None:
    d = decide(synthetic_profile(), [Limit("rero", 1e-4)], calibrate_fn=_no_calibration)  # kappa = 1/8000
    assert d.remedy is None and "No noise can meet" in d.reason


def test_missing_attack_is_not_within() -> None:
    prof = synthetic_profile()
    prof = dataclasses.replace(prof, attacks=tuple(a for a in prof.attacks if a.epsilon_target != 8.0))
    d = decide(prof, [Limit("rero", 0.05, "realistic")], calibrate_fn=_no_calibration)
    assert "ε = 8" not in d.within and d.checks_of("ε = 8").checks[0].value is None


def test_no_utility_recommends_the_most_private_within() -> None:
    prof = synthetic_profile(seeds=1)
    prof = dataclasses.replace(prof, train=tuple(
        dataclasses.replace(t, metrics=dataclasses.replace(t.metrics, mcc=math.nan)) for t in prof.train))
    d = decide(prof, [Limit("rero", 0.05)], calibrate_fn=_no_calibration)
    assert d.recommended == "ε = 1" and "No test MCC was measured" in d.reason
    assert not d.ranked_by_utility


def test_membership_limit_reads_the_table_and_several_limits_combine() -> None:
    # Synthetic TPR at FPR 1e-3 is min(1, 1e-3 * e^eps): 0.27% at epsilon 1, 100% from epsilon 8 on.
    d = decide(synthetic_profile(), [Limit("rero", 0.05), Limit("mia_tpr", 0.01, at_fpr=1e-3)],
               calibrate_fn=_no_calibration)
    assert d.within == ("ε = 1",) and d.recommended == "ε = 1"
    assert d.checks_of("ε = 1").checks[1].value == pytest.approx(math.e * 1e-3)


def test_decision_round_trips_in_profile_json() -> None:
    prof = synthetic_profile()
    prof = dataclasses.replace(prof, decision=decide(prof, [Limit("rero", 0.05), Limit("mia_tpr", 0.01)],
                                                     calibrate_fn=_no_calibration))
    again = Profile.from_json(prof.to_json())
    assert again == prof and isinstance(again.decision, Decision)
    assert '"recommended": "ε = 1"' in prof.to_json()


def test_real_calibration_meets_the_limit_and_needs_more_noise() -> None:
    """Direction and sandwich: the calibrated sigma exceeds the one used, and its bound is at most the limit."""
    from dpaudit.bounds import rero_bound

    prof = synthetic_profile(seeds=1)
    d = decide(prof, [Limit("rero", 2e-4)])  # epsilon 1 (sigma 0.92, q 0.04, T 500) has 0.03% in the table
    r = d.remedy
    assert r is not None and r.noise_multiplier > r.noise_multiplier_used
    bound = rero_bound(r.noise_multiplier, r.sampling_probability, r.steps, [1 / 8000], threat_model="worst_case")
    assert float(bound.upper[0]) <= 2e-4
    assert math.isfinite(r.epsilon) and r.epsilon > 0


def test_mia_tpr_off_the_grid_equals_the_worst_case_rero_at_kappa_fpr() -> None:
    """TPR at FPR alpha <= 1 - f(alpha) = the worst-case ReRo bound at kappa = alpha (one trade-off curve)."""
    from dpaudit.audit.decision import _mia_tpr
    from dpaudit.bounds import mia_curve

    prof = synthetic_profile(seeds=1)
    b = dataclasses.replace(prof.bounds[1], mia_tpr_at_fpr=())  # nothing stored: computed
    ref = mia_curve(b.noise_multiplier, b.sampling_probability, b.steps)  # independent route: the MIA module
    tpr = float(ref.tpr[list(ref.fpr).index(1e-3)])
    got = _mia_tpr(b, 1e-3)
    # Both are sound upper bounds from grids of different step: equal within the tight route's numerical bracket
    # (about 2e-4 relative here), the computed one never below the reference's value minus that bracket.
    assert got == pytest.approx(tpr, rel=5e-4) and got >= tpr * (1 - 5e-4)


@pytest.mark.parametrize("kwargs, field", [
    (dict(kind="rero", maximum=0.0), "max_rero"),
    (dict(kind="rero", maximum=1.2), "max_rero"),
    (dict(kind="rero", maximum=0.05, threat_model="paranoid"), "threat_model"),
    (dict(kind="rero", maximum=0.05, at_fpr=1e-3), "at_fpr"),
    (dict(kind="mia_tpr", maximum=1e-4, at_fpr=1e-3), "max_mia_tpr"),
    (dict(kind="mia_tpr", maximum=0.01, threat_model="relaxed"), "threat_model"),
    (dict(kind="dp", maximum=0.01), "kind"),
])
def test_limits_are_validated(kwargs, field) -> None:
    with pytest.raises(ConfigError, match=field):
        Limit(**kwargs)


def test_limits_from_options_pairs_repeated_flags() -> None:
    lims = limits_from_options([0.05, 0.01], ["worst-case", "realistic"], [0.01], [])
    assert [(x.kind, x.maximum, x.threat_model, x.at_fpr) for x in lims] == [
        ("rero", 0.05, "worst_case", None), ("rero", 0.01, "realistic", None), ("mia_tpr", 0.01, "worst_case", 1e-3)]
    assert [x.threat_model for x in limits_from_options([0.05], ["relaxed"])] == ["relaxed"]
    with pytest.raises(ConfigError, match="once per threat model"):  # one threat model for both: one quantity
        limits_from_options([0.05, 0.1], ["relaxed"])
    with pytest.raises(ConfigError, match="--threat-model"):
        limits_from_options([0.05, 0.1, 0.2], ["relaxed", "worst-case"])
    with pytest.raises(ConfigError, match="--at-fpr"):
        limits_from_options([], [], [], [1e-3])
    with pytest.raises(ConfigError, match="limits"):
        decide(synthetic_profile(seeds=1), [])


def test_profile_of_the_earlier_layout_still_loads() -> None:
    """profile.json files that stored a summary of each run (written before the training runs were stored whole,
    and before ``optimizer`` was recorded) decode: every stored value is kept, the rest is NaN or not recorded.
    The file is a regression fixture: ``synthetic_profile(with_mia_audit=False, seeds=1)`` as an earlier dpaudit
    wrote it, without ``optimizer``, ``decision`` and ``checklist``."""
    import json
    from pathlib import Path

    text = (Path(__file__).parent / "data" / "profile_train_outcomes.json").read_text(encoding="utf-8")
    prof = Profile.from_json(text)
    old = json.loads(text)["train"]
    assert all(isinstance(t, TrainResult) for t in prof.train) and len(prof.train) == len(old)
    for t, o in zip(prof.train, old, strict=True):
        assert t.optimizer is None and t.epsilon == o["epsilon"] and t.noise_multiplier == o["noise_multiplier"]
        assert t.utility.mcc == o["utility"]["mcc"] and t.checkpoint == o["checkpoint"]
        assert [(g.group, g.value, g.mcc) for g in t.subgroups] == [
            (g["attribute"], g["value"], g["mcc"]) for g in o["subgroups"]]
        assert t.val_metrics is None and t.history == () and t.delta_rule == "not recorded"
    assert decide(prof, [Limit("rero", 0.05)], calibrate_fn=_no_calibration).recommended is not None
    assert Profile.from_json(prof.to_json()).to_json() == prof.to_json()  # and it is written in today's layout


def test_profile_of_the_earlier_layout_with_membership_audits_is_refused_by_name() -> None:
    import json
    from pathlib import Path

    data = json.loads((Path(__file__).parent / "data" / "profile_train_outcomes.json").read_text(encoding="utf-8"))
    data["mia_audits"] = [{"epsilon_target": 1.0, "epsilon_lower_bound": 0.1, "epsilon_ceiling": 3.0}]
    with pytest.raises(ConfigError, match=r"mia_audits.*re-create profile\.json"):
        Profile.from_json(json.dumps(data))


def patient_profile(k: int = 4) -> Profile:
    """The synthetic profile with the patient as the privacy unit: k images per patient, per-patient epsilon
    stored beside the per-image one (regression values, not a computation: 5x the per-image epsilon)."""
    from dpaudit.audit.profile.schema import PrivacyInfo

    prof = synthetic_profile(seeds=1)
    bounds = tuple(dataclasses.replace(b, records_per_patient=k, epsilon_patient=5 * b.epsilon)
                   for b in prof.bounds)
    dataset = dataclasses.replace(prof.dataset, privacy=PrivacyInfo("patient", k, data_unit="patient"))
    return dataclasses.replace(prof, bounds=bounds, dataset=dataset)


def test_patient_unit_remedy_is_runnable_and_meets_the_limit() -> None:
    """The remedy's printed sigma (rounded up) and --epsilons (rounded down) both meet the limit per patient, as
    `dpaudit bounds` computes it; its epsilons say per patient and per image."""
    import json
    import re

    from typer.testing import CliRunner

    from dpaudit.bounds import calibrate_epsilon
    from dpaudit.cli.main import app

    d = decide(patient_profile(), [Limit("rero", 2e-4)])  # epsilon 1 (sigma 0.92, q 0.04, T 500): 0.03% stored
    r = d.remedy
    assert r is not None and r.epsilon_patient is not None and r.epsilon_patient > r.epsilon
    sigma_text = re.search(r"σ ≥ ([0-9.]+) ", d.reason).group(1)
    eps_text = re.search(r"--epsilons ([0-9.]+)", d.reason).group(1)
    assert float(sigma_text) >= r.noise_multiplier and float(eps_text) <= r.epsilon
    assert "per patient of 4 images" in d.reason and "per image" in d.reason
    base = ["--q", str(r.sampling_probability), "--steps", str(r.steps), "--kappa", str(1 / 8000),
            "--records-per-patient", "4", "--json"]
    res = CliRunner().invoke(app, ["bounds", "--sigma", sigma_text, *base])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["rero"][0]["worst_case"] <= 2e-4
    # --epsilons E trains with the sigma the accountant gives for E, per image: it meets the limit too
    trained = calibrate_epsilon(float(eps_text), r.sampling_probability, r.steps, 8e-7).noise_multiplier
    res = CliRunner().invoke(app, ["bounds", "--sigma", repr(trained), *base])
    assert json.loads(res.stdout)["rero"][0]["worst_case"] <= 2e-4


def test_patient_unit_reason_names_both_epsilons() -> None:
    d = decide(patient_profile(), [Limit("rero", 0.05)], calibrate_fn=_no_calibration)
    assert d.recommended == "ε = 8"
    assert "ε = 8 per image (ε ≤ 39.96 per patient)" in d.reason  # 5 x 7.992
    assert "Budgets are named by their per-image ε" in d.reason


def test_realistic_limit_on_too_few_images_is_inconclusive() -> None:
    """0 of 8 images reconstructed, 95% interval up to 36.9%: not evidence of at most 5%."""
    prof = _with_realistic(synthetic_profile(), 0.0, ci_high=0.369)
    d = decide(prof, [Limit("rero", 0.05, "realistic")], calibrate_fn=_no_calibration)
    assert d.within == () and d.recommended is None and d.remedy is None
    check = d.checks_of("ε = 8").checks[0]
    assert check.inconclusive and not check.within and check.images_needed == 72
    assert "inconclusive" in d.reason and "--attack-images 72" in d.reason and "36.9%" in d.reason
    assert "profile smaller budgets" not in d.reason  # more images decide it, not smaller budgets


def test_images_needed_is_the_clopper_pearson_size() -> None:
    """No success: the exact 97.5% one-sided upper limit is 1 - 0.025^(1/n); <= 5% from n = 72 (closed form)."""
    from dpaudit.audit.decision import images_needed

    assert images_needed(0.0, 0.05) == math.ceil(math.log(0.025) / math.log(0.95))
    assert images_needed(0.05, 0.05) is None and images_needed(0.2, 0.1) is None


def test_an_infinite_epsilon_per_patient_is_stated_not_a_crash(tmp_path) -> None:
    # The README's main command: at the 1e9 budget the tiny noise gives epsilon per patient = inf; the decision's
    # reason and the report formatted it through log10 and crashed after the whole run (OverflowError).
    from dpaudit.audit.profile.schema import fmt_eps
    from dpaudit.audit.report import render_report

    assert fmt_eps(float("inf")) == "∞" and fmt_eps(float("nan")) == "n/a" and fmt_eps(1e9) == "10⁹"
    prof = patient_profile()
    bounds = tuple(dataclasses.replace(b, epsilon_patient=math.inf) if b.epsilon_target == max(
        x.epsilon_target for x in prof.bounds) else b for b in prof.bounds)
    prof = dataclasses.replace(prof, bounds=bounds)
    d = decide(prof, [Limit("rero", 0.05)])
    assert "∞" in d.reason
    render_report(dataclasses.replace(prof, decision=d), tmp_path / "r.pdf")
    from dpaudit.audit.checklist import build_checklist

    item = next(i for i in build_checklist(dataclasses.replace(prof, decision=d)).items if i.key == "epsilon_delta")
    assert "ε ≤ ∞ per patient" in item.value and "inf" not in item.value


def test_a_huge_epsilon_per_patient_is_rounded_up_in_the_reason() -> None:
    """A bound is never stated below its value: 7.744e8 per patient reads 7.745e+08 (was '7.7e+08', a budget name's
    rounding to the nearest, under the bound), and the label of a budget past the search range rounds its achieved
    epsilon up too."""
    from dpaudit.audit.profile.schema import fmt_eps

    prof = patient_profile()
    top = max(x.epsilon_target for x in prof.bounds)
    bounds = tuple(dataclasses.replace(b, epsilon_patient=7.744e8) if b.epsilon_target == top else b
                   for b in prof.bounds)
    d = decide(dataclasses.replace(prof, bounds=bounds), [Limit("rero", 0.05)], calibrate_fn=_no_calibration)
    assert "ε ≤ 7.744e+08" in d.reason and "7.7e+08" not in d.reason, d.reason
    assert fmt_eps(4.84e7, up=True) == "4.9e+07" and fmt_eps(4.84e7) == "4.8e+07"


# -- segmentation: the decision ranks by the headline Dice -----------------------------------------------------


def _segmentation(profile: Profile, liver: dict[float | None, float], tumour: float = 0.05) -> Profile:
    """Every run becomes a segmentation run: Dice liver ``liver[eps]`` (NaN: no volume held it), Dice tumour
    ``tumour`` (MCC is then undefined, as for real segmentation runs)."""
    from dpaudit.audit.segmentation import SegmentationMetrics

    def seg(t: TrainResult) -> TrainResult:
        d = liver[t.epsilon_target]
        m = SegmentationMetrics(n_volumes=4, dice={"liver": d, "tumour": tumour}, iou={"liver": d / 2, "tumour": 0.0},
                                dice_std={"liver": 0.1, "tumour": 0.1}, volumes_with_class={"liver": 4, "tumour": 2},
                                pixel_accuracy=0.9, loss=0.3)
        return dataclasses.replace(t, task="segmentation", metrics=m, val_metrics=m, per_seed=(m,))

    return dataclasses.replace(profile, train=tuple(seg(t) for t in profile.train))


def test_segmentation_ranks_by_the_headline_dice_not_by_the_missing_mcc() -> None:
    # Dice liver 0.398 at epsilon 1 and 0.453 at epsilon 8 (a tester's demo-ct profile); both within 5%.
    prof = _segmentation(synthetic_profile(), {1.0: 0.398, 8.0: 0.453, 20.0: 0.528, 1e9: 0.6, None: 0.82})
    d = decide(prof, [Limit("rero", 0.05)], calibrate_fn=_no_calibration)
    assert d.within == ("ε = 1", "ε = 8") and d.recommended == "ε = 8"
    assert d.utility_metric == "dice_liver" and d.utility_label == "Dice liver" and d.ranked_by_utility
    assert "mean test Dice liver 0.453, 2 seed(s)" in d.reason and "first foreground class" in d.reason
    assert "No " not in d.reason and "MCC" not in d.reason
    b = d.checks_of("ε = 8")
    assert b.mcc is None and b.dice == pytest.approx(0.453) and b.n_seeds == 2
    # The JSON keeps mcc and adds dice beside it, and names the ranked metric; it reads back equal.
    data = json.loads(dataclasses.replace(prof, decision=d).to_json())["decision"]
    assert data["utility_metric"] == "dice_liver"
    assert [(x["mcc"], x["dice"]) for x in data["budgets"]][:2] == [(None, pytest.approx(0.398)),
                                                                   (None, pytest.approx(0.453))]
    again = Profile.from_json(dataclasses.replace(prof, decision=d).to_json())
    assert again.decision == d
    # The first page's sentence says what it ranked by.
    from dpaudit.audit.report_text import decision_sentence, utility_cost

    assert "the best mean test Dice liver of the 2 budgets" in decision_sentence(prof, d)
    cost = utility_cost(prof, d.recommended)
    assert "mean test Dice liver 0.453" in cost and "0.820" in cost and "MCC" not in cost


def test_segmentation_ranks_by_the_first_class_not_the_others() -> None:
    # Tumour Dice is the same everywhere; the headline (first foreground class) decides, as the tables show.
    prof = _segmentation(synthetic_profile(seeds=1), {1.0: 0.6, 8.0: 0.5, 20.0: 0.7, 1e9: 0.7, None: 0.8}, 0.3)
    d = decide(prof, [Limit("rero", 0.05)], calibrate_fn=_no_calibration)
    assert d.recommended == "ε = 1" and "mean test Dice liver 0.600, 1 seed(s)" in d.reason


def test_segmentation_dice_ties_go_to_the_smaller_epsilon() -> None:
    prof = _segmentation(synthetic_profile(), {1.0: 0.45, 8.0: 0.45, 20.0: 0.5, 1e9: 0.5, None: 0.8})
    d = decide(prof, [Limit("rero", 0.05)], calibrate_fn=_no_calibration)
    assert d.recommended == "ε = 1" and "ties" in d.reason and "ε = 8" in d.reason


def test_segmentation_without_the_headline_dice_says_so() -> None:
    prof = _segmentation(synthetic_profile(seeds=1), dict.fromkeys((1.0, 8.0, 20.0, 1e9, None), math.nan))
    d = decide(prof, [Limit("rero", 0.05)], calibrate_fn=_no_calibration)
    assert d.recommended == "ε = 1" and "No test Dice liver was measured" in d.reason and not d.ranked_by_utility
    from dpaudit.audit.report_text import decision_sentence

    sentence = decision_sentence(prof, d)
    assert "most private of the 2 budgets" in sentence and "best" not in sentence


def test_the_reason_names_the_recommended_budgets_other_classes_dice() -> None:
    # Tumour Dice 0.05 at every budget against 0.6 without privacy (the helper gives the baseline Dice tumour
    # 0.05 too; here it is raised): a collapsed class the headline does not rank is named beside the headline.
    prof = _segmentation(synthetic_profile(), {1.0: 0.398, 8.0: 0.453, 20.0: 0.528, 1e9: 0.6, None: 0.82})
    train = tuple(dataclasses.replace(t, metrics=dataclasses.replace(t.metrics, dice={**t.metrics.dice, "tumour": 0.6}))
                  if t.epsilon_target is None else t for t in prof.train)
    d = decide(dataclasses.replace(prof, train=train), [Limit("rero", 0.05)], calibrate_fn=_no_calibration)
    assert "; not ranked: at ε = 8 the mean test Dice tumour is 0.050 against 0.600 without privacy)" in d.reason
    assert d.reason.count("Dice tumour") == 1
    # With the headline unmeasured, the most private budget's other classes are named as well.
    nan = _segmentation(synthetic_profile(seeds=1), dict.fromkeys((1.0, 8.0, 20.0, 1e9, None), math.nan))
    d = decide(nan, [Limit("rero", 0.05)], calibrate_fn=_no_calibration)
    assert "is recommended (not ranked: at ε = 1 the mean test Dice tumour is 0.050 against 0.050 without privacy)" in d.reason
    # A classifier's reason has no such clause.
    assert "not ranked" not in decide(synthetic_profile(), [Limit("rero", 0.05)], calibrate_fn=_no_calibration).reason


def _old_form(profile: Profile) -> Profile:
    """``profile`` with its decision block edited back to the layout written before budgets were ranked by the
    headline utility: no utility_metric (read as MCC), no dice or n_seeds per budget, the most private budget
    within recommended ("No utility was measured"), as that rule did where MCC is undefined."""
    data = json.loads(profile.to_json())
    block = data["decision"]
    del block["utility_metric"]
    for b in block["budgets"]:
        del b["dice"], b["n_seeds"]
    block["recommended"] = block["within"][0]
    block["reason"] = f"No utility was measured, so the most private of them, {block['within'][0]}, is recommended."
    return Profile.from_json(json.dumps(data))


def test_a_stored_decision_ranked_by_another_utility_is_remade_with_its_limits() -> None:
    from dpaudit.audit.decision import current_decision

    prof = _segmentation(synthetic_profile(), {1.0: 0.398, 8.0: 0.453, 20.0: 0.528, 1e9: 0.6, None: 0.82})
    limits = (Limit("rero", 0.05), Limit("rero", 0.9, "realistic"))
    current = dataclasses.replace(prof, decision=decide(prof, limits, calibrate_fn=_no_calibration))
    old = _old_form(current)
    assert old.decision.utility_metric == "mcc" and old.decision.recommended == "ε = 1"
    remade = current_decision(old, calibrate_fn=_no_calibration)
    d = remade.decision
    assert d == current.decision and d.limits == limits and d.recommended == "ε = 8"  # the same as profile decides
    assert d.replaces == old.decision and remade.train == old.train
    assert d.remade_note == ("Decision re-made with the stored limits by Dice liver; the stored one ranked by MCC, "
                             "which this profile does not measure, and recommended ε = 1 (profile.json is left as "
                             "it is).")
    # The note is not stored: the re-made decision writes the JSON a current profile writes.
    assert remade.to_json() == current.to_json()
    # A current segmentation decision, a classifier's (old or current form) and none are left as they are.
    assert current_decision(current) is current and current.decision.remade_note == ""
    clf = dataclasses.replace(synthetic_profile(), decision=decide(synthetic_profile(), [Limit("rero", 0.05)],
                                                                   calibrate_fn=_no_calibration))
    data = json.loads(clf.to_json())
    del data["decision"]["utility_metric"]
    clf_old = Profile.from_json(json.dumps(data))
    assert current_decision(clf) is clf and current_decision(clf_old) is clf_old and clf_old == clf
    bare = synthetic_profile()
    assert current_decision(bare) is bare


def test_classification_decision_names_mcc_and_keeps_dice_empty() -> None:
    d = decide(synthetic_profile(), [Limit("rero", 0.05)], calibrate_fn=_no_calibration)
    assert d.utility_metric == "mcc" and d.recommended == "ε = 8" and "mean test MCC 0.375, 2 seed(s)" in d.reason
    assert all(b.dice is None for b in d.budgets) and d.checks_of("ε = 8").n_seeds == 2


# -- one limit per quantity --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, words", [
    (dict(max_rero=[0.99, 0.001], threat_model=["relaxed"]),
     ["--max-rero", "0.99, 0.001", "--threat-model relaxed", "--max-rero 0.001 --threat-model relaxed"]),
    (dict(max_rero=[0.05, 0.05]), ["--max-rero", "--threat-model worst-case"]),
    (dict(max_rero=[0.05, 0.1, 0.2], threat_model=["worst-case", "relaxed", "worst-case"]),
     ["0.05, 0.2", "--max-rero 0.05 --threat-model worst-case"]),
    (dict(max_mia_tpr=[0.5, 0.2]), ["--max-mia-tpr", "0.5, 0.2", "--max-mia-tpr 0.2 --at-fpr 0.001"]),
])
def test_two_limits_on_one_quantity_are_refused(kwargs, words) -> None:
    with pytest.raises(ConfigError) as exc:
        limits_from_options(**kwargs)
    msg = str(exc.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_limits_on_different_quantities_combine() -> None:
    lims = limits_from_options([0.05, 0.05, 0.2], ["worst-case", "relaxed", "realistic"], [0.5, 0.2], [1e-2, 1e-3])
    assert len(lims) == 5
    with pytest.raises(ConfigError, match="--max-rero"):
        decide(synthetic_profile(seeds=1), [Limit("rero", 0.05), Limit("rero", 0.01)], calibrate_fn=_no_calibration)


def test_report_and_profile_refuse_two_limits_on_one_quantity(tmp_path) -> None:
    from typer.testing import CliRunner

    from dpaudit.cli.main import app

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "profile.json").write_text(synthetic_profile(seeds=1, with_mia_audit=False).to_json())
    runner = CliRunner()
    for args in (["report", str(tmp_path / "p")],
                 ["profile", "--dataset", "demo", "--out", str(tmp_path / "new"), "--device", "cpu"]):
        res = runner.invoke(app, [*args, "--max-rero", "0.99", "--max-rero", "0.001", "--threat-model", "relaxed"])
        text = " ".join(res.output.split())
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert "0.99, 0.001" in text and "--max-rero 0.001 --threat-model relaxed" in text
    assert not list((tmp_path / "p").glob("*.pdf")) and not (tmp_path / "new" / "profile.json").exists()
