"""`dpaudit bounds` and `dpaudit calibrate`: ReRo bounds, epsilon and membership-inference bounds of a DP-SGD run.

The command only parses, calls :mod:`dpaudit.bounds`, and renders; matplotlib is imported only for ``--plot``.
"""

from __future__ import annotations

import csv
import io
import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from dpaudit.cli._common import (
    PrivacyUnitOpt,
    emit_json,
    err,
    handle_errors,
    opt_str,
    out,
    print_table,
    progress_bar,
)
from dpaudit.config import MAX_NOISE_MULTIPLIER, MIN_NOISE_MULTIPLIER
from dpaudit.errors import ConfigError, DpAuditError, NumericalError, check_int, check_probability, invalid

app = typer.Typer()


class MethodChoice(StrEnum):
    tight = "tight"
    edgeworth = "edgeworth"
    clt = "clt"
    mc = "mc"


def _fmt_pct(g: float) -> str:
    """A bound on a probability as a percentage, rounded up (5.0012% -> '5.1%', 0.0012345 -> '0.1235%')."""
    from dpaudit.numfmt import upper

    if g != g:
        return "n/a"
    if g >= 0.01:
        return f"{math.ceil(1000 * g - 1e-9) / 10:.1f}%"
    return f"{upper(100 * g, 3)}%"


#: The per-patient bounds' time grows with k (the mixture's k + 1 components): the whole command took about
#: ``SLOW_AT_1E5`` s at k 1e5 and 85 s at k 1e6 (sigma 1, q 0.01, T 1000, on one core of the shared development
#: machine; bench/bench_bounds.py, the k section), mostly the per-patient epsilon: roughly k^1.35. A rough estimate
#: said before starting, not a promise (small sigma or long runs take longer).
SLOW_AT_1E5 = 5.0
#: ... said where it comes to this many seconds or more; then each part is shown as it starts.
SLOW_SECONDS = 2.0


def _slow_note(k: int) -> str | None:
    """A note said before a long computation (k records per patient), with a rough estimate; None below SLOW_SECONDS."""
    estimate = SLOW_AT_1E5 * (k / 1e5) ** 1.35
    if estimate < SLOW_SECONDS:
        return None
    return (f"records_per_patient = {k}: the per-patient bounds take a while, roughly {estimate:.0f} s or more "
            f"(an estimate from about {SLOW_AT_1E5:.0f} s at k 100000, measured at sigma 1, q 0.01, T 1000; small "
            "sigma or long runs take longer)")


def _fmt_eps(e: float) -> str:
    """An accountant's epsilon (a sound upper bound): rounded up, the digits of the report (:mod:`dpaudit.numfmt`)."""
    from dpaudit.numfmt import upper

    return upper(e)


def _kappas(kappa: list[float] | None, n_candidates: int | None, n_train: int | None, *,
            required: bool = True) -> list[float]:
    values = list(kappa or [])
    if n_candidates is not None:
        values.append(1.0 / check_int("n_candidates", n_candidates, minimum=2,
                                      fix="pass the number of equally likely candidates, e.g. --n-candidates 1000"))
    if n_train is not None:
        values.append(1.0 / check_int("n_train", n_train, minimum=2,
                                      fix="pass the number of training images, e.g. --n-train 10000"))
    if not values and required:
        raise ConfigError("no prior given: the ReRo bounds need kappa. Fix: pass --kappa K (repeatable, e.g. "
                          "--kappa 1e-3), --n-candidates N or --n-train N (kappa = 1/N).")
    return values


