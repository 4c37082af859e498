"""Frozen results of the federated bin attack (no torch: the profile schema and the report read them)."""

from __future__ import annotations

from dataclasses import dataclass

from dpaudit.codec import encode


@dataclass(frozen=True)
class FederatedAttackRow:
    """Success of the bin attack in one setting (empirical, over ``n_images`` images of the attacked rounds).

    ``success_rate``: share of the round's images whose nearest reconstruction has SSIM > 0.8 (empirical, a lower
    bound on the risk); ``ci_low``/``ci_high``: exact two-sided 95% Clopper-Pearson interval. ``alone_share``:
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

    def to_json(self) -> dict[str, object]:
        """The ``--json`` object of ``dpaudit federated attack``: ``{"rows": [...], ...}``."""
        return {"rows": encode(self.rows), "rounds": self.rounds, "decoder": self.decoder,
                "ssim_variant": self.ssim_variant, "threat_model": self.threat_model,
                "thresholds_from": self.thresholds_from, "max_grad_norm": self.max_grad_norm,
                "labels": {"success_rate": "empirical (SSIM > 0.8, nearest matching over the round's images), a "
                                           "lower bound on reconstruction risk",
                           "ci_low, ci_high": "exact 95% Clopper-Pearson interval",
                           "alone_share": "empirical (images alone in their bin)",
                           "expected_alone_share": "estimate, (1 - 1/K)^(M - 1)"}}
