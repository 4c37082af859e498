"""The bin attack of a malicious federated-learning server on one round of federated DP-SGD.

Threat model (seed paper, Ziller et al., sections 2.4 and 4.3; binning as in "Robbing the Fed", Fowl, Geiping et
al., ICLR 2022, arXiv 2110.13057, section 3): the server chooses the architecture and the hyperparameters. It
prepends a block of K rows to the model, every row holding the same linear query w (the mean of the normalised
pixels, times a gain) and thresholds t_0 < t_1 < ... < t_{K-1}: t_0 lies below any value (row 0 always fires),
t_1..t_{K-1} at equal-probability quantiles of w.x over the data distribution the server assumes (here: the
validation split, which stands for the server's public data; it never holds the attacked images). Each client runs
ONE local DP-SGD step (real Opacus 1.6: ``GradSampleModule`` + ``DPOptimizer``, batch B, per-sample clip C, noise
sigma C on the sum, division by B, plain SGD with step ``lr``) on the model that holds the block, and sends its
model update. The server does not change the DP mechanism.

The block is made of ordinary layers Opacus supports: ``nn.Flatten``, a plain ``nn.Linear(D, K)``, ``nn.ReLU``
and a parameter-free connection back to the image shape (the linear connection of :mod:`dpaudit.attacks.imprint`:
(sum of activations) / gain times a fixed random pattern, plus a fixed random offset).

What the server sees (spec ``federated.md`` section 2): without secure aggregation each client's update; with it
only the sum over the round's n clients (a model of what secure aggregation reveals, not its cryptography). Under
sample-level DP each client adds its own noise, so the sum carries n times one client's noise variance.

Decoding (spec section 3). The server undoes the known scaling (G = -update * B / lr). For the linear connection
every row of sample j receives the same upstream gradient d_j, so row i holds sum_{j: w.x_j > t_i} f_j d_j [x_j, 1]
(f_j the clip factor) plus N(0, n sigma^2 C^2) per entry. The difference of rows i and i+1 keeps only the samples
with t_i < w.x_j <= t_{i+1}; the top row is its own bin. Differencing doubles the noise variance. A bin is declared
occupied by a generalised likelihood-ratio test against "noise only" (known variance s^2): the chi-square statistic
|bin|^2 / s^2 over its D + 1 entries above (D + 1) + 4 sqrt(2 (D + 1)) (a 4-standard-deviation threshold of the
chi-square null; the spec's test on the bias difference alone uses one of these D + 1 entries). An occupied bin
gives x = dW / db, denoised at its known noise level with the strong decoder's total-variation step
(:func:`dpaudit.attacks.decoders.decode_pooled`); nothing is averaged across bins. Scoring: every image of the
round gets its nearest reconstruction (over all bins of all views of the round), success is SSIM > 0.8.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dpaudit.attacks.decoders import Layout, decode_pooled
from dpaudit.attacks.federated_results import (
    FederatedAttackConfig,
    FederatedAttackResult,
    FederatedAttackRow,
    too_few_images,
)
from dpaudit.attacks.results import SUCCESS_SSIM
from dpaudit.attacks.scoring import SSIM_VARIANT, NearestMatcher, clopper_pearson, ssim_batch
from dpaudit.errors import ConfigError, DataError, check_int

__all__ = ["BinDecoding", "BinImprintBlock", "FederatedAttackConfig", "attack_views", "bin_thresholds",
           "client_update", "decode_bins", "run_federated_attack", "server_views"]

#: Default row gain (breaching's default 1e-3, as :class:`dpaudit.attacks.imprint.ImprintBlock`): with the linear
#: connection the forward pass does not depend on it and the block's gradient grows as 1 / gain, so the block holds
#: almost all of the per-sample gradient norm.
GAIN = 1e-3

#: Standard deviations above the chi-square null's mean at which a bin is declared occupied (false alarm per bin
#: about 3e-5 in the Gaussian approximation of the chi-square with D + 1 >= 50 degrees of freedom).
OCCUPIED_Z = 4.0

#: Relative floating-point floor of the bin test (float32 model updates): a bin whose norm is below 1e-6 of the
#: largest row's is empty even without noise.
FLOAT_FLOOR = 1e-6


def bin_thresholds(query_values: np.ndarray, bins: int, floor: float) -> np.ndarray:
    """``t_0 = floor`` (below any value) and t_1..t_{K-1} at the i/K quantiles of the assumed ``w.x`` values."""
    bins = check_int("bins", bins, minimum=2, fix="pass --bins 32")
    q = np.quantile(np.asarray(query_values, dtype=np.float64), np.arange(1, bins) / bins)
    return np.concatenate([[floor], q])


class _LinearConnection(nn.Module):
    """Parameter-free: (sum of the K activations) / gain times a fixed random pattern, plus a fixed offset."""

    def __init__(self, image_shape: tuple[int, int, int], bins: int, gain: float, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(int(seed))
        self.gain = gain
        # Random, non-constant patterns: a constant one is cancelled by GroupNorm after a bias-free convolution
        # (see dpaudit.attacks.imprint.ImprintBlock, Notes).
        self.register_buffer("readout", torch.randn(image_shape, generator=gen) / bins)
        self.register_buffer("offset", torch.randn(image_shape, generator=gen))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        s = a.sum(dim=1) / self.gain
        return s[:, None, None, None] * self.readout + self.offset


class BinImprintBlock(nn.Module):
    """The server's block: Flatten -> Linear(D, K) -> ReLU -> parameter-free linear connection.

    Row i: weight ``gain / D`` (the mean of the normalised pixels), bias ``-gain * t_i``.
    """

    def __init__(self, image_shape: tuple[int, int, int], thresholds: np.ndarray, *, gain: float = GAIN,
                 seed: int = 0) -> None:
        super().__init__()
        c, h, w = (int(v) for v in image_shape)
        d, k = c * h * w, len(thresholds)
        self.image_shape, self.bins = (c, h, w), k
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(d, k)
        with torch.no_grad():
            self.linear.weight.fill_(gain / d)
            self.linear.bias.copy_(torch.as_tensor(-gain * np.asarray(thresholds), dtype=torch.float32))
        self.relu = nn.ReLU()
        self.connection = _LinearConnection((c, h, w), k, gain, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.connection(self.relu(self.linear(self.flatten(x))))


def client_update(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, noise_multiplier: float,
                  max_grad_norm: float, lr: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One local DP-SGD step with real Opacus on a copy of ``model``; returns the update (new - old, float64, on the
    CPU).

    ``images`` are normalised and on the model's device, as ``generator`` (Opacus draws the noise there); the batch
    is all of them (B = len(images), Opacus' expected batch size).
    """
    from opacus.grad_sample import GradSampleModule
    from opacus.optimizers import DPOptimizer

    local = copy.deepcopy(model)
    old = {k: v.detach().double().clone() for k, v in local.state_dict().items()}
    local.train()
    net = GradSampleModule(local, batch_first=True, loss_reduction="mean")
    opt = DPOptimizer(torch.optim.SGD(net.parameters(), lr=lr), noise_multiplier=noise_multiplier,
                      max_grad_norm=max_grad_norm, expected_batch_size=len(images), loss_reduction="mean",
                      generator=generator)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss = nn.functional.cross_entropy(net(images), labels)
        loss.backward()
    opt.step()
    new = local.state_dict()
    return {k: (new[k].double() - old[k]).cpu() for k in old}  # the server's view, on the CPU (a no-op there)


