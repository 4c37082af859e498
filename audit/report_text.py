"""The words of the risk report: number formatting with the right rounding direction, plain-language sentences,
the privacy statement, assumptions, limitations and the glossary.

Pure functions of a :class:`~dpaudit.audit.profile.schema.Profile`; no reportlab here (the layout lives in
:mod:`dpaudit.audit.report`), so the wording can be tested and reused on its own.

Rounding never under-states a risk: upper bounds are rounded up, lower bounds (empirical epsilon) down.
"""

from __future__ import annotations

import math

from dpaudit.audit.decision import Decision, image_unit_patient_risk
from dpaudit.audit.profile.schema import LevelSummary, PrivacyInfo, Profile, Spread, fmt_eps
from dpaudit.audit.profile.schema import headline_utility as headline_utility
from dpaudit.audit.profile.schema import utility_columns as utility_columns
from dpaudit.audit.stats import mean_interval, welch_test
from dpaudit.config import DEMO_DATASETS
from dpaudit.identifiers import MIN_SUBGROUP_UNITS
from dpaudit.numfmt import (
    LABEL_EMPIRICAL,
    LABEL_RDP,
    LABEL_REALISTIC,
    LABEL_UPPER,
    empirical_epsilon_label,
    lower,
    percent,
    upper,
)

#: The false-positive rate at which the report quotes membership-inference TPR (a standard low-FPR point).
REPORT_FPR = 1e-3

LABEL_ESTIMATE = "estimate"
LABEL_APPROX = "approximation"


def pct(value: float | None, *, direction: str = "nearest", digits: int | None = None) -> str:
    """Format a fraction in [0, 1] as a percentage: :func:`dpaudit.numfmt.percent` (``direction="up"`` for upper
    bounds and an interval's upper end, ``"down"`` for lower ends, ``"nearest"`` for labelled point estimates)."""
    return percent(value, direction=direction, digits=digits)


_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def num(value: float | None, digits: int = 3) -> str:
    """Format a general number with ``digits`` significant digits ('n/a' for missing)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a" if value is None or math.isnan(value) else ("∞" if value > 0 else "-∞")
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        mantissa, _, exponent = f"{value:.{digits - 1}e}".partition("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        power = str(int(exponent)).translate(_SUPERSCRIPT)
        return f"10{power}" if mantissa == "1" else f"{mantissa}×10{power}"
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"


def eps_up(value: float | None) -> str:
    """An accountant's epsilon (an upper bound), rounded up: :func:`dpaudit.numfmt.upper`, the digits of the console
    and the checklist ('∞' when infinite)."""
    return upper(value)


def eps_down(value: float | None) -> str:
    """An empirical epsilon lower bound, rounded down: :func:`dpaudit.numfmt.lower` (0 when below 0)."""
    return lower(None if value is None else max(value, 0.0))


def spread(s: Spread, *, as_pct: bool = True) -> str:
    """'37.5% ± 3.5%' (mean ± sample std over seeds), or just the mean with one seed."""
    if s.mean is None:
        return "n/a"
    f = (lambda v: pct(v, digits=1)) if as_pct else (lambda v: f"{v:.3f}")
    if s.std is None:
        return f(s.mean)
    return f"{f(s.mean)} ± {f(s.std)}"


def kappa_n(profile: Profile) -> int:
    """N of the prior κ = 1/N the bounds use: training images, or training volumes for segmentation (the
    volume is the patient unit)."""
    b = next((b for b in profile.bounds if b.epsilon_target is not None), None)
    return round(1.0 / b.kappa_train) if b is not None else profile.dataset.n_train


def level_label(eps: float | None) -> str:
    return "non-private" if eps is None else f"ε = {fmt_eps(eps)}"


def per_patient(profile: Profile) -> bool:
    """Whether the guarantees are per patient of several images: then every ε shown beside the (per-patient) risks
    is the per-patient one or says "per image" (the budgets are per image: what training calibrates)."""
    pu = profile.privacy()
    return pu.unit == "patient" and pu.records_per_patient > 1


def _a(noun: str) -> str:
    """'an image', 'a slice'."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _unit_phrase(profile: Profile, *, other: bool = False) -> str:
    """The privacy unit as a sentence names what an attack targets: 'a training image' ('a training slice'), or
    with the patient as the unit 'the slices of a training patient (up to k, moving together)'; ``other``: the rest
    of the training data the worst-case attacker knows."""
    rec = record(profile)
    if per_patient(profile):
        if other:
            return f"the {rec}s of every other training patient"
        return (f"the {rec}s of a training patient (up to {profile.privacy().records_per_patient}, moving "
                "together)")
    return f"every other training {rec}" if other else f"a training {rec}"


