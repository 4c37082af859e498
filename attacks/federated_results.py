"""The federated bin attack's configuration and frozen results (no torch: the profile schema and the report read
the results, the command line the configuration's defaults)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dpaudit.attacks.results import SUCCESS_SSIM
from dpaudit.config import (
    DEFAULT_ARCH,
    DEFAULT_DATASET,
    check_max_images,
    check_replayed_noise,
    image_size_for,
)
from dpaudit.errors import ConfigError, check_int, check_positive, invalid
from dpaudit.runtime import check_device


@dataclass(frozen=True)
class FederatedAttackConfig:
    """The bin attack experiment: ``rounds`` rounds of ``clients`` clients with ``batch_size`` images each, per
    noise multiplier; the server's block has ``bins`` rows.

    The data (``dataset`` ... ``slice_axis``) and the downstream model (``arch``, ``arch_args``, ``fix_batchnorm``)
    are given as :class:`dpaudit.audit.train.TrainConfig` takes them; every client runs Opacus, so a BatchNorm layer
    is refused unless ``fix_batchnorm`` replaces it by GroupNorm."""

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
    clients: int = 4
    batch_size: int = 2
    bins: int = 32
    noise_multipliers: tuple[float, ...] = (0.0, 1e-3, 0.1)
    secure_aggregation: bool = False
    rounds: int = 8
    max_grad_norm: float = 1.0
    lr: float = 1.0
    denoiser: str = "tv"
    seed: int = 0
    threads: int | None = None
    #: Where the clients' Opacus steps run (``auto``, ``cpu``, ``cuda``, ``cuda:N``); decoding stays on the CPU.
    device: str = "auto"

    def __post_init__(self) -> None:
        check_int("clients", self.clients, fix="pass --clients 4")
        check_int("batch_size", self.batch_size, fix="pass --batch-size 2")
        check_int("bins", self.bins, minimum=2, fix="pass --bins 32")
        check_int("rounds", self.rounds, fix="pass --rounds 8")
        object.__setattr__(self, "image_size", image_size_for(self.dataset, self.image_size))
        if check_max_images(self.max_images) is not None:
            if self.images_needed > self.max_images:  # the training split is only about 70% of them
                raise ConfigError(too_few_images(self, self.max_images, loaded=True))
        from dpaudit.models import parse_arch

        parse_arch(self.arch)
        object.__setattr__(self, "arch_args", dict(self.arch_args))
        sig = tuple(float(s) for s in self.noise_multipliers)
        if not sig or any(not (math.isfinite(s) and s >= 0) for s in sig):
            raise invalid("noise_multipliers", self.noise_multipliers, "a non-empty list of numbers >= 0",
                          "pass e.g. --sigmas 0,1e-3,0.1")
        for s in sig:
            check_replayed_noise("noise_multipliers", s, fix="pass e.g. --sigmas 0,1e-3,0.1")
        object.__setattr__(self, "noise_multipliers", sig)
        check_positive("max_grad_norm", self.max_grad_norm, fix="pass --max-grad-norm 1.0")
        check_positive("lr", self.lr, fix="pass lr > 0, e.g. 1.0 (the server undoes it when decoding)")
        check_int("seed", self.seed, minimum=0, fix="pass --seed 0 or another whole number >= 0")
        if self.threads is not None:
            check_int("threads", self.threads, fix="pass --threads 1 or more, or leave it out (the idle cores)")
        check_device(self.device)
        from dpaudit.data import check_data_options, parse_window

        check_data_options(self.dataset, data_dir=self.data_dir, labels=self.labels, window=self.window)
        object.__setattr__(self, "window", parse_window(self.window))

    @property
    def images_needed(self) -> int:
        """Training images the experiment attacks: fresh ones in every round, ``batch_size`` per client."""
        return self.rounds * self.clients * self.batch_size


def too_few_images(config: FederatedAttackConfig, have: int, *, loaded: bool = False) -> str:
    """The error when the training split (or, ``loaded``, the --max-images asked) cannot supply every round."""
    per_round = config.clients * config.batch_size
    what = f"--max-images {have} loads at most {have}" if loaded else f"the training split holds {have}"
    fits = int(0.7 * have) // per_round if loaded else have // per_round
    # The loaders keep about 70% of the images for training (70/15/15): ask for enough that the split holds them.
    enough = math.ceil(config.images_needed / 0.7) + 3
    fewer = (f"or fewer --rounds ({'about ' if loaded else 'at most '}{fits} fit)" if fits >= 1 else
             f"or fewer --clients or a smaller --batch-size (one round needs {per_round})")
    more = (f"pass --max-images {enough} or more (the training split is about 70% of the images)"
            if loaded or config.max_images is not None else "pass a dataset with more images")
    return (f"too few training images for the attack: {config.rounds} round(s) x {config.clients} client(s) x batch "
            f"{config.batch_size} attack {config.images_needed} distinct training images, and {what}. Fix: {more} "
            f"{fewer}.")


@dataclass(frozen=True)
class FederatedAttackRow:
    """Success of the bin attack in one setting (empirical, over ``n_images`` images of the attacked rounds).

    ``success_rate``: share of the round's images whose nearest reconstruction has SSIM above the result's
    ``success_ssim`` (empirical, a lower bound on the risk); ``ci_low``/``ci_high``: exact two-sided 95%
    Clopper-Pearson interval. ``images_per_view`` (a count: the batch, or n x batch under secure aggregation) and
    ``noise_std_per_view`` (a setting: the per-entry noise std of one view, sqrt(n) sigma C, n the clients summed
    into it) say what the server saw and carry no label. ``alone_share``:
    share of images that were alone in their bin (measured: what a noise-free attack could recover);
    ``expected_alone_share``: (1 - 1/K)^(M - 1) for M images in one view and K equal-probability bins (estimate;
    the server's bins are equal-probability only under its assumed distribution). An image of a round in which no
    bin was declared occupied has no reconstruction and counts with SSIM 0 (a failure). The gap between the two shares
    and ``success_rate`` is what noise costs; the gap between 1 and ``alone_share`` is what collisions cost.
    """

    noise_multiplier: float
    clients: int
    batch_size: int
    bins: int
    secure_aggregation: bool
    n_images: int
    success_rate: float
    ci_low: float
    ci_high: float
    mean_ssim: float
    alone_share: float
    expected_alone_share: float
    images_per_view: int
    noise_std_per_view: float
    bins_declared_occupied: float


def row_labels(success_ssim: float) -> dict[str, str]:
    """What kind of number each column of a :class:`FederatedAttackRow` is (``dpaudit federated attack --json``,
    the profile's ``federated.attack[]``)."""
    return {"success_rate": f"empirical (SSIM > {success_ssim:g}, nearest matching over the round's images), a "
                            "lower bound on reconstruction risk",
            "ci_low, ci_high": "empirical (exact 95% Clopper-Pearson interval of success_rate)",
            "alone_share": "empirical (images alone in their bin)",
            "expected_alone_share": "estimate, (1 - 1/K)^(M - 1)",
            "bins_declared_occupied": "empirical, bins the occupancy test declared occupied, mean per view",
            "mean_ssim": "empirical, mean over the round's images of the SSIM of the nearest reconstruction"}


@dataclass(frozen=True)
class FederatedAttackResult:
    """The bin attack's table, one row per (noise_multiplier, clients, batch_size, bins, secure_aggregation)."""

    rows: tuple[FederatedAttackRow, ...]
    rounds: int
    decoder: str
    ssim_variant: str
    threat_model: str
    thresholds_from: str
    max_grad_norm: float

    success_ssim: float = SUCCESS_SSIM
    #: What the data loader passed over and decided (counts only, no identifiers), as train's ``data_notes``.
    data_notes: tuple[str, ...] = ()

    #: Written to JSON beside the fields (``dpaudit federated attack --json``, through dpaudit.codec).
    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("labels",)

    @property
    def labels(self) -> dict[str, str]:
        """What kind of number each column of the rows is."""
        return row_labels(self.success_ssim)
