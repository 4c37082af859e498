"""The imprint block, the once-per-image gradient statistics, and the exact DP-SGD replay.

Threat model (seed paper, Ziller et al., "Reconciling AI Performance and Data Reconstruction Resilience for Medical
Imaging", sections 2.4 and 4.3): a malicious federated-learning server prepends an imprint block ("Robbing the Fed",
Fowl, Geiping et al., ICLR 2022) to the model and sets the batch size to 1. The block is a linear layer D -> K
whose rows all hold the same linear query ``w`` (the mean of the normalised pixels) times a gain, with increasing
thresholds, followed by a ReLU. For one sample every active row ``i`` has weight gradient ``delta * x`` and bias
gradient ``delta`` with the same ``delta``, so ``x = grad W_i / grad b_i`` exactly.

The network is needed once per image: one forward and backward pass gives ``delta``, the highest active row ``m``
and the total per-sample gradient norm ``G`` (block included). For any clip norm ``C`` and noise multiplier
``sigma`` the attacker's view of the block is then exactly (Opacus 1.6 semantics, batch size 1)::

    f * delta * [x, 1]   on rows 0..m   (zero on rows m+1..K-1)   +   N(0, sigma^2 C^2)   on every entry,
    f = min(1, C / (G + 1e-6))

The noise drawn on the other parameters never reaches the block's decoders, so it is not drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch
from dpaudit.errors import ConfigError, check_int, check_positive, invalid
from torch import nn

CONNECTIONS = ("linear", "addition")

#: Opacus 1.6 ``clip_factor = max_grad_norm / (per_sample_norm + 1e-6)``, clamped at 1
#: (``opacus/optimizers/optimizer.py``, ``clip_and_accumulate``).
OPACUS_CLIP_EPS = 1e-6

#: Below this share of the per-sample gradient norm (first image) the block is refused as dead. The linear
#: connection exists to give the block almost all of the norm: with the random pattern we measured rho > 0.98 on
#: ResNet-9 and the small CNN, with breaching's constant pattern 0.002-0.06 (the padding borders of the first
#: convolution keep it from exactly 0; 1e-8 without padding). The addition connection is weak by design
#: (rho 0.02-0.3 measured), so only an exactly vanishing gradient is refused there.
DEAD_BLOCK_RHO = {"linear": 0.1, "addition": 1e-6}


def _normal_quantiles(bins: int) -> np.ndarray:
    """Equal-probability quantiles of N(0, 1): the attacker's assumed distribution of ``w . x``.

    The attacker does not know the data; breaching (``ImprintBlock._get_bins``, April 2023) makes the same
    assumption for the average query.
    """
    return np.array([NormalDist().inv_cdf(i / bins) for i in range(1, bins)])


def block_thresholds(bins: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Thresholds ``t_0 < t_1 < ... < t_{K-1}`` of the block's rows on the query ``w . x``.

    ``t_0`` lies one unit below the smallest value the mean of the normalised pixels can take (an all-black
    image), so row 0 fires for every input; ``t_1..t_{K-1}`` are equal-probability quantiles of N(0, 1).
    """
    floor = float(np.min(-np.asarray(mean, dtype=np.float64) / np.asarray(std, dtype=np.float64))) - 1.0
    return np.concatenate([[floor], _normal_quantiles(bins)])


