"""`dpaudit federated train` and `dpaudit federated attack`: federated learning with DP and secure aggregation."""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer

from dpaudit.attacks.federated_results import FederatedAttackConfig
from dpaudit.audit.federated.fedavg import DP_LEVELS, FederatedConfig
from dpaudit.cli import _attack_options as attack_options
from dpaudit.cli import _common as cli
from dpaudit.cli._common import emit_json, handle_errors, out, parse_float_list, progress_bar
from dpaudit.identifiers import histogram_cells, histogram_note, site_test_note, withheld_mark
from dpaudit.numfmt import metric, percent, percent_interval, upper

app = typer.Typer(help="Federated learning (FedAvg) with DP at the sample or client level and secure aggregation.",
                  no_args_is_help=True)
#: The defaults: each command's configuration's (the Python API's).
F, A = FederatedConfig, FederatedAttackConfig
DpLevel = cli.choices("DpLevel", DP_LEVELS)
SecureAggregationOpt = Annotated[bool, typer.Option(help="The server sees only the sum of the round's surviving "
                                                          "updates (modelled, not the cryptography).")]


def _eps(v: float | None) -> str:
    """An accountant's epsilon (a sound upper bound), rounded up (:mod:`dpaudit.numfmt`); '-' when there is none."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else upper(v)


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


@app.command("train")
@handle_errors
@cli.shared_options(FederatedConfig, *cli.DATA, *cli.MEDICAL, *cli.MODEL, "privacy_unit")
def train_command(
    shared: dict[str, Any],
    clients: Annotated[int, typer.Option(help="Number of sites N.")] = F.clients,
    partition: Annotated[str, typer.Option(help="iid, dirichlet:ALPHA (labels per site ~ Dirichlet(ALPHA)) or "
                                                "column:NAME (one site per metadata value).")] = F.partition,
    rounds: Annotated[int, typer.Option(help="Server rounds.")] = F.rounds,
    clients_per_round: Annotated[int | None, typer.Option(help="Expected clients per round m (each takes part "
                                                               "with probability m/N); default all.")] = None,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = F.local_epochs,
    batch_size: Annotated[int, typer.Option(help="Local (expected) batch size; q_k = batch / N_k.")] = F.batch_size,
    lr: Annotated[float, typer.Option(help="Local NAdam learning rate.")] = F.lr,
    server_lr: Annotated[float, typer.Option(help="Server step size on the aggregated update (1: FedAvg).")] = F.server_lr,
    dp_level: Annotated[DpLevel, typer.Option(help="sample: DP-SGD at every site (protects each record); "
                                                         "client: DP-FedAvg (protects a whole site); none.")
                        ] = F.dp_level,
    epsilon: Annotated[float | None, typer.Option(help="Target epsilon, sample level: per image (the worst "
                                                       "site meets it); client level: per site.")] = None,
    sigma: Annotated[float | None, typer.Option("--sigma", help="Noise multiplier instead of a target.")] = None,
    delta: Annotated[float | None, typer.Option(help="target_delta (default min(8e-7, 1/(10 N)), N the largest "
                                                     "site (sample level) or the number of sites).")] = None,
    max_grad_norm: Annotated[float, typer.Option(help="C: per-sample clip (sample level) or per-update clip "
                                                      "(client level).")] = F.max_grad_norm,
    secure_aggregation: SecureAggregationOpt = F.secure_aggregation,
    dropout: Annotated[float, typer.Option(help="Probability that a participant drops out after training.")] = F.dropout,
    secagg_threshold: Annotated[int | None, typer.Option(help="Fewest survivors for a round to complete "
                                                              "(default ceil(m/2)).")] = None,
    baselines: Annotated[bool, typer.Option(help="Also train centralised DP and non-private FedAvg baselines."
                                            )] = False,
    seed: Annotated[int, typer.Option(help="Seed (partition, schedule, initialisation, clients).")] = F.seed,
    threads: cli.ThreadsOpt = F.threads,
    device: cli.DeviceOpt = F.device,
    json_output: cli.JsonOpt = False,
) -> None:
    """Train with FedAvg over partitioned sites; report per-site epsilon and global and per-site MCC."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from dpaudit.audit.federated import run_federated

    config = FederatedConfig(
        **shared, clients=clients, partition=partition, rounds=rounds, clients_per_round=clients_per_round,
        local_epochs=local_epochs, batch_size=batch_size, lr=lr, server_lr=server_lr, dp_level=str(dp_level),
        epsilon=epsilon,
        noise_multiplier=sigma, target_delta=delta, max_grad_norm=max_grad_norm, secure_aggregation=secure_aggregation,
        dropout=dropout, secagg_threshold=secagg_threshold, baselines=baselines, seed=seed, threads=threads,
        device=device)
    with progress_bar(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} rounds"), TimeElapsedColumn()) as bar:
        task = bar.add_task("partitioning, calibrating noise", total=None)
        result = run_federated(config, progress=lambda d, t, s: bar.update(task, completed=d, total=t,
                                                                            description=s))
    cli.print_data_notes(result.data_notes)
    if json_output:
        emit_json(result)
        return
    out.print(f"unit: {result.unit}")
    if result.privacy is not None:
        out.print(result.privacy.describe())
    if result.epsilon_patient is not None and result.dp_level == "client":
        out.print(f"privacy per patient: epsilon {upper(result.epsilon_patient)} (a patient's images are all at one "
                  "site, and the site-level guarantee covers them; tight PLD, sound upper bound)")
    elif result.epsilon_patient is not None:
        k = max(s.records_per_patient for s in result.clients)
        out.print(f"privacy per patient: worst-site epsilon {upper(result.epsilon_patient)} (k = up to {k} images of "
                  "one patient at a site moving together; tight PLD, sound upper bound); the per-record epsilon "
                  "below is what the sites calibrated")
    if result.dp_level == "sample":
        out.print(f"mechanism per site: DP-SGD, noise_multiplier {result.noise_multiplier:.5g}, max_grad_norm "
                  f"{max_grad_norm:g}, q_k = batch / N_k, T_k = local steps x rounds taken part in; worst-site epsilon "
                  f"{upper(result.epsilon)} (tight PLD, sound upper bound) at delta {result.target_delta:.3g}")
    elif result.dp_level == "client":
        out.print(f"mechanism: DP-FedAvg, noise_multiplier {result.noise_multiplier:.5g}, update clip "
                  f"{max_grad_norm:g}, client sampling_probability {result.client_sampling_probability:.4g}, steps "
                  f"{rounds}; epsilon {upper(result.epsilon)} per site (tight PLD, sound upper bound) at delta "
                  f"{result.target_delta:.3g}")
    out.print(f"server sees: {result.server_view}")
    per_patient = any(s.epsilon_patient is not None for s in result.clients)
    out.print("site  N_train  N_test  labels            rounds  q_k     T_k   epsilon (sound UB)  "
              + ("k   eps/patient (UB)  " if per_patient else "") + "test MCC (empirical)")
    for s in result.clients:
        patient = f"{s.records_per_patient:<2}  {_eps(s.epsilon_patient):>16}  " if per_patient else ""
        n_test = withheld_mark(s.n_test_reason) if s.n_test_reason is not None else str(s.n_test)
        mcc = "withheld*" if s.withheld else _fmt(s.test_mcc)
        labels = "[" + ", ".join(histogram_cells(s.label_histogram, s.label_histogram_withheld)) + "]"
        out.print(f"{s.client:>4}  {s.n_train:>7}  {n_test:>6}  {labels:<16}  "
                  f"{s.rounds_participated:>6}  {_fmt(s.sampling_probability, '.4f'):>6}  {_fmt(s.steps, 'd'):>4}  "
                  f"{_eps(s.epsilon):>18}  {patient}{mcc:>8}")
    withheld = [s for s in result.clients if s.withheld]
    if withheld:  # the reason once, not per row (it names the unit; the sites are listed above)
        out.print(f"* withheld (sites {', '.join(str(s.client) for s in withheld)}): "
                  f"{withheld[0].reason}; N_test and test MCC "
                  "would be those few patients' results, and the spread below leaves the site out")
        out.print(site_test_note([s.n_test_reason for s in result.clients]))
    note = histogram_note([r for s in result.clients for r in s.label_histogram_withheld])
    if note:  # the reason once, as for the sites' test splits
        out.print(note)
    if any(not s.withheld and math.isnan(s.test_mcc) for s in result.clients):
        out.print("test MCC '-': the site's test split holds no image (N_test 0) or one class only; MCC is not "
                  "defined there")
    g = result.global_metrics
    published = len(result.clients) - len(withheld)
    over = f" over the {published} published sites" if withheld else ""
    out.print(f"global model, pooled test split (empirical, n = {g.n}): MCC {metric(g.mcc)}, balanced accuracy "
              f"{metric(g.balanced_accuracy)}, AUROC {metric(g.auroc)}; per-site MCC spread (max - min){over} "
              f"{_fmt(result.mcc_spread)}, std {_fmt(result.mcc_std)}")
    aborted = sum(r.aborted for r in result.rounds)
    if aborted:
        out.print(f"{aborted} of {len(result.rounds)} rounds aborted (fewer survivors than the threshold)")
    if result.baselines is not None:
        b = result.baselines
        out.print(f"baselines (empirical test MCC): centralised {'DP' if result.dp_level != 'none' else ''} "
                  f"{b.centralised_mcc:.4f} (epsilon {_eps(b.centralised_epsilon)}, sound upper bound), "
                  f"non-private FedAvg {b.nonprivate_fedavg_mcc:.4f}")
    out.print(f"wall time {result.wall_seconds:.1f} s")