def _unit_used(profile: Profile) -> str:
    """'the image was used', or per patient 'the patient's slices were used'."""
    rec = record(profile)
    return f"the patient's {rec}s were used" if per_patient(profile) else f"the {rec} was used"


def record(profile: Profile) -> str:
    """What one training record is called in the report's sentences: 'slice' (2-D slices of volumes) or 'image'."""
    return profile.privacy().record


def budget_name(profile: Profile, level: LevelSummary) -> str:
    """A budget as the report names it: 'ε = 8', or 'ε = 8 per image' ('per slice') when the unit is the patient."""
    return level.label + (f" per {record(profile)}" if level.private and per_patient(profile) else "")


def patient_epsilon(level: LevelSummary) -> str | None:
    """'ε ≤ 43.48 per patient' (sound upper bound, rounded up), or None when not per patient."""
    b = level.bounds
    if b is None or b.epsilon_patient is None:
        return None
    return f"ε ≤ {eps_up(b.epsilon_patient)} per patient"


# ------------------------------------------------------------------------------------------------------------
# Sentences
# ------------------------------------------------------------------------------------------------------------


def summary_sentence(profile: Profile, level: LevelSummary) -> str:
    """One plain-language sentence (with labels) for one privacy level."""
    unit = rero_unit(profile, long=True)
    parts: list[str] = []
    if level.private:
        b = level.bounds
        if b is None:
            parts.append("The formal bounds were not computed.")
        else:
            p = b.at_kappa_train()
            parts.append(
                f"Reconstruction {unit}: at most <b>{pct(p.worst_case, direction='up')}</b> by the strongest "
                f"possible attacker (worst case, {LABEL_UPPER}, {unit})")
            if p.relaxed is not None:
                parts[-1] += (f"; at most <b>{pct(p.relaxed, direction='up')}</b> by an attacker who does not "
                              f"already know the {record(profile)} (relaxed, {LABEL_UPPER}, {unit}).")
            else:
                parts[-1] += "."
    else:
        parts.append("Without differential privacy there is <b>no formal guarantee</b>: the strongest possible "
                     f"attacker can reconstruct every training {record(profile)} (worst case and relaxed: 100%, "
                     f"per {record(profile)} and per patient).")
    a = level.attack
    if a is not None:
        r = a.strongest
        parts.append(
            f"A realistic attacker (malicious server with an imprint layer, {r.decoder} decoder) recovered "
            f"<b>{pct(r.success_rate)}</b> of {r.n_images} {record(profile)}s, per {record(profile)} "
            f"({LABEL_REALISTIC}; 95% interval "
            f"{pct(r.ci_low, direction='down')} to {pct(r.ci_high, direction='up')}).")
    values = utility_values(level)
    if level.utility["mcc"].mean is not None:
        m = mean_interval(values)
        if m.n > 1:
            parts.append(f"Diagnostic MCC <b>{interval(values, with_n=False)}</b> ({LABEL_EMPIRICAL}, test split, "
                         f"mean and 95% t-interval over n = {m.n} seeds).")
        else:
            parts.append(f"Diagnostic MCC <b>{m.mean:.3f}</b> ({LABEL_EMPIRICAL}, test split, one seed: no "
                         "interval).")
    dice = [(label, level.utility[key]) for key, label in utility_columns(profile) if key.startswith("dice_")]
    if dice and any(s.mean is not None for _, s in dice):
        n = max(s.n for _, s in dice)
        seeds = f"{n} seed{'s' if n != 1 else ''}"
        parts.append("Segmentation " + ", ".join(f"{label} <b>{spread(s)}</b>" for label, s in dice)
                     + f" ({LABEL_EMPIRICAL}, per test volume on the reassembled 3-D prediction, {seeds}).")
    return " ".join(parts)


