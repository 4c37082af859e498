"""`dpaudit attack`: the imprint-layer reconstruction attack on DP-SGD gradients, scored by SSIM."""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from dpaudit.cli._common import (
    ArchArgsOpt,
    DataDirOpt,
    DatasetOpt,
    FixBatchnormOpt,
    JsonOpt,
    LabelsOpt,
    PrivacyUnitOpt,
    SliceAxisOpt,
    TaskOpt,
    ThreadsOpt,
    WindowOpt,
    emit_json,
    err,
    handle_errors,
    opt_str,
    out,
    parse_arch_args,
    parse_float_list,
)

app = typer.Typer()


class SelectionChoice(StrEnum):
    first = "first"
    random = "random"


class DecoderChoice(StrEnum):
    strong = "strong"
    paper = "paper"
    paper_all = "paper-all"
    all = "all"


class ConnectionChoice(StrEnum):
    linear = "linear"
    addition = "addition"


class ScoringChoice(StrEnum):
    nearest = "nearest"
    paired = "paired"


class AccountantChoice(StrEnum):
    pld = "pld"
    rdp = "rdp"


class DenoiserChoice(StrEnum):
    tv = "tv"
    none = "none"


def _decoders(choice: DecoderChoice) -> tuple[str, ...]:
    if choice is DecoderChoice.all:
        return ("strong", "paper", "paper-all")
    return (choice.value,)


