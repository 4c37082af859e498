"""The DP-SGD configuration shared by bounds, attacks, training and the report.

It keeps the raw mechanism parameters, not just epsilon: two runs with equal epsilon can differ in
reconstruction risk (seed paper, section 2.3).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from dpaudit.errors import check_int, check_positive, check_probability, invalid


def steps_for(epochs: int, n_train: int, expected_batch_size: int) -> int:
    """Number of DP-SGD steps for ``epochs`` passes with Poisson sampling at rate batch/N (integer arithmetic).

    One epoch is ceil(N / batch) steps, so that every record is expected to be seen once per epoch.
    """
    epochs = check_int("epochs", epochs)
    n_train = check_int("n_train", n_train)
    expected_batch_size = check_int("batch_size", expected_batch_size)
    if expected_batch_size > n_train:
        raise invalid("batch_size", expected_batch_size, f"at most the number of training images ({n_train})",
                      "pass a smaller --batch-size")
    return epochs * (-(-n_train // expected_batch_size))


@dataclass(frozen=True)
class DpSgdConfig:
    """One DP-SGD run as the accountant sees it.

    Attributes
    ----------
    noise_multiplier:
        sigma: standard deviation of the Gaussian noise divided by the clip norm. 0 means no noise (no DP).
    sampling_probability:
        q: Poisson sampling probability of each record per step (expected batch size / N).
    steps:
        T: number of noisy gradient releases the adversary sees.
    max_grad_norm:
        C: per-sample clip norm. The bounds do not depend on it; the attack's view does.
    target_delta:
        delta at which epsilon is reported. The ReRo bounds do not depend on it.
    """

    noise_multiplier: float
    sampling_probability: float
    steps: int
    max_grad_norm: float = 1.0
    target_delta: float = 1e-5

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", check_positive(
            "noise_multiplier", self.noise_multiplier, allow_zero=True,
            fix="pass the noise standard deviation divided by the clip norm, e.g. --sigma 1.0"))
        object.__setattr__(self, "sampling_probability", check_probability(
            "sampling_probability", self.sampling_probability, open_high=False,
            fix="pass the expected batch size divided by the number of training records, e.g. --q 0.01"))
        object.__setattr__(self, "steps", check_int(
            "steps", self.steps, fix="pass the number of DP-SGD steps, epochs * ceil(N / batch size)"))
        object.__setattr__(self, "max_grad_norm", check_positive(
            "max_grad_norm", self.max_grad_norm, fix="pass a positive clip norm, e.g. 1.0"))
        object.__setattr__(self, "target_delta", check_probability(
            "target_delta", self.target_delta, fix="pass a delta well below 1/N, e.g. 1e-5"))

    @property
    def is_private(self) -> bool:
        return self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)


def parse_trainable(trainable: str) -> int | None:
    """``all`` -> None, ``head`` -> 1, ``last-N`` -> N (the number of trailing layers with parameters to train)."""
    if trainable == "all":
        return None
    if trainable == "head":
        return 1
    m = re.fullmatch(r"last-(\d+)", trainable) if isinstance(trainable, str) else None
    if m is None or int(m.group(1)) < 1:
        raise invalid("trainable", trainable, "all, head or last-N with N >= 1",
                      "pass --trainable all, --trainable head (linear probe) or --trainable last-2")
    return int(m.group(1))