def headline(profile: Profile) -> str:
    """The opening paragraph of the summary page."""
    d = profile.dataset
    return (
        f"This report summarises the privacy risk of training <b>{profile.config.arch}</b> on "
        f"<b>{d.name}</b> ({d.n_train} training "
        f"{f'slices of {kappa_n(profile)} volumes' if profile.config.segmentation else 'images'}) with "
        "differentially private stochastic gradient descent "
        f"(DP-SGD) at {len(profile.config.epsilons)} privacy budget{'s' if len(profile.config.epsilons) != 1 else ''}"
        f"{' and without privacy' if profile.config.non_private else ''}. For each budget it gives three tiers of "
        "reconstruction risk, as in Ziller et al. (2024): a <b>worst-case</b> bound (an attacker who knows "
        f"everything except whether {_unit_used(profile)}), a <b>relaxed</b> bound (the attacker does not know "
        f"the {record(profile)} beforehand), and the success of a <b>realistic</b> attack that we actually ran. The bounds are "
        "mathematical guarantees that hold for every attack; the realistic number shows what one of the "
        "strongest known attacks achieves in practice. Lower is better for all three."
    )


def reading_guide() -> list[tuple[str, str]]:
    """The labels used next to every number in the report, and what they mean."""
    return [
        (LABEL_UPPER, "a proven maximum: the true risk is at most this value (rounded up)."),
        (LABEL_APPROX, "a computed value that is not a bound; it may lie on either side of the truth."),
        (LABEL_ESTIMATE, "a Monte Carlo or statistical estimate, given with an interval."),
        (LABEL_EMPIRICAL, "what an attack or a test set measured; for an attack, a lower bound on the risk: the "
                          "true risk is never smaller than the attack's result (a stronger attack may do better)."),
    ]


def rero_unit(profile: Profile, *, long: bool = False) -> str:
    """The unit of the reconstruction bounds (worst case, relaxed), as every ReRo number names it: 'per patient'
    ('per patient of up to k images' when ``long``) when a patient's k images move together (the bound is then
    computed for them), else 'per image'. The realistic attack's success is always per image."""
    if per_patient(profile):
        return (f"per patient of up to {profile.privacy().records_per_patient} {record(profile)}s" if long
                else "per patient")
    return f"per {record(profile)}"


def mia_unit(profile: Profile) -> str:
    """The unit of the membership-inference bounds, as every MIA number names it: 'per patient' when a patient's k
    images move together (the curve is computed for them, as the ReRo bounds are), else 'per image'."""
    return "per patient" if per_patient(profile) else f"per {record(profile)}"


def mia_sentence(profile: Profile) -> str:
    rec = record(profile)
    member = (f"whether a patient's {rec}s (up to {profile.privacy().records_per_patient}, moving together) were "
              "in the training set" if per_patient(profile) else f"whether {_a(rec)} was in the training set")
    return (
        f"The curves show the highest true-positive rate (TPR) any membership-inference attacker can reach at each "
        f"false-positive rate (FPR), for each privacy budget, in telling {member} ({LABEL_UPPER}, "
        f"{mia_unit(profile)}, from the same trade-off function as the reconstruction bounds). A TPR equal to the "
        "FPR (the diagonal) means the attacker learns nothing."
    )


def empirical_mia_caveat(canaries: int | None, ceiling: float | None, confidence: float = 0.95) -> str:
    """Why a low empirical epsilon proves nothing."""
    cap = ""
    if canaries is not None and ceiling is not None:
        cap = (f" With {canaries} canaries and {100 * confidence:.4g}% confidence, no audit can certify an epsilon "
               f"above {eps_down(ceiling)}, whatever the model leaks.")
    return (
        f"An empirical epsilon is <b>{empirical_epsilon_label(confidence)}</b>: it shows that at least this much "
        "privacy was lost, for this "
        "attack, this model and these canaries. A low empirical value does <b>not</b> prove that the model is "
        "private: a stronger attack, other records or more canaries can reveal more, and only the accountant's "
        f"epsilon ({LABEL_UPPER}) is a guarantee.{cap}"
    )


def _patient_epsilons(profile: Profile) -> str:
    """The per-patient epsilon of each budget (k records of one patient move together), when k > 1."""
    rows = [(b.epsilon_target, b.epsilon_patient) for b in profile.bounds if b.epsilon_patient is not None]
    if not rows:
        return ""
    k = profile.privacy().records_per_patient
    vals = ", ".join(f"{num(e)} → ε ≤ {eps_up(p)}" for e, p in rows)
    rec = record(profile)
    return (f" Training calibrates ε per {rec}; per patient (k = {k} {rec}s moving together, tight PLD, "
            f"{LABEL_UPPER}) the budgets give: {vals}.")


