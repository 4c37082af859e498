"""`dpaudit profile` (the full audit: train, bound, attack, report) and `dpaudit report` (re-render the PDF)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from dpaudit.attacks.decoders import decoder_choice
from dpaudit.audit.profile.schema import ProfileConfig
from dpaudit.cli import _attack_options as attack_options
from dpaudit.cli import _common as cli
from dpaudit.cli._common import emit_json, err, handle_errors, out, print_table, says_how_to_resume
from dpaudit.config import task_default_help

#: The profile's defaults (one source of truth: ProfileConfig, the Python API's).
D = ProfileConfig
app = typer.Typer()

# The board's limits, shared by `profile` (decide after the run) and `report` (re-decide from profile.json).
MaxReroOpt = Annotated[list[float] | None, typer.Option(
    "--max-rero", help="Board limit: the largest acceptable reconstruction success at κ = 1/N_train (e.g. 0.05). "
    "Repeatable; each pairs with a --threat-model.", rich_help_panel="Decision")]
ThreatModelOpt = Annotated[list[str] | None, typer.Option(
    "--threat-model", help="worst-case (default), relaxed or realistic (the attack's measured success), for the "
    "--max-rero in the same position (one value applies to all); one --max-rero per threat model.", rich_help_panel="Decision")]
MaxMiaTprOpt = Annotated[list[float] | None, typer.Option(
    "--max-mia-tpr", help="Board limit: the largest acceptable membership-inference TPR (worst case) at --at-fpr. "
    "Repeatable.", rich_help_panel="Decision")]
AtFprOpt = Annotated[list[float] | None, typer.Option(
    "--at-fpr", help="The FPR of the --max-mia-tpr in the same position (default 1e-3).", rich_help_panel="Decision")]


def _limits(max_rero, threat_model, max_mia_tpr, at_fpr) -> tuple:
    from dpaudit.audit.decision import limits_from_options

    return limits_from_options(max_rero or (), threat_model or (), max_mia_tpr or (), at_fpr or ())


def _limits_tag(limits) -> str:
    """A file-name tag for the board's limits, e.g. max-rero-0.05-worst_case_max-mia-tpr-0.5-at-fpr-0.01."""
    parts = [f"max-rero-{lim.maximum:g}-{lim.threat_model}" if lim.kind == "rero"
             else f"max-mia-tpr-{lim.maximum:g}-at-fpr-{lim.at_fpr:g}" for lim in limits]
    return "_".join(parts) or "limits"


def _print_decision(decision) -> None:
    if decision is None:
        return
    head = f"recommended: {decision.recommended}" if decision.recommended else "no budget meets every limit"
    out.print(f"[bold]decision[/] ({escape(head)}): {escape(decision.reason)}", markup=True)