@app.command("attack")
@handle_errors
@cli.shared_options(FederatedAttackConfig, *cli.DATA, *cli.MEDICAL, *cli.MODEL)
def attack_command(
    shared: dict[str, Any],
    clients: Annotated[int, typer.Option(help="Clients per round n.")] = A.clients,
    batch_size: Annotated[int, typer.Option(help="Images per client in the attacked local step B.")] = A.batch_size,
    bins: Annotated[int, typer.Option(help="K, rows of the server's imprint block.")] = A.bins,
    sigmas: Annotated[str, typer.Option(help="Noise multipliers, comma-separated.")] = ",".join(f"{s:g}" for s in A.noise_multipliers),
    secure_aggregation: SecureAggregationOpt = A.secure_aggregation,
    rounds: Annotated[int, typer.Option(help="Attacked rounds (fresh images each; n_images = rounds x clients x "
                                             "batch).")] = A.rounds,
    max_grad_norm: Annotated[float, typer.Option(help="Per-sample clip norm C.")] = A.max_grad_norm,
    denoiser: attack_options.DenoiserOpt = A.denoiser,
    seed: Annotated[int, typer.Option(help="Seed.")] = A.seed,
    threads: cli.ThreadsOpt = A.threads,
    device: cli.DeviceOpt = A.device,
    json_output: cli.JsonOpt = False,
) -> None:
    """A malicious server's bin attack on one local DP-SGD step per client, with or without secure aggregation."""
    from dpaudit.attacks.federated import run_federated_attack

    config = FederatedAttackConfig(
        **shared, clients=clients, batch_size=batch_size, bins=bins, noise_multipliers=tuple(parse_float_list("--sigmas", sigmas, "0,1e-3,0.1")),
        secure_aggregation=secure_aggregation, rounds=rounds, max_grad_norm=max_grad_norm, denoiser=str(denoiser),
        seed=seed, threads=threads, device=device)
    result = run_federated_attack(config)
    cli.print_data_notes(result.data_notes)
    if json_output:
        emit_json(result)
        return
    out.print(f"threat model: {result.threat_model}")
    out.print(f"decoder: {result.decoder}; SSIM: {result.ssim_variant}; bins: {result.thresholds_from}")
    out.print("sigma     clients  B  bins  SecAgg  n    success (empirical) [95% CP]   mean SSIM  alone (meas.)  "
              "alone (est. (1-1/K)^(M-1))")
    for r in result.rows:
        out.print(f"{r.noise_multiplier:<8.3g}  {r.clients:>7}  {r.batch_size}  {r.bins:>4}  "
                  f"{'yes' if r.secure_aggregation else 'no':>6}  {r.n_images:<3}  {percent(r.success_rate):>6} "
                  "[{}, {}]".format(*percent_interval(r.ci_low, r.ci_high))
                  + f"      {r.mean_ssim:>6.3f}     {r.alone_share:>6.3f}         "
                  f"{r.expected_alone_share:.3f}")
    out.print("mean SSIM (empirical): over the round's images, each against its nearest reconstruction; an image of a "
              "round where nothing was decoded counts as SSIM 0 (nothing reconstructed)")