@app.command("attack")
@handle_errors
def attack(
    model: Annotated[Path | None, typer.Option("--model", help="dpaudit checkpoint (or a plain state dict with "
                                               "--arch).")] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="Architecture: resnet9, smallcnn, monai:NAME, "
                                             "file.py:factory or module:factory; for a plain state dict, a "
                                             "checkpoint of your own code, or a random model without --model.")
                    ] = None,
    arch_args: ArchArgsOpt = None,
    fix_batchnorm: FixBatchnormOpt = False,
    dataset: DatasetOpt = "demo",
    data_dir: DataDirOpt = None,
    labels: LabelsOpt = None,
    window: WindowOpt = None,
    slice_axis: SliceAxisOpt = "axial",
    privacy_unit: PrivacyUnitOpt = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="Resize images to this size (default: the "
                                                   "checkpoint's, else 64).")] = None,
    n_images: Annotated[int, typer.Option("--n-images", help="Number of training images to attack.")] = 64,
    selection: Annotated[SelectionChoice, typer.Option("--selection", help="first: the first --n-images training "
                                                       "images; random: a seeded random subset (what the profile "
                                                       "attacks).")] = SelectionChoice.first,
    max_images: Annotated[int | None, typer.Option("--max-images", help="Load at most this many images before "
                                                   "splitting (default: enough for --n-images; a profile's "
                                                   "--max-images to attack its split).")] = None,
    epsilons: Annotated[str | None, typer.Option("--epsilons", help="Target epsilons, e.g. 1,8,20,1e9 (mapped to "
                                                 "sigmas in the attack scenario q = 1/N, T = epochs * N). Default: "
                                                 "the checkpoint's epsilon; --sigmas 0 for a non-private one.")
                                      ] = None,
    sigmas: Annotated[str | None, typer.Option("--sigmas", help="Noise multipliers, e.g. 0,1e-4,1e-3,0.02."
                                               )] = None,
    decoder: Annotated[DecoderChoice, typer.Option("--decoder", help="strong (default), paper (the seed paper's "
                                                   "breaching decoder), paper-all, or all.")] = DecoderChoice.strong,
    connection: Annotated[ConnectionChoice, typer.Option("--connection")] = ConnectionChoice.linear,
    bins: Annotated[int, typer.Option("--bins", help="Rows K of the imprint block (10 in the paper).")] = 10,
    observations: Annotated[int, typer.Option("--observations", help="Times the same image is observed "
                                              "(averages to sigma / sqrt(T)).")] = 1,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", help="Clip norm C (default: the "
                                                 "checkpoint's, else 1.0).")] = math.nan,
    scoring: Annotated[ScoringChoice, typer.Option("--scoring", help="nearest (the paper's matching) or paired."
                                                   )] = ScoringChoice.nearest,
    denoiser: Annotated[DenoiserChoice, typer.Option("--denoiser", help="Strong decoder's denoiser.")] =
    DenoiserChoice.tv,
    n_train: Annotated[int | None, typer.Option("--n-train", help="N for --epsilons (default: the checkpoint's)."
                                                )] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs for --epsilons (default: the "
                                               "checkpoint's).")] = None,
    delta: Annotated[float | None, typer.Option("--delta", help="delta for --epsilons (default: the "
                                                "checkpoint's).")] = None,
    accountant: Annotated[AccountantChoice, typer.Option("--accountant", help="pld (tight; smaller sigma for an "
                                                         "epsilon, the conservative choice) or rdp (the paper's "
                                                         "Opacus RDP).")] = AccountantChoice.pld,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: ThreadsOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write attack.json and the SSIM-error CDF plot here."
                                                 )] = None,
    save_images: Annotated[bool, typer.Option("--save-images", help="With --out: also save the best "
                                              "reconstructions next to their originals (patient images!).")] = False,
    as_json: JsonOpt = False,
    task: TaskOpt = None,
) -> None:
    """Run the imprint-layer reconstruction attack (batch size 1, malicious server) and score it by SSIM."""
    import numpy as np
    import torch

    from dpaudit.attacks.scenario import AttackScenario, attack_checkpoint, checkpoint_noise, select_images
    from dpaudit.checkpoint import load_checkpoint, load_model
    from dpaudit.data import load_splits, loading_notes
    from dpaudit.errors import check_int, invalid
    from dpaudit.runtime import idle_cores

    if threads is not None:
        check_int("threads", threads, fix="pass --threads 1 or more, or leave it out (the idle cores)")
    if save_images and out_dir is None:
        raise invalid("--save-images", True, "used together with --out DIR", "add --out DIR")
    scenario = AttackScenario(
        n_images=n_images, selection=selection.value,
        epsilons=None if epsilons is None else tuple(parse_float_list("--epsilons", epsilons)),
        noise_multipliers=None if sigmas is None else tuple(parse_float_list("--sigmas", sigmas)),
        n_train=n_train, epochs=epochs, target_delta=delta, accountant=accountant.value, decoders=_decoders(decoder),
        connection=connection.value, bins=bins, observations=observations,
        max_grad_norm=None if math.isnan(max_grad_norm) else max_grad_norm, scoring=scoring.value,
        denoiser=denoiser.value, seed=seed, keep_images=8 if save_images else 0)

    args = parse_arch_args(arch_args)
    ckpt = (load_checkpoint(model, arch=arch, arch_args=args, fix_batchnorm=fix_batchnorm)
            if model is not None else None)
    if image_size is None:
        image_size = ckpt.input_shape[1] if ckpt is not None and ckpt.input_shape else 64
    from dpaudit.volumes import is_segmentation_dataset, load_segmentation_splits

    inferred = "segmentation" if is_segmentation_dataset(dataset) else "classification"
    if task is not None and task != inferred:
        raise invalid("task", task, f"{inferred} for --dataset {dataset}",
                      "leave out --task, or pass demo-ct / msd:PATH for segmentation")
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
        if max_images is None:
            # Enough images for the train split to hold n_images (the loaders split about 70/15/15).
            max_images = max(3, math.ceil(n_images / 0.7) + 3)
        splits = load_splits(dataset, data_dir=data_dir, image_size=image_size, seed=seed, max_images=max_images,
                             labels=labels, window=window, slice_axis=str(slice_axis))
    unit_line, unit_record = _privacy_line(ckpt, splits, opt_str(privacy_unit))
    if len(splits.train) < n_images:
        err.print(f"warning: the training split holds {len(splits.train)} images; attacking all of them.")
    if ckpt is None:
        # At least two outputs: with one class the cross-entropy is constant (log-softmax of a single logit is 0)
        # and its gradient identically zero. The attack needs no labels: a flat folder is one class, label 0.
        ckpt = load_model(None, arch=arch, num_classes=max(2, splits.num_classes),
                          in_channels=splits.train.images.shape[1], image_size=image_size, seed=seed,
                          arch_args=args, fix_batchnorm=fix_batchnorm)

    if not as_json:
        default_eps, _, why = checkpoint_noise(ckpt)
        if scenario.epsilons is None and scenario.noise_multipliers is None:
            err.print(f"no --epsilons or --sigmas given: attacking at {why}")
        n_tr, ep, dl = n_train or ckpt.n_train, epochs or ckpt.epochs, delta or ckpt.target_delta
        by_epsilon = scenario.epsilons is not None or (scenario.noise_multipliers is None and default_eps)
        if by_epsilon and None not in (n_tr, ep, dl):
            err.print(f"attack scenario: batch size 1, q = 1/{n_tr}, T = {ep} * {n_tr} steps, delta = {dl:g}, "
                      f"{accountant.value.upper()} accountant")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("attack"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task("attack", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        torch.set_num_threads(idle_cores() if threads is None else threads)
        result = attack_checkpoint(ckpt, splits, scenario, progress=progress)
    for note in result.notes:
        err.print(f"[yellow]warning:[/] {note}")
    err.print(unit_line + "; the attack itself reconstructs single images", highlight=False)
    for note in loading_notes(splits):
        err.print(f"note: {note}", highlight=False)

    if out_dir is not None:
        from dpaudit.attacks.plots import plot_ssim_error_cdf, save_best_reconstructions
        from dpaudit.attacks.results import SUCCESS_SSIM
        from dpaudit.attacks.scoring import keep_mask

        out_dir.mkdir(parents=True, exist_ok=True)
        record = result.to_json()
        record["settings"] = {"dataset": dataset, "n_images_requested": n_images, "connection": result.connection,
                              "bins": result.bins, "max_grad_norm": result.max_grad_norm,
                              "observations": result.observations, "scoring": result.scoring, "seed": seed,
                              "denoiser": denoiser.value, "model": str(model) if model else f"random {ckpt.arch}",
                              **unit_record,
                              "success": f"empirical: fraction with SSIM > {SUCCESS_SSIM:g} (a lower bound on risk)"}
        record["headline"] = [r.to_json() for r in result.headline()]
        record["per_image"] = {"rho": result.rho.tolist(),
                               "ssim": [[float(v) for v in r.ssim] for r in result.rows],
                               "eta": [[float(v) for v in r.eta] for r in result.rows]}
        from dpaudit.cli._common import json_text

        (out_dir / "attack.json").write_text(json_text(record))
        plot_ssim_error_cdf(result, out_dir / "ssim_error_cdf.png")
        if save_images:
            gt = select_images(splits.train, scenario)[0].permute(0, 2, 3, 1).numpy()
            save_best_reconstructions(result, gt[keep_mask(gt)], out_dir / "best_reconstructions.png")
        if not as_json:
            err.print(f"wrote {out_dir / 'attack.json'} and {out_dir / 'ssim_error_cdf.png'}"
                      + (f" and {out_dir / 'best_reconstructions.png'}" if save_images else ""))

    if as_json:
        emit_json(result.to_json())
        return
    _render(result, np)


def _privacy_line(ckpt, splits, requested: str | None) -> tuple[str, dict]:
    """The privacy unit to print: the checkpoint's recorded one (its whole training split), else the loaded
    data's (k counted in the images loaded here)."""
    from dpaudit.data import privacy_unit

    extra = ckpt.extra if ckpt is not None else {}
    if requested is None and extra.get("privacy_unit") in ("patient", "image"):
        k = int(extra.get("records_per_patient") or 1)
        line = (f"privacy unit: patient (k = {k} images per patient, recorded in the checkpoint)"
                if extra["privacy_unit"] == "patient" else "privacy unit: image (recorded in the checkpoint)")
        return line, {"privacy_unit": extra["privacy_unit"], "records_per_patient": k}
    unit = privacy_unit(splits, requested)
    line = unit.describe().replace("in the training split", "among the images loaded")
    return line, {"privacy_unit": unit.unit, "records_per_patient": unit.records_per_patient}


def _render(result, np) -> None:
    from rich.table import Table

    from dpaudit.attacks.results import SUCCESS_SSIM

    table = Table(title=f"Imprint-layer reconstruction attack (empirical success: SSIM > {SUCCESS_SSIM:g})",
                  title_justify="left")
    for col in ("sigma", "eps", "decoder", "n", "success", "95% CI", "SSIM", "rho", "eta"):
        table.add_column(col, justify="left" if col == "decoder" else "right")
    heads = {id(r) for r in result.headline()}
    for r in result.rows:
        table.add_row(f"{r.noise_multiplier:g}", "-" if r.epsilon is None else f"{r.epsilon:.3g}",
                      r.decoder + (" *" if id(r) in heads else ""), str(r.n_images), f"{100 * r.success_rate:.1f}%",
                      f"[{100 * r.ci_low:.1f}%, {100 * r.ci_high:.1f}%]", f"{r.mean_ssim:.3f}", f"{r.mean_rho:.3f}",
                      f"{float(np.median(r.eta)):.3g}")
    out.print(table)
    c, h, w = result.image_shape
    out.print(f"* strongest decoder at that noise level (the number to report). Images {c}x{h}x{w}, "
              f"{result.connection} connection, K = {result.bins}, C = {result.max_grad_norm:g}, "
              f"observations = {result.observations}, {result.scoring} matching; {result.n_excluded} excluded "
              "(<= 10% non-zero pixels).")
    out.print(f"SSIM (mean): {result.ssim_variant}. 95% CI: exact Clopper-Pearson. rho (mean): the block's share "
              "of the gradient norm; eta (median): per-value noise std after pooling (normalised units).")
    out.print("Success fractions are empirical lower bounds on reconstruction risk, not guarantees.")