def server_views(updates: Sequence[Mapping[str, torch.Tensor]], secure_aggregation: bool
                 ) -> list[dict[str, torch.Tensor]]:
    """What the server receives: each update, or (secure aggregation) only their sum."""
    if not updates:
        raise ConfigError("server_views needs at least one client update.")
    if not secure_aggregation:
        return [dict(u) for u in updates]
    return [{k: sum(u[k] for u in updates) for k in updates[0]}]


@dataclass(frozen=True)
class BinDecoding:
    """One view's bins: which are declared occupied, the raw ratios dW / db (normalised units), the images.

    ``ratio`` has one row per bin (K x D; rows of empty bins are zero); ``images`` one per occupied bin,
    de-normalised, denoised and clipped to [0, 1].
    """

    occupied: np.ndarray
    ratio: np.ndarray
    images: np.ndarray


def decode_bins(weight_grad: np.ndarray, bias_grad: np.ndarray, noise_std: float, layout: Layout, *,
                denoiser: str = "tv") -> BinDecoding:
    """Decode one view of the block (K x D weight and K bias entries of the summed clipped gradient + noise).

    ``noise_std`` is the known per-entry noise std of the view (sqrt(n) sigma C for n clients' noise).
    """
    rows = np.concatenate([np.asarray(weight_grad, np.float64), np.asarray(bias_grad, np.float64)[:, None]], 1)
    k, d1 = rows.shape
    bins = rows.copy()
    bins[:-1] -= rows[1:]  # bin i = row i - row i+1 (samples with t_i < w.x <= t_{i+1}); the top row is its own bin
    std = np.full(k, noise_std * math.sqrt(2.0))
    std[-1] = noise_std
    floor = FLOAT_FLOOR * float(np.sqrt((rows**2).sum(axis=1)).max()) / math.sqrt(d1)
    s2 = std**2 + floor**2
    stat = (bins**2).sum(axis=1) / s2
    occupied = (stat > d1 + OCCUPIED_Z * math.sqrt(2.0 * d1)) & (bins[:, -1] != 0)
    ratio = np.zeros((k, d1 - 1))
    ratio[occupied] = bins[occupied, :-1] / bins[occupied, -1:]
    images = []
    for sel, level in ((np.arange(k - 1), noise_std * math.sqrt(2.0)), (np.array([k - 1]), noise_std)):
        pick = sel[occupied[sel]]
        if len(pick):
            images.append(decode_pooled(bins[pick], np.zeros(len(pick), dtype=np.int64), layout, level,
                                        denoiser=denoiser))
    c, h, w = layout.shape
    imgs = np.concatenate(images) if images else np.zeros((0, h, w, c), dtype=np.float32)
    return BinDecoding(occupied, ratio, imgs)


