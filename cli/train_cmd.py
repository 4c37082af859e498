"""`dpaudit train`: DP-SGD (or non-private) training with utility and achieved epsilon."""

from __future__ import annotations

from typing import Annotated

import typer

from dpaudit.cli._common import (
    ArchArgsOpt,
    ArchOpt,
    BackgroundShareOpt,
    DataDirOpt,
    DatasetOpt,
    FixBatchnormOpt,
    ImageSizeOpt,
    JsonOpt,
    LabelsOpt,
    MaxImagesOpt,
    PrivacyUnitOpt,
    SliceAxisOpt,
    TaskOpt,
    ThreadsOpt,
    TrainableOpt,
    WindowOpt,
    emit_json,
    err,
    handle_errors,
    opt_str,
    out,
    parse_arch_args,
)

app = typer.Typer()


@app.command("train", no_args_is_help=False)
@handle_errors
def train_command(
    dataset: DatasetOpt = "demo",
    data_dir: DataDirOpt = None,
    labels: LabelsOpt = None,
    window: WindowOpt = None,
    slice_axis: SliceAxisOpt = "axial",
    privacy_unit: PrivacyUnitOpt = None,
    image_size: ImageSizeOpt = 64,  # TrainConfig's defaults (a test keeps them equal)
    max_images: MaxImagesOpt = None,
    arch: ArchOpt = "resnet9",
    arch_args: ArchArgsOpt = None,
    fix_batchnorm: FixBatchnormOpt = False,
    init: Annotated[str | None, typer.Option("--init", help="Start from these weights: a dpaudit checkpoint, a "
                                             "state dict (any wrapper prefix) or .safetensors; never downloaded. "
                                             "The DP guarantee covers the fine-tuning data only.")] = None,
    trainable: TrainableOpt = "all",
    width: Annotated[int | None, typer.Option(help="resnet9/smallcnn/unet channel width (paper: 64 for resnet9, 16 for the MSD Liver U-Net).")] = None,
    scale_norm: Annotated[bool, typer.Option(help="resnet9 with ScaleNorm (Klause et al.), as the paper.")] = False,
    epsilon: Annotated[float | None, typer.Option(help="Target epsilon; sigma is calibrated (tight PLD) so the "
                                                       "achieved epsilon is at most this.")] = None,
    sigma: Annotated[float | None, typer.Option("--sigma", help="Noise multiplier instead of a target.")] = None,
    non_private: Annotated[bool, typer.Option(help="Train without clipping and noise (baseline).")] = False,
    delta: Annotated[float | None, typer.Option(help="target_delta; default min(8e-7 (paper), 1/(10 N)).")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Logical (expected) batch size; q = batch / N.")] = 64,
    physical_batch_size: Annotated[int | None, typer.Option(help="Largest batch through the network at once "
                                                                 "(memory only).")] = None,
    max_grad_norm: Annotated[float, typer.Option(help="Per-sample clip norm C.")] = 1.0,
    lr: Annotated[float, typer.Option(help="NAdam learning rate (paper: 2e-3).")] = 2e-3,
    augment_multiplicity: Annotated[int, typer.Option(help="0: none; K: K flipped views per image, gradients "
                                                           "averaged before clipping.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the first run.")] = 0,
    seeds: Annotated[int, typer.Option(help="Number of runs (seed, seed+1, ...); mean and std reported.")] = 1,
    threads: ThreadsOpt = None,
    device: Annotated[str, typer.Option(help="auto (a CUDA GPU when visible, else the CPU), cpu, cuda or cuda:N."
                                        )] = "auto",
    out_dir: Annotated[str | None, typer.Option("--out", help="Write model.pt, metrics.json and "
                                                              "training_curve.png here.")] = None,
    task: TaskOpt = None,
    background_share: BackgroundShareOpt = 1.0,
    json_output: JsonOpt = False,
) -> None:
    """Train a model with DP-SGD (Opacus, Poisson sampling) or without DP, and report utility and epsilon."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from dpaudit.audit.train import TrainConfig, train

    arch_args_d: dict[str, object] = parse_arch_args(arch_args)
    if width is not None:
        arch_args_d["width"] = width
    if scale_norm:
        arch_args_d["scale_norm"] = True
    config = TrainConfig(
        dataset=dataset, data_dir=data_dir, image_size=image_size, max_images=max_images, labels=labels,
        window=window, slice_axis=str(slice_axis), privacy_unit=opt_str(privacy_unit), arch=arch,
        arch_args=arch_args_d, fix_batchnorm=fix_batchnorm, init=init, trainable=trainable, epsilon=epsilon,
        noise_multiplier=sigma, non_private=non_private, delta=delta,
        epochs=epochs, batch_size=batch_size, physical_batch_size=physical_batch_size, max_grad_norm=max_grad_norm,
        lr=lr, augment_multiplicity=augment_multiplicity, seed=seed, seeds=seeds, out=out_dir, threads=threads,
        device=device, task=task, background_share=background_share)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("loading data, calibrating noise", total=None)

        def progress(done: int, total: int, text: str) -> None:
            bar.update(task, completed=done, total=total, description=text)

        result = train(config, progress=progress)
    for note in result.data_notes:
        err.print(f"note: {note}", highlight=False)
    for note in result.notes:
        err.print(f"[yellow]warning:[/] {note}")
    if result.replaced_layers:
        shown = "; ".join(result.replaced_layers[:4])
        more = len(result.replaced_layers) - 4
        err.print(f"--fix-batchnorm replaced {len(result.replaced_layers)} layer(s) by GroupNorm: {shown}"
                  + (f"; and {more} more (all listed under model.replaced_layers in --json and metrics.json)"
                     if more > 0 else ""))
    for line in result.init_report:
        err.print(f"--init: {line}")
    if json_output:
        emit_json(result.to_json())
        return
    m = result.metrics
    if result.privacy is not None:
        out.print(result.privacy.describe())
    if result.epsilon_patient is not None:
        out.print(f"privacy per patient: epsilon {result.epsilon_patient:.4g} (k = "
                  f"{result.privacy.records_per_patient} images of one patient moving together; tight PLD, sound "
                  "upper bound); the per-image epsilon below is what training calibrated")
    if result.dp is not None:
        target = f"target {result.epsilon_target:g}, " if result.epsilon_target is not None else ""
        out.print(f"privacy: epsilon {result.epsilon_achieved:.4g} ({target}tight PLD, sound upper bound); "
                  f"RDP {result.epsilon_rdp:.4g} (sound upper bound, looser) at delta {result.target_delta:.3g} "
                  f"[{result.delta_rule}]")
        out.print(f"mechanism: noise_multiplier {result.noise_multiplier:.5g}, sampling_probability "
                  f"{result.sampling_probability:.5g}, steps {result.steps}, max_grad_norm {result.max_grad_norm:g}, "
                  f"n_train {result.n_train}")
    else:
        out.print(f"privacy: none (non-private baseline), n_train {result.n_train}, steps {result.steps}")
    if config.segmentation:
        from dpaudit.cli.segmentation_view import print_segmentation

        print_segmentation(out, result)
        return
    out.print(f"test utility (empirical, n = {m.n}): MCC {m.mcc:.4f}, balanced accuracy {m.balanced_accuracy:.4f}, "
              f"AUROC {m.auroc:.4f}, accuracy {m.accuracy:.4f}")
    if len(result.per_seed) > 1:
        s = result.seed_summary
        out.print(f"over {len(result.per_seed)} seeds (mean +- std, empirical): MCC {s['mcc'][0]:.4f} +- "
                  f"{s['mcc'][1]:.4f}, balanced accuracy {s['balanced_accuracy'][0]:.4f} +- "
                  f"{s['balanced_accuracy'][1]:.4f}, AUROC {s['auroc'][0]:.4f} +- {s['auroc'][1]:.4f}")
    for g in m.subgroups:
        out.print(f"  subgroup {g.group} = {g.value} (n = {g.n}): MCC {g.mcc:.4f}, accuracy {g.accuracy:.4f}")
    out.print(f"model: {config.arch}, init {config.init or 'scratch'}, trainable {config.trainable} "
              f"({result.trainable_parameters} parameters trained, {result.frozen_parameters} frozen)")
    out.print(f"wall time {result.wall_seconds:.1f} s, {result.train_samples_per_second:.0f} training images/s")
    if result.checkpoint:
        out.print(f"wrote {result.checkpoint}, {result.metrics_path}, {result.curve_path}")