def image_unit_line(pu: PrivacyInfo, where: str) -> str:
    """The unit line, short, when the unit is the image on data whose patients have several images and the
    per-patient risk is stated ``where`` (the decision, which the board reads): the full sentence
    (:meth:`PrivacyInfo.describe`) would say it a second time."""
    rec = pu.record
    return (f"privacy unit: {rec} ({pu.unit_flag or '--privacy-unit image'}; one patient has up to "
            f"{pu.data_records_per_patient} {rec}s in the training split: every guarantee is per {rec}, and the "
            f"per-patient ones are in {where})")


def privacy_statement(profile: Profile) -> list[str]:
    """Paragraphs of the formal privacy statement."""
    c = profile.config
    private = [t for t in profile.train if t.epsilon_target is not None]
    deltas = sorted({t.target_delta for t in private})
    qs = sorted({t.sampling_probability for t in private})
    steps = sorted({t.steps for t in private})
    clips = sorted({t.max_grad_norm for t in private})
    delta_txt = ", ".join(num(d) for d in deltas) if deltas else "n/a"
    q_txt = ", ".join(num(q) for q in qs) if qs else "n/a"
    t_txt = ", ".join(str(s) for s in steps) if steps else "n/a"
    method = next((b.method for b in profile.bounds), "tight")
    pu = profile.privacy()
    rec = pu.record
    unit = (f"one {rec} (add/remove adjacency: the datasets differ by the presence of one training {rec})"
            if pu.unit == "image" else
            f"one patient contributing up to {pu.records_per_patient} {rec}s (add/remove adjacency at the "
            f"patient level; all of a patient's {rec}s are assumed aligned, the worst case)")
    paras = [
        f"<b>Mechanism.</b> DP-SGD (Opacus): per-sample gradients clipped to norm C = {', '.join(num(x) for x in clips) or 'n/a'}, "
        f"Gaussian noise of standard deviation σ·C added to their sum, with Poisson sampling at rate q = {q_txt} "
        f"for T = {t_txt} steps. The noise multiplier σ of each run is in the table “Risk and utility per privacy budget”.",
        f"<b>Accountant.</b> ε is the tight privacy-loss-distribution (PLD) value at δ = {delta_txt} "
        f"({LABEL_UPPER}, pessimistic discretisation); the Rényi-DP value that Opacus reports is shown beside it "
        f"({LABEL_RDP}). Reconstruction bounds use the {method} method on the same mechanism and do not depend "
        "on δ.",
        f"<b>Privacy unit.</b> {unit}. The adversary is assumed to see every one of the T noisy updates."
        + _patient_epsilons(profile) + (f" <b>{image_unit_patient_risk(profile)}</b>"
                                        if image_unit_patient_risk(profile) else ""),
        "<b>Not covered by these guarantees.</b> (1) Hyperparameter tuning: runs used to choose the learning rate, "
        "epochs or architecture on the same data spend privacy that is not accounted here. (2) Preprocessing "
        "statistics computed from the data (normalisation mean and standard deviation, class lists, image sizes). "
        "(3) Pre-training data of any initial weights. (4) The validation and test data used to measure utility, "
        "including the decision threshold fixed on the validation split. "
        "(5) Releasing several of the models in this report: each privacy level is a separate training run on "
        "the same data, and releasing k of them costs (at least) the composition of their budgets.",
    ]
    files = [i for i in c.inits if i != "scratch"]
    if files:
        from pathlib import Path

        names = ", ".join(Path(i).name for i in files)
        paras.append(
            f"<b>Pretrained initialisation.</b> Runs from {names} fine-tune weights trained elsewhere: the "
            "guarantee covers the fine-tuning data only, not the data those weights were trained on (which is "
            "protected only as far as its own training was private). "
            + ("Every layer was fine-tuned (--trainable all)." if c.trainable == "all" else
               f"Only some layers were fine-tuned (--trainable {c.trainable}); the frozen ones receive no gradient "
               "and no noise, and the accounting is the same."))
    return paras