def attack_views(views: Sequence[Mapping[str, torch.Tensor]], contributors: int, *, block_prefix: str,
                 batch_size: int, lr: float, noise_multiplier: float, max_grad_norm: float, layout: Layout,
                 denoiser: str = "tv") -> list[BinDecoding]:
    """Decode each view: undo the known scaling (-B / lr) and decode the block's bins.

    ``contributors`` is the number of clients whose noise each view carries (1, or n under secure aggregation).
    """
    noise_std = math.sqrt(contributors) * noise_multiplier * max_grad_norm
    out = []
    for view in views:
        g_w = (-view[f"{block_prefix}linear.weight"] * batch_size / lr).numpy()
        g_b = (-view[f"{block_prefix}linear.bias"] * batch_size / lr).numpy()
        out.append(decode_bins(g_w, g_b, noise_std, layout, denoiser=denoiser))
    return out


def _query(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    m = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    s = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return ((images - m) / s).flatten(1).mean(1).double().numpy()


def run_federated_attack(config: FederatedAttackConfig, *, splits: Any = None) -> FederatedAttackResult:
    """Run the experiment (see the module docstring) and return the table (empirical numbers)."""
    from dpaudit.data import load_splits, loading_notes
    from dpaudit.models import build_model, check_classifier, check_dp_compatible, replace_batchnorm
    from dpaudit.runtime import idle_cores, resolve_device

    device = resolve_device(config.device)  # before the data load: a GPU that is not there is named at once
    if splits is None:
        splits = load_splits(config.dataset, data_dir=config.data_dir, image_size=config.image_size,
                             seed=config.seed, max_images=config.max_images, labels=config.labels,
                             window=config.window, slice_axis=config.slice_axis)
    n_clients, b, k = config.clients, config.batch_size, config.bins
    need = config.images_needed
    if need > len(splits.train):
        raise DataError(too_few_images(config, len(splits.train)))
    previous = torch.get_num_threads()
    torch.set_num_threads(config.threads if config.threads is not None else idle_cores())
    try:
        mean, std = np.asarray(splits.mean), np.asarray(splits.std)
        layout = Layout(splits.image_shape, mean, std)
        floor = float(np.min(-mean / std)) - 1.0  # below the query of an all-black image: row 0 always fires
        thresholds = bin_thresholds(_query(splits.val.images, splits.mean, splits.std), k, floor)
        torch.manual_seed(config.seed)
        downstream = build_model(config.arch, num_classes=splits.num_classes, in_channels=splits.in_channels,
                                 arch_args=config.arch_args)
        if config.fix_batchnorm:
            replace_batchnorm(downstream)
        # Every client runs Opacus (client_update): a layer it cannot train is refused now, each one named, with
        # the fix, as train refuses it; and the network must be a classifier for these images.
        check_dp_compatible(downstream)
        check_classifier(downstream, splits.image_shape, splits.num_classes, config.arch)
        block = BinImprintBlock(splits.image_shape, thresholds, seed=config.seed)
        model = nn.Sequential(block, downstream).to(device)  # built on the CPU (seeded as before), then moved
        rng = np.random.default_rng([config.seed, 0xB1A5])
        order = rng.permutation(len(splits.train))[:need].reshape(config.rounds, n_clients, b)
        m_t = torch.tensor(splits.mean, device=device)[None, :, None, None]
        s_t = torch.tensor(splits.std, device=device)[None, :, None, None]
        per_view = n_clients * b if config.secure_aggregation else b
        rows = []
        for si, sigma in enumerate(config.noise_multipliers):
            ssims, alone, occupied = [], [], []
            for r in range(config.rounds):
                updates = []
                for c in range(n_clients):
                    idx = torch.as_tensor(order[r, c])
                    x = (splits.train.images[idx].to(device) - m_t) / s_t
                    gen = torch.Generator(device=device).manual_seed(int(np.random.SeedSequence(
                        [config.seed, si, r, c]).generate_state(1)[0]))
                    updates.append(client_update(model, x, splits.train.labels[idx].to(device),
                                                 noise_multiplier=sigma,
                                                 max_grad_norm=config.max_grad_norm, lr=config.lr, generator=gen))
                views = server_views(updates, config.secure_aggregation)
                decoded = attack_views(views, n_clients if config.secure_aggregation else 1, block_prefix="0.",
                                       batch_size=b, lr=config.lr, noise_multiplier=sigma,
                                       max_grad_norm=config.max_grad_norm, layout=layout, denoiser=config.denoiser)
                gt = np.moveaxis(splits.train.images[torch.as_tensor(order[r].reshape(-1))].numpy(), 1, -1)
                cands = np.concatenate([dd.images for dd in decoded])
                if len(cands):
                    best = NearestMatcher(gt)(cands)
                    ssims.extend(ssim_batch(cands[best], gt).tolist())
                else:
                    ssims.extend([0.0] * len(gt))  # nothing decoded: no image reconstructed
                occupied.append(float(np.mean([dd.occupied.sum() for dd in decoded])))
                with torch.no_grad():  # a sample's bin is its highest active row (rows 0..m fire; row 0 always)
                    x_round = (splits.train.images[torch.as_tensor(order[r].reshape(-1))].to(device) - m_t) / s_t
                    active = (block.linear(x_round.flatten(1)) > 0).cpu().numpy()
                bin_of = k - 1 - np.argmax(active[:, ::-1], axis=1)
                groups = np.repeat(np.arange(len(views)), per_view)
                for g in range(len(views)):
                    counts = np.bincount(bin_of[groups == g], minlength=k)
                    alone.extend((counts[bin_of[groups == g]] == 1).tolist())
            ssim_arr = np.asarray(ssims)
            n = len(ssim_arr)
            wins = int((ssim_arr > SUCCESS_SSIM).sum())
            lo, hi = clopper_pearson(wins, n)
            rows.append(FederatedAttackRow(
                sigma, n_clients, b, k, config.secure_aggregation, n, wins / n, lo, hi, float(ssim_arr.mean()),
                float(np.mean(alone)), (1.0 - 1.0 / k) ** (per_view - 1), per_view,
                math.sqrt(n_clients if config.secure_aggregation else 1) * sigma * config.max_grad_norm,
                float(np.mean(occupied))))
    finally:
        torch.set_num_threads(previous)
    view = ("the sum of the round's updates (secure aggregation, modelled)" if config.secure_aggregation
            else "each client's update")
    return FederatedAttackResult(
        tuple(rows), config.rounds, "strong (bins: difference adjacent rows, chi-square occupancy test, dW/db, "
        "total-variation denoising at the known noise level)", SSIM_VARIANT,
        f"malicious server, imprint block with {k} bins, one local Opacus DP-SGD step per client; the server sees "
        f"{view}", "quantiles of the query over the validation split (the server's assumed distribution)",
        config.max_grad_norm, data_notes=tuple(loading_notes(splits)))