class ImprintBlock(nn.Module):
    """The malicious block the server prepends to the model (it sees normalised images).

    Parameters
    ----------
    image_shape:
        (C, H, W) of the model's input.
    mean, std:
        Per-channel normalisation of the model's input (used to put row 0's threshold below every value).
    bins:
        K, the number of rows (10 in the seed paper, section 4.3).
    connection:
        ``"linear"``: the downstream model sees ``(sum of activations) / gain`` times a fixed random pattern plus a
        fixed random offset pattern. ``"addition"``: it sees ``x + mean(activations)`` (the stealthy variant of the
        paper's text; the block then holds a small share of the gradient norm).
    gain:
        Scale of the block's rows (breaching's default 1e-3). With the linear connection the forward pass does not
        depend on it and ``delta`` grows as 1 / gain, so the block holds almost all of the gradient norm.
    pattern:
        ``"random"`` (default) or ``"constant"``. The constant pattern is breaching's layout (all-ones readout,
        constant bias): a bias-free convolution followed by GroupNorm is invariant to the scale of a constant
        image, the block's gradient vanishes and the attack silently dies. It exists to show the pitfall;
        :func:`image_statistics` refuses it with a clear error.
    seed:
        Seed of the fixed patterns.

    Notes
    -----
    A random pattern alone is not enough: ``s * P`` is scale-invariant under the same normalisation whatever ``P``
    is. The fixed random offset pattern ``Q`` breaks the invariance (breaching's readout bias plays this role, but
    it is constant and is cancelled too).
    """

    def __init__(self, image_shape: tuple[int, int, int], *, mean: np.ndarray, std: np.ndarray, bins: int = 10,
                 connection: str = "linear", gain: float = 1e-3, pattern: str = "random", seed: int = 0) -> None:
        super().__init__()
        bins = check_int("bins", bins, minimum=2, fix="pass --bins 10 (the seed paper's value)")
        if connection not in CONNECTIONS:
            raise invalid("connection", connection, f"one of {list(CONNECTIONS)}", "pass --connection linear")
        if pattern not in ("random", "constant"):
            raise invalid("pattern", pattern, "'random' or 'constant'")
        gain = check_positive("gain", gain)
        c, h, w = (int(v) for v in image_shape)
        d = c * h * w
        self.image_shape = (c, h, w)
        self.bins, self.connection, self.gain, self.pattern_kind = bins, connection, gain, pattern
        self.register_buffer("thresholds", torch.as_tensor(block_thresholds(bins, mean, std), dtype=torch.float32))
        # Every row holds the same query w = mean of the normalised pixels, times the gain; bias_i = -gain * t_i.
        self.weight = nn.Parameter(torch.full((bins, d), gain / d, dtype=torch.float32))
        self.bias = nn.Parameter(-gain * self.thresholds.clone())
        gen = torch.Generator().manual_seed(int(seed))
        if pattern == "random":
            readout = torch.randn(image_shape, generator=gen) / bins
            offset = torch.randn(image_shape, generator=gen)
        else:  # breaching: readout weights all ones (/gain), readout bias -mean(thresholds): a constant image.
            readout = torch.ones(image_shape)
            offset = torch.full(image_shape, -float(self.thresholds.mean()))
        self.register_buffer("readout", readout)
        self.register_buffer("offset", offset)

    def connect(self, activations: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Map the K activations (batch x K) back to the input shape (batch x C x H x W)."""
        if self.connection == "linear":
            s = activations.sum(dim=1) / self.gain
            return s[:, None, None, None] * self.readout + self.offset
        return x + activations.mean(dim=1)[:, None, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.linear(x.flatten(start_dim=1), self.weight, self.bias)
        return self.connect(torch.relu(h), x)


class ImprintedModel(nn.Module):
    """``model(block(x))``: what the malicious server ships to the client."""

    def __init__(self, block: ImprintBlock, model: nn.Module) -> None:
        super().__init__()
        self.block, self.model = block, model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.block(x))


@dataclass(frozen=True)
class ImageStatistics:
    """What one forward and backward pass per image tells the attacker (arrays over images).

    Attributes
    ----------
    delta:
        Gradient of the loss with respect to the pre-activation of every active row (the same for all of them).
    active_rows:
        m, the highest active row (rows 0..m fire; row 0 always does).
    grad_norm:
        G, the L2 norm of the whole per-sample gradient (block and model), before clipping.
    block_norm:
        L2 norm of the block's part of the gradient: ``|delta| * sqrt(m + 1) * |[x, 1]|``.
    x_norm1:
        ``|[x, 1]|`` for the normalised image x.
    """

    delta: np.ndarray
    active_rows: np.ndarray
    grad_norm: np.ndarray
    block_norm: np.ndarray
    x_norm1: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.delta)
        for name in ("active_rows", "grad_norm", "block_norm", "x_norm1"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"ImageStatistics.{name} has {len(getattr(self, name))} entries, expected {n}.")

    @property
    def rho(self) -> np.ndarray:
        """The block's share of the per-sample gradient norm (empirical, per image)."""
        return self.block_norm / self.grad_norm

    def clip_factor(self, max_grad_norm: float) -> np.ndarray:
        """Opacus' per-sample clip factor ``min(1, C / (G + 1e-6))``."""
        return np.minimum(1.0, max_grad_norm / (self.grad_norm + OPACUS_CLIP_EPS))

    def eta(self, noise_multiplier: float, max_grad_norm: float, observations: int = 1) -> np.ndarray:
        """Per-value noise std the attacker sees after pooling the active rows, in normalised-pixel units.

        ``eta = sigma_eff * C / (f * |delta| * sqrt(m + 1))`` with ``sigma_eff = sigma / sqrt(T)``; while clipping is
        active (f G = C) this is the spec's ``sigma * |[x, 1]| / rho``.
        """
        f = self.clip_factor(max_grad_norm)
        sigma_eff = noise_multiplier / np.sqrt(observations)
        with np.errstate(divide="ignore"):
            return sigma_eff * max_grad_norm / (f * np.abs(self.delta) * np.sqrt(self.active_rows + 1.0))


def _normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (images - mean[:, None, None]) / std[:, None, None]


def image_statistics(model: nn.Module, block: ImprintBlock, images: torch.Tensor, labels: torch.Tensor, *,
                     mean: np.ndarray, std: np.ndarray, progress=None) -> ImageStatistics:
    """One forward and backward pass per image (batch size 1): delta, m, G.

    The block's K x D weight gradient is never formed: the pre-activations ``h`` are a leaf of the graph and
    ``grad W_i = dL/dh_i * x``, ``grad b_i = dL/dh_i`` by the chain rule (checked against autograd through
    :class:`ImprintBlock` in the tests).

    Raises
    ------
    ConfigError
        When the block holds less than ``DEAD_BLOCK_RHO`` of the gradient norm of the first image (the
        constant-pattern pitfall: normalisation after a bias-free layer cancels the block's output).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    m_t = torch.as_tensor(np.asarray(mean), dtype=torch.float32)
    s_t = torch.as_tensor(np.asarray(std), dtype=torch.float32)
    n = images.shape[0]
    delta = np.zeros(n)
    active = np.zeros(n, dtype=np.int64)
    gnorm = np.zeros(n)
    bnorm = np.zeros(n)
    xnorm1 = np.zeros(n)
    thresholds = block.thresholds.detach()
    was_training = model.training
    model.train()  # the client computes its update in training mode
    try:
        for i in range(n):
            x = _normalise(images[i].float(), m_t, s_t)[None]
            with torch.no_grad():
                q = x.mean()  # w . x (all rows hold the same query; the gain is applied below)
                h0 = block.gain * (q - thresholds)
            h = h0.clone().requires_grad_(True)
            inp = block.connect(torch.relu(h)[None], x)
            loss = torch.nn.functional.cross_entropy(model(inp), labels[i : i + 1].long())
            grads = torch.autograd.grad(loss, [h, *params], allow_unused=True)
            dh = grads[0].double()
            act = (h0 > 0).numpy()
            m = int(np.nonzero(act)[0].max())
            d = float(dh[0])
            x1 = float(torch.sqrt((x.double() ** 2).sum() + 1.0))
            model_sq = float(sum((g.double() ** 2).sum() for g in grads[1:] if g is not None))
            block_norm = abs(d) * np.sqrt(m + 1) * x1
            delta[i], active[i], bnorm[i], xnorm1[i] = d, m, block_norm, x1
            gnorm[i] = np.sqrt(model_sq + block_norm**2)
            if i == 0 and not block_norm > DEAD_BLOCK_RHO[block.connection] * gnorm[0]:
                raise ConfigError(
                    f"the imprint block holds {block_norm / max(gnorm[0], 1e-300):.2e} of the per-sample gradient "
                    f"norm (row 0's bias gradient is {d:.2e}): the downstream model is invariant to the block's "
                    f"output (a bias-free layer followed by GroupNorm cancels a constant pattern; the "
                    f"{block.connection} connection needs at least {DEAD_BLOCK_RHO[block.connection]:g}). Fix: use "
                    "the random readout pattern (pattern='random'), or the addition connection.")
            if progress is not None:
                progress(1)
    finally:
        model.train(was_training)
    return ImageStatistics(delta, active, gnorm, bnorm, xnorm1)


def clean_block_gradient(x: np.ndarray, delta: float, active_rows: int, bins: int, factor: float) -> np.ndarray:
    """The clipped, noise-free block gradient ``f * delta * [x, 1]`` on rows 0..m (K x (D+1), float32)."""
    rows = np.zeros((bins, x.size + 1), dtype=np.float32)
    v = np.empty(x.size + 1, dtype=np.float64)
    v[:-1] = x.ravel()
    v[-1] = 1.0
    rows[: active_rows + 1] = (factor * delta * v).astype(np.float32)
    return rows


def replay(clean: np.ndarray, standard_noise: np.ndarray, noise_multiplier: float, max_grad_norm: float,
           observations: int = 1) -> np.ndarray:
    """The attacker's view for one noise level: ``clean + sigma C / sqrt(T) * xi`` (batch size 1).

    ``standard_noise`` is xi ~ N(0, I) of the clean block's shape. The same xi serves every noise level (common
    random numbers): each level's view is exactly distributed as DP-SGD's, and levels differ only by sigma. The
    mean of T independent noisy observations of the same gradient is distributed as one with sigma / sqrt(T).
    """
    scale = noise_multiplier * max_grad_norm / np.sqrt(observations)
    if scale == 0.0:
        return clean.copy()
    return clean + np.float32(scale) * standard_noise