def _from_model(model: Path | None, sigma: float | None, q: float | None, steps: int | None, delta: float | None,
                n_train: int | None, kappa: list[float] | None, n_candidates: int | None,
                run_flags: str = "--sigma, --q and --steps", records_per_patient: int | None = None,
                by_hand: str = "--sigma, --q, --steps, --delta, --n-train and --records-per-patient K",
                privacy_unit: str | None = None,
                overrides: list[dict[str, Any]] | None = None,
                ) -> tuple[Any, float | None, int | None, tuple[int, str] | None, str]:
    """The run's schedule and delta from the flags, completed from ``--model`` when given (its stored phases,
    :func:`dpaudit.bounds.schedule_of_checkpoint`), N_train, and the checkpoint's k (records per patient) when it
    recorded the patient as its privacy unit, and what one of its training records is called
    (:func:`dpaudit.config.record_noun` of the data unit it records: 'slice' for slices of volumes, else 'image').
    A ``records_per_patient`` given by hand is refused below the most
    images one patient has in the checkpoint's training split (where it recorded them).

    With a checkpoint and no prior given, kappa = 1/N_train of the checkpoint (the seed paper's prior). Flags
    override a one-phase checkpoint's sigma, q or steps; a checkpoint of several phases takes none of them. Each
    value a flag gave over a different one of the checkpoint's is appended to ``overrides`` (:func:`_override`)."""
    from dpaudit.bounds import Schedule, schedule_of_checkpoint
    from dpaudit.config import check_records_per_patient

    ckpt_k = None
    rec = "image"
    if model is not None:
        from dpaudit.checkpoint import PlainWeightsError, TrainingFactsError, load_checkpoint
        from dpaudit.config import record_noun

        try:
            ckpt = load_checkpoint(model)
        except TrainingFactsError as exc:  # its fix names train; this command's own flags are the other way
            raise exc.with_fix(f"give the run by hand instead of --model: {by_hand}") from None
        except PlainWeightsError:
            raise invalid("model", str(model), "a dpaudit checkpoint (it records the DP-SGD configuration)",
                          f"this file holds weights only and no DP configuration to bound; pass {run_flags} of the "
                          "run instead") from None
        sched = schedule_of_checkpoint(ckpt)
        if ckpt.dp is None or sched is None:
            raise invalid("model", str(model), "a checkpoint trained with DP-SGD",
                          "this model was trained without DP (or its DP configuration is unknown): it has no formal "
                          f"guarantee to bound; pass {run_flags} of the run instead")
        said = overrides if overrides is not None else []
        _override(said, "--delta", "target_delta", delta, ckpt.dp.target_delta)
        delta = ckpt.dp.target_delta if delta is None else delta
        # kappa = 1/volumes for segmentation: the checkpoint records them (checked at load: check_recorded_unit)
        ckpt_n = ckpt.extra["n_train_volumes"] if ckpt.task == "segmentation" else ckpt.n_train
        _override(said, "--n-train", "n_train", n_train, ckpt_n)
        if n_train is None and not kappa and n_candidates is None:
            n_train = ckpt_n  # type: ignore[assignment]
            if n_train is None:  # the seed paper's prior needs N_train, and this file does not say it
                raise ConfigError(f"no prior given, and checkpoint {str(model)!r} records no n_train (the number "
                                  "of training images), so the ReRo bounds' kappa = 1/N_train cannot be read from "
                                  "it. Fix: pass --kappa K, --n-train N or --n-candidates N, or write the checkpoint "
                                  "again with `dpaudit train --out DIR`, which records n_train.")
        recorded = ckpt.recorded_unit  # checked when the checkpoint was loaded
        ckpt_k = _checkpoint_unit(recorded, privacy_unit)
        _override(said, "--records-per-patient", "records_per_patient", records_per_patient,
                  None if ckpt_k is None else ckpt_k[0])
        data_unit = (recorded.data_unit if recorded is not None else None) or "image"
        rec = record_noun(data_unit)
        if records_per_patient is not None and recorded is not None and recorded.images_per_unit_max is not None:
            # k given by hand against a checkpoint that records its training split's patients: not below them
            check_records_per_patient(records_per_patient, data_unit, recorded.images_per_unit_max,
                                      unit=privacy_unit or ("patient" if records_per_patient > 1 else "image"),
                                      where=f"the training split of {str(model)!r}")
        if len(sched.phases) > 1:
            given = [flag for flag, v in (("--sigma", sigma), ("--q", q), ("--steps", steps)) if v is not None]
            if given:
                raise invalid(given[0].lstrip("-"), "given with --model", f"left out: {str(model)!r} records "
                              f"{len(sched.phases)} phases", "drop --sigma/--q/--steps to bound the checkpoint's "
                              "schedule, or pass every phase with --phase SIGMA,Q,STEPS instead of --model")
            return sched, delta, n_train, ckpt_k, rec
        phase = sched.phases[0]
        for flag, field, given, own in (("--sigma", "noise_multiplier", sigma, phase.noise_multiplier),
                                        ("--q", "sampling_probability", q, phase.sampling_probability),
                                        ("--steps", "steps", steps, phase.steps)):
            _override(said, flag, field, given, own)
        sigma = phase.noise_multiplier if sigma is None else sigma
        q = phase.sampling_probability if q is None else q
        steps = phase.steps if steps is None else steps
    missing = [flag for flag, v in (("--sigma", sigma), ("--q", q), ("--steps", steps)) if v is None]
    if missing:
        raise ConfigError(f"the DP-SGD run is not fully given: {' and '.join(missing)} missing. Fix: pass --sigma, "
                          "--q and --steps (the run's noise multiplier, sampling probability and steps), or --model "
                          "CHECKPOINT to read them from a dpaudit checkpoint.")
    return Schedule.single(float(sigma), float(q), int(steps)), delta, n_train, ckpt_k, rec


def _override(said: list[dict[str, Any]], flag: str, field: str, given: Any, checkpoint: Any) -> None:
    """Record in ``said`` that ``flag`` gave ``given`` where the checkpoint records another value (the flags take
    precedence over --model): said on stderr and in the JSON, so that a bound of another run than the checkpoint's
    is never taken for the checkpoint's."""
    if given is None or checkpoint is None or given == checkpoint:
        return
    said.append({"flag": flag, "field": field, "value": given, "checkpoint": checkpoint})


def override_note(said: list[dict[str, Any]]) -> str | None:
    """One line naming each value a flag gave over the checkpoint's, with both values; None when there is none.

    >>> override_note([{"flag": "--sigma", "field": "noise_multiplier", "value": 2.0, "checkpoint": 1.07}])
    "--model: the flags' values replace the checkpoint's (flags take precedence): --sigma 2 (the checkpoint's noise_multiplier: 1.07)"
    """
    if not said:
        return None
    return ("--model: the flags' values replace the checkpoint's (flags take precedence): "
            + "; ".join(f"{o['flag']} {o['value']:g} (the checkpoint's {o['field']}: {o['checkpoint']:g})"
                        for o in said))