def assumptions(profile: Profile) -> list[str]:
    c = profile.config
    n = kappa_n(profile)
    return [
        f"Reconstruction bounds (Hayes, Mahloujifar, Balle 2023; Kaissis et al. 2023) are reported at a prior "
        f"κ = 1/N_train = 1/{n}, as in the seed paper: the attacker's blind guess succeeds with probability κ. "
        "A smaller κ (a more diverse data distribution) gives a smaller bound; the figure of the formal bounds against κ shows the "
        "dependence." + (" The user's κ values are in the table." if c.kappas else ""),
        f"Worst case: the attacker knows {_unit_phrase(profile, other=True)}, the model's architecture and "
        "initialisation, "
        "all T noisy updates, and a finite candidate set containing the target. Relaxed: the same, except that "
        "the attacker does not know the direction of the target's gradient (Kaissis et al., NeurIPS 2023). Both "
        "are far stronger than any realistic attacker.",
        "The realistic attack is a malicious federated-learning server that inserts an imprint layer and sets the "
        f"batch size to 1 (q = 1/N, T = epochs·N), observing each {record(profile)} {c.observations} time(s); its "
        "noise multiplier is calibrated to the same ε and δ, as in the seed paper's Table 3. "
        f"{'An' if record(profile)[0] in 'aeiou' else 'A'} {record(profile)} counts as reconstructed when the SSIM between it and its nearest reconstruction exceeds {profile.success_ssim():g}. The "
        "report uses the strongest decoder's success and names it.",
        "Attack success depends on the image size and the imprint layer's share of the gradient (σ·√D/ρ); results "
        f"at {c.image_size}×{c.image_size} pixels do not transfer to other resolutions.",
    ]


def limitations(profile: Profile) -> list[str]:
    c = profile.config
    out = [
        "Empirical attack results are lower bounds on the risk: only one attack family (imprint-layer gradient "
        f"inversion) was run, on a subset of the training {record(profile)}s "
        f"({c.attack_images} per privacy level). Other attacks (model inversion from the final weights, "
        "membership inference, attribute inference) are covered only by the formal bounds.",
        f"Utility is measured on the held-out test split with {c.seeds} seed(s) per privacy level; intervals are "
        "95% Student-t intervals over seeds (seed-to-seed variation of training, not of the test set), and wide "
        "with few seeds. Differences to the non-private baseline are tested with Welch's t-test.",
        "Subgroup utility is shown only where the dataset provides group metadata; small subgroups give noisy "
        f"numbers, and a group held by fewer than {MIN_SUBGROUP_UNITS} patients (or the data's privacy unit) in the "
        f"test split or among the attacked {record(profile)}s, or a federated site whose test split they hold, is "
        "withheld: no count and no metric, since they would be those few patients' results. A federated site's "
        "label count held by so few patients is withheld likewise, with the next smallest as its complement (the "
        "site's total is published).",
        "A risk of 100% in the worst-case or relaxed column does not mean that images will be reconstructed, only "
        "that the mathematics gives no protection against the assumed attacker.",
    ]
    return out


def synthetic_note(profile: Profile) -> str | None:
    """For a built-in synthetic dataset (``demo``, ``demo-ct``: :data:`dpaudit.config.DEMO_DATASETS`), the sentence
    that its numbers say nothing about patients; None for any other dataset."""
    name = profile.config.dataset
    if name not in DEMO_DATASETS:
        return None
    return (f"The {name} dataset is synthetic and built into dpaudit: it demonstrates the workflow, and its numbers "
            "say nothing about real patient data.")