@app.command("report")
@handle_errors
def report(
    profile_json: Annotated[Path, typer.Argument(help="profile.json written by `dpaudit profile --out DIR` "
                                                      "(or the folder DIR).")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Where to write the PDF (default: report.pdf beside the profile.json; with limits that change the "
        "decision, report-LIMITS.pdf there, so that report.pdf keeps profile.json's decision).")] = None,
    include_images: Annotated[bool | None, typer.Option(
        "--include-images/--no-images",
        help="Show stored reconstructions next to training images (patient data!). Default: as profiled.")] = None,
    max_rero: MaxReroOpt = None,
    threat_model: ThreatModelOpt = None,
    max_mia_tpr: MaxMiaTprOpt = None,
    at_fpr: AtFprOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Re-render the PDF risk report from a profile.json (deterministic: the same file gives the same PDF).

    With --max-rero / --max-mia-tpr the board's decision is made again from the stored results for these limits
    (no training; profile.json is left as it is); without, the report shows the profile's own decision.
    """
    from dpaudit.audit.decision import current_decision, with_decision
    from dpaudit.audit.report import load_profile, render_report, stored_images

    limits = _limits(max_rero, threat_model, max_mia_tpr, at_fpr)
    path = profile_json / "profile.json" if profile_json.is_dir() else profile_json
    # a stored decision ranked by another utility than today's rule is re-made with the stored limits (the note)
    prof = current_decision(load_profile(path))
    stored = prof.decision
    if limits and (stored is None or tuple(limits) != tuple(stored.limits)):
        prof = with_decision(prof, limits)
    # report.pdf beside profile.json shows profile.json's decision: a decision for other limits goes to a file
    # named after them (profile.json is never rewritten here), unless -o names the file.
    redecided = prof.decision != stored
    default = path.parent / ("report.pdf" if not redecided else f"report-{_limits_tag(prof.decision.limits)}.pdf")
    target = output if output is not None else default
    if output is not None:  # checked before rendering: an OSError from deep in the PDF writer names no flag
        from dpaudit.errors import DpAuditError, invalid
        from dpaudit.outputs import writable_dir

        try:
            writable_dir(output.parent, field="output")
        except DpAuditError:
            raise invalid("-o/--output", str(output), "a PDF path in a folder that can be created and written to",
                          "pass -o/--output a path you can write to, e.g. -o board-report.pdf") from None
    pdf = render_report(prof, target, include_images=include_images, base_dir=path.parent,
                        run_limits=tuple(stored.limits) if stored is not None else (), field="--output")
    notes = []
    if prof.decision is not None and prof.decision.remade_note:
        notes.append(f"{path.name}: {prof.decision.remade_note}")
        err.print(f"note: {notes[-1]}", highlight=False)
    if redecided and not as_json:
        same = target.resolve() == (path.parent / "report.pdf").resolve()
        err.print(f"note: the decision for these limits differs from {path.name}'s; "
                  + (f"{target} now disagrees with {path.name} (re-render it without limits to restore it)"
                     if same else f"written to {target}; report.pdf stays as {path.name} decides"), highlight=False)
    images = prof.config.include_images if include_images is None else include_images
    if images and not stored_images(prof):
        images = False
        # `report --include-images` can only show what the profile stored; storing them is another profile
        # configuration, which its folder refuses without --overwrite (and which trains and attacks again).
        err.print(f"note: {path.name} stores no reconstructions (the profile ran without --include-images), so "
                  "the report shows none and is not marked restricted. Fix: run the profile again with "
                  "--include-images --overwrite (it trains and attacks again and replaces this folder's results), "
                  f"e.g. {prof.config.command(prof.out_in(path.parent), tuple(stored.limits) if stored else (), prof.computed_on)} "
                  "--include-images --overwrite; or with --include-images into a new --out.",
                  highlight=False)
    if images:
        err.print("[yellow]warning:[/] the report shows training images (possibly patient data); do not share it "
                  "beyond those authorised to see the data.", markup=True)
    if as_json:
        emit_json({"pdf": str(pdf), "profile": str(path), "include_images": images, "decision": prof.decision,
                   "notes": notes})
    else:
        _print_decision(prof.decision)
        out.print(f"wrote {pdf}")


@app.command("profile")
@handle_errors
@cli.shared_options(ProfileConfig, *cli.DATA, *cli.MEDICAL, "privacy_unit", *cli.MODEL, *cli.SEGMENTATION,
                    *cli.TRAINING, "target_delta")
def profile(
    shared: dict[str, Any],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for checkpoints, profile.json and report.pdf; "
                                                         "an existing folder resumes.")],
    epsilons: Annotated[str | None, typer.Option(
        help="Target privacy budgets (tight PLD epsilon at delta). " + task_default_help(D.TASK_DEFAULTS, "epsilons"),
        show_default=False)] = D.epsilons,
    non_private: Annotated[bool, typer.Option("--non-private/--no-non-private",
                                              help="Also train the non-private baseline.")] = D.non_private,
    seeds: Annotated[int | None, typer.Option(
        help="Training runs per privacy budget (utility mean and spread). "
        + task_default_help(D.TASK_DEFAULTS, "seeds"), show_default=False)] = D.seeds,
    seed: Annotated[int, typer.Option(help="First seed (also the data split's and the attack's seed).")] = D.seed,
    kappa: Annotated[list[float] | None, typer.Option(help="Extra prior(s) kappa for the ReRo bounds "
                                                           "(1/N_train is always reported). Repeatable.")] = None,
    records_per_patient: Annotated[int | None, typer.Option(help="k images per patient (default: from the data, "
                                                                 "see --privacy-unit); k > 1 gives patient-level "
                                                                 "guarantees.")] = D.records_per_patient,
    attack_images: Annotated[int, typer.Option(help="Training images attacked per privacy budget.")] = D.attack_images,
    decoder: attack_options.DecoderOpt = decoder_choice(D.decoders),
    connection: attack_options.ConnectionOpt = D.connection,
    bins: attack_options.BinsOpt = D.bins,
    observations: attack_options.ObservationsOpt = D.observations,
    attack_epochs: Annotated[int | None, typer.Option(help="Epochs of the attack scenario (batch size 1); "
                                                           "default: --epochs.")] = D.attack_epochs,
    mia_audit: Annotated[bool, typer.Option(
        "--mia-audit/--no-mia-audit", help="Also run the empirical canary membership audit per budget (one extra "
        "training run each): an empirical lower bound on epsilon next to the accountant's.")] = D.mia_audit,
    canaries: cli.CanariesOpt = D.canaries,
    include_images: Annotated[bool, typer.Option(help="Store reconstructions and show them in the report "
                                                      "(patient images!).")] = D.include_images,
    inits: Annotated[str, typer.Option("--inits", help="Initialisations trained side by side at every budget: "
                                       "scratch and/or weights files (dpaudit checkpoint, state dict, "
                                       ".safetensors; never downloaded), e.g. scratch,pre.pt. The bounds and the "
                                       "attack use the first.")] = ",".join(D.inits),
    trainable: cli.TrainableOpt = D.trainable,
    max_rero: MaxReroOpt = None,
    threat_model: ThreatModelOpt = None,
    max_mia_tpr: MaxMiaTprOpt = None,
    at_fpr: AtFprOpt = None,
    federated: Annotated[bool, typer.Option(
        "--federated/--no-federated", help="Also run the federated section: FedAvg across sites with sample-level "
        "DP (per-site epsilon and kappa = 1/N_k bounds, utility per site) and the bin attack with and without "
        "secure aggregation.")] = D.federated,
    federated_clients: Annotated[int, typer.Option(help="Sites of the federated section.")] = D.federated_clients,
    federated_partition: Annotated[str, typer.Option(help="iid, dirichlet:ALPHA or column:NAME.")
                                   ] = D.federated_partition,
    federated_epsilon: Annotated[float, typer.Option(help="Target epsilon per image of the federated section (the worst "
                                                          "site meets it).")] = D.federated_epsilon,
    render: Annotated[bool, typer.Option("--render/--no-render", help="Write report.pdf.")] = True,
    scheduler: Annotated[str | None, typer.Option(
        help="Run the tasks on an existing Dask cluster, e.g. tcp://HOST:8786 (needs dpaudit[distributed]; "
             "--out and --data-dir on a file system every worker sees).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Run the tasks on a local Dask cluster of N worker processes (127.0.0.1 only, one thread each).")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="Run the tasks one after the other in this process with N torch threads each (default: "
        "one worker process per idle core, one thread each, when two or more cores are idle; else this process on "
        "the idle cores). Results depend on the thread count in the last bits: pin it to reproduce a run; the "
        "worker processes compute what --threads 1 does.")] = None,
    device: cli.DeviceOpt = "auto",
    overwrite: cli.OverwriteOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (the per-budget summary).")] = False,
) -> None:
    """Run a full privacy-risk profile: train per epsilon, bound, attack, and write profile.json and report.pdf."""
    import time

    from dpaudit.attacks.decoders import decoders_for
    from dpaudit.audit.profile import run_profile
    from dpaudit.cli._common import parse_float_list
    from dpaudit.data import check_data_options, check_dataset_found
    from dpaudit.errors import check_int

    # Here rather than in ProfileConfig, so that a profile.json written before the check still loads.
    check_data_options(shared["dataset"], data_dir=shared["data_dir"], labels=shared["labels"],
                       window=shared["window"], slice_axis=shared["slice_axis"])
    check_dataset_found(shared["dataset"], data_dir=shared["data_dir"])
    _refuse_unused(mia_audit=mia_audit, federated=federated,
                   weights_file=any(i.strip() not in ("", "scratch") for i in inits.split(",")), trainable=trainable)
    config = ProfileConfig(
        **shared, epsilons=None if epsilons is None else tuple(parse_float_list("--epsilons", epsilons, "1,8,20,1e9")),
        non_private=non_private, seeds=seeds,
        seed=seed, kappas=tuple(kappa or ()), records_per_patient=records_per_patient, attack_images=attack_images,
        decoders=decoders_for(decoder), connection=connection, bins=bins, observations=observations,
        attack_epochs=attack_epochs, mia_audit=mia_audit, canaries=canaries, include_images=include_images,
        inits=tuple(i.strip() for i in inits.split(",") if i.strip()), trainable=trainable, federated=federated,
        federated_clients=federated_clients, federated_partition=federated_partition,
        federated_epsilon=federated_epsilon)
    cli.print_task_defaults(config)
    import json

    from dpaudit.models import check_arch_args

    check_arch_args(config.arch, json.loads(config.arch_args), flag="--arch-args")  # before the data load
    limits = _limits(max_rero, threat_model, max_mia_tpr, at_fpr)  # checked before any training
    if threads is not None:
        check_int("threads", threads, fix="pass --threads 1 or more, or leave it out (the idle cores)")
    from dpaudit.runtime import resolve_device

    resolve_device(device)  # a name or a GPU that is not there: before the folder is claimed and anything trains
    from dpaudit.audit.profile.run import PROFILE_OUTPUTS, PROFILE_REWRITES, profile_identity, same_profile
    from dpaudit.outputs import claim_folder

    claim = claim_folder(out_dir, command="profile", record="profile.json", identity=profile_identity(config, limits),
                         outputs=PROFILE_OUTPUTS, overwrite=overwrite,
                         rewrites=PROFILE_REWRITES if render else PROFILE_REWRITES[:1],
                         same=lambda stored: same_profile(config, limits, stored),
                         what="a profile of other options or limits; `dpaudit report` re-decides for other limits")
    for note in claim.notes:
        err.print(f"note: {note}", highlight=False)
    started = time.perf_counter()
    stage_start: dict[str, float] = {}
    described: list[bool] = []

    def progress(stage: str, done: int, total: int, message: str) -> None:
        if stage != "data" and not described and hasattr(executor, "describe"):
            # where the tasks run, said once the data loaded (a --dataset that names nothing fails before it)
            described.append(True)
            err.print(executor.describe(), highlight=False)
        now = time.perf_counter()
        stage_start.setdefault(stage, now)
        err.print(f"[bold]{stage:>6}[/] {done}/{total}  {escape(message)}  [dim](stage {now - stage_start[stage]:.0f} s, "
                  f"total {now - started:.0f} s)[/]", markup=True, highlight=False)

    if include_images:
        err.print("[yellow]warning:[/] --include-images stores training images (possibly patient data) in the "
                  "output folder and the report.", markup=True)
    from dpaudit.audit.profile.distributed import make_executor

    # Everything the run writes, as a whole: on a failure the folder's previous outputs are put back.
    resume = f"the same command again resumes it (the tasks finished are kept in {out_dir / 'tasks'})"
    with says_how_to_resume(resume), claim.writing():
        # The executor changes where tasks run, never their results (tests/test_distributed.py).
        executor = make_executor(scheduler, workers, threads=threads)
        task_threads = one_thread_in_process(executor, threads)
        try:
            if threads is not None:
                import torch

                torch.set_num_threads(threads)
            prof = run_profile(config, out_dir, executor=executor, progress=progress, threads=task_threads,
                               limits=limits, device=device)
        finally:
            executor.close()
        if render:
            from dpaudit.audit.report import render_report

            progress("report", 0, 1, "rendering report.pdf")
            t0 = time.perf_counter()
            render_report(prof, out_dir / "report.pdf", base_dir=out_dir)
            progress("report", 1, 1, f"report.pdf written in {time.perf_counter() - t0:.1f} s")
        elif (out_dir / "report.pdf").exists():
            # profile.json was just rewritten: a report.pdf beside it may describe another configuration, and a board
            # must not be handed a PDF that disagrees with profile.json. It is kept, under a name that says so.
            stale = out_dir / "report.stale.pdf"
            (out_dir / "report.pdf").replace(stale)
            err.print(f"note: the earlier report.pdf may not match the new profile.json; kept as {stale}. "
                      f"Render the current one with: dpaudit report {out_dir}", highlight=False)
    wall = time.perf_counter() - started
    stages = "; ".join(f"{s.stage} {s.seconds:.0f} s" for s in prof.stages)
    err.print(f"done in {wall:.0f} s ({stages})", highlight=False)
    if as_json:
        emit_json(_summary_json(prof, out_dir, render, wall))
        return
    _print_summary(prof)
    _print_decision(prof.decision)
    out.print(f"wrote {out_dir / 'profile.json'}" + (f" and {out_dir / 'report.pdf'}" if render else ""))


def _summary_json(prof, out_dir: Path, render: bool, wall: float) -> dict:
    levels = []
    for lv in prof.levels():
        a = lv.attack.strongest if lv.attack else None
        levels.append({
            "epsilon_target": lv.epsilon_target,
            "noise_multiplier": lv.train[0].noise_multiplier if lv.train else None,
            "epsilon": lv.bounds.epsilon if lv.bounds else None,
            # per patient (k images move together) when the unit is the patient: the unit the ReRo columns protect
            "epsilon_patient": lv.bounds.epsilon_patient if lv.bounds else None,
            "worst_case": lv.worst_case, "relaxed": lv.relaxed,
            "realistic": None if a is None else {"decoder": a.decoder, "success_rate": a.success_rate,
                                                 "ci_low": a.ci_low, "ci_high": a.ci_high,
                                                 "noise_multiplier": lv.attack.noise_multiplier},
            "mcc_mean": lv.utility["mcc"].mean, "mcc_std": lv.utility["mcc"].std,
            "mcc_by_init": {k: {"mean": v.mean, "std": v.std, "n": v.n} for k, v in lv.mcc_by_init.items()},
            **{f"{k}_{stat}": getattr(v, stat) for k, v in lv.utility.items() if k.startswith("dice_")
               for stat in ("mean", "std")},
            "mia_tpr_at_fpr_1e-3": lv.bounds.tpr_at(1e-3) if lv.bounds else None,
            "epsilon_used": lv.epsilon_used, "notes": list(lv.notes),
        })
    bound = prof.labels["bounds[], bounds_curve[] (ReRo worst_case and relaxed, MIA tpr)"]
    extra = {}
    if prof.patient_risk:
        extra["patient_risk[]"] = prof.labels["patient_risk[]"]
    rec = prof.privacy().record
    labels = {"levels[].epsilon": f"sound upper bound (tight PLD accountant), per {rec} (what --epsilons sets)",
              "levels[].epsilon_patient": "sound upper bound (the tighter of the PLD and RDP accountants), per patient: the "
                                          f"records_per_patient {rec}s of one patient moving together (null when "
                                          f"the unit is the {rec})",
              **extra,
              "levels[].worst_case, levels[].relaxed, levels[].mia_tpr_at_fpr_1e-3": bound,
              "levels[].realistic": "empirical (a lower bound on reconstruction risk)",
              "levels[].mcc_*, levels[].dice_*": "empirical (test split, over seeds)"}
    return {"profile": str(out_dir / "profile.json"), "report": str(out_dir / "report.pdf") if render else None,
            "decision": prof.decision,
            "kappa": (lv.bounds.kappa_train if (lv := next((x for x in prof.levels() if x.bounds), None))
                      else 1.0 / prof.dataset.n_train), "privacy_unit": prof.privacy().unit,
            "records_per_patient": prof.privacy().records_per_patient, "levels": levels,
            # the unit is the image but a patient has several images: each budget per patient, for information
            "patient_risk": list(prof.patient_risk), "wall_seconds": wall,
            "stages": [{"stage": s.stage, "seconds": s.seconds, "tasks_run": s.tasks_run,
                        "tasks_reused": s.tasks_reused} for s in prof.stages], "labels": labels}


def one_thread_in_process(executor, threads: int | None) -> int | None:
    """The torch threads of each task: ``--threads`` as given; one where the default executor runs tasks in this
    process (fewer than two idle cores at the start), so that their results are the worker processes' (one thread
    each): training results depend on the thread count in the last bits, and through training on utility, and a
    task taking the cores idle at its own start (1 or 2 as other work comes and goes) made the same command's MCC
    differ between runs (the tiny-noise budget's 0.800 against 0.790 on this 2-core machine)."""
    from dpaudit.audit.profile.executor import InProcessExecutor

    if threads is None and type(executor) is InProcessExecutor:
        return 1
    return threads


def _eps_cell(value: float) -> str:
    """The table's epsilon, rounded up: 4 significant digits, 2 from 1e5 on ('7.8e+08', not '7.744e+08': the
    80 columns; the report and profile.json keep 4)."""
    import math

    from dpaudit.numfmt import upper

    return upper(value, 2 if math.isfinite(value) and value >= 1e5 else 4)


def _print_summary(prof) -> None:
    from rich.table import Table

    from dpaudit.audit import report_text as txt
    from dpaudit.audit.profile.schema import init_reports

    n = prof.dataset.n_train
    nk = txt.kappa_n(prof)  # training images, or training volumes for segmentation (the patient unit)
    from rich import box

    what = f"{n} training slices of {nk} volumes" if prof.config.segmentation else f"{n} training images"
    seg = prof.config.segmentation
    utility_caption = ("Dice: per test volume on the reassembled 3-D prediction, averaged over volumes, then "
                       "mean ± std over seeds" if seg else "MCC: mean over n seeds")
    table = Table(title=f"Privacy risk profile: {prof.dataset.name} ({what}, κ = 1/{nk})",
                  caption="bound: sound upper bound for any attacker; emp.: empirical (realistic: the strongest "
                          f"decoder's success, SSIM > {prof.success_ssim():g}; {utility_caption}); σ: training noise "
                          "multiplier. The report (intervals, tests) and profile.json hold the rest.",
                  caption_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=seg)  # seg: one column more
    utility = txt.utility_columns(prof)
    # The table fits 80 columns: a budget past the noise search range shows the epsilon it was computed at with a
    # '*' (the note below says what was asked), and the number of seeds goes into the MCC heading.
    seeds = {lv.utility["mcc"].n for lv in prof.levels() if "mcc" in lv.utility and lv.utility["mcc"].mean is not None}
    n_head = f", n={seeds.pop()}" if len(seeds) == 1 else ""
    if any("(asked" in lv.label for lv in prof.levels()):
        table.caption += " *: the budget asked lies past the noise search range (note below)."
    # With the patient as the unit the risk columns are per patient, so ε is shown per patient too (training
    # calibrated it per image; that value is in profile.json and the report).
    per_patient = any(lv.bounds is not None and lv.bounds.epsilon_patient is not None for lv in prof.levels())
    if per_patient:
        table.caption += (" ε per patient: the k slices of one volume move together (the per-slice ε is in the "
                          "report)." if seg else " ε per patient: k images of one patient move together (the "
                          "per-image ε is in the report).")
    # Segmentation: "Dice liver" over two lines ("Dice", "liver") so that two classes fit the 80 columns.
    hides = prof.privacy().image_unit_hides_patients  # per image, while a patient has several images
    rec = prof.privacy().record  # 'slice' for slices of volumes, else 'image' (wording only)
    for col in ("budget", "σ", "ε per\npatient\n(bound)" if per_patient else
                f"ε per\n{rec}\n(bound)" if hides else "ε PLD\n(bound)",
                *(f"{label}\n(emp.{n_head})" if not seg else label.replace(" ", "\n", 1) + "\n(emp.)"
                  for _, label in utility),
                f"worst\ncase per\n{'patient' if per_patient else rec}\n(bound)",
                f"relaxed\nper\n{'patient' if per_patient else rec}\n(bound)", f"realistic\nper\n{rec}\n(emp.)"):
        table.add_column(col, justify="right", no_wrap=True)
    for lv in prof.levels():
        a = lv.attack
        table.add_row(
            lv.label.split(" (asked")[0] + ("*" if "(asked" in lv.label else ""),
            f"{lv.train[0].noise_multiplier:.4g}" if lv.train else "n/a",
            _eps_cell(lv.bounds.epsilon_patient if per_patient and lv.bounds.epsilon_patient is not None
                      else lv.bounds.epsilon) if lv.bounds else ("∞" if not lv.private else "n/a"),
            *(("n/a" if lv.utility["mcc"].mean is None else f"{lv.utility['mcc'].mean:.3f}" + ("" if n_head else f" (n={lv.utility['mcc'].n})"),)
              if not prof.config.segmentation else
              (txt.spread(lv.utility[key]).replace(" ± ", "±") for key, _ in utility)),
            txt.pct(lv.worst_case, direction="up"), txt.pct(lv.relaxed, direction="up"),
            "not run" if a is None else txt.pct(a.strongest.success_rate))
    print_table(table, out)
    levels = prof.levels()
    if len(prof.config.inits) > 1:
        key, name = txt.headline_utility(prof)  # the metric the runs were scored with: MCC, or Dice for segmentation
        by_init = Table(title=f"Test {name} (empirical) per initialisation: mean [95% t-interval], n seeds",
                        box=box.SIMPLE_HEAD, pad_edge=False)
        by_init.add_column("budget", justify="right")
        labels = list(levels[0].mcc_by_init) if levels else []
        for lab in labels:
            by_init.add_column(lab, justify="right")
        for lv in levels:
            by_init.add_row(lv.label, *(txt.interval(txt.init_utility_values(prof, lv, lab, key), metric=key)
                                        for lab in labels))
        print_table(by_init, out)
    for label, report in init_reports(prof).items():
        for line in report:
            err.print(f"[yellow]note:[/] --inits {escape(str(label))}: {escape(line)}", highlight=False, markup=True)
    for note in dict.fromkeys(n for lv in levels for n in lv.notes):
        err.print(f"[yellow]note:[/] {escape(note)}", markup=True)
    if hides and prof.decision is not None:
        # the decision printed below states the per-patient risk (its reason): said once
        out.print(txt.image_unit_line(prof.privacy(), "the decision below"), highlight=False)
    else:
        out.print(prof.privacy().describe())
    if hides and prof.decision is None:
        out.print(f"[bold]{escape(txt.image_unit_patient_risk(prof))}[/]", highlight=False, markup=True)


def _refuse_unused(*, mia_audit: bool, federated: bool, weights_file: bool, trainable: str) -> None:
    """Options typed on the command line that the run would not use are refused, not ignored (as
    :func:`dpaudit.data.check_data_options` does for the data options). Here rather than in ProfileConfig, so that
    a profile.json written before the check still loads."""
    from dpaudit.errors import ConfigError

    ctx = typer.main.get_current_context(silent=True)  # None when called outside a command line (nothing typed)

    def typed(name: str) -> bool:
        source = ctx.get_parameter_source(name) if ctx is not None else None
        return getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT")

    needs = [("canaries", "--canaries", mia_audit, "--mia-audit")]
    needs += [(n, f"--{n.replace('_', '-')}", federated, "--federated")
              for n in ("federated_clients", "federated_partition", "federated_epsilon")]
    for name, flag, on, switch in needs:
        if typed(name) and not on:
            raise ConfigError(f"{flag} applies only with {switch}, which is not given: it would be ignored. "
                              f"Fix: add {switch}, or drop {flag}.")
    if typed("trainable") and trainable != "all" and not weights_file:
        raise ConfigError(f"--trainable {trainable} applies only to runs from a weights file in --inits (the scratch "
                          "runs train every layer), and --inits names none: it would be ignored. Fix: add a weights "
                          "file, e.g. --inits scratch,pretrained.pt, or drop --trainable.")
