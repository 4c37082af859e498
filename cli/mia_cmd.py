"""`dpaudit mia`: empirical membership-inference audits with sound epsilon lower bounds.

Commands only parse, call :mod:`dpaudit.attacks.lower_bounds` / ``selfaudit`` / ``canary``, and render. Every number
printed is labelled: an *empirical lower bound* (holds with the stated confidence) or the accountant's *sound
upper bound*.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from dpaudit.audit.configs import CanaryAuditConfig, TrainConfig
from dpaudit.cli import _common as cli
from dpaudit.cli._common import emit_json, handle_errors, out
from dpaudit.errors import check_int
from dpaudit.numfmt import LABEL_EMPIRICAL, empirical_epsilon_label

#: The defaults of ``mia audit``: the training configuration's and the canary audit's (the Python API's).
T, A = TrainConfig, CanaryAuditConfig

app = typer.Typer(
    name="mia",
    help="Membership inference: sound empirical lower bounds on epsilon (counts, one-run canary audits, a "
         "self-audit of the DP-SGD step).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

DeltaOpt = Annotated[float, typer.Option("--delta", help="delta of the (epsilon, delta) guarantee being audited.")]
#: --delta of the lower-bound commands: None takes the library's default (dpaudit.attacks.lower_bounds.DEFAULT_DELTA,
#: 1e-5, the delta dpaudit reports epsilon at), so the command and the API cannot disagree.
BoundDeltaOpt = Annotated[float | None, typer.Option(
    "--delta", help="delta of the (epsilon, delta) guarantee being audited. \\[default: 1e-05, the delta dpaudit "
    "reports epsilon at]", show_default=False)]
ConfidenceOpt = Annotated[float, typer.Option(
    "--confidence", help="Probability that the lower bound holds, in (0, 1).")]


def _at_most(flag: str, value: int, total_flag: str, total: int) -> None:
    """A count cannot exceed its total; both flags are named (either may be the one mistyped)."""
    if 0 <= total < value:  # negative counts are the library's to name
        from dpaudit.errors import invalid

        raise invalid(flag, value, f"at most {total_flag} ({total})",
                      f"pass {flag} no larger than {total_flag}: a count cannot exceed its total")


def _up(x: float) -> str:
    """An upper bound (the accountant's epsilon, an audit's ceiling), rounded up (:mod:`dpaudit.numfmt`)."""
    from dpaudit.numfmt import upper

    return upper(x)


def _down(x: float) -> str:
    """An empirical lower bound (epsilon, a TPR), rounded down (:mod:`dpaudit.numfmt`)."""
    from dpaudit.numfmt import lower

    return lower(x)


@app.command("bound")
@handle_errors
def bound_cmd(
    true_positives: Annotated[int, typer.Option("--true-positives", help="Members flagged as members.")],
    positives: Annotated[int, typer.Option("--positives", help="Member trials (independent runs).")],
    false_positives: Annotated[int, typer.Option("--false-positives", help="Non-members flagged as members.")],
    negatives: Annotated[int, typer.Option("--negatives", help="Non-member trials (independent runs).")],
    delta: BoundDeltaOpt = None,
    confidence: ConfidenceOpt = 0.95,
    json: cli.JsonOpt = False,
) -> None:
    """Lower bound on epsilon from a membership test's counts (Clopper-Pearson, both error pairs).

    The test's threshold must have been fixed before these counts were taken (on held-out trials).
    """
    from dpaudit.attacks.lower_bounds import DEFAULT_DELTA, epsilon_lower_bound, two_error_ceiling
    from dpaudit.codec import encode

    delta = DEFAULT_DELTA if delta is None else delta
    _at_most("--true-positives", true_positives, "--positives", positives)
    _at_most("--false-positives", false_positives, "--negatives", negatives)
    res = epsilon_lower_bound(true_positives, positives, false_positives, negatives, delta=delta,
                              confidence=confidence)
    ceiling = two_error_ceiling(positives, negatives, delta=delta, confidence=confidence)
    if json:
        emit_json({**encode(res), "ceiling": ceiling, "labels": {
            **res.labels, "ceiling": "sound upper bound on what these trials can certify (the lower bound they "
                                     "would give with every test right); not a measurement"}})
        return
    level = 1 - (1 - confidence) / 2
    out.print(f"epsilon >= {_down(res.epsilon_lower_bound)}  ({res.label}, delta {delta:g})")
    out.print(f"  TPR >= {_down(res.tpr_low)}, FPR <= {_up(res.fpr_high)}  (one-sided Clopper-Pearson, "
              f"each at {level:g})")
    out.print(f"  from TPR/FPR: {_down(max(res.epsilon_from_tpr_fpr, 0.0))}; from TNR/FNR: "
              f"{_down(max(res.epsilon_from_tnr_fnr, 0.0))}")
    out.print(f"  ceiling: {positives} + {negatives} trials can certify at most epsilon {_up(ceiling)} "
              f"(a perfect test)")


@app.command("one-run")
@handle_errors
def one_run_cmd(
    canaries: Annotated[int, typer.Option("--canaries", help="m: canaries, each included by a fair coin flip.")],
    guesses: Annotated[int, typer.Option("--guesses", help="r: canaries the attacker guessed on.")],
    correct: Annotated[int, typer.Option("--correct", help="v: correct guesses.")],
    delta: BoundDeltaOpt = None,
    confidence: ConfidenceOpt = 0.95,
    json: cli.JsonOpt = False,
) -> None:
    """Lower bound on epsilon from one training run (Steinke, Nasr, Jagielski, NeurIPS 2023, Theorem 3).

    The number of guesses must have been fixed without looking at the coin flips.
    """
    from dpaudit.attacks.lower_bounds import DEFAULT_DELTA, one_run_epsilon_lower_bound

    delta = DEFAULT_DELTA if delta is None else delta
    _at_most("--guesses", guesses, "--canaries", canaries)
    _at_most("--correct", correct, "--guesses", guesses)
    res = one_run_epsilon_lower_bound(canaries, guesses, correct, delta=delta, confidence=confidence)
    if json:
        emit_json(res)
        return
    out.print(f"epsilon >= {_down(res.epsilon_lower_bound)}  ({res.label}, delta {delta:g}; "
              f"p-value {res.p_value:.3g})")
    out.print(f"  {correct} of {guesses} guesses correct on {canaries} canaries")
    out.print(f"  ceiling: {canaries} canaries can certify at most epsilon {_up(res.ceiling)} "
              f"(every canary guessed right)")


@app.command("self-audit")
@handle_errors
def self_audit_cmd(
    sigma: Annotated[float, typer.Option("--sigma", help="noise_multiplier the accountant is told.")] = 1.0,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", help="C, the per-sample clip norm.")] = 1.0,
    trials: Annotated[int, typer.Option("--trials", help="DP-SGD steps per arm (with / without the canary).")] = 2000,
    delta: DeltaOpt = 1e-5,
    confidence: ConfidenceOpt = 0.95,
    seed: Annotated[int, typer.Option("--seed", help="Seeds data, noise and the held-out split.")] = 0,
    json: cli.JsonOpt = False,
) -> None:
    """Audit the DP-SGD step itself: a Dirac gradient canary through the Opacus step training uses.

    Exit code 1 when the empirical lower bound exceeds the accountant's epsilon (the step leaks more than
    accounted).
    """
    from dpaudit.audit.selfaudit import SelfAuditConfig, run_self_audit
    from dpaudit.cli._common import err

    cfg = SelfAuditConfig(noise_multiplier=sigma, max_grad_norm=max_grad_norm, trials=trials,
                          target_delta=delta, confidence=confidence, seed=seed)
    if not json:
        err.print(f"running {2 * trials} Opacus DP-SGD steps ...")
    res = run_self_audit(cfg)
    if json:
        emit_json(res)
    else:
        b = res.bound.bound
        out.print(f"empirical epsilon >= {_down(res.epsilon_lower_bound)}  (empirical lower bound, confidence "
                  f"{confidence:g}; threshold chosen on a held-out half)")
        out.print(f"accountant epsilon  = {_up(res.accountant_epsilon)}  (sound upper bound, one Gaussian step, "
                  f"sigma {sigma:g}, delta {delta:g})")
        out.print(f"  counts: {b.true_positives}/{b.positives} with canary and {b.false_positives}/{b.negatives} "
                  f"without above the threshold; the audit could certify at most {_up(res.ceiling)}")
        out.print(f"  canary signal-to-noise mu = {res.mu_estimate:.3f} +- {res.mu_standard_error:.3f} (estimate; "
                  f"expected {res.mu_expected:.3f})")
        out.print("[bold red]FLAGGED: the step leaks more than its accounting says[/]" if res.flagged else
                  "consistent: the lower bound is below the accountant's epsilon (this does not prove privacy)", markup=True)
    if res.flagged:
        raise typer.Exit(code=1)


@app.command("audit")
@handle_errors
@cli.shared_options(TrainConfig, *cli.DATA, *cli.MEDICAL, *cli.MODEL, *cli.MECHANISM, *cli.TRAINING,
                    tasks=("classification",))  # the canary audit trains a classifier
def audit_cmd(
    shared: dict[str, Any],
    width: cli.WidthOpt = None,
    non_private: Annotated[bool, typer.Option(help="Audit a model trained without DP.")] = T.non_private,
    canaries: cli.CanariesOpt = A.canaries,
    score: Annotated[str, typer.Option(help="loss, or reference (minus a canary-free reference model's loss; "
                                            "a second training run).")] = A.score,
    selection: Annotated[str, typer.Option(help="bonferroni (correct for the tried guess counts) or split "
                                                "(choose on half the canaries).")] = A.selection,
    confidence: ConfidenceOpt = A.confidence,
    seed: Annotated[int, typer.Option(help="Seeds training, canaries and coin flips.")] = A.seed,
    threads: cli.ThreadsOpt = T.threads,
    out_file: Annotated[str | None, typer.Option("--out", help="Also write the JSON object to this file.")] = None,
    json: cli.JsonOpt = False,
) -> None:
    """Canary membership audit of one DP-SGD training run: empirical lower bound next to the accountant's epsilon."""

    from dpaudit.audit.canary import run_canary_audit
    from dpaudit.cli._common import err, json_text
    from dpaudit.outputs import check_output_file, write_atomic

    if out_file is not None:  # before any work: a run that cannot write its result fails now
        check_output_file(out_file, "--out")

    if width is not None:  # merged into the architecture's arguments below, where a wrong one would name those
        check_int("width", width, fix="pass --width 1 or more, or leave it out")
    arch_args = {**shared.pop("arch_args"), **({} if width is None else {"width": width})}
    tc = TrainConfig(**shared, arch_args=arch_args, non_private=non_private, seed=seed, threads=threads)
    cfg = CanaryAuditConfig(train=tc, canaries=canaries, score=score, confidence=confidence,  # type: ignore[arg-type]
                            selection=selection, seed=seed)  # type: ignore[arg-type]

    def progress(done: int, total: int, text: str) -> None:
        err.print(f"  {done}/{total} steps: {text}")

    res = run_canary_audit(cfg, progress=progress)
    cli.print_data_notes(res.train.data_notes)
    for note in res.train.notes:
        err.print(f"[yellow]warning:[/] {escape(note)}", markup=True)
    if out_file is not None:
        write_atomic(out_file, json_text(res), field="--out")
    if json:
        emit_json(res)
        return
    for line in res.privacy_unit:
        out.print(line)
    if res.accountant_epsilon is not None:
        out.print(f"accountant epsilon  = {_up(res.accountant_epsilon)} per image  (sound upper bound, tight PLD; RDP "
                  f"{_up(res.epsilon_rdp or float('nan'))}) at delta {res.target_delta:.3g}")
    else:
        out.print("accountant epsilon  = none (trained without DP: no upper bound)")
    b = res.one_run.bound
    out.print(f"empirical epsilon  >= {_down(res.epsilon_lower_bound)}  ({LABEL_EMPIRICAL}: {empirical_epsilon_label(res.confidence)}; "
              f"{b.correct} of {b.guesses} guesses right on {res.canaries} canaries, "
              f"{res.members} trained on)")
    out.print(f"ceiling: this audit could certify at most epsilon {_up(res.ceiling)}")
    for t in res.tpr_at_fpr:
        out.print(f"  TPR at FPR <= {t.fpr_target:g}: {t.tpr:.3f} [{_down(t.tpr_low)}, {_up(t.tpr_high)}] "
                  f"({t.true_positives}/{t.positives}; FPR {t.false_positives}/{t.negatives}) (empirical)")
    out.print(f"  AUC {res.auc:.3f} (empirical); test MCC {res.train.metrics.mcc:.3f} (empirical)")
    out.print(res.caveat)