def _checkpoint_unit(recorded: Any, requested: str | None) -> tuple[int, str] | None:
    """k and why, from what a checkpoint records of its privacy unit and its training split's patients
    (``recorded``: :attr:`dpaudit.checkpoint.CheckpointMeta.recorded_unit`, checked at load): its k when it was
    trained per patient; with ``--privacy-unit patient``, the most images of one patient in its training split (as
    ``dpaudit attack`` and ``train``'s ``epsilon_patient`` use) when it was trained per image on data with patient
    ids; k = 1, saying how to get the per-patient epsilon, when it was trained per image; None when it records
    nothing (or --privacy-unit image was given)."""
    if recorded is None:
        return None
    data_k = recorded.data_k
    per = "slices of one volume" if recorded.data_unit == "volume" else "images of one patient"
    if recorded.privacy_unit == "patient" and requested != "image":
        k = recorded.records_per_patient
        return k, f"k = {k}: the most {per} in the checkpoint's training split"
    if recorded.privacy_unit == "image" and data_k is not None and data_k > 1:
        k = data_k
        if requested == "patient":
            return k, (f"--privacy-unit patient: k = {k}, the most {per} in the checkpoint's training split; "
                       "it was trained per image, and the epsilon_patient train gave it is this one")
        if requested is None:
            from dpaudit.config import record_noun

            rec = record_noun(str(recorded.data_unit))
            return 1, (f"the checkpoint was trained with --privacy-unit image: k = 1, every number below is per "
                       f"{rec}; one patient has up to {k} {per.split(' of ')[0]} in its training split: pass "
                       "--privacy-unit patient for the per-patient numbers")
    return None


def _check_given(sigma: float | None = None, q: float | None = None, steps: int | None = None,
                 delta: float | None = None, kappa: list[float] | None = None, n_candidates: int | None = None,
                 n_train: int | None = None, records_per_patient: int | None = None) -> None:
    """The values given, checked before anything else: a bad --sigma or --kappa is named at once, not after a
    complaint that --q is missing."""
    from dpaudit.bounds import check_delta, check_noise_multiplier, check_q, check_steps

    for value, check in ((sigma, check_noise_multiplier), (q, check_q), (steps, check_steps), (delta, check_delta)):
        if value is not None:
            check(value)
    for k in kappa or ():
        check_probability("kappa", k, fix="pass the blind-guess success probability, e.g. --kappa 1e-3")
    _kappas(None, n_candidates, n_train, required=False)
    if records_per_patient is not None:
        check_int("records_per_patient", records_per_patient, fix="pass --records-per-patient 1 or more")


def _one_schedule_source(typed: list[str], choices: str) -> None:
    """Refuse two ways of giving the run's schedule at once (``typed``: the flags of each way the user gave)."""
    if len(typed) > 1:
        raise ConfigError(f"{' and '.join(typed)} given together: choose one of {choices}. Fix: drop "
                          f"{' and '.join(typed[1:])}.")