def glossary(profile: Profile) -> list[tuple[str, str]]:
    """The glossary, naming the profile's own record ('image' or 'slice') and privacy unit."""
    rec = record(profile)
    unit = (f"all {rec}s of one patient (up to {profile.privacy().records_per_patient})" if per_patient(profile)
            else f"one {rec}")
    return [
        ("ε (epsilon)", "privacy budget of differential privacy; smaller is more private. Reported as the tight "
                        "PLD value at δ."),
        ("δ (delta)", "the probability with which the ε guarantee may fail; chosen well below 1/N."),
        ("σ (noise multiplier)", "standard deviation of the DP-SGD noise divided by the clip norm C."),
        ("q (sampling probability)", f"chance that {_a(rec)} is used in a given training step (Poisson sampling)."),
        ("T (steps)", "number of noisy model updates released during training."),
        ("C (clip norm)", f"maximum influence (gradient norm) one {rec} may have on one update."),
        ("κ (kappa)", "success probability of the attacker's best blind guess before seeing the model."),
        ("ReRo", "reconstruction robustness: the highest probability that any attack reconstructs "
                 f"{_unit_phrase(profile)}."),
        ("worst-case / relaxed", "the two formal threat models of the report (see Assumptions)."),
        ("realistic attack", "the imprint-layer reconstruction attack that dpaudit actually runs."),
        ("SSIM", f"structural similarity between {_a(rec)} and a reconstruction (1 = identical)."),
        *((("Dice", "overlap of the predicted and the true region of a class, 2|A∩B| / (|A| + |B|), per test "
                     "volume on the reassembled 3-D prediction: 0 for none, 1 for perfect segmentation."),
           ("IoU", "intersection over union of the predicted and the true region, |A∩B| / |A∪B|."))
          if utility_columns(profile)[0][0].startswith("dice_") else
          (("MCC", "Matthews correlation coefficient: 0 for chance, 1 for perfect diagnosis; robust to imbalance. "
                   "For two classes it is measured at the decision threshold fixed on the validation split."),)),
        ("TPR / FPR", "true- and false-positive rates of a membership-inference attacker."),
        ("membership inference", (f"deciding whether the {rec}s of a given patient were" if per_patient(profile)
                                  else f"deciding whether a given {rec} was") + " in the training set."),
        ("canary", "a record inserted at random into training to measure membership leakage empirically."),
        ("privacy unit", f"what the guarantee protects; here {unit} (the alternative: "
                          + (f"one {rec})." if per_patient(profile) else f"all {rec}s of one patient).")),
        ("sound upper bound", "a proven maximum of the risk (rounded up in this report)."),
        ("approximation", "a value that is not a bound."),
        ("estimate", "a statistical estimate with an interval."),
        ("empirical", "a measured value; a lower bound on the risk."),
        ("limit (board)", "the largest risk the ethics board accepts; a budget is within when its number is at or "
                          "below every limit, over otherwise."),
        ("95% t-interval", "the range that covers the mean utility of the training procedure with 95% confidence, "
                           "from the n seeds (Student's t; wide when n is small)."),
        ("Welch's t-test", "tests whether two mean utilities differ without assuming equal spread; p ≥ 0.05 reads "
                           "“not distinguishable”."),
    ]


# ------------------------------------------------------------------------------------------------------------
# Utility statistics and the board's decision
# ------------------------------------------------------------------------------------------------------------


def utility_values(level: LevelSummary, metric: str = "mcc") -> list[float | None]:
    """The per-seed values of one utility metric at one privacy level (test split)."""
    return [t.utility.values().get(metric) for t in level.train]  # MCC, ..., or dice_<class>, iou_<class>


def init_utility_values(profile: Profile, level: LevelSummary, init: str,
                        metric: str = "mcc") -> list[float | None]:
    """The per-seed values of one utility metric at one privacy level, for the runs from one initialisation."""
    return [t.utility.values().get(metric) for t in profile.train
            if t.epsilon_target == level.epsilon_target and t.init == init]


def baseline(profile: Profile) -> LevelSummary | None:
    """The non-private level, when the profile trained one."""
    return next((lv for lv in profile.levels() if not lv.private), None)


#: The range of each utility metric: a t-interval reaching beyond it is cut there (the mean lies inside, so the cut
#: interval keeps its coverage); with two seeds t = 12.7 makes that common.
METRIC_RANGE = {"mcc": (-1.0, 1.0), "balanced_accuracy": (0.0, 1.0), "auroc": (0.0, 1.0), "accuracy": (0.0, 1.0)}


def metric_range(metric: str) -> tuple[float, float]:
    """The range of a utility metric: :data:`METRIC_RANGE`, and [0, 1] for Dice and IoU (``dice_<class>``,
    ``iou_<class>``)."""
    if metric.startswith(("dice_", "iou_")):
        return (0.0, 1.0)
    return METRIC_RANGE[metric]


def interval(values: list[float | None], *, metric: str = "mcc", digits: int = 3, with_n: bool = True) -> str:
    """'0.375 [0.332, 0.418], n = 2': the mean and its 95% t-interval over seeds, cut to the metric's range.

    One seed: '0.375 (n = 1, no interval)'.
    """
    m = mean_interval(values)
    if m.mean is None:
        return "n/a"
    if m.low is None:
        return f"{m.mean:.{digits}f} (n = 1, no interval)"
    lo, hi = metric_range(metric)
    text = f"{m.mean:.{digits}f} [{max(lo, m.low):.{digits}f}, {min(hi, m.high):.{digits}f}]"
    return text + (f", n = {m.n}" if with_n else "")


