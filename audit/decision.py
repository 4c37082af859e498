"""The board's decision: which privacy budgets meet the ethics board's limits, and which one to recommend.

Pure: a function of a :class:`~dpaudit.audit.profile.schema.Profile` and the limits (no files, no training), so
``dpaudit report DIR --max-rero 0.01`` re-decides from a stored profile. The only computation beyond reading the
profile is ``dpaudit.bounds`` (numpy/scipy): a membership-inference limit at an FPR the profile did not tabulate,
and the noise multiplier that would meet a failing limit.

The rule
--------
1. Every **private** budget is checked against every limit. A limit on the worst-case or relaxed reconstruction
   bound, or on the membership-inference TPR at an FPR, compares a **sound upper bound** (the risk is at most that
   value). A limit on the realistic attack compares its **empirical** success rate (the fraction of attacked
   images reconstructed, SSIM above the attack's ``success_ssim``); that is an empirical lower bound (the true risk
   is never smaller than the attack's result, and may be larger), so meeting it is weaker evidence, and
   the check also carries the upper end of the rate's 95% Clopper-Pearson interval. It is within only when that
   upper end is within the limit too: a rate of 0 of 8 images (interval up to 36.9%) does not show a risk of at
   most 5%, so such a check is **inconclusive** (not within), and the reason says how many images would decide it.
   A value that is missing (the attack was not run) is not within the limit.
2. The budgets within every limit are ``within``; the **recommended** one has the best mean over seeds of the
   task's headline test utility among them (``Decision.utility_metric``): MCC for a classifier; for segmentation
   the Dice of the first foreground class (liver for MSD Liver), the column the report's tables lead with
   (:func:`~dpaudit.audit.profile.schema.headline_utility`). Equal means go to the smaller epsilon (the same
   utility at less risk). Where none of them has it measured, the most private one is recommended and the
   reason says so. The non-private baseline is never recommended: it carries no guarantee.
3. When no budget is within, the most private budget shows which limits fail first; for each failing formal limit
   :func:`dpaudit.bounds.calibrate_noise` gives the smallest noise multiplier that meets it at that budget's q
   and T (safe end of the bracket). The largest of these meets every failing formal limit (each bound decreases
   with sigma), and that limit is named as binding; the reason gives it rounded up and the per-image budget
   ``--epsilons`` that trains with at least that noise, rounded down (:func:`dpaudit.bounds.epsilon_target_for`).
   A failing realistic limit has no calibration (it is measured, not computed): the reason says to profile
   smaller budgets.

Where the privacy unit is the patient (k images per patient), the budgets are named by the per-image epsilon that
training calibrates (``--epsilons``), and every epsilon the reason states beside the per-patient risks says which
it is: per patient (k images moving together) or per image.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from dpaudit.errors import ConfigError, check_probability, invalid
from dpaudit.numfmt import LABEL_EMPIRICAL, LABEL_REALISTIC, LABEL_UPPER

if TYPE_CHECKING:  # the profile schema imports this module (its ``Profile.decision`` field)
    from dpaudit.audit.profile.schema import BoundsOutcome, LevelSummary, Profile

#: ``Limit.kind`` values: a reconstruction (ReRo) limit, or a membership-inference TPR limit at one FPR.
KINDS = ("rero", "mia_tpr")
#: Threat models of a reconstruction limit (the report's three tiers; seed paper, Table 1 and section 4.3).
THREAT_MODELS = ("worst_case", "relaxed", "realistic")
#: The FPR of a membership-inference limit when the board gives none (the report's standard low-FPR point).
DEFAULT_AT_FPR = 1e-3



def _pct(v: float, *, up: bool = False) -> str:
    """A probability as a percentage to 3 significant digits; ``up`` rounds up (sound upper bounds stay bounds)."""
    x = 100 * v
    if up and x > 0:
        scale = 10.0 ** (2 - math.floor(math.log10(x)))
        x = math.ceil(x * scale - 1e-9) / scale
    return f"{x:.3g}%"


@dataclass(frozen=True)
class Limit:
    """One limit of the board: the largest acceptable value of one risk number (validated at construction).

    Attributes
    ----------
    kind:
        ``"rero"``: reconstruction success at the prior kappa = 1/N_train, for ``threat_model``;
        ``"mia_tpr"``: membership-inference true-positive rate at false-positive rate ``at_fpr`` (worst case).
    maximum:
        The largest acceptable value, in (0, 1).
    threat_model:
        ``worst_case``, ``relaxed`` (sound upper bounds) or ``realistic`` (the attack's empirical success);
        ``worst_case`` for a membership-inference limit.
    at_fpr:
        The FPR of a membership-inference limit (None for a reconstruction limit).
    """

    kind: str
    maximum: float
    threat_model: str = "worst_case"
    at_fpr: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise invalid("limit kind", self.kind, f"one of {', '.join(map(str, KINDS))}")
        flag = "--max-rero" if self.kind == "rero" else "--max-mia-tpr"
        object.__setattr__(self, "maximum", check_probability(
            flag.lstrip("-").replace("-", "_"), self.maximum,
            fix=f"pass the largest acceptable probability, e.g. {flag} 0.05"))
        tm = str(self.threat_model).strip().lower().replace("-", "_")
        if tm not in THREAT_MODELS:
            raise invalid("threat_model", self.threat_model, "worst-case, relaxed or realistic",
                          "pass --threat-model worst-case, relaxed or realistic")
        object.__setattr__(self, "threat_model", tm)
        if self.kind == "rero":
            if self.at_fpr is not None:
                raise invalid("at_fpr", self.at_fpr, "absent for a reconstruction limit",
                              "pass --at-fpr only with --max-mia-tpr")
            return
        if tm != "worst_case":
            raise invalid("threat_model", self.threat_model, "worst_case for a membership-inference limit",
                          "pass --threat-model only with --max-rero")
        at = DEFAULT_AT_FPR if self.at_fpr is None else self.at_fpr
        at = check_probability("at_fpr", at, fix="pass a false-positive rate such as --at-fpr 1e-3")
        object.__setattr__(self, "at_fpr", at)
        if self.maximum <= at:
            raise invalid("max_mia_tpr", self.maximum, f"above the FPR {at:g} (any test reaches TPR = FPR by guessing)",
                          "pass a larger --max-mia-tpr or a smaller --at-fpr")

    @property
    def label(self) -> str:
        """What kind of number the limit is compared with."""
        return LABEL_EMPIRICAL if self.threat_model == "realistic" and self.kind == "rero" else LABEL_UPPER

    def describe(self) -> str:
        """'worst-case reconstruction ≤ 5%' / 'membership-inference TPR ≤ 1% at FPR 0.1%'."""
        if self.kind == "mia_tpr":
            return f"membership-inference TPR ≤ {_pct(self.maximum)} at FPR {_pct(self.at_fpr)}"  # type: ignore[arg-type]
        name = {"worst_case": "worst-case", "relaxed": "relaxed", "realistic": "realistic-attack"}[self.threat_model]
        return f"{name} reconstruction ≤ {_pct(self.maximum)}"

    def short(self) -> str:
        """A table heading: 'worst case ≤ 5%', 'realistic ≤ 10%', 'MIA TPR ≤ 1% at FPR 0.1%'."""
        if self.kind == "mia_tpr":
            return f"MIA TPR ≤ {_pct(self.maximum)} at FPR {_pct(self.at_fpr)}"  # type: ignore[arg-type]
        return f"{self.threat_model.replace('_', ' ')} ≤ {_pct(self.maximum)}"

    def unit(self, k: int, record: str = "image") -> str:
        """What a value checked against this limit is per: the realistic attack's success per image; a bound per
        patient of up to ``k`` images when a patient's k images move together (k > 1), else per image. ``record``
        names the record in the words (``"slice"`` for slices of volumes)."""
        if self.kind == "rero" and self.threat_model == "realistic":
            return f"per {record}"
        return f"per patient of up to {k} {record}s" if k > 1 else f"per {record}"

    def cli(self) -> list[str]:
        """The command-line flags that give this limit."""
        if self.kind == "mia_tpr":
            return ["--max-mia-tpr", f"{self.maximum:g}", "--at-fpr", f"{self.at_fpr:g}"]
        return ["--max-rero", f"{self.maximum:g}", "--threat-model", self.threat_model.replace("_", "-")]


def limits_from_options(max_rero: Sequence[float] = (), threat_model: Sequence[str] = (),
                        max_mia_tpr: Sequence[float] = (), at_fpr: Sequence[float] = ()) -> tuple[Limit, ...]:
    """Pair repeated command-line options into limits.

    The i-th ``--threat-model`` belongs to the i-th ``--max-rero`` (one threat model applies to every
    ``--max-rero``; none means worst case); the same for ``--at-fpr`` and ``--max-mia-tpr`` (none: FPR 1e-3).
    Two limits on one quantity (two ``--max-rero`` for one threat model, two ``--max-mia-tpr`` at one FPR) are
    refused (:func:`check_distinct`).
    """

    def paired(values: Sequence, extra: Sequence, name: str, owner: str, default: object) -> list:
        if not extra:
            return [default] * len(values)
        if len(extra) == 1:
            return list(extra) * len(values)
        if len(extra) != len(values):
            raise invalid(name, list(extra), f"one value, or one per {owner} ({len(values)})",
                          f"give {name} once (for every {owner}) or once after each {owner}")
        return list(extra)

    if threat_model and not max_rero:
        raise invalid("--threat-model", list(threat_model), "given with --max-rero", "add --max-rero 0.05")
    if at_fpr and not max_mia_tpr:
        example = min(0.5, 10 * max(at_fpr))  # a TPR limit sits above its FPR (a blind guess's TPR equals the FPR)
        raise invalid("--at-fpr", list(at_fpr), "given with --max-mia-tpr",
                      f"add --max-mia-tpr with the largest membership-inference TPR the board accepts at that FPR, "
                      f"e.g. --max-mia-tpr {example:g}")
    out = [Limit("rero", m, t) for m, t in
           zip(max_rero, paired(max_rero, threat_model, "--threat-model", "--max-rero", "worst_case"), strict=True)]
    out += [Limit("mia_tpr", m, "worst_case", f) for m, f in
            zip(max_mia_tpr, paired(max_mia_tpr, at_fpr, "--at-fpr", "--max-mia-tpr", None), strict=True)]
    check_distinct(out)
    return tuple(out)


def check_distinct(limits: Sequence[Limit]) -> None:
    """Refuse two limits on the same quantity: a reconstruction limit per threat model, a membership-inference
    limit per FPR (the board has one limit for each; two would both be listed and the looser one would mean
    nothing)."""
    seen: dict[tuple, Limit] = {}
    for lim in limits:
        key = (lim.kind, lim.threat_model, lim.at_fpr)
        first = seen.setdefault(key, lim)
        if first is lim:
            continue
        strict = min(first, lim, key=lambda x: x.maximum)
        if lim.kind == "rero":
            tm = lim.threat_model.replace("_", "-")
            raise invalid("--max-rero", [first.maximum, lim.maximum],
                          f"given once per threat model, not twice for --threat-model {tm}",
                          f"keep the board's one {tm} limit, e.g. the stricter --max-rero {strict.maximum:g} "
                          f"--threat-model {tm}, and drop the other --max-rero")
        raise invalid("--max-mia-tpr", [first.maximum, lim.maximum],
                      f"given once per FPR, not twice at --at-fpr {lim.at_fpr:g}",
                      f"keep the board's one limit at that FPR, e.g. the stricter --max-mia-tpr {strict.maximum:g} "
                      f"--at-fpr {lim.at_fpr:g}, and drop the other --max-mia-tpr")


@dataclass(frozen=True)
class Check:
    """One limit at one budget: the compared value, what kind of number it is, and whether it is within.

    ``interval_high`` is the upper end of the 95% interval of an empirical value (None for bounds); ``value`` None
    means the profile holds no such number (then ``within`` is False). ``inconclusive``: an empirical value within
    the limit whose interval reaches beyond it (not within: the evidence cannot show the limit is met);
    ``n_images`` is how many images it was measured on and ``images_needed`` how many would decide it if the
    measured rate held (None: more than the training split holds, or not applicable).
    """

    limit: int
    value: float | None
    label: str
    within: bool
    interval_high: float | None = None
    inconclusive: bool = False
    n_images: int | None = None
    images_needed: int | None = None


@dataclass(frozen=True)
class BudgetChecks:
    """Every limit at one privacy budget, and the budget's mean test utility over its seeds (empirical).

    ``mcc`` is the mean test MCC (None for segmentation, where MCC is not defined); ``dice`` the mean test Dice of
    the headline foreground class (:func:`~dpaudit.audit.profile.schema.headline_utility`: the first class, liver
    for MSD Liver) for segmentation, None for a classifier. ``n_seeds`` is how many seeds the ranked one of them
    (the decision's ``utility_metric``) is the mean of.
    """

    budget: str
    epsilon_target: float | None
    checks: tuple[Check, ...]
    within: bool
    mcc: float | None
    dice: float | None = None
    n_seeds: int = 0

    def utility(self, metric: str) -> float | None:
        """The mean of ``metric`` (the decision's ``utility_metric``: ``mcc`` or ``dice_<class>``)."""
        return self.mcc if metric == "mcc" else self.dice


@dataclass(frozen=True)
class Remedy:
    """The noise that would meet the failing formal limits at the most private budget's q and T.

    ``noise_multiplier`` is the largest of the calibrated sigmas (it meets every failing formal limit, each bound
    falling with sigma); ``binding`` is the index of the limit that needs it. ``epsilon`` is its tight PLD epsilon
    at the budget's delta per image (per record, what ``--epsilons`` sets), ``epsilon_patient`` the same per
    patient when k > 1 (else None): sound upper bounds. ``epsilon_target`` is the per-image budget to profile
    with (``--epsilons``; rounded down, checked to give at least this noise), None where none can be given. The
    remedy is None when only the realistic limit fails or no noise can meet it.
    """

    budget: str
    binding: int
    noise_multiplier: float
    noise_multiplier_used: float
    epsilon: float
    sampling_probability: float
    steps: int
    epsilon_patient: float | None = None
    epsilon_target: float | None = None

    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("labels",)

    @property
    def labels(self) -> dict[str, str]:
        """What kind of number each field is, and per which unit (written to JSON beside them)."""
        return {"noise_multiplier": "calibrated: the smallest sigma whose sound upper bounds meet the failing limits",
                "epsilon": "sound upper bound (tight PLD accountant), per image, at the calibrated sigma",
                "epsilon_patient": "sound upper bound (tight PLD accountant), per patient: the records_per_patient "
                                   "images of one patient moving together, at the calibrated sigma (null when the "
                                   "unit is the image)",
                "epsilon_target": "the per-image budget to pass to --epsilons (rounded down: it trains with at "
                                  "least the calibrated sigma)"}


@dataclass(frozen=True)
class Decision:
    """The decision block of ``profile.json``.

    ``within``: the budgets that meet every limit (labels, most private first); ``recommended``: the one with the
    best utility among them, or None; ``reason``: one paragraph that says why; ``budgets``: every check;
    ``remedy``: the calibrated noise when none is within. ``utility_metric`` names the utility that ranks the
    budgets: ``mcc`` for a classifier, ``dice_<class>`` (the headline foreground class) for segmentation.
    """

    limits: tuple[Limit, ...]
    within: tuple[str, ...]
    recommended: str | None
    reason: str
    budgets: tuple[BudgetChecks, ...]
    remedy: Remedy | None = None
    utility_metric: str = "mcc"
    #: The stored decision this one was re-made from (:func:`current_decision`), kept out of the JSON: a
    #: re-rendered report says so. None for a decision made by today's rule in the first place.
    replaces: Decision | None = field(default=None, compare=False, repr=False, metadata={"json": False})

    def checks_of(self, budget: str) -> BudgetChecks | None:
        return next((b for b in self.budgets if b.budget == budget), None)

    @property
    def utility_label(self) -> str:
        """The ranked utility in words: 'MCC', 'Dice liver'."""
        return utility_label(self.utility_metric)

    @property
    def ranked_by_utility(self) -> bool:
        """Whether the recommended budget was chosen by its utility (False: none of the budgets within had the
        utility measured, so the most private one was recommended; or none is recommended)."""
        b = self.checks_of(self.recommended) if self.recommended is not None else None
        return b is not None and b.utility(self.utility_metric) is not None

    @property
    def remade_note(self) -> str:
        """One sentence when this decision was re-made from a stored one ranked by another utility
        (:func:`current_decision`): the console's note and the report's line; "" otherwise."""
        old = self.replaces
        if old is None:
            return ""
        text = f"Decision re-made with the stored limits by {self.utility_label}; the stored one ranked by {old.utility_label}"
        if not any(b.utility(old.utility_metric) is not None for b in old.budgets):
            text += ", which this profile does not measure,"
        if old.recommended != self.recommended:
            text += f" and recommended {old.recommended or 'no budget'}"
        return text + " (profile.json is left as it is)."


def utility_label(metric: str) -> str:
    """'mcc' -> 'MCC', 'dice_liver' -> 'Dice liver'."""
    return "MCC" if metric == "mcc" else "Dice " + metric.removeprefix("dice_")


#: (limit, bounds of the budget) -> (sigma, epsilon per image, epsilon per patient or None, the per-image
#: ``--epsilons`` budget or None) meeting the limit at that budget's q, T, kappa and delta.
Calibrate = Callable[[Limit, "BoundsOutcome"], tuple[float, float, "float | None", "float | None"]]


def calibrate(limit: Limit, bounds: BoundsOutcome) -> tuple[float, float, float | None, float | None]:
    """The smallest noise multiplier meeting a formal limit at the budget's q, T and delta, its epsilon per image
    and per patient (None when k = 1), and the per-image budget that trains with at least that noise.

    A membership-inference TPR at FPR alpha is bounded by the worst-case ReRo bound at kappa = alpha (the same
    trade-off function: TPR <= 1 - f(alpha); see :mod:`dpaudit.bounds.mia`), so both calibrate with
    :func:`dpaudit.bounds.calibrate_noise`.
    """
    from dpaudit.bounds import calibrate_noise, epsilon_target_for

    kappa = bounds.kappa_train if limit.kind == "rero" else limit.at_fpr
    cal = calibrate_noise(limit.maximum, bounds.sampling_probability, bounds.steps, kappa,
                          threat_model=limit.threat_model, target_delta=bounds.target_delta,
                          records_per_patient=bounds.records_per_patient)
    return cal.noise_multiplier, cal.epsilon, cal.epsilon_patient, epsilon_target_for(cal)


def _mia_tpr(bounds: BoundsOutcome, fpr: float) -> float:
    """The TPR bound at ``fpr``: the stored table value, else the worst-case ReRo bound at kappa = fpr."""
    stored = bounds.tpr_at(fpr)
    if stored is not None:
        return stored
    from dpaudit.bounds import rero_bound

    r = rero_bound(bounds.noise_multiplier, bounds.sampling_probability, bounds.steps, [fpr],
                   threat_model="worst_case", records_per_patient=bounds.records_per_patient)
    return min(1.0, float(r.upper[0]))


def _check(i: int, limit: Limit, lv: LevelSummary) -> Check:
    if limit.kind == "rero" and limit.threat_model == "realistic":
        if lv.attack is None:
            return Check(i, None, limit.label, False)
        row = lv.attack.strongest
        if row.success_rate > limit.maximum:
            return Check(i, row.success_rate, limit.label, False, row.ci_high, n_images=row.n_images)
        if row.ci_high <= limit.maximum:
            return Check(i, row.success_rate, limit.label, True, row.ci_high, n_images=row.n_images)
        return Check(i, row.success_rate, limit.label, False, row.ci_high, inconclusive=True,
                     n_images=row.n_images, images_needed=images_needed(row.success_rate, limit.maximum))
    if not lv.private:
        return Check(i, 1.0, limit.label, limit.maximum >= 1.0)  # no guarantee: the bound is 100%
    if lv.bounds is None:
        return Check(i, None, limit.label, False)
    if limit.kind == "rero":
        point = lv.bounds.at_kappa_train()
        value = point.worst_case if limit.threat_model == "worst_case" else point.relaxed
    else:
        value = _mia_tpr(lv.bounds, limit.at_fpr)  # type: ignore[arg-type]
    return Check(i, value, limit.label, value is not None and value <= limit.maximum)


#: The most images :func:`images_needed` considers (beyond, the attack would cost more than the profile).
MAX_IMAGES_NEEDED = 100_000


def images_needed(rate: float, maximum: float) -> int | None:
    """The fewest attacked images whose exact 95% Clopper-Pearson interval (the report's: two-sided, 97.5% each
    side) ends at or below ``maximum`` if the success rate measured so far, ``rate``, held; None when no number up
    to :data:`MAX_IMAGES_NEEDED` does (a rate at or near the limit).

    With no success it is the smallest n with 1 - 0.025^(1/n) <= maximum (72 images for 5%).
    """
    import numpy as np

    from dpaudit.attacks.binomial import clopper_pearson_limits

    if not rate < maximum:
        return None

    def ok(n: int) -> bool:
        return float(clopper_pearson_limits(np.array([math.floor(rate * n)]), n, 0.975)[1][0]) <= maximum

    if not ok(MAX_IMAGES_NEEDED):
        return None
    lo, hi = 1, MAX_IMAGES_NEEDED  # ok(hi); the upper limit falls with n at a fixed rate (up to the floor's steps)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    while hi < MAX_IMAGES_NEEDED and not all(ok(n) for n in range(hi, min(hi + 8, MAX_IMAGES_NEEDED))):
        hi += 1  # the floor of rate * n makes the limit saw-toothed: take the n from which it stays met
    return hi


def _mean(lv: LevelSummary, metric: str) -> float | None:
    s = lv.utility.get(metric)
    return s.mean if s is not None else None


def _budget_checks(lv: LevelSummary, checks: tuple[Check, ...], metric: str) -> BudgetChecks:
    s = lv.utility.get(metric)
    return BudgetChecks(lv.label, lv.epsilon_target, checks, all(c.within for c in checks), _mean(lv, "mcc"),
                        _mean(lv, metric) if metric != "mcc" else None, s.n if s is not None else 0)


def decide(profile: Profile, limits: Sequence[Limit], *, calibrate_fn: Calibrate = calibrate) -> Decision:
    """Check every budget of ``profile`` against ``limits`` and recommend one (see the module docstring).

    Parameters
    ----------
    profile:
        A finished profile (``profile.json``).
    limits:
        At least one :class:`Limit`.
    calibrate_fn:
        How the remedy's noise is found (default :func:`calibrate`; tests pass a stand-in).
    """
    limits = tuple(limits)
    if not limits:
        raise invalid("limits", [], "at least one limit",
                      "pass --max-rero 0.05 (and/or --max-mia-tpr 0.01 --at-fpr 1e-3)")
    for lim in limits:
        if not isinstance(lim, Limit):
            raise invalid("limits", type(lim).__name__, "Limit objects")
    check_distinct(limits)
    from dpaudit.audit.profile.schema import headline_utility

    metric, label = headline_utility(profile)
    levels = profile.levels()
    budgets = tuple(_budget_checks(lv, tuple(_check(i, lim, lv) for i, lim in enumerate(limits)), metric)
                    for lv in levels)
    private = [(lv, b) for lv, b in zip(levels, budgets, strict=True) if lv.private]
    if not private:
        raise invalid("epsilons", "none", "at least one private budget in the profile",
                      "profile with --epsilons 1,8,20", cls=ConfigError)
    within = [(lv, b) for lv, b in private if b.within]
    names = "; ".join(lim.describe() for lim in limits)
    k = profile.privacy().records_per_patient
    rec = profile.privacy().record
    unit_risk = (" " + image_unit_patient_risk(profile)).rstrip()
    if within:
        # Best mean headline utility (MCC, or the headline Dice); equal means go to the smaller epsilon; a budget
        # without it ranks last.
        def util(b: BudgetChecks) -> float | None:
            return b.utility(metric)

        best_lv, best = max(within, key=lambda x: (util(x[1]) is not None, util(x[1]) or 0.0, -x[0].epsilon_target))
        ties = [b.budget for _, b in within if b is not best and util(b) is not None and util(b) == util(best)]
        if util(best) is None:
            best_lv, best = within[0]
            why = (f"No test {label} was measured at any of them, so the most private of them, "
                   f"{_name(best_lv, k, rec)}, is recommended" + _other_classes(profile, best_lv, " (", ")"))
        else:
            why = (f"Recommended: {_name(best_lv, k, rec)}, the best utility among them (mean test {label} "
                   f"{util(best):.3f}, {best.n_seeds} seed(s)"
                   + ("; Dice of the first foreground class, the report's headline" if metric != "mcc" else "")
                   + _other_classes(profile, best_lv, "; ", "") + ")")
            if ties:
                why += f"; {', '.join(ties)} ties with it, and the smaller ε is recommended (same utility, less risk)"
        reason = (f"{len(within)} of {len(private)} privacy budgets {'meets' if len(within) == 1 else 'meet'} every "
                  f"limit ({names}): "
                  f"{', '.join(b.budget for _, b in within)}. {why}.")
        reason += _inconclusive(private, limits, profile)
        if any(lim.label == LABEL_EMPIRICAL for lim in limits):
            reason += (f" The realistic-attack limit is checked against a measured success rate ({LABEL_REALISTIC}"
                       "; a stronger attack may do better), and passes only when its whole 95% interval is within "
                       "the limit.")
        return Decision(limits, tuple(b.budget for _, b in within), best.budget,
                        reason + _units(private, k, rec) + unit_risk, budgets, utility_metric=metric)
    reason, remedy = _none_within(private, limits, calibrate_fn, k, profile)
    return Decision(limits, (), None, reason + _units(private, k, rec) + unit_risk, budgets, remedy,
                    utility_metric=metric)


def _other_classes(profile: Profile, lv: LevelSummary, before: str, after: str) -> str:
    """Segmentation with several foreground classes: one clause with the recommended budget's mean test Dice of
    the classes after the headline one, beside the non-private baseline's (empirical), so that a class the noise
    collapsed (tumour) is seen where the headline (liver) ranked the budgets; "" for one class or a classifier."""
    from dpaudit.audit.profile.schema import utility_columns

    others = utility_columns(profile)[1:]
    if not others:
        return ""
    base = next((b for b in profile.levels() if not b.private), None)

    def mean(level: LevelSummary, key: str) -> str:
        s = level.utility.get(key)
        return f"{s.mean:.3f}" if s is not None and s.mean is not None else "not measured"

    parts = [f"{name} is {mean(lv, key)}" + (f" against {mean(base, key)} without privacy" if base is not None
                                               else "") for key, name in others]
    return f"{before}not ranked: at {lv.label} the mean test {' and '.join(parts)}{after}"


def image_unit_patient_risk(profile: Profile) -> str:
    """With the image as the unit on data whose patients have k > 1 images: one sentence that says so and gives
    each budget's epsilon and worst-case ReRo per patient beside the per-image ones (sound upper bounds); "" else.
    The one wording of it: the decision's reason, the report and the console all use this sentence."""
    pu = profile.privacy()
    if not pu.image_unit_hides_patients:
        return ""
    k = pu.data_records_per_patient
    rec = pu.record
    from dpaudit.audit.profile.schema import fmt_eps

    per_image = {b.epsilon_target: b for b in profile.bounds}
    parts = []
    for r in profile.patient_risk:
        b = per_image.get(r.epsilon_target)
        img = (f" (per {rec}: ε ≤ {_eps(b.epsilon)}, worst case {_pct(b.at_kappa_train().worst_case, up=True)})"
               if b is not None else "")
        parts.append(f"ε = {fmt_eps(r.epsilon_target)}: ε ≤ {_eps(r.epsilon_patient)} and worst-case "
                     f"reconstruction ≤ {_pct(r.rero_worst_case, up=True)} per patient{img}")
    flag = pu.unit_flag or "--privacy-unit image"
    return (f"Privacy unit: the {rec} ({flag}), but one patient has up to {k} training {rec}s: every guarantee "
            f"and limit is per {rec}, and per patient (its {rec}s moving together, tight PLD, sound upper bounds) "
            "the guarantees are weaker" + (f": {'; '.join(parts)}." if parts else ".")
            + f" Profile without {flag} to decide per patient.")


def _name(lv: LevelSummary, k: int, rec: str = "image") -> str:
    """A budget's name for the reason: 'ε = 8', or with the patient unit 'ε = 8 per image (ε ≤ 43.48 per
    patient)': the budget is the per-image epsilon training calibrates, the limits protect the patient."""
    if k <= 1 or not lv.private:
        return lv.label
    per_patient = lv.bounds.epsilon_patient if lv.bounds is not None else None
    return lv.label + (f" per {rec} (ε ≤ {_eps(per_patient)} per patient)" if per_patient is not None
                       else f" per {rec}")


def _units(private: list[tuple[LevelSummary, BudgetChecks]], k: int, rec: str = "image") -> str:
    """With the patient as the unit: what the budgets' names mean, and each one's epsilon per patient."""
    if k <= 1:
        return ""
    per = [f"{lv.label} → ε ≤ {_eps(lv.bounds.epsilon_patient)}" for lv, _ in private
           if lv.bounds is not None and lv.bounds.epsilon_patient is not None]
    return (f" Privacy unit: the patient (up to {k} {rec}s). Budgets are named by their per-{rec} ε (what "
            "--epsilons sets, δ as in the table); per patient, the unit the limits protect"
            + (f": {', '.join(per)} (sound upper bounds)." if per else ", ε is larger."))


def _max_images_for(profile: Profile, n_train: int) -> int | None:
    """The --max-images whose training split holds ``n_train`` images (the profile's split shares), when the profile
    used fewer images than its dataset holds (--max-images below the dataset's size) and the dataset holds that
    many as far as dpaudit knows (the demo: 2,000); None otherwise (segmentation: --max-images counts volumes)."""
    from dpaudit.config import DEMO_DEFAULT_SIZE

    cap, data = profile.config.max_images, profile.dataset
    total = data.n_train + data.n_val + data.n_test
    if cap is None or profile.config.segmentation or total < cap or data.n_train <= 0:
        return None
    wanted = math.ceil(n_train * total / data.n_train) + 3  # the loaders' split rounds each part
    if profile.config.dataset == "demo" and wanted > DEMO_DEFAULT_SIZE:
        return None
    return wanted


def _inconclusive(private: list[tuple[LevelSummary, BudgetChecks]], limits: tuple[Limit, ...],
                  profile: Profile) -> str:
    """One sentence per inconclusive check: the evidence, and how many attacked images would decide it."""
    n_train = profile.dataset.n_train
    out = ""
    for _, b in private:
        for c in b.checks:
            if not c.inconclusive:
                continue
            lim = limits[c.limit]
            if c.images_needed is not None and c.images_needed <= n_train:
                how = (f"attack more images with --attack-images {c.images_needed} (enough if the rate stays at "
                       f"{_pct(c.value)})")  # type: ignore[arg-type]
            elif c.images_needed is not None and (more := _max_images_for(profile, c.images_needed)):
                how = (f"that needs about {c.images_needed} attacked images, more than the {n_train} training "
                       f"images of --max-images {profile.config.max_images}: profile again with --max-images "
                       f"{more} --attack-images {c.images_needed}, or rely on the formal bounds")
            elif c.images_needed is not None:
                how = (f"that needs about {c.images_needed} attacked images, more than the {n_train} training "
                       "images: rely on the formal bounds")
            else:
                how = "attack more images with --attack-images (the rate measured is too close to the limit to say how many)"
            out += (f" {b.budget} is inconclusive on {lim.describe()}: {_pct(c.value)} of "  # type: ignore[arg-type]
                    f"{c.n_images} images attacked ({LABEL_EMPIRICAL}), 95% interval up to "
                    f"{_pct(c.interval_high, up=True)}, so it is not counted as within; {how}.")  # type: ignore[arg-type]
    return out


def with_decision(profile: Profile, limits: Sequence[Limit]) -> Profile:
    """The profile with the board's decision for ``limits`` (none: no decision block)."""
    return dataclasses.replace(profile, decision=decide(profile, limits) if limits else None)


def current_decision(profile: Profile, *, calibrate_fn: Calibrate = calibrate) -> Profile:
    """The profile with its stored decision as today's rule makes it, for rendering.

    A decision ranks budgets by the task's headline utility (:func:`decide`, rule 2). A ``profile.json`` written
    before segmentation budgets were ranked by the headline Dice stores a decision ranked by MCC (its
    ``utility_metric`` absent, read as ``mcc``): MCC is undefined for segmentation, so that decision recommended
    the most private budget. Where the stored ``utility_metric`` differs from
    :func:`~dpaudit.audit.profile.schema.headline_utility`'s, the decision is made again by :func:`decide` with
    the stored limits; the new one's ``replaces`` holds the stored one and its ``remade_note`` says so. Any other
    profile (no decision, a classifier's, a current one) is returned as it is (the same object).
    """
    stored = profile.decision
    if stored is None:
        return profile
    relabelled = _current_labels(profile, stored)
    if relabelled is not stored:
        profile, stored = dataclasses.replace(profile, decision=relabelled), relabelled
    from dpaudit.audit.profile.schema import headline_utility

    if stored.utility_metric == headline_utility(profile)[0]:
        return profile
    remade = decide(profile, stored.limits, calibrate_fn=calibrate_fn)
    return dataclasses.replace(profile, decision=dataclasses.replace(remade, replaces=stored))


def _current_labels(profile: Profile, stored: Decision) -> Decision:
    """A stored decision with its budgets named by today's labels (matched by ``epsilon_target``): a budget past
    the noise search range is labelled by its achieved epsilon, which an older ``profile.json`` rounded to the
    nearest (``ε = 4.8e+07``) where it is now rounded up (``ε = 4.9e+07``); the renderer finds budgets by label.
    The stored decision itself when every label is today's."""
    labels = {lv.epsilon_target: lv.label for lv in profile.levels()}
    rename = {b.budget: labels[b.epsilon_target] for b in stored.budgets
              if b.epsilon_target in labels and labels[b.epsilon_target] != b.budget}
    if not rename:
        return stored
    remedy = stored.remedy
    if remedy is not None:
        remedy = dataclasses.replace(remedy, budget=rename.get(remedy.budget, remedy.budget))
    return dataclasses.replace(
        stored, within=tuple(rename.get(x, x) for x in stored.within),
        recommended=None if stored.recommended is None else rename.get(stored.recommended, stored.recommended),
        budgets=tuple(dataclasses.replace(b, budget=rename.get(b.budget, b.budget)) for b in stored.budgets),
        remedy=remedy)


def _none_within(private: list[tuple[LevelSummary, BudgetChecks]], limits: tuple[Limit, ...],
                 calibrate_fn: Calibrate, k: int, profile: Profile) -> tuple[str, Remedy | None]:
    """The reason and the remedy when no budget meets every limit: the most private budget's failing limits."""
    from dpaudit.numfmt import at_least, at_most

    lv, b = min(private, key=lambda x: x[0].epsilon_target)
    rec = profile.privacy().record
    failing = [c for c in b.checks if not c.within]
    parts = []
    for c in failing:
        lim = limits[c.limit]
        if c.value is None:
            parts.append(f"{lim.describe()}: not measured")
        elif c.inconclusive:
            parts.append(f"{lim.describe()}: inconclusive")
        else:
            parts.append(f"{lim.describe()}: {_pct(c.value, up=c.label == LABEL_UPPER)} {lim.unit(k, rec)} ({c.label})")
    which = f"The only private one, {b.budget}," if len(private) == 1 else f"Even the most private one, {b.budget},"
    if all(c.inconclusive for c in failing):  # the sentence below says what it measured and how to decide it
        reason = "No privacy budget is shown to meet every limit."
    else:
        reason = f"No privacy budget meets every limit. {which} fails {'; '.join(parts)}."
    reason += _inconclusive(private, limits, profile)
    remedy = None
    calibrated = []
    for c in failing:
        lim = limits[c.limit]
        if lim.label != LABEL_UPPER or lv.bounds is None:
            continue
        floor = lv.bounds.kappa_train if lim.kind == "rero" else lim.at_fpr
        if lim.maximum <= floor:  # type: ignore[operator]
            reason += (f" No noise can meet {lim.describe()}: it is at or below the blind guess "
                       f"({_pct(floor)}).")  # type: ignore[arg-type]
            continue
        calibrated.append((*calibrate_fn(lim, lv.bounds), c.limit))
    if calibrated:
        sigma, eps, eps_patient, target, binding = max(calibrated, key=lambda x: x[0])
        used = lv.train[0].noise_multiplier if lv.train else lv.bounds.noise_multiplier  # type: ignore[union-attr]
        bnd = lv.bounds
        remedy = Remedy(b.budget, binding, sigma, used, eps, bnd.sampling_probability, bnd.steps,  # type: ignore[union-attr]
                        epsilon_patient=eps_patient, epsilon_target=target)
        if eps_patient is not None:
            guarantee = f"ε ≤ {_eps(eps_patient)} per patient of {k} {rec}s, ε ≤ {_eps(eps)} per {rec}"
        else:
            guarantee = f"ε ≤ {_eps(eps)}"
        # sigma is a value to reach: rounded up; the budget that gives it is a value to stay below: rounded down
        reason += (f" The limit that fails first is {limits[binding].describe()}: training with noise multiplier "
                   f"σ ≥ {at_least(sigma)} instead of {used:.4g} at the same sampling rate q = "
                   f"{bnd.sampling_probability:.4g} and {bnd.steps} steps would meet it"  # type: ignore[union-attr]
                   + (" and every other failing bound" if len(calibrated) > 1 else "")
                   + f" ({guarantee} at δ = {bnd.target_delta:.3g}; calibrated with the tight accountant, sound "  # type: ignore[union-attr]
                   "upper bounds).")
        if target is not None:
            reason += (f" To train with it, profile again with --epsilons {at_most(target)}"
                       + (f" (per {rec}: training calibrates σ per {rec})" if eps_patient is not None else "")
                       + " and the rest of the configuration unchanged. Expect lower utility.")
        else:
            reason += " Expect lower utility."
    if any(limits[c.limit].threat_model == "realistic" and limits[c.limit].kind == "rero" and not c.inconclusive
           for c in failing):
        reason += (" The realistic attack is measured, not computed, so no noise can be calibrated for it: "
                   "profile smaller budgets (e.g. --epsilons 0.5,1).")
    return reason, remedy


def _eps(eps: float) -> str:
    """An epsilon of the accountant (a sound upper bound): rounded up (:func:`dpaudit.numfmt.upper`), huge ones
    too ('7.745e+08'; a budget's name, :func:`~dpaudit.audit.profile.schema.fmt_eps`, rounds to the nearest and
    would state 7.7e+08 for a bound of 7.744e+08)."""
    from dpaudit.numfmt import upper

    return upper(eps)