def _schedule_from_flags(history: Path | None, phase: list[str] | None):
    """The run's phases from ``--history FILE`` (Opacus' ``accountant.history``: a JSON list of
    [noise_multiplier, sample_rate, steps], or the accountant's ``state_dict()`` holding it) or repeated
    ``--phase SIGMA,Q,STEPS``; None when neither is given. Every error names the file or the --phase text."""
    if history is None and not phase:
        return None
    from dpaudit.bounds import Schedule
    from dpaudit.bounds.schedule import Phase

    _one_schedule_source([f for f, v in (("--history", history), ("--phase", phase)) if v],
                         "--history FILE or --phase SIGMA,Q,STEPS (repeatable)")
    save = "save Opacus' accountant history after training with json.dump(accountant.history, f)"
    if history is not None:
        import json

        name = str(history)
        try:
            text = Path(history).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise invalid("--history", name, "an existing JSON file", save) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise invalid("--history", name, "a readable JSON text file", f"{save} ({type(exc).__name__})") from None
        if not text.strip():
            raise invalid("--history", name, "a JSON list of phases, not an empty file", save)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise invalid("--history", name, "a JSON file", f"{save} ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict) and "history" in data:
            data = data["history"]  # accountant.state_dict()
        if isinstance(data, list) and not data:
            raise invalid("--history", name, "a list of at least one phase, not []",
                          f"{save} once training has taken a step (an empty history records no step)")
        try:
            return Schedule.from_history(data)
        except DpAuditError as exc:
            raise ConfigError(f"--history {name!r}: {exc}") from None
    phases = []
    for text in phase or []:
        parts = [p.strip() for p in text.split(",")]
        try:
            if len(parts) != 3:
                raise ValueError
            row = (float(parts[0]), float(parts[1]), int(parts[2]))
        except ValueError:
            raise invalid("--phase", text, "SIGMA,Q,STEPS (e.g. 1.0,0.01,500)",
                          "pass one --phase per phase: noise multiplier, sampling probability, integer steps") from None
        try:
            phases.append(Phase(*row))
        except DpAuditError as exc:
            what = f"{exc.field} must be {exc.allowed}, got {exc.value!r}" if exc.field else str(exc).split(". Fix")[0]
            raise ConfigError(f"--phase {text!r}: {what}. Fix: give SIGMA from {MIN_NOISE_MULTIPLIER:g} to {MAX_NOISE_MULTIPLIER:g}, Q in (0, 1] and whole STEPS >= 1, "
                              "e.g. --phase 1.0,0.01,500.") from None
    return Schedule(tuple(phases))


def _steps_source(history: Path | None, phase: list[str] | None, steps: int | None) -> str:
    """The flag the run's steps came from, for a message about them: --history, --phase, --steps or --model."""
    return "--history" if history else "--phase" if phase else "--steps" if steps is not None else "--model"


HistoryOpt = Annotated[Path | None, typer.Option(
    "--history", help="Opacus' accountant history (JSON list of [noise_multiplier, sample_rate, steps] phases): "
    "bound the real schedule, composed exactly, instead of --sigma/--q/--steps.")]
PhaseOpt = Annotated[list[str] | None, typer.Option(
    "--phase", help="One phase SIGMA,Q,STEPS of a schedule (repeatable, in training order).")]


@app.command("bounds")
@handle_errors
def bounds(
    sigma: Annotated[float | None, typer.Option("--sigma", help="Noise multiplier (noise std / clip norm).")
                     ] = None,
    q: Annotated[float | None, typer.Option("--q", help="Poisson sampling probability per step.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Number of DP-SGD steps T.")] = None,
    model: Annotated[Path | None, typer.Option(
        "--model", help="Read the schedule (its phases: sigma, q, steps), delta and N_train (kappa = 1/N_train) "
        "from a dpaudit checkpoint (`dpaudit train --out`); flags given as well take precedence (one phase only)."
    )] = None,
    delta: Annotated[float | None, typer.Option("--delta", help="delta for epsilon (the ReRo bound does not use "
                                                "it). \\[default: the checkpoint's, else min(8e-7, 1/(10 N)) with N "
                                                "from --n-train, else 8e-7]")] = None,
    kappa: Annotated[list[float] | None, typer.Option("--kappa", help="Prior: blind-guess success probability "
                                                      "(repeatable).")] = None,
    n_candidates: Annotated[int | None, typer.Option("--n-candidates", help="kappa = 1 / N candidates.")] = None,
    n_train: Annotated[int | None, typer.Option("--n-train", help="kappa = 1 / N_train (the seed paper's prior)."
                                                )] = None,
    method: Annotated[MethodChoice, typer.Option("--method", help="tight (sound upper bound), edgeworth (paper "
                                                 "mode), clt, or mc.")] = MethodChoice.tight,
    mc_samples: Annotated[int | None, typer.Option("--mc-samples", help="--method mc: Monte Carlo draws of the "
                                                   "privacy loss (more: a narrower interval; a note says when an "
                                                   "estimate rests on too few). \\[default: 20000]",
                                                   show_default=False)] = None,
    records_per_patient: Annotated[int | None, typer.Option("--records-per-patient", help="Images per patient k "
                                                            "(patient-level guarantee). \\[default: the "
                                                            "checkpoint's, else 1]")] = None,
    privacy_unit: PrivacyUnitOpt = None,
    roc: Annotated[Path | None, typer.Option(
        "--roc", help="Write the membership-inference ROC bound to this CSV (columns fpr, tpr_worst_case, "
                      "tpr_relaxed, and label and unit: what kind of number the TPRs are, per image or per patient).")
                   ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Plot worst-case and relaxed gamma against kappa "
                                              "(PNG).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    history: HistoryOpt = None,
    phase: PhaseOpt = None,
) -> None:
    """ReRo bounds (worst-case and relaxed), epsilon (PLD and RDP) and membership-inference bounds."""
    from dpaudit.bounds import MC_SAMPLES, bounds_summary, mia_curve

    _check_given(sigma, q, steps, delta, kappa, n_candidates, n_train, records_per_patient)
    if mc_samples is not None and method != MethodChoice.mc:
        raise invalid("--mc-samples", mc_samples, "given with --method mc (the other methods draw no samples)",
                      "add --method mc, or leave out --mc-samples")
    if plot is not None:
        _check_plot_format(plot)  # before any bound is computed
    if roc is not None or plot is not None:
        from dpaudit.outputs import check_output_file

        for flag, path in (("--roc", roc), ("--plot", plot)):
            if path is not None:
                check_output_file(path, flag)
    mechanism = [f for f, v in (("--sigma", sigma), ("--q", q), ("--steps", steps), ("--model", model))
                 if v is not None]
    _one_schedule_source([f for f, v in (("--history", history), ("--phase", phase)) if v]
                         + (["/".join(mechanism)] if mechanism else []),
                         "--history FILE, --phase SIGMA,Q,STEPS (repeatable), or --sigma, --q and --steps (or "
                         "--model CHECKPOINT)")
    sched = _schedule_from_flags(history, phase)
    ckpt_k, rec = None, "image"
    overrides: list[dict[str, Any]] = []
    if sched is None:
        sched, delta, n_train, ckpt_k, rec = _from_model(model, sigma, q, steps, delta, n_train, kappa, n_candidates,
                                                    records_per_patient=records_per_patient,
                                                    privacy_unit=opt_str(privacy_unit), overrides=overrides)
    if method == MethodChoice.mc:  # refused before any bound is computed, naming where the steps came from
        from dpaudit.bounds.montecarlo import check_mc_work
        from dpaudit.bounds.rero import MC_MIN_TAIL

        check_mc_work(sched.steps, MC_SAMPLES if mc_samples is None else mc_samples,
                      steps_flag=_steps_source(history, phase, steps),
                      min_samples=MC_MIN_TAIL)
    replaced = override_note(overrides)
    delta, delta_note = _delta(delta, n_train)
    kappas = _kappas(kappa, n_candidates, n_train)
    k, why = _unit(opt_str(privacy_unit), records_per_patient, ckpt_k)
    slow = _slow_note(k)
    if slow:
        err.print(f"note: {slow}", highlight=False)
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    with progress_bar(TextColumn("bounds"), BarColumn(), TextColumn("{task.description}"),
                      TimeElapsedColumn()) as bar:
        task = bar.add_task("starting", total=None)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)
            # Without a terminal (a log, a pipe) the bar is not drawn: where the run is expected to be long, a line
            # per part instead, so that it is seen to run (stderr: --json's stdout stays one JSON object).
            if slow and not err.is_terminal and done < total:
                err.print(f"bounds: {what} ({done + 1}/{total})", highlight=False)

        summary = bounds_summary(kappas=kappas, target_delta=delta, records_per_patient=k, method=method.value,
                                 schedule=sched, mc_samples=MC_SAMPLES if mc_samples is None else mc_samples,
                                 progress=progress)
    if not json_out:
        err.print(f"privacy unit: {'patient' if k > 1 or privacy_unit == 'patient' else 'image'} ({why})",
                  highlight=False)
    for note in summary.notes:
        err.print(f"[yellow]warning:[/] {escape(_worded(note, rec))}", markup=True)
    if delta_note and not json_out:
        err.print(f"note: {delta_note}", highlight=False)
    if replaced:
        err.print(f"note: {replaced}", highlight=False)
    mia = summary.mia
    if roc is not None:
        mia_relaxed = mia_curve(schedule=sched, records_per_patient=k, threat_model="relaxed")
        from dpaudit.outputs import write_atomic

        text = io.StringIO(newline="")
        w = csv.writer(text)
        # every row says what kind of number the TPRs are and for which unit, as the JSON's labels do
        label = mia.label if mia.label == mia_relaxed.label else f"{mia.label} / {mia_relaxed.label}"
        unit = _per(k, rec)
        w.writerow(["fpr", "tpr_worst_case", "tpr_relaxed", "label", "unit"])
        for f, t, tr in zip(mia.roc_fpr, mia.roc_tpr, mia_relaxed.roc_tpr, strict=True):
            # the TPRs are sound upper bounds: full precision (repr), never rounded to nearest
            w.writerow([f"{f:.6e}", repr(float(t)), repr(float(tr)), label, unit])
        write_atomic(roc, text.getvalue(), field="--roc")
    if plot is not None:
        _plot(plot, sched, k, kappas)
    if json_out:
        emit_json(_bounds_json(summary, method.value, delta_note, rec, overrides))
        return
    _render(summary, rec)


def _unit(privacy_unit: str | None, records_per_patient: int | None,
          ckpt_k: tuple[int, str] | None) -> tuple[int, str]:
    """k and where it came from: --records-per-patient, else the checkpoint's (:func:`_checkpoint_unit`; unless
    --privacy-unit image), else 1."""
    if privacy_unit not in (None, "patient", "image"):
        raise invalid("privacy_unit", privacy_unit, "patient or image", "pass --privacy-unit patient or image")
    if records_per_patient is not None:
        k = check_int("records_per_patient", records_per_patient, fix="pass --records-per-patient 1 or more")
        if privacy_unit == "image" and k > 1:
            raise invalid("records_per_patient", k, "1 with --privacy-unit image",
                          "leave out --records-per-patient, or pass --privacy-unit patient")
        return k, f"k = {k} given by --records-per-patient"
    if privacy_unit == "image":
        return 1, "--privacy-unit image: k = 1"
    if ckpt_k is not None:
        return ckpt_k
    if privacy_unit == "patient":
        raise invalid("privacy_unit", "patient", "used with a checkpoint that records its patients, or with "
                      "--records-per-patient", "pass --records-per-patient K, or --model a checkpoint trained on "
                      "data with patient ids")
    return 1, "no patient ids known: k = 1"


def _unit_epsilons(s) -> tuple[float, float, str]:
    """epsilon of the privacy unit, the RDP epsilon (per record only: nan for k > 1) and the accountant's name."""
    eps = s.epsilon_of_unit
    return eps.value, s.epsilon_rdp if s.records_per_patient == 1 else math.nan, eps.accountant.upper()


#: What ``epsilon`` and ``epsilon_patient`` mean in every JSON of the bounds commands (profile.json's ``bounds[]``
#: uses the same two keys).
EPSILON_LABEL = "sound upper bound ({accountant}), per image (per record: what --epsilon/--epsilons set)"
EPSILON_PATIENT_LABEL = ("sound upper bound ({accountant}), per patient: the records_per_patient images of one "
                         "patient moving together")


def _delta(delta: float | None, n_train: int | None) -> tuple[float, str | None]:
    """target_delta: as given (or the checkpoint's), else the one default rule of every command,
    :func:`dpaudit.bounds.default_delta` of N_train (8e-7 when N is not known); the second value says which rule
    gave it (None when given)."""
    from dpaudit.bounds import default_delta, default_delta_rule

    if delta is not None:
        return float(delta), None
    return default_delta(n_train), default_delta_rule(n_train)


def _bounds_json(s, method: str, delta_note: str | None = None, rec: str = "image",
                 overrides: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    replaced = override_note(overrides or [])
    sigma, q, steps, delta, k = (s.noise_multiplier, s.sampling_probability, s.steps, s.target_delta,
                                 s.records_per_patient)
    worst, relaxed, mia = s.worst_case, s.relaxed, s.mia
    single = s.schedule is None or len(s.schedule.phases) == 1
    return {
        # several phases: no single sigma or q; "phases" holds them all ([sigma, q, steps] each, as Opacus does)
        "noise_multiplier": sigma if single else None, "sampling_probability": q if single else None,
        "steps": steps, "phases": s.schedule.to_history() if s.schedule is not None else [[sigma, q, steps]],
        "target_delta": delta, "records_per_patient": k, "privacy_unit": "patient" if k > 1 else "image",
        "method": method, "epsilon": s.epsilon.value,
        "epsilon_patient": s.epsilon_patient.value if s.epsilon_patient is not None else None,
        "epsilon_rdp": s.epsilon_rdp,
        # mc: each estimate's 95% interval under its own key ([lower, upper]); null for the other methods
        "rero": [{"kappa": float(kv), "worst_case": float(worst.gamma[i]), "relaxed": float(relaxed.gamma[i]),
                  "worst_case_interval": _interval(worst, i), "relaxed_interval": _interval(relaxed, i)}
                 for i, kv in enumerate(worst.kappa)],
        "mia": {"advantage": mia.advantage,
                "tpr_at_fpr": [{"fpr": f, "tpr": t} for f, t in mia.tpr_at_fpr]},
        "labels": {"epsilon": EPSILON_LABEL.format(accountant=s.epsilon.accountant.upper()),
                   **({"epsilon_patient": EPSILON_PATIENT_LABEL.format(accountant=s.epsilon_patient.accountant.upper())}
                      if s.epsilon_patient is not None else {}),
                   "epsilon_rdp": "sound upper bound (RDP, as Opacus), per image",
                   "rero": f"{worst.label}, {_per(k, rec)}", "mia": f"{mia.label}, {_per(k, rec)}",
                   **({"numerical_error": "sound upper bound on how far each rero[] value (worst_case, relaxed) "
                                          "lies above the exact one (its distance to a sound lower bound)"}
                      if method == "tight" else {})},
        # tight only: the proven gap to a sound lower bound on the exact value; no other method has one
        "numerical_error": ({"worst_case": worst.numerical_error.tolist(), "relaxed": relaxed.numerical_error.tolist()}
                            if method == "tight" else None),
        "assumptions": list(s.assumptions),
        # the summary's notes: the bounds' own and, where the RDP gave epsilon, why (as the console's warnings)
        "notes": list(dict.fromkeys(s.notes + ((delta_note,) if delta_note else ()) + ((replaced,) if replaced else ()))),
        # --model: each value a flag gave over the checkpoint's (flag, field, value, checkpoint); [] when none
        "overrides": list(overrides or []),
    }


def _interval(bound, i: int) -> list[float] | None:
    """The 95% interval of estimate ``i`` (Monte Carlo), or None."""
    if bound.interval is None:
        return None
    return [float(bound.interval[0][i]), float(bound.interval[1][i])]


def _fmt_estimate(bound, i: int) -> str:
    """A ReRo value as the table shows it; a Monte Carlo estimate with its 95% interval, rounded outwards."""
    if bound.interval is None:
        return _fmt_pct(bound.gamma[i])
    from dpaudit.numfmt import lower

    lo, hi = bound.interval[0][i], bound.interval[1][i]
    return f"{_fmt_pct(bound.gamma[i])} (95% interval {lower(100 * lo, 3)}% to {_fmt_pct(hi)})"


def _per(k: int, rec: str) -> str:
    """The unit a risk is stated for, in the data's words: 'per patient of 16 slices', 'per image'."""
    return f"per patient of {k} {rec}s" if k > 1 else f"per {rec}"


def _worded(text: str, rec: str) -> str:
    """A note or assumption of :mod:`dpaudit.bounds` (which knows no data unit and says "image") in the data's
    words: 'per-slice', '16 slices' where the records are slices of volumes; unchanged for images."""
    if rec == "image":
        return text
    return text.replace("per-image", f"per-{rec}").replace(" images", f" {rec}s").replace(" image", f" {rec}")


def _render(s, rec: str = "image") -> None:
    from rich.table import Table

    from dpaudit.numfmt import upper

    sigma, q, steps, delta, k = (s.noise_multiplier, s.sampling_probability, s.steps, s.target_delta,
                                 s.records_per_patient)
    eps, _, eps_source = _unit_epsilons(s)
    worst, relaxed, mia = s.worst_case, s.relaxed, s.mia

    if s.schedule is not None and len(s.schedule.phases) > 1:
        phases = "; ".join(f"sigma {p.noise_multiplier:g}, q {p.sampling_probability:g}, T {p.steps}"
                           for p in s.schedule.phases)
        title = f"DP-SGD, {len(s.schedule.phases)} phases ({phases}): T {steps}, k {k}"
    else:
        title = f"DP-SGD: sigma {sigma:g}, q {q:g}, T {steps}, k {k}"
    table = Table(title=title, title_justify="left")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("kind")
    if k > 1:
        table.add_row(f"epsilon {_per(k, rec)} at delta {delta:g} ({eps_source})", _fmt_eps(eps),
                      "sound upper bound")
        table.add_row(f"epsilon per {rec} at delta {delta:g} ({s.epsilon.accountant.upper()})",
                      _fmt_eps(s.epsilon.value), "sound upper bound")
    else:
        table.add_row(f"epsilon per {rec} at delta {delta:g} ({eps_source})", _fmt_eps(eps), "sound upper bound")
    if math.isfinite(s.epsilon_rdp):
        table.add_row(f"epsilon per {rec} at delta {delta:g} (RDP, as Opacus)",
                      _fmt_eps(s.epsilon_rdp), "sound upper bound")
    # k > 1: the risks are per patient (its k images move together), as the epsilon above them
    unit = f", {_per(k, rec)}" if k > 1 else ""
    for i, kv in enumerate(worst.kappa):
        table.add_row(f"ReRo worst-case{unit}, kappa {kv:.4g}", _fmt_estimate(worst, i), worst.label)
        table.add_row(f"ReRo relaxed{unit}, kappa {kv:.4g}", _fmt_estimate(relaxed, i), relaxed.label)
    table.add_row(f"membership advantage (TPR - FPR){unit}", upper(mia.advantage), mia.label)
    for f, t in mia.tpr_at_fpr:
        table.add_row(f"membership TPR at FPR {f:g}{unit}", upper(t), mia.label)
    print_table(table, out)
    out.print("Assumptions:")
    for a in s.assumptions:
        out.print(f"  - {_worded(a, rec)}")


def _check_plot_format(path: Path) -> None:
    """--plot names a file matplotlib can write: its extension picks the format (none: PNG, written under the name
    given). A folder is refused like any path that cannot be written (matplotlib would write FOLDER.png beside it)."""
    import errno
    import os

    from matplotlib.backend_bases import FigureCanvasBase

    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))

    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    ext = path.suffix[1:].lower()
    if ext and ext not in formats:
        raise invalid("plot", str(path), f"a file name ending in one of .{', .'.join(formats)}",
                      f"pass --plot {path.with_suffix('.png')}")


