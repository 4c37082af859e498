"""`dpaudit federated train` and `dpaudit federated attack`: federated learning with DP and secure aggregation."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated

import typer

from dpaudit.cli._common import (
    ArchOpt,
    DataDirOpt,
    DatasetOpt,
    ImageSizeOpt,
    JsonOpt,
    MaxImagesOpt,
    ThreadsOpt,
    emit_json,
    err,
    handle_errors,
    out,
    parse_float_list,
)

app = typer.Typer(help="Federated learning (FedAvg) with DP at the sample or client level and secure aggregation.",
                  no_args_is_help=True)


class DpLevelChoice(StrEnum):
    sample = "sample"
    client = "client"
    none = "none"


class DenoiserChoice(StrEnum):
    tv = "tv"
    none = "none"


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


@app.command("train")
@handle_errors
def train_command(
    dataset: DatasetOpt = "demo",
    data_dir: DataDirOpt = None,
    image_size: ImageSizeOpt = 28,  # FederatedConfig's defaults (a test keeps them equal)
    max_images: MaxImagesOpt = None,
    arch: ArchOpt = "resnet9",
    clients: Annotated[int, typer.Option(help="Number of sites N.")] = 5,
    partition: Annotated[str, typer.Option(help="iid, dirichlet:ALPHA (labels per site ~ Dirichlet(ALPHA)) or "
                                                "column:NAME (one site per metadata value).")] = "iid",
    rounds: Annotated[int, typer.Option(help="Server rounds.")] = 5,
    clients_per_round: Annotated[int | None, typer.Option(help="Expected clients per round m (each takes part "
                                                               "with probability m/N); default all.")] = None,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Local (expected) batch size; q_k = batch / N_k.")] = 32,
    lr: Annotated[float, typer.Option(help="Local NAdam learning rate.")] = 2e-3,
    server_lr: Annotated[float, typer.Option(help="Server step size on the aggregated update (1: FedAvg).")] = 1.0,
    dp_level: Annotated[DpLevelChoice, typer.Option(help="sample: DP-SGD at every site (protects each record); "
                                                         "client: DP-FedAvg (protects a whole site); none.")
                        ] = DpLevelChoice.sample,
    epsilon: Annotated[float | None, typer.Option(help="Target epsilon (sample level: the worst site meets it).")
                       ] = None,
    sigma: Annotated[float | None, typer.Option("--sigma", help="Noise multiplier instead of a target.")] = None,
    delta: Annotated[float | None, typer.Option(help="target_delta (default min(8e-7, 1/(10 N)), N the largest "
                                                     "site (sample level) or the number of sites).")] = None,
    max_grad_norm: Annotated[float, typer.Option(help="C: per-sample clip (sample level) or per-update clip "
                                                      "(client level).")] = 1.0,
    secure_aggregation: Annotated[bool, typer.Option(help="The server sees only the sum of the surviving updates "
                                                          "(modelled, not the cryptography).")] = False,
    dropout: Annotated[float, typer.Option(help="Probability that a participant drops out after training.")] = 0.0,
    secagg_threshold: Annotated[int | None, typer.Option(help="Fewest survivors for a round to complete "
                                                              "(default ceil(m/2)).")] = None,
    baselines: Annotated[bool, typer.Option(help="Also train centralised DP and non-private FedAvg baselines."
                                            )] = False,
    seed: Annotated[int, typer.Option(help="Seed (partition, schedule, initialisation, clients).")] = 0,
    threads: ThreadsOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Train with FedAvg over partitioned sites; report per-site epsilon and global and per-site MCC."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from dpaudit.audit.federated import FederatedConfig, run_federated

    config = FederatedConfig(
        dataset=dataset, data_dir=data_dir, image_size=image_size, max_images=max_images, arch=arch, clients=clients,
        partition=partition, rounds=rounds, clients_per_round=clients_per_round, local_epochs=local_epochs,
        batch_size=batch_size, lr=lr, server_lr=server_lr, dp_level=dp_level.value, epsilon=epsilon,
        noise_multiplier=sigma, delta=delta, max_grad_norm=max_grad_norm, secure_aggregation=secure_aggregation,
        dropout=dropout, secagg_threshold=secagg_threshold, baselines=baselines, seed=seed, threads=threads)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} rounds"),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("partitioning, calibrating noise", total=None)
        result = run_federated(config, progress=lambda d, t, s: bar.update(task, completed=d, total=t,
                                                                            description=s))
    if json_output:
        emit_json(result.to_json())
        return
    out.print(f"unit: {result.unit}")
    if result.dp_level == "sample":
        out.print(f"mechanism per site: DP-SGD, noise_multiplier {result.noise_multiplier:.5g}, max_grad_norm "
                  f"{max_grad_norm:g}, q_k = batch / N_k, T_k = local steps x rounds taken part in; worst-site epsilon "
                  f"{result.epsilon:.4g} (tight PLD, sound upper bound) at delta {result.target_delta:.3g}")
    elif result.dp_level == "client":
        out.print(f"mechanism: DP-FedAvg, noise_multiplier {result.noise_multiplier:.5g}, update clip "
                  f"{max_grad_norm:g}, client sampling_probability {result.client_sampling_probability:.4g}, steps "
                  f"{rounds}; epsilon {result.epsilon:.4g} per site (tight PLD, sound upper bound) at delta "
                  f"{result.target_delta:.3g}")
    out.print(f"server sees: {result.server_view}")
    out.print("site  N_train  N_test  labels            rounds  q_k     T_k   epsilon (sound UB)  test MCC (empirical)")
    for s in result.clients:
        out.print(f"{s.client:>4}  {s.n_train:>7}  {s.n_test:>6}  {list(s.label_histogram)!s:<16}  "
                  f"{s.rounds_participated:>6}  {_fmt(s.sampling_probability, '.4f'):>6}  {_fmt(s.steps, 'd'):>4}  "
                  f"{_fmt(s.epsilon, '.4g'):>18}  {_fmt(s.test_mcc):>8}")
    g = result.global_metrics
    out.print(f"global model, pooled test split (empirical, n = {g.n}): MCC {g.mcc:.4f}, balanced accuracy "
              f"{g.balanced_accuracy:.4f}, AUROC {g.auroc:.4f}; per-site MCC spread (max - min) "
              f"{_fmt(result.mcc_spread)}, std {_fmt(result.mcc_std)}")
    aborted = sum(r.aborted for r in result.rounds)
    if aborted:
        out.print(f"{aborted} of {len(result.rounds)} rounds aborted (fewer survivors than the threshold)")
    if result.baselines is not None:
        b = result.baselines
        out.print(f"baselines (empirical test MCC): centralised {'DP' if result.dp_level != 'none' else ''} "
                  f"{b.centralised_mcc:.4f} (epsilon {_fmt(b.centralised_epsilon, '.4g')}, sound upper bound), "
                  f"non-private FedAvg {b.nonprivate_fedavg_mcc:.4f}")
    out.print(f"wall time {result.wall_seconds:.1f} s")


@app.command("attack")
@handle_errors
def attack_command(
    dataset: DatasetOpt = "demo",
    data_dir: DataDirOpt = None,
    image_size: ImageSizeOpt = 28,  # FederatedAttackConfig's defaults (a test keeps them equal)
    max_images: MaxImagesOpt = None,
    arch: ArchOpt = "resnet9",
    clients: Annotated[int, typer.Option(help="Clients per round n.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Images per client in the attacked local step B.")] = 2,
    bins: Annotated[int, typer.Option(help="K, rows of the server's imprint block.")] = 32,
    sigmas: Annotated[str, typer.Option(help="Noise multipliers, comma-separated.")] = "0,1e-3,0.1",
    secure_aggregation: Annotated[bool, typer.Option(help="The server sees only the sum over the round's "
                                                          "clients.")] = False,
    rounds: Annotated[int, typer.Option(help="Attacked rounds (fresh images each; n_images = rounds x clients x "
                                             "batch).")] = 8,
    max_grad_norm: Annotated[float, typer.Option(help="Per-sample clip norm C.")] = 1.0,
    denoiser: Annotated[DenoiserChoice, typer.Option(help="tv (total variation at the known level) or none.")
                        ] = DenoiserChoice.tv,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    threads: ThreadsOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """A malicious server's bin attack on one local DP-SGD step per client, with or without secure aggregation."""
    from dpaudit.attacks.federated import FederatedAttackConfig, run_federated_attack

    config = FederatedAttackConfig(
        dataset=dataset, data_dir=data_dir, image_size=image_size, max_images=max_images, arch=arch, clients=clients,
        batch_size=batch_size, bins=bins, noise_multipliers=tuple(parse_float_list("sigmas", sigmas)),
        secure_aggregation=secure_aggregation, rounds=rounds, max_grad_norm=max_grad_norm, denoiser=denoiser.value,
        seed=seed, threads=threads)
    result = run_federated_attack(config)
    if json_output:
        emit_json(result.to_json())
        return
    out.print(f"threat model: {result.threat_model}")
    out.print(f"decoder: {result.decoder}; SSIM: {result.ssim_variant}; bins: {result.thresholds_from}")
    out.print("sigma     clients  B  bins  SecAgg  n    success (empirical) [95% CP]   mean SSIM  alone (meas.)  "
              "alone (est. (1-1/K)^(M-1))")
    for r in result.rows:
        out.print(f"{r.noise_multiplier:<8.3g}  {r.clients:>7}  {r.batch_size}  {r.bins:>4}  "
                  f"{'yes' if r.secure_aggregation else 'no':>6}  {r.n_images:<3}  {r.success_rate:>6.3f} "
                  f"[{r.ci_low:.3f}, {r.ci_high:.3f}]      {r.mean_ssim:>6.3f}     {r.alone_share:>6.3f}         "
                  f"{r.expected_alone_share:.3f}")