def seeds_text(levels: tuple[LevelSummary, ...]) -> str:
    """'n = 2 seeds' when every level has the same number of runs, else 'n = 1-3 seeds'."""
    ns = sorted({len(lv.train) for lv in levels if lv.train})
    if not ns:
        return "no runs"
    return f"n = {ns[0]} seed{'s' if ns[0] != 1 else ''}" if len(ns) == 1 else f"n = {ns[0]}-{ns[-1]} seeds"


def versus_baseline(profile: Profile, level: LevelSummary, metric: str = "mcc") -> str:
    """The difference of means to the non-private baseline and Welch's p-value, saying 'not distinguishable from
    non-private' where p >= 0.05 (one line break for table cells)."""
    base = baseline(profile)
    if base is None or not level.private:
        return "–"
    if metric == "mcc" and profile.config.segmentation:
        metric = headline_utility(profile)[0]  # the first foreground class's Dice (liver for MSD Liver)
    w = welch_test(utility_values(level, metric), utility_values(base, metric))
    if w.difference is None:
        return "n/a"
    if w.p_value is None:
        return f"{w.difference:+.3f}<br/>(one seed: no test)"
    if w.distinguishable():
        return f"{w.difference:+.3f}<br/>(p = {p_text(w.p_value)})"
    return f"{w.difference:+.3f} (p = {p_text(w.p_value)})<br/>not distinguishable from non-private"


def p_text(p: float) -> str:
    return "< 0.001" if p < 1e-3 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def utility_cost(profile: Profile, label: str) -> str:
    """One sentence: the recommended budget's headline utility (MCC, or the headline Dice for segmentation)
    against the non-private baseline (empirical, with n)."""
    metric, name = headline_utility(profile)
    level = next(lv for lv in profile.levels() if lv.label == label)
    mine = utility_values(level, metric)
    own = mean_interval(mine)
    base = baseline(profile)
    if base is None:
        return (f"Utility at {label}: mean test {name} {interval(mine, metric=metric)} ({LABEL_EMPIRICAL}). No "
                "non-private baseline was trained, so the utility cost cannot be stated.")
    theirs = utility_values(base, metric)
    other = mean_interval(theirs)
    w = welch_test(mine, theirs)
    head = (f"Utility cost of {label}: mean test {name} {interval(mine, metric=metric)} against "
            f"{interval(theirs, metric=metric)} without privacy ({LABEL_EMPIRICAL}, 95% t-intervals over seeds)")
    if own.mean is None or other.mean is None:
        return head + "."
    diff = own.mean - other.mean
    if w.p_value is None:
        return head + f": a difference of {diff:+.3f}; with one seed no test is possible."
    if w.distinguishable():
        return head + f": a difference of {diff:+.3f} (Welch's t-test p = {p_text(w.p_value)})."
    return (head + f": a difference of {diff:+.3f}, <b>not distinguishable from non-private</b> (Welch's t-test "
            f"p = {p_text(w.p_value)}; more seeds would narrow the intervals).")


def decision_sentence(profile: Profile, decision: Decision | None) -> str:
    """The decision in one sentence, for the first page."""
    if decision is None:
        return ("No limits were set, so this report does not recommend a budget. Re-render it with the board's "
                "limits, e.g. <font face='DejaVuSansMono'>dpaudit report DIR --max-rero 0.05</font>.")
    limits = "; ".join(lim.describe() for lim in decision.limits)
    if decision.recommended is None:
        return f"<b>No privacy budget meets the board's limits</b> ({limits})."
    k = len(decision.within)
    if k == 1:
        which = "the only budget that meets every limit of the board"
    elif decision.ranked_by_utility:
        which = (f"the best mean test {decision.utility_label} of the {k} budgets that meet every limit of the "
                 "board")
    else:
        which = (f"the most private of the {k} budgets that meet every limit of the board (no test "
                 f"{decision.utility_label} was measured to rank them)")
    name = decision.recommended
    level = next((lv for lv in profile.levels() if lv.label == name), None)
    if level is not None and per_patient(profile):
        name = budget_name(profile, level) + (f" ({patient_epsilon(level)})" if patient_epsilon(level) else "")
    return f"<b>Recommended: {name}</b>, {which} ({limits})."