def _plot(path: Path, sched, k: int, kappas: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from dpaudit.bounds import rero_bound
    from dpaudit.outputs import save_figure

    grid = np.geomspace(min(1e-8, min(kappas)), 0.999, 121)
    w = rero_bound(kappa=grid, threat_model="worst_case", records_per_patient=k, schedule=sched).gamma
    r = rero_bound(kappa=grid, threat_model="relaxed", records_per_patient=k, schedule=sched).gamma
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(grid, w, color="purple", label="worst case (sound upper bound)")
    ax.plot(grid, r, color="orange", label="relaxed (sound upper bound)")
    ax.plot(grid, grid, color="grey", ls=":", label="blind guess (gamma = kappa)")
    for kv in kappas:
        ax.axvline(kv, color="grey", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("kappa (prior success probability)")
    ax.set_ylabel("reconstruction success bound gamma")
    last = sched.last
    ax.set_title(f"sigma {last.noise_multiplier:g}, q {last.sampling_probability:g}, T {sched.steps}"
                 + (f" ({len(sched.phases)} phases)" if len(sched.phases) > 1 else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        save_figure(fig, path, field="--plot", dpi=150)  # no suffix: PNG at this name
    finally:
        plt.close(fig)


@app.command("calibrate")
@handle_errors
def calibrate(
    max_rero: Annotated[float, typer.Option("--max-rero", help="Largest acceptable reconstruction success bound.")],
    kappa: Annotated[float | None, typer.Option("--kappa", help="Prior: blind-guess success probability (e.g. 1/N). "
                                                "\\[default: 1/N_train from --n-train or --model]")] = None,
    q: Annotated[float | None, typer.Option("--q", help="Poisson sampling probability per step.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Number of DP-SGD steps T.")] = None,
    model: Annotated[Path | None, typer.Option(
        "--model", help="Read q, steps (the schedule: the last phase's sigma is calibrated), delta, N_train (kappa = "
        "1/N_train) and k (records per patient) from a dpaudit checkpoint; --q/--steps given as well take "
        "precedence (one phase only).")] = None,
    n_train: Annotated[int | None, typer.Option("--n-train", help="Training images N: kappa = 1/N (unless --kappa) "
                                                "and the default delta min(8e-7, 1/(10 N)).")] = None,
    records_per_patient: Annotated[int | None, typer.Option("--records-per-patient", help="Images per patient k "
                                                            "(patient-level guarantee: sigma protects all k). "
                                                            "\\[default: the checkpoint's, else 1]")] = None,
    privacy_unit: PrivacyUnitOpt = None,
    threat_model: Annotated[str, typer.Option("--threat-model", help="worst-case or relaxed (worst_case, the "
                                              "JSON spelling, is accepted too).")] = "worst-case",
    delta: Annotated[float | None, typer.Option("--delta", help="delta for the reported epsilon. \\[default: the "
                                                "checkpoint's, else min(8e-7, 1/(10 N)) with N from --n-train, "
                                                "else 8e-7]")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    history: Annotated[Path | None, typer.Option(
        "--history", help="Opacus' accountant history: calibrate the last phase's sigma (its q and steps kept), "
        "the earlier phases fixed.")] = None,
    phase: PhaseOpt = None,
) -> None:
    """The smallest noise multiplier whose ReRo bound stays at or below --max-rero (safe end of the bracket), for
    the privacy unit (one image, or all k images of a patient)."""
    from dpaudit.bounds import calibrate_noise, check_threat_model

    threat_model = check_threat_model(threat_model)  # one spelling from here on: worst_case, as in every JSON
    _check_given(q=q, steps=steps, delta=delta, kappa=None if kappa is None else [kappa], n_train=n_train,
                 records_per_patient=records_per_patient)
    check_probability("max_rero", max_rero, fix="pass the largest acceptable reconstruction success, e.g. "
                      "--max-rero 0.05")
    given = [f for f, v in (("--q", q), ("--steps", steps), ("--model", model)) if v is not None]
    _one_schedule_source([f for f, v in (("--history", history), ("--phase", phase)) if v]
                         + (["/".join(given)] if given else []),
                         "--history FILE, --phase SIGMA,Q,STEPS (repeatable; the last phase's sigma is "
                         "calibrated), --q and --steps, or --model CHECKPOINT")
    source = _steps_source(history, phase, steps)  # (before --model's q and steps are cleared below)
    sched = _schedule_from_flags(history, phase)
    ckpt_k, rec = None, "image"
    overrides: list[dict[str, Any]] = []
    if model is not None:
        # the checkpoint's own sigma only fills the schedule: the last phase's sigma is what is calibrated
        sched, delta, n_train, ckpt_k, rec = _from_model(model, None, q, steps, delta, n_train,
                                                    None if kappa is None else [kappa], None, "--q and --steps",
                                                    records_per_patient=records_per_patient,
                                                    by_hand="--q, --steps, --delta, --n-train and "
                                                            "--records-per-patient K",
                                                    privacy_unit=opt_str(privacy_unit), overrides=overrides)
        q = steps = None
    elif sched is None and (q is None or steps is None):
        missing = " and ".join(f for f, v in (("--q", q), ("--steps", steps)) if v is None)
        raise ConfigError(f"the DP-SGD run is not fully given: {missing} missing. Fix: pass --q and --steps, the "
                          "schedule with --history FILE or --phase SIGMA,Q,STEPS, or --model CHECKPOINT.")
    if kappa is None:
        if n_train is None:
            raise ConfigError("no prior given: the calibration needs kappa. Fix: pass --kappa K (e.g. --kappa 1e-3) "
                              "or --n-train N (kappa = 1/N), or --model CHECKPOINT (kappa = 1/N_train).")
        kappa = _kappas(None, None, n_train)[0]
    delta, delta_note = _delta(delta, n_train)
    k, why = _unit(opt_str(privacy_unit), records_per_patient, ckpt_k)
    try:
        cal = calibrate_noise(max_rero, q, steps, kappa, threat_model=threat_model,
                              target_delta=delta, records_per_patient=k, schedule=sched)
    except NumericalError as exc:
        if exc.field != "steps" or source == "--steps":
            raise
        # the steps came from a schedule or a checkpoint: name that flag, and a fix it takes
        fix = "pass fewer --steps (with --model it replaces the checkpoint's)" if source == "--model" else f"pass {source} with fewer steps in all"
        raise invalid(source, exc.value, f"a schedule whose steps in all are {exc.allowed}", fix, cls=NumericalError) from None
    q, steps = cal.sampling_probability, cal.steps
    unit = "patient" if k > 1 else "image"
    replaced = override_note(overrides)
    notes = [n for n in (cal.note, delta_note, replaced) if n]
    if not json_out:
        err.print(f"privacy unit: {unit} ({why})", highlight=False)
        if cal.note:
            err.print(f"[yellow]warning:[/] {escape(_worded(cal.note, rec))}", markup=True)
        if delta_note:
            err.print(f"note: {delta_note}", highlight=False)
    if replaced:  # with --json too: stdout holds the JSON alone
        err.print(f"note: {replaced}", highlight=False)
    from dpaudit.bounds import epsilon_target_for

    target = epsilon_target_for(cal)
    if json_out:
        emit_json({"noise_multiplier": cal.noise_multiplier, "sampling_probability": q, "steps": steps,
                   "kappa": cal.kappa, "records_per_patient": k, "privacy_unit": unit,
                   "target_delta": delta, "epsilon": cal.epsilon, "epsilon_patient": cal.epsilon_patient,
                   "epsilon_target": target,
                   "threat_model": threat_model, "max_rero": cal.max_rero,
                   "achieved_rero": cal.achieved_rero, "at_floor": cal.at_floor,
                   "labels": {"noise_multiplier": "search floor (any noise meets the target)" if cal.at_floor else
                              "smallest meeting the target (safe end of the bracket)",
                              "achieved_rero": f"{cal.label}, {_per(k, rec)}",
                              "epsilon": EPSILON_LABEL.format(accountant="PLD"),
                              **({"epsilon_patient": EPSILON_PATIENT_LABEL.format(accountant="PLD")} if k > 1 else {}),
                              "epsilon_target": "budget to train with: the per-image train --epsilon / profile "
                                                "--epsilons that gives at least noise_multiplier (rounded down, "
                                                "checked); null for several phases or at the search floor"},
                   "notes": notes, "overrides": overrides, "phases": cal.schedule.to_history()})
        return
    from rich.table import Table

    per = _per(k, rec)
    table = Table(title=f"Calibration: q {q:g}, T {steps}, kappa {cal.kappa:.4g}, {threat_model.replace('_', '-')}, {per}",
                  title_justify="left")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("kind")
    from dpaudit.numfmt import at_least, at_most

    # sigma must be reached: rounded up, so that the printed value meets the target too
    table.add_row("noise multiplier sigma", at_least(cal.noise_multiplier, 5),
                  "search floor (any noise meets the target)" if cal.at_floor else
                  "smallest meeting the target (safe end)")
    table.add_row(f"ReRo bound achieved, {per}", _fmt_pct(cal.achieved_rero), cal.label)
    table.add_row("target", _fmt_pct(cal.max_rero), "")
    if cal.epsilon_patient is not None:
        table.add_row(f"epsilon at delta {delta:g} (PLD), {per}", _fmt_eps(cal.epsilon_patient), "sound upper bound")
    table.add_row(f"epsilon at delta {delta:g} (PLD), per {rec}", _fmt_eps(cal.epsilon), "sound upper bound")
    if target is not None:
        table.add_row(f"train with --epsilon (per {rec}, rounded down)", at_most(target), "gives at least this sigma")
    print_table(table, out)
