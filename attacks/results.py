"""The frozen results of the imprint-layer attack (numpy only, no torch: the profile's schema and the report use
them without loading the attack)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from dpaudit.attacks.decoders import DECODERS
from dpaudit.codec import encode
from dpaudit.errors import ConfigError, invalid

#: The seed paper's success criterion (Table 3 caption): SSIM higher than 80%. The one definition: scoring counts
#: with it and stores it in every attack result (``success_ssim``), and every text that names the criterion formats
#: the stored value.
SUCCESS_SSIM = 0.8


def frozen_array(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class AttackRow:
    """Success of one decoder at one noise level (empirical, over ``n_images`` scored images).

    ``ci_low``/``ci_high``: exact 95% Clopper-Pearson interval of ``success_rate`` (the share of images with SSIM
    above the result's ``success_ssim``).
    ``ssim``/``eta``: per scored image (eta: per-value noise std after pooling the active rows, normalised units).
    """

    noise_multiplier: float
    epsilon: float | None
    decoder: str
    n_images: int
    success_rate: float
    ci_low: float
    ci_high: float
    mean_ssim: float
    mean_rho: float
    ssim: np.ndarray = field(repr=False)
    eta: np.ndarray = field(repr=False)
    # The kept reconstructions (``keep_images``): in memory for plots, never in JSON (patient images).
    best_indices: np.ndarray = field(repr=False, default_factory=lambda: frozen_array(np.zeros(0, dtype=np.int64)),
                                     metadata={"json": False})
    best_images: np.ndarray = field(repr=False, default_factory=lambda: frozen_array(np.zeros((0, 1, 1, 1))),
                                    metadata={"json": False})

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise invalid("decoder", self.decoder, f"one of {', '.join(map(str, DECODERS))}")
        if not 0.0 <= self.ci_low <= self.success_rate <= self.ci_high <= 1.0:
            raise ConfigError(f"AttackRow: need 0 <= ci_low <= success_rate <= ci_high <= 1, got "
                              f"{self.ci_low}, {self.success_rate}, {self.ci_high}.")
        if len(self.ssim) != self.n_images or len(self.eta) != self.n_images:
            raise ConfigError(f"AttackRow: {len(self.ssim)} SSIM values for {self.n_images} images.")
        for name in ("ssim", "eta", "best_indices", "best_images"):
            object.__setattr__(self, name, frozen_array(getattr(self, name)))

    def __eq__(self, other: object) -> bool:
        # Arrays compare element-wise: two rows are equal when their JSON forms are.
        return type(other) is type(self) and encode(self) == encode(other)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class EpsilonMechanism:
    """The DP-SGD mechanism each row's ``epsilon`` is computed for: the seed paper's attack scenario (Table 3
    caption: the malicious server sets batch size 1, so q = 1 / n_train and T = epochs * n_train), the row's noise
    multiplier, accounted per record (one image or slice) at ``target_delta`` by ``accountant``.

    Without it an epsilon is not a statement: the same sigma gives another epsilon at another q, T or delta."""

    n_train: int
    epochs: int
    sampling_probability: float
    steps: int
    target_delta: float
    accountant: str
    #: Where n_train, epochs and target_delta came from: the scenario's options or the checkpoint's record.
    source: str = "checkpoint"

    def describe(self) -> str:
        """``batch size 1, q = 1/72, T = 1 * 72 steps, delta = 8e-07, PLD accountant``, as the console prints it."""
        return (f"batch size 1, q = 1/{self.n_train}, T = {self.epochs} * {self.n_train} steps, delta = "
                f"{self.target_delta:g}, {self.accountant.upper()} accountant")


@dataclass(frozen=True)
class AttackResult:
    """Everything ``run_attack`` measured. Rows are ordered by noise level, then decoder as requested.

    ``rho``: the block's share of the per-sample gradient norm per scored image (independent of sigma).
    ``n_excluded``: images left out for having at most 10% non-zero pixels (seed paper, section 4.3).
    ``notes``: what a reader must know to read the rows (e.g. why a row's epsilon is not the one asked for).
    ``success_ssim``: an image counts as reconstructed when its SSIM exceeds this (:data:`SUCCESS_SSIM`).
    """

    rows: tuple[AttackRow, ...]
    n_excluded: int
    image_shape: tuple[int, int, int]
    ssim_variant: str
    rho: np.ndarray = field(repr=False)
    connection: str = "linear"
    bins: int = 10
    max_grad_norm: float = 1.0
    observations: int = 1
    scoring: str = "nearest"
    seed: int = 0
    notes: tuple[str, ...] = ()
    success_ssim: float = SUCCESS_SSIM
    #: The mechanism behind the rows' epsilons (None: the rows replay noise multipliers given as such, and carry
    #: no epsilon).
    epsilon_mechanism: EpsilonMechanism | None = None
    #: What the data loader passed over and decided (counts only, no identifiers), as train's ``data_notes``.
    data_notes: tuple[str, ...] = ()

    #: What kind of number each field of the rows is (written to JSON beside them, as every result's ``labels``).
    LABELS: ClassVar[dict[str, str]] = {
        "rows[].success_rate": "empirical (a lower bound on reconstruction risk: a stronger attack may do better)",
        "rows[].ci_low, rows[].ci_high": "empirical (exact 95% Clopper-Pearson interval of success_rate)",
        "rows[].mean_ssim, rows[].ssim, rows[].mean_rho, rho": "empirical",
        "rows[].eta": "empirical (per image: the per-value noise std the attacker sees after pooling the active "
                      "rows, normalised units, from the row's sigma, the clip norm and that image's measured "
                      "gradient)",
        "rows[].epsilon": "sound upper bound, per record (image or slice), of the row's noise multiplier in the "
                          "attack scenario epsilon_mechanism (q, T, target_delta, accountant); null where the noise "
                          "was given as a multiplier"}
    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("labels",)

    @property
    def labels(self) -> dict[str, str]:
        labels = dict(self.LABELS)
        m = self.epsilon_mechanism
        if m is not None:
            tight = "tight PLD accountant" if m.accountant == "pld" else "RDP accountant, Opacus' orders"
            labels["rows[].epsilon"] = (
                f"sound upper bound ({tight}), per record (image or slice), at delta = {m.target_delta:g}, of the "
                f"row's noise multiplier in the attack scenario epsilon_mechanism ({m.describe()})")
        return labels

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows))
        object.__setattr__(self, "notes", tuple(str(n) for n in self.notes))
        object.__setattr__(self, "data_notes", tuple(str(n) for n in self.data_notes))
        object.__setattr__(self, "image_shape", tuple(int(v) for v in self.image_shape))
        object.__setattr__(self, "rho", frozen_array(self.rho))

    @property
    def noise_multipliers(self) -> tuple[float, ...]:
        return tuple(dict.fromkeys(r.noise_multiplier for r in self.rows))

    def headline(self) -> tuple[AttackRow, ...]:
        """Per noise level, the row of the strongest decoder (highest success, then highest mean SSIM).

        An auditor must not under-state risk: this is the number to report, with the decoder's name.
        """
        out = []
        for sigma in self.noise_multipliers:
            rows = [r for r in self.rows if r.noise_multiplier == sigma]
            # Mean SSIMs within 1e-9 are round-off (float32 views): the first requested decoder keeps the tie.
            out.append(max(rows, key=lambda r: (r.success_rate, round(r.mean_ssim, 9))))
        return tuple(out)
