"""`dpaudit train`: DP-SGD (or non-private) training with utility and achieved epsilon."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import typer
from rich.markup import escape

from dpaudit.audit.configs import TrainConfig
from dpaudit.cli import _common as cli
from dpaudit.cli._common import emit_json, err, handle_errors, out, progress_bar
from dpaudit.errors import check_int
from dpaudit.identifiers import COMPLEMENT_REASON, MIN_SUBGROUP_UNITS
from dpaudit.numfmt import LABEL_RDP, metric, upper

app = typer.Typer()
#: The defaults of every option: TrainConfig's (the Python API's).
D = TrainConfig


@app.command("train", no_args_is_help=False)
@handle_errors
@cli.shared_options(TrainConfig, *cli.DATA, *cli.MEDICAL, "privacy_unit", *cli.MODEL, *cli.SEGMENTATION,
                    *cli.MECHANISM, *cli.TRAINING)
def train_command(
    shared: dict[str, Any],
    init: Annotated[str | None, typer.Option("--init", help="Start from these weights: a dpaudit checkpoint, a "
                                             "state dict (any wrapper prefix) or .safetensors; never downloaded. "
                                             "The DP guarantee covers the fine-tuning data only.")] = D.init,
    trainable: cli.TrainableOpt = D.trainable,
    width: cli.WidthOpt = None,
    scale_norm: Annotated[bool, typer.Option(help="resnet9 with ScaleNorm (Klause et al.), as the paper.")] = False,
    non_private: Annotated[bool, typer.Option(help="Train without clipping and noise (baseline).")] = D.non_private,
    seed: Annotated[int, typer.Option(help="Seed of the first run.")] = D.seed,
    seeds: Annotated[int, typer.Option(help="Number of runs (seed, seed+1, ...); mean and std reported.")] = D.seeds,
    threads: cli.ThreadsOpt = D.threads,
    device: cli.DeviceOpt = D.device,
    out_dir: Annotated[str | None, typer.Option("--out", help="Write model.pt, metrics.json and "
                                                              "training_curve.png here.")] = D.out,
    overwrite: cli.OverwriteOpt = False,
    json_output: cli.JsonOpt = False,
) -> None:
    """Train a model with DP-SGD (Opacus, Poisson sampling) or without DP, and report utility and epsilon."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from dpaudit.audit.train import train

    if width is not None:  # merged into the architecture's arguments below, where a wrong one would name those
        check_int("width", width, fix="pass --width 1 or more, or leave it out")
    arch_args = {**shared.pop("arch_args"), **({} if width is None else {"width": width}),
                 **({"scale_norm": True} if scale_norm else {})}
    config = TrainConfig(**shared, arch_args=arch_args, init=init, trainable=trainable, non_private=non_private,
                         seed=seed, seeds=seeds, out=out_dir, threads=threads, device=device)
    cli.print_task_defaults(config)
    from dpaudit.data import check_data_options, check_dataset_found
    from dpaudit.runtime import resolve_device

    # Everything cheap before the --out folder is claimed: a refused run leaves it as it was.
    resolve_device(device)
    check_data_options(config.dataset, data_dir=config.data_dir, labels=config.labels, window=config.window,
                       slice_axis=config.slice_axis)
    check_dataset_found(config.dataset, data_dir=config.data_dir)
    claim = None
    if out_dir is not None:
        from dpaudit.audit.train import OUTPUT_FILES, same_run, train_identity
        from dpaudit.outputs import claim_folder

        claim = claim_folder(out_dir, command="train", record="metrics.json", identity=train_identity(config),
                             outputs=OUTPUT_FILES, same=lambda data: same_run(config, data), overwrite=overwrite,
                             what="a model trained with other options")
        for note in claim.notes:
            err.print(f"note: {note}", highlight=False)
    with claim.writing() if claim is not None else contextlib.nullcontext(), progress_bar(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                      TimeElapsedColumn()) as bar:
        task = bar.add_task("loading data, calibrating noise", total=None)

        def progress(done: int, total: int, text: str) -> None:
            bar.update(task, completed=done, total=total, description=text)

        result = train(config, progress=progress)
    cli.print_data_notes(result.data_notes)
    for note in result.notes:
        err.print(f"[yellow]warning:[/] {escape(note)}", markup=True)
    if result.replaced_layers:
        shown = "; ".join(result.replaced_layers[:4])
        more = len(result.replaced_layers) - 4
        err.print(f"--fix-batchnorm replaced {len(result.replaced_layers)} layer(s) by GroupNorm: {shown}"
                  + (f"; and {more} more (all listed under model.replaced_layers in --json and metrics.json)"
                     if more > 0 else ""))
    for line in result.init_report:
        err.print(f"--init: {line}")
    if json_output:
        emit_json(result)
        return
    m = result.metrics
    for line in result.privacy_statement():
        out.print(line)
    if result.dp is not None:
        target = f"target {result.epsilon_target:g}, " if result.epsilon_target is not None else ""
        per = "per slice" if config.segmentation else "per image"
        out.print(f"privacy: epsilon {upper(result.epsilon_achieved)} {per} ({target}tight PLD, sound upper bound); "
                  f"RDP {upper(result.epsilon_rdp)} {per} ({LABEL_RDP}) at delta "
                  f"{result.target_delta:.3g} "
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
    out.print(f"test utility (empirical, n = {m.n}): MCC {metric(m.mcc)}, balanced accuracy "
              f"{metric(m.balanced_accuracy)}, AUROC {metric(m.auroc)}, accuracy {metric(m.accuracy)}")
    if len(result.per_seed) > 1:
        s = result.seed_summary
        out.print(f"over {len(result.per_seed)} seeds (mean +- std, empirical): MCC {s['mcc'][0]:.4f} +- "
                  f"{s['mcc'][1]:.4f}, balanced accuracy {s['balanced_accuracy'][0]:.4f} +- "
                  f"{s['balanced_accuracy'][1]:.4f}, AUROC {s['auroc'][0]:.4f} +- {s['auroc'][1]:.4f}")
    for g in m.subgroups:
        if g.withheld:  # a small cell: no count, no metric (they would be those few patients' results)
            n = "n withheld" if g.reason == COMPLEMENT_REASON else f"n < {MIN_SUBGROUP_UNITS}"
            out.print(f"  subgroup {g.group} = {g.value} ({n}): withheld, {g.reason}")
        else:
            out.print(f"  subgroup {g.group} = {g.value} (n = {g.n}): MCC {metric(g.mcc)}, accuracy "
                      f"{metric(g.accuracy)}")
    out.print(f"model: {config.arch}, init {config.init or 'scratch'}, trainable {config.trainable} "
              f"({result.trainable_parameters} parameters trained, {result.frozen_parameters} frozen)")
    out.print(f"wall time {result.wall_seconds:.1f} s, {result.train_samples_per_second:.0f} training images/s")
    if result.checkpoint:
        out.print(f"wrote {result.checkpoint}, {result.metrics_path}, {result.curve_path}")
