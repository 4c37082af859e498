"""`dpaudit attack`: the imprint-layer reconstruction attack on DP-SGD gradients, scored by SSIM."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from dpaudit.attacks.decoders import decoder_choice
from dpaudit.attacks.scenario import ACCOUNTANTS, SCORINGS, SELECTIONS, AttackScenario
from dpaudit.audit.configs import TrainConfig
from dpaudit.cli import _attack_options as attack_options
from dpaudit.cli import _common as cli
from dpaudit.cli._common import (
    emit_json,
    err,
    handle_errors,
    out,
    parse_float_list,
    print_table,
    progress_bar,
)
from dpaudit.config import IMAGE_SIZE_DEFAULT_HELP, check_max_images, default_image_size, record_noun
from dpaudit.numfmt import percent, percent_interval, upper

app = typer.Typer()
#: The defaults of the attack: AttackScenario's (the Python API's); the data options: as dpaudit train.
S = AttackScenario
Selection = cli.choices("Selection", SELECTIONS)
Scoring = cli.choices("Scoring", SCORINGS)
Accountant = cli.choices("Accountant", ACCOUNTANTS)


#: What ``attack --out`` writes.
ATTACK_OUTPUTS = ("attack.json", "ssim_error_cdf.png", "best_reconstructions.png")


@app.command("attack")
@handle_errors
@cli.shared_options(TrainConfig, "dataset", "data_dir", *cli.MEDICAL, "privacy_unit", "arch_args", "fix_batchnorm",
                    "task")
def attack(
    shared: dict[str, Any],
    model: Annotated[Path | None, typer.Option("--model", help="dpaudit checkpoint (or a plain state dict with "
                                               "--arch).")] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="Architecture: resnet9, smallcnn, monai:NAME, "
                                             "file.py:factory or module:factory; for a plain state dict, a "
                                             "checkpoint of your own code, or a random model without --model "
                                             "(default then: resnet9; unet for segmentation).")
                    ] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", show_default=False, help=(
        "Resize images to this size. \\[default: the checkpoint's, else the dataset's: "
        f"{IMAGE_SIZE_DEFAULT_HELP}]"))] = None,
    n_images: Annotated[int, typer.Option("--n-images", help="Number of training images to attack.")] = S.n_images,
    selection: Annotated[Selection, typer.Option("--selection", help="first: the first --n-images training "
                                                 "images; random: a seeded random subset (what the profile "
                                                 "attacks).")] = S.selection,
    max_images: Annotated[int | None, typer.Option("--max-images", help="Load at most this many images before "
                                                   "splitting (default: all of them, as train loads them, so that "
                                                   "the training split and its k per patient are the data's; the "
                                                   "--max-images a model was trained with to attack its split).")
                          ] = None,
    epsilons: Annotated[str | None, typer.Option("--epsilons", help="Target epsilons, e.g. 1,8,20,1e9 (mapped to "
                                                 "sigmas in the attack scenario q = 1/N, T = epochs * N). Default: "
                                                 "the checkpoint's epsilon; --sigmas 0 for a non-private one.")
                                      ] = None,
    sigmas: Annotated[str | None, typer.Option("--sigmas", help="Noise multipliers, e.g. 0,1e-4,1e-3,0.02."
                                               )] = None,
    decoder: attack_options.DecoderOpt = decoder_choice(S.decoders),
    connection: attack_options.ConnectionOpt = S.connection,
    bins: attack_options.BinsOpt = S.bins,
    observations: attack_options.ObservationsOpt = S.observations,
    max_grad_norm: Annotated[float | None, typer.Option("--max-grad-norm", show_default=False, help=(
        "Clip norm C. \\[default: the checkpoint's, else 1.0]"))] = S.max_grad_norm,
    scoring: Annotated[Scoring, typer.Option("--scoring", help="nearest (the paper's matching) or paired."
                                             )] = S.scoring,
    denoiser: attack_options.DenoiserOpt = S.denoiser,
    n_train: Annotated[int | None, typer.Option("--n-train", help="N for --epsilons (default: the checkpoint's)."
                                                )] = S.n_train,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs for --epsilons (default: the "
                                               "checkpoint's).")] = S.epochs,
    delta: Annotated[float | None, typer.Option("--delta", help="delta for --epsilons (default: the "
                                                "checkpoint's, else min(8e-7 (paper), 1/(10 N))).")] = S.target_delta,
    accountant: Annotated[Accountant, typer.Option("--accountant", help="pld (tight; smaller sigma for an "
                                                   "epsilon, the conservative choice) or rdp (the paper's "
                                                   "Opacus RDP).")] = S.accountant,
    seed: Annotated[int, typer.Option("--seed")] = S.seed,
    threads: cli.ThreadsOpt = None,
    device: cli.DeviceOpt = "auto",
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write attack.json and the SSIM-error CDF plot here."
                                                 )] = None,
    save_images: Annotated[bool, typer.Option("--save-images", help="With --out: also save the best "
                                              "reconstructions next to their originals (patient images!).")] = False,
    overwrite: cli.OverwriteOpt = False,
    as_json: cli.JsonOpt = False,
) -> None:
    """Run the imprint-layer reconstruction attack (batch size 1, malicious server) and score it by SSIM."""
    import numpy as np
    import torch

    from dpaudit.attacks.decoders import decoders_for
    from dpaudit.attacks.scenario import (
        attack_checkpoint,
        checkpoint_noise,
        scenario_mechanism,
        select_images,
        training_data_differences,
    )
    from dpaudit.checkpoint import TrainingFactsError, load_checkpoint, load_model
    from dpaudit.data import load_splits
    from dpaudit.errors import check_int, invalid
    from dpaudit.runtime import describe_device, idle_cores

    if threads is not None:
        check_int("threads", threads, fix="pass --threads 1 or more, or leave it out (the idle cores)")
    # Resolved before the data load (a GPU that is not there is named at once) and recorded: a GPU's results differ
    # from the CPU's in the last bits.
    computed_on = describe_device(device)
    # Checked before the data load (the loaders check them again): a bad value is named at once.
    if image_size is not None:
        check_int("image_size", image_size, minimum=8,
                  fix="pass --image-size 28, 64 or 224, or leave it out (the checkpoint's)")
    check_max_images(max_images)
    if shared["dataset"] == "demo":  # before any work: the demo's 2,000 images split about 70/15/15
        from dpaudit.data import DEMO_DEFAULT_SIZE, check_demo_size

        check_demo_size(max_images)
        most = math.floor(0.7 * (DEMO_DEFAULT_SIZE - 3))
        if max_images is None and n_images > most:
            raise invalid("--n-images", n_images, f"at most {most} for --dataset demo (the training split of its "
                          f"{DEMO_DEFAULT_SIZE} images)", f"pass --n-images {most} or less")
    if save_images and out_dir is None:
        raise invalid("--save-images", True, "used together with --out DIR", "add --out DIR")
    scenario = AttackScenario(
        n_images=n_images, selection=str(selection),
        epsilons=None if epsilons is None else tuple(parse_float_list("--epsilons", epsilons, "1,8,20,1e9")),
        noise_multipliers=None if sigmas is None else tuple(parse_float_list("--sigmas", sigmas, "0,1e-4,1e-3,0.02")),
        n_train=n_train, epochs=epochs, target_delta=delta, accountant=str(accountant),
        decoders=decoders_for(decoder), connection=str(connection), bins=bins, observations=observations,
        max_grad_norm=max_grad_norm, scoring=str(scoring), denoiser=str(denoiser), seed=seed,
        keep_images=8 if save_images else 0)

    dataset, data_dir, window, task = shared["dataset"], shared["data_dir"], shared["window"], shared["task"]
    args, fix_batchnorm = shared["arch_args"], shared["fix_batchnorm"]
    arch_default = model is None and arch is None
    if arch is not None:
        from dpaudit.models import check_arch_args

        args = check_arch_args(arch, args, flag="--arch-args")  # before the data load and the folder's claim
    if model is None:
        from dpaudit.models import parse_arch

        if arch is None:  # the training default of the dataset's task, as --arch defaults everywhere
            from dpaudit.config import TRAIN_DEFAULTS
            from dpaudit.volumes import is_segmentation_dataset

            arch = TRAIN_DEFAULTS["segmentation" if is_segmentation_dataset(shared["dataset"]) else
                                  "classification"]["arch"]
        parse_arch(arch)  # before the data load: a misspelt architecture is named at once
    model_name = str(model) if model else f"random {arch}"
    from dpaudit.data import check_data_options, check_dataset_found

    check_data_options(dataset, data_dir=data_dir, labels=shared["labels"], window=window,
                       slice_axis=shared["slice_axis"])
    check_dataset_found(dataset, data_dir=data_dir)
    try:
        ckpt = (load_checkpoint(model, arch=arch, arch_args=args, fix_batchnorm=fix_batchnorm)
                if model is not None else None)
    except TrainingFactsError as exc:  # its fix names train; attack's own way around the file beside it
        raise exc.with_fix("attack its weights alone: torch.save(torch.load(FILE, weights_only=True)['state_dict'], "
                           "'weights.pt'), then pass --model weights.pt --arch ARCH --arch-args JSON (the "
                           "privacy unit is then counted in the --dataset loaded)") from None
    if image_size is None:
        image_size = ckpt.input_shape[1] if ckpt is not None and ckpt.input_shape else default_image_size(dataset)
    from dpaudit.volumes import is_segmentation_dataset, load_segmentation_splits

    inferred = "segmentation" if is_segmentation_dataset(dataset) else "classification"
    if task is not None and task != inferred:
        raise invalid("task", task, f"{inferred} for --dataset {dataset}",
                      "leave out --task, or pass demo-ct / msd:PATH for segmentation")
    if out_dir is not None:  # before any work: a folder that cannot be written, or holds another attack, fails now
        from dpaudit.cli._common import json_text
        from dpaudit.outputs import claim_folder, write_atomic

        mine = json.loads(json_text({"scenario": scenario, "dataset": dataset, "model": model_name}))
        claim = claim_folder(out_dir, command="attack", record="attack.json", outputs=ATTACK_OUTPUTS,
                             overwrite=overwrite, what="an attack with other options",
                             identity={"scenario": mine["scenario"],
                                       "settings": {"dataset": mine["dataset"], "model": mine["model"]}},
                             same=lambda data: {"scenario": data["scenario"], "dataset": data["settings"]["dataset"],
                                                "model": data["settings"]["model"]} == mine)
        for note in claim.notes:
            err.print(f"note: {note}", highlight=False)
    if inferred == "segmentation":
        # The slices as the model saw them: its CT window (checkpoint; --window overrides), every volume unless
        # --max-images says how many; the attack's per-pixel cross-entropy takes the label maps as they are.
        extra = ckpt.extra if ckpt is not None else {}
        low, high = extra.get("window_low"), extra.get("window_high")
        seg_window = (float(low), float(high)) if low is not None and high is not None else None
        if window is not None:
            from dpaudit.data import parse_window

            seg_window = parse_window(window)
        splits = load_segmentation_splits(dataset, image_size=image_size, seed=seed, max_volumes=max_images,
                                          window=seg_window)
    else:
        # Every image unless --max-images says otherwise, for every model (a random one too), as train loads them:
        # the training split (the images attacked), its k per patient and the loader's notes are the ones train
        # printed. A part of the data is split on its own: its training split may hold fewer images than
        # --n-images even where the data hold many more (whole patients are kept together), and fewer images per
        # patient (a k below the data's, which would understate the patient-level bound).
        splits = load_splits(dataset, data_dir=data_dir, image_size=image_size, seed=seed, max_images=max_images,
                             labels=shared["labels"], window=window, slice_axis=shared["slice_axis"])
    unit_line, unit_record = _privacy_line(ckpt, splits, shared["privacy_unit"], max_images, dataset, seed)
    if len(splits.train) < n_images:
        held = f"{len(splits.train)} {record_noun(splits.unit)}s"
        if dataset in ("demo", "demo-ct"):  # built in: a size its split cannot hold is refused, as for demo up front
            raise invalid("--n-images", n_images, f"at most {len(splits.train)} for --dataset {dataset} (its training "
                          f"split holds {held})", f"pass --n-images {len(splits.train)} or less")
        err.print(f"warning: {_short_split(splits, n_images, max_images)}", highlight=False)
    random_note = None
    if ckpt is None:
        random_note = (f"no --model: attacking a randomly initialised {arch} (--arch {arch}"
                       f"{', the default' if arch_default else ''}); pass --model FILE to attack a trained checkpoint.")
        err.print(f"note: {random_note}", highlight=False)
        # At least two outputs: with one class the cross-entropy is constant (log-softmax of a single logit is 0)
        # and its gradient identically zero. The attack needs no labels: a flat folder is one class, label 0.
        ckpt = load_model(None, arch=arch, num_classes=max(2, splits.num_classes),
                          in_channels=splits.train.images.shape[1], image_size=image_size, seed=seed,
                          arch_args=args, fix_batchnorm=fix_batchnorm)

    if not as_json:
        why = checkpoint_noise(ckpt)[2]
        if scenario.epsilons is None and scenario.noise_multipliers is None:
            err.print(f"no --epsilons or --sigmas given: attacking at {why}")
        mechanism = scenario_mechanism(ckpt, scenario)
        if mechanism is not None:
            err.print(f"attack scenario: {mechanism.describe()} (each row's epsilon is per "
                      f"{record_noun(splits.unit)}, at this delta)",
                      highlight=False)

    from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

    with progress_bar(TextColumn("attack"), BarColumn(), TextColumn("{task.description}"),
                      TimeRemainingColumn()) as bar:
        task = bar.add_task("computing the images' gradients", total=None)

        shown: list = [0, ""]

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)
            # Without a terminal (a log, a pipe) the bar is not drawn: a line at every tenth of the work instead,
            # so a long attack is seen to run, in units the user knows (images, noise levels), and at the end of
            # each stage ("8/8 images", "noise level 3/3"): a tenth can fall one step before it.
            tenth = 10 * done // max(total, 1)
            step = re.search(r"(\d+)/(\d+)", what)
            stage_end = done >= total or (step is not None and step[1] == step[2])
            if not err.is_terminal and not as_json and (tenth > shown[0] or stage_end) and what != shown[1]:
                shown[0], shown[1] = tenth, what
                err.print(f"attack: {what}", highlight=False)

        torch.set_num_threads(idle_cores() if threads is None else threads)
        result = attack_checkpoint(ckpt, splits, scenario, progress=progress, device=device)
    for note in result.notes:
        err.print(f"[yellow]warning:[/] {escape(note)}", markup=True)
    if random_note is not None:  # the result says what was attacked, as attack.json's settings.model does
        result = dataclasses.replace(result, notes=(*result.notes, random_note))
    other_data = training_data_differences(ckpt, splits.name, result.image_shape)
    err.print(unit_line + f"; the attack itself reconstructs single {record_noun(splits.unit)}s"
              + ("; k and epsilon are the model's training data's, not the attacked images'" if other_data else ""),
              highlight=False)
    cli.print_data_notes(result.data_notes)

    if out_dir is not None:
        from dpaudit.attacks.plots import plot_ssim_error_cdf, save_best_reconstructions
        from dpaudit.attacks.scoring import keep_mask
        from dpaudit.cli._common import json_text

        # The result as --json prints it, with what was attacked and the strongest decoder per noise level.
        record = {"result": result, "scenario": scenario, "headline": result.headline(),
                  "settings": {"dataset": dataset, "model": model_name, "device": computed_on,
                               **unit_record},
                  "labels": result.labels}
        # Written as a whole or not at all: a failed write puts the folder's previous attack back.
        with claim.writing():
            write_atomic(out_dir / "attack.json", json_text(record))
            plot_ssim_error_cdf(result, out_dir / "ssim_error_cdf.png")
            if save_images:
                gt = select_images(splits.train, scenario)[0].permute(0, 2, 3, 1).numpy()
                save_best_reconstructions(result, gt[keep_mask(gt)], out_dir / "best_reconstructions.png")
        if not as_json:
            err.print(f"wrote {out_dir / 'attack.json'} and {out_dir / 'ssim_error_cdf.png'}"
                      + (f" and {out_dir / 'best_reconstructions.png'}" if save_images else ""))

    if as_json:
        from dpaudit.codec import encode

        emit_json({**encode(result), "model": model_name, "device": computed_on, **unit_record})
        return
    _render(result, np)


def _split_counts(splits) -> str:
    """The training split in words, e.g. ``35 images of 9 patients`` (``35 images`` without patient ids)."""
    noun = record_noun(splits.unit)
    n = len(splits.train)
    counted = f"{n} {noun}{'' if n == 1 else 's'}"
    if splits.unit in ("image", "volume"):
        return counted
    units = splits.images_per_unit().n_units
    return f"{counted} of {units} {splits.unit}{'' if units == 1 else 's'}"


def _short_split(splits, n_images: int, max_images: int | None) -> str:
    """The warning when the training split holds fewer records than ``--n-images``: with the true counts, and
    whether that is all the data or the part ``--max-images`` loaded (then with the fix)."""
    if max_images is None:
        return (f"--n-images {n_images} asked, but the whole data's training split holds {_split_counts(splits)} "
                f"(as train splits it); attacking all {len(splits.train)}.")
    loaded = len(splits.train) + len(splits.val) + len(splits.test)
    more = max(2 * max_images, math.ceil(n_images / 0.7) + 3)
    return (f"--n-images {n_images} asked, but the training split of the {loaded} {record_noun(splits.unit)}s "
            f"that --max-images {max_images} loaded holds {_split_counts(splits)}; attacking all "
            f"{len(splits.train)}. Fix: leave out --max-images (all the data), or pass --max-images {more} or more.")


def _privacy_line(ckpt, splits, requested: str | None, max_images: int | None = None,
                  dataset: str | None = None, seed: int | None = None) -> tuple[str, dict]:
    """The privacy unit the attack states, and k as the patient-level bounds use it (``records_per_patient``,
    `dpaudit bounds --model`): the most images one patient has in the model's *training* split.

    A checkpoint trained by dpaudit records it (and the images-per-patient count of its training split, so that
    ``--privacy-unit patient`` also works on a checkpoint trained at the image level). Without that record the
    model's training data are unknown and k is counted in the training split loaded here; for a randomly
    initialised model that split is the scenario's training data, for a plain state dict it is the model's only
    if it was trained on the same data, so the line says so. Without ``max_images`` that split is the whole data's,
    as train splits it (train's k); with it, a part of the data split on its own may hold fewer images per patient
    than the whole data's training split, and the line and ``records_per_patient_from`` say so."""
    from dpaudit.data import privacy_unit
    from dpaudit.errors import CheckpointError, DataError, invalid

    recorded = ckpt.recorded_unit if ckpt is not None else None  # checked when the checkpoint was loaded
    same_split = (dataset is not None and ckpt is not None and ckpt.dataset == dataset
                  and ckpt.extra.get("seed") == seed and ckpt.n_train == len(splits.train))
    if recorded is not None and splits.unit != "image" and same_split:
        # The checkpoint's k is the most images of one patient in its training split. Loaded from the dataset it
        # records, with its seed and to its size, the training split here is that split: if it holds more images
        # of one patient, the file and the data disagree, and the smaller recorded k would be no per-patient bound.
        # (Any other split, a larger or another part of the data included, may hold more per patient than the
        # model's training split did; the result's notes say that k is the training data's.)
        loaded = splits.images_per_unit().max
        ks = [("extra['records_per_patient']", recorded.records_per_patient)] \
            if recorded.privacy_unit == "patient" else []
        ks += [("extra['images_per_unit_max']", recorded.data_k)] if recorded.data_k is not None else []
        for key, k in ks:
            if loaded > k:
                rec = record_noun(splits.unit)
                raise CheckpointError(
                    f"--model: checkpoint {str(ckpt.path)!r} does not match the data loaded: its {key} is {k}, but "
                    f"one patient has {loaded} {rec}s in the training split of --dataset {splits.name} loaded "
                    f"here (the checkpoint's own: its dataset, seed and n_train {ckpt.n_train}), and a k below that is "
                    f"no per-patient bound. Fix: write the checkpoint again with `dpaudit train --out DIR` "
                    f"(DIR/model.pt), or attack its weights alone: torch.save(torch.load(FILE, weights_only=True)"
                    f"['state_dict'], 'weights.pt'), then pass --model weights.pt --arch ARCH --arch-args JSON (the "
                    f"privacy unit is then counted in the --dataset loaded).")
    if recorded is not None:
        unit = requested or recorded.privacy_unit
        if unit == "image":
            why = "--privacy-unit image" if requested == "image" else "recorded in the checkpoint"
            return f"privacy unit: image ({why}; k = 1)", {"privacy_unit": "image", "records_per_patient": 1,
                                                          "records_per_patient_from": why}
        if recorded.privacy_unit == "patient":
            k = recorded.records_per_patient
        elif recorded.data_k is not None:
            k = recorded.data_k
        else:
            raise invalid("privacy_unit", "patient", "'image' for this checkpoint (its training images carried "
                          "no patient ids)", "pass --privacy-unit image, or leave it out", cls=DataError)
        volume = recorded.data_unit == "volume"
        per = ("slice" if volume else "image") + ("" if k == 1 else "s") + (" per volume" if volume else " per patient")
        line = (f"privacy unit: patient (k = {k} {per} at most in the model's training split, recorded in the "
                "checkpoint; the k of its patient-level bounds, as `dpaudit bounds --model`)")
        return line, {"privacy_unit": "patient", "records_per_patient": k,
                      "records_per_patient_from": "the checkpoint's training split"}
    unit = privacy_unit(splits, requested)
    n = len(splits.train)
    what = f"{n} {record_noun(unit.data_unit)}{'' if n == 1 else 's'}"
    where = (f"the whole data's training split, as train splits it ({what})" if max_images is None else
             f"the training split of the --max-images {max_images} loaded here ({what}; the whole data's training "
             "split may hold more per patient: leave out --max-images for its k)")
    if unit.unit == "image":
        line = unit.describe()
    else:
        line = unit.describe().replace("in the training split", f"in {where}")
        if ckpt is not None and ckpt.source != "random":
            line += ("; the checkpoint does not record its training data, so this is its k only if it was trained "
                     "on the same data (a subset holds fewer images per patient): for its patient-level bound, "
                     "pass the training split's k to `dpaudit bounds --records-per-patient K`")
    return line, {"privacy_unit": unit.unit, "records_per_patient": unit.records_per_patient,
                  "records_per_patient_from": where}


def _render(result, np) -> None:
    from rich.table import Table

    table = Table(title=f"Imprint-layer reconstruction attack (empirical success: SSIM > {result.success_ssim:g})",
                  title_justify="left")
    for col in ("sigma", "eps", "decoder", "n", "success", "95% CI", "SSIM", "rho", "eta"):
        table.add_column(col, justify="left" if col == "decoder" else "right")
    heads = {id(r) for r in result.headline()}
    for r in result.rows:
        table.add_row(f"{r.noise_multiplier:g}", "-" if r.epsilon is None else upper(r.epsilon),
                      r.decoder + (" *" if id(r) in heads else ""), str(r.n_images), percent(r.success_rate),
                      "[{}, {}]".format(*percent_interval(r.ci_low, r.ci_high)), f"{r.mean_ssim:.3f}", f"{r.mean_rho:.3f}",
                      f"{float(np.median(r.eta)):.3g}")
    print_table(table, out)
    c, h, w = result.image_shape
    out.print(f"* strongest decoder at that noise level (the number to report). Input {c}x{h}x{w}, "
              f"{result.connection} connection, K = {result.bins}, C = {result.max_grad_norm:g}, "
              f"observations = {result.observations}, {result.scoring} matching; {result.n_excluded} excluded "
              "(<= 10% non-zero pixels).")
    out.print(f"SSIM (mean): {result.ssim_variant}. 95% CI: exact Clopper-Pearson. rho (mean): the block's share "
              "of the gradient norm; eta (median): per-value noise std after pooling (normalised units).")
    out.print("Success fractions are empirical lower bounds on reconstruction risk, not guarantees.")
