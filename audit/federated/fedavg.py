"""Federated averaging (FedAvg) with differential privacy at the sample or the client level, and secure aggregation.

``run_federated(FederatedConfig(...))`` splits a dataset across ``clients`` sites (:mod:`.partition`), builds the
global model from the seed, and runs ``rounds`` rounds. In each round the participating clients (all of them, or
each one with probability q = clients_per_round / clients, drawn from the seed before training) start from the
server's model and train locally for ``local_epochs`` epochs with the ordinary dpaudit training loop
(:func:`dpaudit.audit.train._run_one`, Opacus DP-SGD with Poisson sampling under sample-level DP). Each client's
local training is one :class:`ClientTask`, run by the profile's executors
(:class:`dpaudit.audit.profile.executor.InProcessExecutor` by default, or a Dask executor).

What the server sees (it never sees the records):

* without secure aggregation: each surviving client's update (for sample-level DP: already noised by the client;
  for client-level DP: clipped, the server adds the noise);
* with secure aggregation (``secure_aggregation=True``): only the sum of the surviving clients' updates and the
  sum of their weights. This module MODELS WHAT THE SERVER SEES, not the cryptography (Bonawitz et al., CCS 2017;
  Bell et al., CCS 2020, SecAgg+): :func:`secure_sum` returns the sum and nothing else, and the server code only
  receives that. Each participating client drops out after training with probability ``dropout``; a round with
  fewer survivors than ``secagg_threshold`` aborts (the server model is unchanged). Under client-level DP each
  client adds N(0, z^2 C^2 / t) with t = secagg_threshold, so every completed round carries at least the full
  N(0, z^2 C^2) (splitting by the expected m instead would leave too little noise when clients drop out).

Aggregation: sample level and non-private: the FedAvg mean weighted by N_k (the client sizes are treated as
public); client level: DP-FedAvg's fixed-denominator estimate (sum of clipped updates + noise) / m
(McMahan et al. 2018, arXiv 1710.06963, Algorithm 1, with uniform weights). The server then steps
``global += server_lr * aggregate``. Aggregation runs in float64 so that one client with server_lr 1 reproduces
its local model exactly (centralised training with the same seed; a test checks this).

Client k in round r trains with seed ``seed + r * clients + k`` (round 0, client 0: the run's seed).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from dpaudit.audit.federated.accounting import (
    ClientAccount,
    client_level_accounting,
    sample_level_accounting,
)
from dpaudit.audit.federated.partition import parse_partition, partition_splits
from dpaudit.audit.metrics import ClassificationMetrics
from dpaudit.config import (
    DEFAULT_ARCH,
    DEFAULT_DATASET,
    PrivacyUnit,
    check_max_images,
    check_noise_multiplier,
    image_size_for,
)
from dpaudit.errors import (
    ConfigError,
    NumericalError,
    check_int,
    check_positive,
    check_probability,
    invalid,
)
from dpaudit.heap import reuse_freed_memory
from dpaudit.identifiers import (
    COMPLEMENT_REASON,
    MIN_SUBGROUP_UNITS,
    SITE_LABEL_CELL,
    SITE_TEST_CELL,
    check_site_complements,
    check_site_test,
    complement_sites,
    histogram_reasons,
    site_null_reasons,
    site_test_reasons,
    small_cell_reason,
    upgrade_histogram,
    withhold_histogram,
)
from dpaudit.runtime import check_device

__all__ = ["DP_LEVELS", "ClientSummary", "ClientTask", "ClientUpdate", "FederatedBaselines", "FederatedConfig",
           "FederatedResult", "RoundRecord", "run_federated", "secure_sum"]

DP_LEVELS = ("sample", "client", "none")

#: What each DP level protects, in words (the CLI and the report print these).
UNIT_TEXT = {
    "sample": "sample level: each record (patient image) at its own site is protected by that site's DP-SGD; the "
              "site's participation in the federation is not hidden",
    "client": "client level: a whole site's data set is protected (DP-FedAvg: clipped updates, noise on the sum); "
              "individual records get at least this protection",
    "none": "no differential privacy (non-private FedAvg)",
}


@dataclass(frozen=True)
class FederatedConfig:
    """One federated run.

    Attributes
    ----------
    dataset, data_dir, image_size, max_images, labels, window, slice_axis:
        The data, as :class:`dpaudit.audit.train.TrainConfig` takes them (:func:`dpaudit.data.load_splits`).
    arch, arch_args, fix_batchnorm:
        The model of every site, as ``TrainConfig`` (a BatchNorm layer is refused under sample-level DP unless
        ``fix_batchnorm`` replaces it by GroupNorm).
    clients, partition:
        Number of sites and how the data are split: ``iid``, ``dirichlet:ALPHA`` or ``column:NAME``.
    rounds, clients_per_round:
        Server rounds; expected clients per round m (None: all clients every round; else each client takes part
        with probability m / clients, independently per round).
    local_epochs, batch_size, lr, server_lr:
        Local epochs per round, the local (expected) batch size, the local NAdam learning rate and the server's
        step size on the aggregated update.
    dp_level:
        ``sample`` (DP-SGD at every site), ``client`` (DP-FedAvg) or ``none``.
    epsilon, noise_multiplier:
        Target epsilon (sample level: the worst client meets it; client level: the federation's) or sigma
        directly; exactly one unless ``dp_level`` is ``none``.
    max_grad_norm:
        C: the per-sample clip norm (sample level) or the clip norm of a client's model update (client level).
    secure_aggregation, dropout, secagg_threshold:
        The server sees only the sum over surviving clients; each participant drops out with probability
        ``dropout``; a round with fewer than ``secagg_threshold`` survivors aborts (default ceil(m / 2)).
    baselines:
        Also train a centralised model (DP-SGD at the same target, or the same sigma, over
        rounds * local_epochs epochs) and a non-private FedAvg run, for comparison.
    """

    dataset: str = DEFAULT_DATASET
    data_dir: str | None = None
    image_size: int | None = None  # None: the dataset's (dpaudit.config.default_image_size)
    max_images: int | None = None
    labels: str | None = None
    window: tuple[float, float] | None = None
    slice_axis: str = "axial"
    arch: str = DEFAULT_ARCH
    arch_args: Mapping[str, Any] = field(default_factory=dict)
    fix_batchnorm: bool = False
    clients: int = 5
    partition: str = "iid"
    rounds: int = 5
    clients_per_round: int | None = None
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 2e-3
    server_lr: float = 1.0
    dp_level: str = "sample"
    epsilon: float | None = None
    noise_multiplier: float | None = None
    target_delta: float | None = None
    max_grad_norm: float = 1.0
    secure_aggregation: bool = False
    dropout: float = 0.0
    secagg_threshold: int | None = None
    baselines: bool = False
    seed: int = 0
    threads: int | None = None
    #: Where the sites' local training runs (``auto``, ``cpu``, ``cuda``, ``cuda:N``, as ``TrainConfig.device``);
    #: aggregation and evaluation stay on the CPU (float64 sums).
    device: str = "auto"
    #: The unit the per-patient figure is stated for (as :class:`dpaudit.audit.train.TrainConfig`): None is the
    #: patient when the data carry patient or lesion ids.
    privacy_unit: str | None = None

    def __post_init__(self) -> None:
        if self.dp_level not in DP_LEVELS:
            raise invalid("dp_level", self.dp_level, f"one of {', '.join(map(str, DP_LEVELS))}", "pass --dp-level sample")
        if self.epsilon is not None:
            check_positive("epsilon", self.epsilon, fix="pass a target epsilon > 0, e.g. --epsilon 8")
        if self.noise_multiplier is not None:
            check_noise_multiplier(self.noise_multiplier, fix="pass --sigma 1.0")
        if self.target_delta is not None:
            check_probability("target_delta", self.target_delta, fix="pass a delta well below 1/N, e.g. --delta 8e-7")
        from dpaudit.models import (
            parse_arch,  # here: importing this module loads no torch (the CLI reads defaults)
        )

        parse_arch(self.arch)
        object.__setattr__(self, "arch_args", dict(self.arch_args))
        object.__setattr__(self, "image_size", image_size_for(self.dataset, self.image_size))
        check_max_images(self.max_images)
        clients = check_int("clients", self.clients, fix="pass --clients 5")
        parse_partition(self.partition)
        check_int("rounds", self.rounds, fix="pass --rounds 5")
        if self.clients_per_round is not None:
            m = check_int("clients_per_round", self.clients_per_round,
                          fix=f"pass --clients-per-round between 1 and --clients ({clients}), or leave it out (all)")
            if m > clients:
                raise invalid("clients_per_round", m, f"at most --clients ({clients})",
                              f"pass --clients-per-round {clients} or fewer")
        check_int("local_epochs", self.local_epochs, fix="pass --local-epochs 1 or more")
        check_int("batch_size", self.batch_size, fix="pass --batch-size 1 or more, e.g. 32")
        check_positive("lr", self.lr, fix="pass e.g. --lr 2e-3")
        check_positive("server_lr", self.server_lr, fix="pass --server-lr 1.0 (plain FedAvg)")
        check_positive("max_grad_norm", self.max_grad_norm, fix="pass e.g. --max-grad-norm 1.0")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise invalid("dropout", self.dropout, "in [0, 1)", "pass e.g. --dropout 0.1")
        if self.secagg_threshold is not None:
            if not self.secure_aggregation:
                raise invalid("secagg_threshold", self.secagg_threshold, "given only with --secure-aggregation",
                              "add --secure-aggregation or drop --secagg-threshold")
            t = check_int("secagg_threshold", self.secagg_threshold,
                          fix="pass --secagg-threshold 1 or more, or leave it out (half the clients per round)")
            if t > self.expected_per_round:
                raise invalid("secagg_threshold", t, f"at most the clients per round ({self.expected_per_round})",
                              "pass a smaller --secagg-threshold")
        check_int("seed", self.seed, minimum=0, fix="pass --seed 0 or another whole number >= 0")
        if self.threads is not None:
            check_int("threads", self.threads, fix="pass --threads 1 or more, or leave it out (the idle cores)")
        check_device(self.device)
        if self.privacy_unit is not None and self.privacy_unit not in ("patient", "image"):
            raise invalid("privacy_unit", self.privacy_unit, "patient or image",
                          "pass --privacy-unit patient or --privacy-unit image")
        from dpaudit.data import check_data_options, parse_window

        check_data_options(self.dataset, data_dir=self.data_dir, labels=self.labels, window=self.window,
                           slice_axis=self.slice_axis)
        object.__setattr__(self, "window", parse_window(self.window))
        # The choice of mechanism last: a value out of range in a flag the user typed is named first.
        given = [flag for flag, v in (("--epsilon", self.epsilon), ("--sigma", self.noise_multiplier)) if v is not None]
        if self.dp_level == "none" and given:
            raise ConfigError(f"--dp-level none trains without DP, but {' and '.join(given)} given. Fix: drop "
                              f"{' and '.join(given)} for a non-private run, or pass --dp-level sample.")
        if self.dp_level != "none" and not given:
            raise ConfigError(f"--dp-level {self.dp_level} needs exactly one of --epsilon and --sigma (neither given). "
                              "Fix: pass --epsilon 8 (a target; sigma is calibrated) or --sigma 1.0, or --dp-level "
                              "none for a non-private run.")
        if len(given) > 1:
            raise ConfigError(f"--dp-level {self.dp_level} needs exactly one of --epsilon and --sigma (both given). "
                              "Fix: keep one of them (drop --sigma).")

    @property
    def expected_per_round(self) -> int:
        """m, the (expected) number of clients per round."""
        return self.clients if self.clients_per_round is None else self.clients_per_round

    @property
    def threshold(self) -> int:
        """The least number of survivors with which a round completes (1 without secure aggregation)."""
        if not self.secure_aggregation:
            return 1
        return self.secagg_threshold if self.secagg_threshold is not None else max(1, math.ceil(
            self.expected_per_round / 2))


@dataclass(frozen=True)
class ClientUpdate:
    """What one client's local training produced: the model update (local - global, float64) and its size."""

    client: int
    round: int
    n_train: int
    update: Mapping[str, Any] = field(metadata={"json": False})
    train_loss: float


@dataclass(frozen=True)
class ClientTask:
    """One client's local training in one round (frozen, picklable; the executors call :meth:`run`)."""

    client: int
    round: int
    config: Any  # a dpaudit.audit.train.TrainConfig for this client's local run
    splits: Any  # the client's dpaudit.data.DatasetSplits
    seed: int
    noise_multiplier: float
    sampling_probability: float
    steps: int
    target_delta: float
    initial_state: Mapping[str, Any]

    stage: ClassVar[str] = "federated-client"
    result_type: ClassVar[type] = ClientUpdate

    def key(self) -> str:
        """Unique within a run (the profile's Task protocol; results are not stored: the round needs them now)."""
        return f"federated-r{self.round}-c{self.client}"

    def describe(self) -> str:
        return f"round {self.round + 1}, site {self.client}"  # rounds from 1, as the progress line

    def run(self) -> ClientUpdate:

        from dpaudit.audit.train import _run_one
        from dpaudit.runtime import resolve_device

        model, history, _ = _run_one(self.config, self.splits, self.seed, self.noise_multiplier,
                                     self.sampling_probability, self.steps, self.target_delta, None, 0, self.steps,
                                     resolve_device(self.config.device), initial_state=self.initial_state,
                                     run_name=f"round {self.round + 1}, site {self.client}")  # not the derived seed
        state = model.state_dict()
        # back on the CPU (a no-op there): the server aggregates in float64 on the CPU
        update = {k: state[k].double().cpu() - self.initial_state[k].double() for k in state}
        return ClientUpdate(self.client, self.round, len(self.splits.train), update,
                            float(history[-1].train_loss) if history else float("nan"))


def secure_sum(updates: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the server learns from secure aggregation: the sum of the inputs, nothing else (a model of SecAgg's
    output, not its cryptography)."""
    if not updates:
        raise ConfigError("secure_sum needs at least one update.")
    keys = list(updates[0])
    return {k: sum(u[k] for u in updates) for k in keys}


@dataclass(frozen=True)
class ClientSummary:
    """One site: size, label histogram, mechanism and epsilon (sound upper bound, sample level), utility (empirical).

    ``test_mcc`` is the global model's MCC on this site's own test split (NaN when that split is empty).
    ``epsilon`` is per record (what the site's DP-SGD calibrates); ``epsilon_patient`` per patient, as
    :class:`dpaudit.audit.train.TrainResult` states it.

    A site whose test split is held by 1 to :data:`dpaudit.identifiers.MIN_SUBGROUP_UNITS` - 1 privacy units
    (patients, counted by their ids) is ``withheld``: ``n_test`` and ``test_mcc`` are None and ``reason`` says why,
    since its MCC would be those few patients' results (the small-cell rule of subgroup utility,
    :func:`dpaudit.audit.metrics.subgroup_metrics`). The site itself (its name, training size, epsilon) is not
    patient data and stays.

    ``label_histogram`` (training images per label) follows the same rule per cell
    (:func:`dpaudit.identifiers.withhold_histogram`): a label held by 1 to 4 patients at the site is None ("< 5"),
    since "1 image of a rare label" at a small site is one patient's diagnosis; as ``n_train`` is published, one
    withheld cell would follow by subtraction, so the next smallest cell is withheld with it (complementary
    suppression). 0 stays 0. ``label_histogram_withheld`` gives each cell's reason (None where published).

    The sites' ``n_test`` follow the same rule (:func:`dpaudit.identifiers.site_test_reasons`): the pooled test
    split's n is published, so while one site is withheld the next smallest published site's ``n_test`` is
    withheld with it (``n_test_withheld`` says why, :data:`dpaudit.identifiers.COMPLEMENT_REASON`); that site's
    ``test_mcc``, of 5 or more units, stays published.
    """

    client: int
    n_train: int
    n_test: int | None
    label_histogram: tuple[int | None, ...]
    rounds_participated: int
    sampling_probability: float | None
    steps: int | None
    epsilon: float | None
    test_mcc: float | None
    #: k: the most training images one patient has at this site, the k of ``epsilon_patient`` (under
    #: ``--privacy-unit image`` the data's, as train's per-patient epsilon; 1 when the data carry no patient ids).
    records_per_patient: int = 1
    #: Sample level with k > 1: the site's epsilon per patient (the k records move together; tight PLD, a sound
    #: upper bound): the guarantee with the patient as the unit, given beside the per-record ``epsilon`` with the
    #: image as the unit; None otherwise.
    epsilon_patient: float | None = None
    #: The site's test split is a small cell: no ``n_test``, no ``test_mcc``; ``reason`` says why.
    withheld: bool = False
    reason: str | None = None
    #: Per label: why its ``label_histogram`` cell is withheld (None), or None where it is published; () reads as
    #: all published.
    label_histogram_withheld: tuple[str | None, ...] = ()
    #: Why ``n_test`` alone is withheld (the complement of a withheld site's, which would follow from the pooled
    #: test split's n by subtraction), or None; a withheld site's ``n_test`` goes with ``reason``.
    n_test_withheld: str | None = None

    #: Why a number is null in JSON (dpaudit.codec writes NaN as null with its reason).
    UNDEFINED: ClassVar[dict[str, str]] = {
        "test_mcc": "not defined: the site's test split holds no image, or one class only"}

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_histogram_withheld",
                           histogram_reasons(self.client, self.label_histogram, self.label_histogram_withheld))
        check_site_test(self.client, self.withheld, self.reason, self.n_test, self.test_mcc, self.n_test_withheld)

    @property
    def n_test_reason(self) -> str | None:
        """Why ``n_test`` is withheld (a small test split, or the complement of one), None where published."""
        return self.reason if self.withheld else self.n_test_withheld

    @property
    def null_reasons(self) -> dict[str, str]:
        """Why ``n_test`` and ``test_mcc`` are null in JSON when the site is withheld (``n_test`` alone when it
        is a complement), and ``label_histogram`` when it holds a withheld cell (dpaudit.codec)."""
        return site_null_reasons(self.withheld, self.reason, self.label_histogram, self.n_test_withheld)

    @staticmethod
    def json_upgrade(data: dict[str, Any]) -> dict[str, Any]:
        """A published site's null ``test_mcc`` is NaN (not defined), as written; ``float | None`` would read
        null as None. A label histogram of an earlier layout is withheld by image counts
        (:func:`dpaudit.identifiers.upgrade_histogram`)."""
        data = upgrade_histogram(data)
        if not data.get("withheld") and data.get("test_mcc") is None and "test_mcc" in data:
            return {**data, "test_mcc": "nan"}
        return data


@dataclass(frozen=True)
class RoundRecord:
    """One server round: who trained, who survived, whether it completed; the global model's validation MCC."""

    round: int
    participants: tuple[int, ...]
    survivors: tuple[int, ...]
    aborted: bool
    val_mcc: float


@dataclass(frozen=True)
class FederatedBaselines:
    """Test MCC (empirical) of a centralised model with the same DP target (or sigma) and of non-private FedAvg."""

    centralised_mcc: float
    centralised_epsilon: float | None
    centralised_noise_multiplier: float
    nonprivate_fedavg_mcc: float
    #: Each site's test MCC under non-private FedAvg; None for a site withheld as a small cell (as in
    #: :attr:`FederatedResult.clients`).
    nonprivate_fedavg_per_client_mcc: tuple[float | None, ...]

    @property
    def null_reasons(self) -> dict[str, str]:
        """Why entries of ``nonprivate_fedavg_per_client_mcc`` are null in JSON (dpaudit.codec)."""
        if all(v is not None for v in self.nonprivate_fedavg_per_client_mcc):
            return {}
        return {"nonprivate_fedavg_per_client_mcc": f"a null entry is withheld: its site's test split holds fewer "
                                                    f"than {MIN_SUBGROUP_UNITS} privacy units (as clients[].reason "
                                                    "says)"}


@dataclass(frozen=True)
class FederatedResult:
    """A federated run: mechanism, per-site privacy and utility, rounds, baselines.

    Labels: ``epsilon`` (federation's worst client at sample level, the federation at client level) and every
    ``clients[k].epsilon`` are sound upper bounds (tight PLD); MCCs are empirical.
    """

    config: FederatedConfig
    dp_level: str
    unit: str
    noise_multiplier: float
    client_sampling_probability: float
    target_delta: float
    epsilon: float | None
    clients: tuple[ClientSummary, ...]
    global_metrics: ClassificationMetrics
    mcc_spread: float
    mcc_std: float
    rounds: tuple[RoundRecord, ...]
    baselines: FederatedBaselines | None
    server_view: str
    wall_seconds: float
    #: The privacy unit (:class:`dpaudit.data.PrivacyUnit` of the pooled training data, as ``train`` reports it);
    #: patients stay at one site (:func:`partition_splits` refuses a partition that splits one), so a patient's k
    #: images are all in one site's data.
    privacy: PrivacyUnit | None = None
    #: The worst site's epsilon per patient (sample level, k > 1: k records move together; client level: the
    #: site-level epsilon, which covers every patient of the site); with the image as the unit it is given beside
    #: the per-image guarantee, as train's ``epsilon_patient``; None when no patient has several images.
    epsilon_patient: float | None = None
    #: What the data loader passed over and decided (counts only, no identifiers), as train's ``data_notes``.
    data_notes: tuple[str, ...] = ()
    #: The final global model's state dict (not serialised).
    state: Mapping[str, Any] = field(default_factory=dict, metadata={"json": False}, repr=False, compare=False)

    #: Written to JSON beside the fields (``dpaudit federated train --json``, through dpaudit.codec).
    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("labels",)

    def __post_init__(self) -> None:
        check_site_complements([s.n_test_reason for s in self.clients])
    #: Why a number is null in JSON (dpaudit.codec writes NaN as null with its reason).
    UNDEFINED: ClassVar[dict[str, str]] = {
        "mcc_spread": "not defined: fewer than two published sites have a test MCC",
        "mcc_std": "not defined: fewer than two published sites have a test MCC"}

    @staticmethod
    def json_upgrade(data: dict[str, Any]) -> dict[str, Any]:
        """A result written before the sites' ``n_test`` had complementary suppression: the next smallest site's
        ``n_test`` withheld with a lone withheld site's (:func:`dpaudit.identifiers.complement_sites`)."""
        sites = data.get("clients")
        if not isinstance(sites, list) or not all(isinstance(s, dict) for s in sites):
            return data
        upgraded = complement_sites(sites, [ClientSummary.json_upgrade(s) for s in sites])
        return {**data, "clients": upgraded}

    @property
    def labels(self) -> dict[str, str]:
        """What kind of number each field is."""
        return {"epsilon": "sound upper bound (tight PLD accountant), per the dp_level's unit",
                "clients.epsilon": "sound upper bound (tight PLD), sample level, per site",
                "epsilon_patient": "sound upper bound (tight PLD), per patient: the k images of one patient moving "
                                   "together (the worst site's at sample level; the site's at client level)",
                "clients.epsilon_patient": "sound upper bound (tight PLD), sample level, per patient at the site",
                "clients.test_mcc": "empirical, the global model on the site's own test split",
                "global_metrics": "empirical, the global model on the pooled test split",
                "mcc_spread, mcc_std": "empirical, max - min and population std of clients.test_mcc over the "
                                       "published sites (a site withheld as a small cell is left out)",
                "rounds": "empirical (each round's participants, survivors and whether it completed)",
                "baselines.centralised_epsilon": "sound upper bound (tight PLD), the centralised baseline's",
                "baselines.centralised_mcc, baselines.nonprivate_fedavg_mcc, baselines.nonprivate_fedavg_per_client_mcc":
                    "empirical, test MCC of the baselines"}


def _client_splits(splits: Any, idx: list[list[np.ndarray]], k: int) -> Any:
    from dpaudit.data import DatasetSplits

    return DatasetSplits(splits.train.subset(idx[0][k]), splits.val.subset(idx[1][k]), splits.test.subset(idx[2][k]),
                         name=f"{splits.name}/client{k}", mean=splits.mean, std=splits.std, unit=splits.unit)


def _schedule(config: FederatedConfig) -> tuple[np.ndarray, np.ndarray]:
    """(participates, survives): R x N boolean matrices drawn from the seed before training (data-independent)."""
    rng = np.random.default_rng([config.seed, 0x5C4ED])
    r, n = config.rounds, config.clients
    if config.clients_per_round is None:
        part = np.ones((r, n), dtype=bool)
    else:
        part = rng.random((r, n)) < config.clients_per_round / n  # Poisson client sampling, q = m / N
    survive = part & (rng.random((r, n)) >= config.dropout)
    return part, survive


def run_federated(config: FederatedConfig, *, splits: Any = None, executor: Any = None,
                  progress: Any = None) -> FederatedResult:
    """Run federated training; see the module docstring. ``progress(done, total, text)`` after every round."""
    import torch

    from dpaudit.audit.metrics import choose_threshold
    from dpaudit.audit.train import (
        _evaluate,
        _evaluate_with_operating_point,
        _predict,
        default_delta,
        prepare_model,
    )
    from dpaudit.data import load_splits, loading_notes, privacy_unit
    from dpaudit.runtime import idle_cores

    if not isinstance(config, FederatedConfig):
        raise ConfigError(f"config must be a FederatedConfig, got {type(config).__name__}.")
    from dpaudit.runtime import resolve_device

    resolve_device(config.device)  # before the data load: a GPU that is not there is named at once
    t_start = time.perf_counter()
    if splits is None:
        splits = load_splits(config.dataset, data_dir=config.data_dir, image_size=config.image_size,
                             seed=config.seed, max_images=config.max_images, labels=config.labels,
                             window=config.window, slice_axis=config.slice_axis)
    if executor is None:
        from dpaudit.audit.profile.executor import InProcessExecutor

        executor = InProcessExecutor()
    unit = privacy_unit(splits, config.privacy_unit)
    partition = parse_partition(config.partition)
    idx = partition_splits(splits, partition, config.clients, seed=config.seed)
    client_splits = [_client_splits(splits, idx, k) for k in range(config.clients)]
    n_train = [len(cs.train) for cs in client_splits]
    part, survive = _schedule(config)
    rounds_participated = part.sum(axis=0).tolist()

    m = config.expected_per_round
    client_q = m / config.clients
    accounts: tuple[ClientAccount, ...] | None = None
    epsilon: float | None = None
    sigma = 0.0
    if config.dp_level == "sample":
        delta = config.target_delta if config.target_delta is not None else default_delta(max(n_train))
        sigma, accounts = sample_level_accounting(n_train, config.batch_size, config.local_epochs,
                                                  rounds_participated, delta, target_epsilon=config.epsilon,
                                                  noise_multiplier=config.noise_multiplier)
        epsilon = max(a.epsilon for a in accounts)
    elif config.dp_level == "client":
        delta = config.target_delta if config.target_delta is not None else default_delta(config.clients)
        sigma, client_q, epsilon = client_level_accounting(config.clients, m, config.rounds, delta,
                                                           target_epsilon=config.epsilon,
                                                           noise_multiplier=config.noise_multiplier)
    else:
        delta = config.target_delta if config.target_delta is not None else default_delta(sum(n_train))

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads if config.threads is not None else idle_cores())
    try:
        torch.manual_seed(config.seed)  # the initialisation centralised training with this seed would use
        # Built with the sites' own configuration, so that a layer DP-SGD cannot train (BatchNorm) is refused
        # here, before any round, with the fix (--fix-batchnorm), as train refuses it.
        model = prepare_model(_local_config(config, splits, config.seed, sigma, config.batch_size, delta),
                              splits.num_classes, splits.in_channels, splits.image_shape)[0]
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        g_noise = torch.Generator().manual_seed(config.seed * 4 + 3 + 0x5E4)  # server's / SecAgg clients' noise
        records = []
        # One block over every round (the clients' _run_one blocks nest in it when they run in this process): the
        # heap grown by the first local steps serves every later client and round (dpaudit.heap).
        with reuse_freed_memory():
            for r in range(config.rounds):
                participants = np.nonzero(part[r])[0].tolist()
                tasks = []
                for k in participants:
                    cs = client_splits[k]
                    b = min(config.batch_size, n_train[k])
                    private = config.dp_level == "sample"
                    local = _local_config(config, splits, config.seed + r * config.clients + k, sigma, b, delta)
                    acc = accounts[k] if accounts is not None else None
                    steps = acc.steps_per_round if acc is not None else config.local_epochs * math.ceil(n_train[k] / b)
                    tasks.append(ClientTask(k, r, local, cs, local.seed, sigma if private else 0.0, b / n_train[k],
                                            steps, delta, state))
                results: dict[int, ClientUpdate] = {}
                try:
                    executor.map(tasks, lambda task, res, into=results: into.__setitem__(task.client, res))
                except NumericalError as exc:
                    raise _after_server_step(config, exc, r) from None
                survivors = [k for k in participants if survive[r, k]]
                aborted = len(survivors) < config.threshold
                if not aborted:
                    state = _aggregate(config, state, [results[k] for k in survivors], sigma, g_noise)
                    _check_server_step(config, state, r)
                model.load_state_dict(state)
                val = _evaluate(model, splits.val, splits.mean, splits.std, unit=splits.unit, split="validation")
                records.append(RoundRecord(r, tuple(participants), tuple(survivors), aborted, float(val.mcc)))
                if progress is not None:
                    progress(r + 1, config.rounds, f"round {r + 1}/{config.rounds} val MCC {val.mcc:.3f}"
                             + (" (aborted: too few survivors)" if aborted else ""))
        test_metrics, _ = _evaluate_with_operating_point(model, splits)
        val_probs, _ = _predict(model, splits.val, splits.mean, splits.std)
        threshold = choose_threshold(splits.val.labels.numpy(), val_probs)
        summaries = []
        # a site's test split held by 1-4 patients: its MCC would be theirs (withheld, not evaluated); the pooled
        # test split's n is published, so the next smallest site's n_test goes with a lone withheld one
        test_reasons = site_test_reasons(
            [len(cs.test) for cs in client_splits],
            [small_cell_reason(np.asarray(cs.test.patient_ids).tolist(), splits.unit, SITE_TEST_CELL)[0]
             for cs in client_splits], splits.unit)
        for k, cs in enumerate(client_splits):
            withheld = test_reasons[k] if test_reasons[k] != COMPLEMENT_REASON else None
            complement = test_reasons[k] if test_reasons[k] == COMPLEMENT_REASON else None
            mk = (_evaluate(model, cs.test, splits.mean, splits.std, threshold, unit=splits.unit,
                            split=f"site {k}'s test") if len(cs.test) and withheld is None else None)
            acc = accounts[k] if accounts is not None else None
            # the k the site's per-patient epsilon is computed with: the unit's under --privacy-unit patient, the
            # data's under --privacy-unit image (given beside the per-image guarantee), as train does
            site_unit = privacy_unit(cs, unit.unit)
            # training images per label, each cell held by 1-4 patients withheld with its complement
            train_labels, train_units = cs.train.labels.numpy(), np.asarray(cs.train.patient_ids)
            histogram, histogram_withheld = withhold_histogram(
                [int(v) for v in cs.train.class_counts()],
                [len(set(train_units[train_labels == c].tolist())) for c in range(cs.train.num_classes)],
                splits.unit, SITE_LABEL_CELL)
            k_site = site_unit.records_per_patient if unit.unit == "patient" else site_unit.data_records_per_patient
            summaries.append(ClientSummary(
                k, n_train[k], None if withheld or complement else len(cs.test), histogram,
                int(rounds_participated[k]), acc.sampling_probability if acc else None, acc.steps if acc else None,
                acc.epsilon if acc else None,
                None if withheld else float(mk.mcc) if mk is not None else float("nan"),
                k_site, _site_epsilon_patient(acc, sigma, delta, k_site), withheld=withheld is not None,
                reason=withheld, label_histogram_withheld=histogram_withheld, n_test_withheld=complement))
    finally:
        torch.set_num_threads(previous_threads)

    # over the published sites only: a withheld site's MCC must not enter a figure that is shown
    finite = [s.test_mcc for s in summaries if s.test_mcc is not None and math.isfinite(s.test_mcc)]
    # A spread needs two sites with a measured MCC; with fewer it is unknown (NaN), not a uniform 0.
    spread = max(finite) - min(finite) if len(finite) > 1 else float("nan")
    std = statistics.pstdev(finite) if len(finite) > 1 else float("nan")
    baselines = _baselines(config, splits, sigma) if config.baselines else None
    epsilon_patient = None
    if config.dp_level == "client" and (unit.unit == "patient" or unit.data_records_per_patient > 1):
        # a whole site is protected, and each patient's images are at one site (partition_splits checked it)
        epsilon_patient = epsilon
    elif any(s.epsilon_patient is not None for s in summaries):
        epsilon_patient = max(s.epsilon_patient if s.epsilon_patient is not None else (s.epsilon or 0.0)
                              for s in summaries)
    view = ("only the sum of the surviving clients' updates (secure aggregation, modelled: not the cryptography)"
            if config.secure_aggregation else "each surviving client's update")
    return FederatedResult(config, config.dp_level, UNIT_TEXT[config.dp_level], sigma, client_q, delta, epsilon,
                           tuple(summaries), test_metrics, spread, std, tuple(records), baselines, view,
                           time.perf_counter() - t_start, unit, epsilon_patient,
                           tuple(loading_notes(splits)), state)


def _site_epsilon_patient(acc: ClientAccount | None, sigma: float, delta: float, k: int) -> float | None:
    """A site's epsilon per patient under sample-level DP-SGD: its mechanism (q_k, T_k) with the k images of one
    patient moving together (tight PLD, a sound upper bound), as training states it; None for k = 1 or a site that
    never took part (it released nothing: epsilon 0)."""
    if acc is None or k == 1 or acc.steps == 0:
        return None
    from dpaudit.bounds import epsilon_bound

    return float(epsilon_bound(sigma, acc.sampling_probability, acc.steps, delta, records_per_patient=k).value)


def _local_config(config: FederatedConfig, splits: Any, seed: int, sigma: float, batch: int,
                  delta: float | None) -> Any:
    """The TrainConfig of one client's local run (DP-SGD at ``sigma`` under sample-level DP, else plain)."""
    from dpaudit.audit.train import TrainConfig

    private = config.dp_level == "sample" and sigma > 0
    return TrainConfig(dataset=splits.name, image_size=config.image_size, arch=config.arch,
                       arch_args=config.arch_args, fix_batchnorm=config.fix_batchnorm, epochs=config.local_epochs, batch_size=batch, lr=config.lr,
                       max_grad_norm=config.max_grad_norm, seed=seed, noise_multiplier=sigma if private else None,
                       non_private=not private, target_delta=delta, device=config.device)


def _aggregate(config: FederatedConfig, state: Mapping[str, Any], updates: list[ClientUpdate], sigma: float,
               g_noise: Any) -> dict[str, Any]:
    """The server's new model from the surviving updates (float64 arithmetic, cast back to each tensor's dtype)."""
    import torch

    # A list in the state's order, not a set: the server's noise is drawn key by key from one generator, and a set
    # of strings iterates in the interpreter's per-process hash order (runs with one seed would differ).
    trainable = [k for k, v in state.items() if v.is_floating_point()]
    if config.dp_level == "client":
        c = config.max_grad_norm
        clipped = []
        for u in updates:
            norm = math.sqrt(sum(float((u.update[k] ** 2).sum()) for k in trainable))
            f = min(1.0, c / (norm + 1e-6))  # Opacus' clip-factor convention
            clipped.append({k: u.update[k] * f for k in trainable})
        if config.secure_aggregation:
            # Each client adds N(0, z^2 C^2 / t) before masking; the server learns the noisy sum only.
            t = config.threshold
            noisy = [{k: v + torch.randn(v.shape, generator=g_noise, dtype=torch.float64) * (sigma * c / math.sqrt(t))
                      for k, v in u.items()} for u in clipped]
            total = secure_sum(noisy)
        else:
            total = {k: sum(u[k] for u in clipped) for k in trainable}
            total = {k: v + torch.randn(v.shape, generator=g_noise, dtype=torch.float64) * (sigma * c)
                     for k, v in total.items()}
        agg = {k: v / config.expected_per_round for k, v in total.items()}
    else:
        weighted = [{k: u.update[k] * u.n_train for k in trainable} for u in updates]
        weight = sum(u.n_train for u in updates)
        total = secure_sum(weighted) if config.secure_aggregation else {
            k: sum(w[k] for w in weighted) for k in trainable}
        agg = {k: v / weight for k, v in total.items()}
    new = {}
    for k, v in state.items():
        if k in agg:
            new[k] = (v.double() + config.server_lr * agg[k]).to(v.dtype)
        else:
            new[k] = v.clone()
    return new


def _after_server_step(config: FederatedConfig, exc: NumericalError, round_: int) -> NumericalError:
    """A client's divergence (``exc``, naming ``--lr``) in a round after a server step with ``--server-lr`` above 1:
    that step may have left the global weights finite but large enough for the clients' next round to blow up, so
    the fix names ``--server-lr`` first (1, plain FedAvg), then a smaller ``--lr``. Otherwise ``exc`` unchanged."""
    if exc.field != "lr" or round_ == 0 or config.server_lr <= 1:
        return exc
    where = exc.allowed or ""
    return invalid("server_lr", config.server_lr, f"{where}, after the server's step of round {round_} of "
                   f"{config.rounds} scaled the clients' mean update by {config.server_lr:g}",
                   f"pass a smaller --server-lr, e.g. --server-lr 1 (plain FedAvg), or a smaller --lr "
                   f"(now {exc.value:g})", cls=NumericalError)


def _check_server_step(config: FederatedConfig, state: Mapping[str, Any], round_: int) -> None:
    """Stop when the server's step made the global model's weights nan or inf (the clients' own training stops
    with ``--lr`` named: :func:`dpaudit.audit.train.diverged`), naming ``--server-lr`` and a smaller value: 1
    (plain FedAvg) when it is above 1, else a tenth of it."""
    import torch

    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is None:
        return
    smaller = 1.0 if config.server_lr > 1 else config.server_lr / 10
    raise invalid("server_lr", config.server_lr, f"small enough that the global model stays finite (round "
                  f"{round_ + 1} of {config.rounds}: the server's step made {bad!r} nan or inf)",
                  f"pass a smaller --server-lr, e.g. --server-lr {smaller:g} (1: plain FedAvg), or a smaller --lr",
                  cls=NumericalError)


def _baselines(config: FederatedConfig, splits: Any, sigma: float) -> FederatedBaselines:
    from dpaudit.audit.train import TrainConfig, train

    private = config.dp_level != "none"
    central = train(TrainConfig(
        dataset=splits.name, image_size=config.image_size, arch=config.arch, arch_args=config.arch_args,
        fix_batchnorm=config.fix_batchnorm, epsilon=config.epsilon if private else None,
        noise_multiplier=config.noise_multiplier if private and config.epsilon is None else None,
        non_private=not private, target_delta=config.target_delta, epochs=config.rounds * config.local_epochs,
        batch_size=min(config.batch_size, len(splits.train)), lr=config.lr, max_grad_norm=config.max_grad_norm,
        seed=config.seed, threads=config.threads, device=config.device), splits=splits)
    plain = run_federated(replace(config, dp_level="none", epsilon=None, noise_multiplier=None, baselines=False,
                                  target_delta=None), splits=splits)
    return FederatedBaselines(float(central.metrics.mcc), central.epsilon_achieved, central.noise_multiplier,
                              float(plain.global_metrics.mcc), tuple(s.test_mcc for s in plain.clients))
