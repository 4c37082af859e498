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

import threading
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch
from torch import nn

from dpaudit.attacks.decoders import equal_chunk_size, paper_choice
from dpaudit.attacks.scenario import CONNECTIONS
from dpaudit.errors import ConfigError, check_int, check_positive, invalid

#: Opacus 1.6 ``clip_factor = max_grad_norm / (per_sample_norm + 1e-6)``, clamped at 1
#: (``opacus/optimizers/optimizer.py``, ``clip_and_accumulate``).
OPACUS_CLIP_EPS = 1e-6

#: Below this share of the per-sample gradient norm (first image) the block is refused as dead. The linear
#: connection exists to give the block almost all of the norm: with the random pattern we measured rho > 0.98 on
#: ResNet-9 and the small CNN, with breaching's constant pattern 0.002-0.06 (the padding borders of the first
#: convolution keep it from exactly 0; 1e-8 without padding). The addition connection is weak by design
#: (rho 0.02-0.3 measured), so only an exactly vanishing gradient is refused there.
DEAD_BLOCK_RHO = {"linear": 0.1, "addition": 1e-6}
#: The block is judged dead (and the model's gradient zero) only when it is so for every one of the first this many
#: images: a model that cancels the block does so for every image, while one image can hold little of its gradient
#: in the block by chance (a fresh 2-class U-Net: 4 of 40 slices at 16 px below 0.1, 1 of 40 at 28 px), and an
#: unlucky first image stopped the attack stage after training. Those images are attacked as they are (their small
#: rho makes their reconstruction noisier: the measured risk of that image), and every image below the threshold,
#: among all attacked, is counted in the result's notes (:func:`weak_block_note`).
JUDGED_IMAGES = 8


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
            raise invalid("connection", connection, f"one of {', '.join(map(str, CONNECTIONS))}", "pass --connection linear")
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
        """The block's share of the per-sample gradient norm (empirical, per image; 0 for an image whose gradient is
        exactly zero, where the block holds nothing either)."""
        return np.divide(self.block_norm, self.grad_norm, out=np.zeros_like(self.block_norm),
                         where=self.grad_norm > 0)

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


#: Modules whose forward treats every image of a batch on its own (no BatchNorm, no dropout, no custom forward that
#: could mix images), so that a batched pass gives each image its own batch-1 forward and gradient up to float
#: rounding. Exact types: a subclass may override ``forward``. dpaudit's own containers are added below.
_SAMPLEWISE_MODULES: set[type[nn.Module]] = {
    nn.Sequential, nn.Identity, nn.Flatten, nn.ReLU, nn.LeakyReLU, nn.Mish, nn.SiLU, nn.SELU, nn.GELU, nn.Tanh,
    nn.Sigmoid, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d,
    nn.Conv2d, nn.Linear, nn.GroupNorm,  # the layers with parameters: their per-image gradients are formed below
}
#: Images per batched pass: at most 2^14 * 3 input values (4 images at 64 x 64 x 3; one image at 224 px), the images
#: split into equal chunks (:func:`~dpaudit.attacks.decoders.equal_chunk_size`). The bound keeps each pass's tensors
#: small (ResNet-9 width 16: its largest, 4 x 32 x 64 x 64 float32, is 2 MB). Larger chunks ran slower on this 2-core
#: machine, not faster: C's allocator hands the freed memory of a pass back to the operating system, and the next pass
#: takes it again as fresh pages (page faults: zeroing and cache misses). Measured (ResNet-9 width 16 at 64 px, 12
#: images, CPU time, bench_attack's order in a fresh process: floor, 1 level, 9 levels, three times), the statistics
#: per image and the minor page faults of the 9-level attack: chunks of 3 13.5-13.9 ms and 0-577 faults, 4 12.8-13.1 ms
#: and 1-2, 6 13.6-14.2 ms and 7000-9500; 12 (the earlier bound's chunk) 15.2-16.9 ms and 6900-13000; the floor
#: 14.2-14.9 ms (batch 1, no faults). The values do not depend on the chunking beyond float32 rounding.
BATCH_VALUES = 2**14 * 3
#: The batched route serves images of at most this many pixels per channel. Measured on this 2-core machine
#: (ResNet-9 width 16, CPU time, same process, 9-level attack with scoring, ratio to bench_attack's floor): 64 px
#: 1.33x batched against 1.50x with batch-1 passes; 224 px 1.54x batched against 1.51x (its batched convolutions
#: and per-image weight gradients gain nothing there). With one image per chunk at 224 px (BATCH_VALUES) the
#: statistics cost 1.003x the floor batched against 1.019x by batch-1 passes (3 interleaved repeats); chunks of 3
#: images 1.19x (page faults): no gain worth a second route there.
BATCHED_MAX_PIXELS = 64 * 64


#: The layers whose per-image parameter gradients the batched route forms, and the only parameters they may hold
#: (old-style ``weight_norm`` / ``spectral_norm`` keep the class but hold ``weight_g``/``weight_v``/``weight_orig``
#: and recompute ``.weight`` in a pre-forward hook: the gradient batch-1 passes see is that of those parameters).
_PARAMETER_LAYERS = (nn.Conv2d, nn.Linear, nn.GroupNorm)
_LAYER_PARAMETERS = {"weight", "bias"}
#: Per-module hook tables: a user's hook may replace a layer's input, output or gradient, which the batched route's
#: formulas (from each layer's own input and output gradient) would not see.
_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def _samplewise(model: nn.Module) -> bool:
    """Whether :func:`_batched_model_statistics` may serve ``model``: the batched route gives each image's batch-1
    statistics (up to float rounding) only when

    * every module is of a known per-image kind (exact type, not in place, a Flatten that keeps the batch axis,
      a zero-padded convolution), and no module appears twice in the tree;
    * every parameter is a ``weight`` or ``bias`` of one Conv2d, Linear or GroupNorm and belongs to that layer
      alone (a Parameter tied between two layers has the gradient ``g1 + g2``, whose norm is not
      ``|g1|^2 + |g2|^2``);
    * no module, and no global module hook of torch's, has a forward, forward-pre or backward hook.
    """
    from dpaudit.models import ResNet9, SmallCNN, _Residual  # the registry's own containers: forward known

    allowed = _SAMPLEWISE_MODULES | {ResNet9, SmallCNN, _Residual}
    module_module = torch.nn.modules.module
    if any(getattr(module_module, name, None) for name in _GLOBAL_HOOKS):
        return False
    seen_modules: set[int] = set()
    seen_params: set[int] = set()
    for _, m in model.named_modules(remove_duplicate=False):
        if id(m) in seen_modules:
            return False  # one module at two places: it runs twice on each image
        seen_modules.add(id(m))
        if type(m) not in allowed or getattr(m, "inplace", False):
            return False
        if any(getattr(m, name, None) for name in _MODULE_HOOKS):
            return False
        own = m._parameters
        if type(m) in _PARAMETER_LAYERS:
            if not set(own) <= _LAYER_PARAMETERS:
                return False  # a reparametrised layer (weight_norm, spectral_norm): .weight is not its parameter
            if type(m) is not nn.GroupNorm and own.get("weight") is None:
                return False
        elif own:
            return False  # a parameter the batched route would not see (only those three layers' are formed)
        for p in own.values():
            if p is not None:
                if id(p) in seen_params:
                    return False  # tied weights
                seen_params.add(id(p))
        if type(m) is nn.Conv2d and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
            return False
        if type(m) is nn.Flatten and m.start_dim < 1:
            return False  # start_dim 0 (or negative: the batch axis at some rank) mixes the images
    return True


def _batched_model_statistics(model: nn.Module, block: ImprintBlock, x: torch.Tensor, labels: torch.Tensor,
                              thresholds: torch.Tensor, *, first: bool, scratch: _FoldScratch | None = None,
                              mish: _MishScratch | None = None):
    """The pre-activations h (B x K), dL/dh (B x K) and the model's per-image squared gradient norm (B, float64)
    for a batch of normalised images: :func:`_batched_tensor_squares`' per-tensor float32 sums added in float64, as
    the batch-1 route adds them. None where that route returns None."""
    out = _batched_tensor_squares(model, block, x, labels, thresholds, first=first, scratch=scratch, mish=mish)
    if out is None:
        return None
    h0, dh, squares = out
    model_sq = (torch.stack([sq for _, sq in squares]).double().sum(dim=0) if squares
                else torch.zeros(x.shape[0], dtype=torch.float64))
    return h0, dh, model_sq


def _batched_tensor_squares(model: nn.Module, block: ImprintBlock, x: torch.Tensor, labels: torch.Tensor,
                            thresholds: torch.Tensor, *, first: bool, scratch: _FoldScratch | None = None,
                            mish: _MishScratch | None = None):
    """dL/dh and, per parameter tensor, each image's squared gradient norm for a batch of normalised images, in one
    batched forward and backward pass (no parameter gradient is formed for the batch).

    The loss is the sum of the images' own batch-1 losses (:func:`_summed_image_losses`), so the gradient with respect to image b's activations is
    that of image b's own loss, and each parameter layer's per-image weight gradient follows from the layer's input
    and output gradient for that image alone: a convolution's from torch's own weight gradient of a batch-1
    convolution, a Linear's ``g a^T`` (squared norm ``|g|^2 |a|^2`` for one vector per image), a GroupNorm's
    ``sum(g * x_hat)`` over positions, a bias's ``sum(g)``. Squares are summed per tensor in float32. Returns the
    pre-activations h (B x K), dL/dh (B x K) and, for every parameter tensor of a layer that ran and requires a
    gradient, the pair (the parameter, its per-image float32 sum of squares, B), or None (the caller then runs
    batch-1 passes) when a layer ran twice (shared weights), an input or output was modified in place after the
    layer saw it, or a layer or the logits did not keep the images on axis 0.
    """
    F = torch.nn.functional
    n = x.shape[0]
    with torch.no_grad():
        # Each image's query reduced exactly as a batch-1 pass reduces it (x.mean(dim=(1, 2, 3)) sums in another
        # order): the same bits, so the active row m cannot differ where a pre-activation sits at a threshold.
        q = torch.stack([_query(x[j : j + 1]) for j in range(n)])
        h0 = block.gain * (q[:, None] - thresholds[None, :])
    # Mish layers (ResNet-9's default activation) run as _MishFunction inside _MishWithSlope: one exponential, the
    # derivative kept from the forward (ResNet-9 at 64 px, same process, alternating repeats: the model part 0.88x of
    # the route with torch's mish over 15 repeats, 0.96x over 5 in bench_attack --breakdown on a busier machine; G as
    # far from a float64 model as before: 1e-5-5e-5 either way over 5 seeds, the block's ill-conditioning). Batch-1
    # passes (_single_model_statistics) run it too.
    # Channels-last: the batched convolutions, GroupNorm and pooling are faster on it (ResNet-9 at 64 px: the model
    # part 0.94x of NCHW's, same-process A/B); the values are the same up to float32 rounding.
    h = h0.clone().requires_grad_(True)
    inp = block.connect(torch.relu(h), x).contiguous(memory_format=torch.channels_last)
    seen: list[tuple[nn.Module, torch.Tensor, int, torch.Tensor, int]] = []

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        seen.append((module, args[0], args[0]._version, out, out._version))

    layers = [m for m in model.modules() if type(m) in _PARAMETER_LAYERS]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with _MishWithSlope(mish):
            logits = model(inp)
    finally:
        for handle in handles:
            handle.remove()
    if first:
        _one_output_check(logits)
    if len({id(s[0]) for s in seen}) != len(seen):
        return None
    # Every layer saw the images along axis 0 (a Conv2d given 3-D input, or a Linear 1-D input, would treat the
    # batch as channels or features), and so do the logits.
    if any(a.ndim < 2 or a.shape[0] != n or o.shape[0] != n or (type(m) is nn.Conv2d and a.ndim != 4)
           for m, a, _, o, _ in seen) or logits.ndim < 2 or logits.shape[0] != n:
        return None
    loss = _summed_image_losses(logits, labels.long())
    grads = torch.autograd.grad(loss, [h, *(s[3] for s in seen)], allow_unused=True)
    if any(a._version != va or o._version != vo for _, a, va, o, vo in seen):
        return None
    sums: list[tuple[nn.Parameter, torch.Tensor]] = []  # per tensor, per image: float32 sums of squares
    with torch.no_grad():
        for (module, a, _, _, _), g in zip(seen, grads[1:], strict=True):
            if g is None:
                continue
            w, b = module.weight, module.bias
            if type(module) is nn.Conv2d:
                if w.requires_grad:
                    sums.append((w, _conv_weight_squares(module, a, g, scratch)))
                if b is not None and b.requires_grad:
                    gb = g.sum(dim=(2, 3))
                    sums.append((b, (gb * gb).sum(dim=1)))
            elif type(module) is nn.Linear:
                if w.requires_grad:
                    if a.ndim == 2:
                        sums.append((w, (g * g).sum(dim=1) * (a * a).sum(dim=1)))
                    else:
                        gw = torch.einsum("b...o,b...i->boi", g, a)
                        sums.append((w, (gw * gw).sum(dim=(1, 2))))
                if b is not None and b.requires_grad:
                    gb = g.reshape(n, -1, g.shape[-1]).sum(dim=1)
                    sums.append((b, (gb * gb).sum(dim=1)))
            else:  # GroupNorm, on N x C x * (N x C after a Linear: one position per channel)
                # Sums over the positions in the tensors' own layout (a reshape to N x C x positions copies a
                # channels-last tensor first).
                positions = tuple(range(2, g.ndim))
                if w is not None and w.requires_grad:
                    xhat = F.group_norm(a, module.num_groups, None, None, module.eps)
                    xhat.mul_(g)
                    gw = xhat.sum(dim=positions) if positions else xhat
                    sums.append((w, (gw * gw).sum(dim=1)))
                if b is not None and b.requires_grad:
                    gb = g.sum(dim=positions) if positions else g
                    sums.append((b, (gb * gb).sum(dim=1)))
    return h0, grads[0].detach(), sums


def _mish_and_slope(x: torch.Tensor, scratch: _MishScratch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mish, ``x tanh(softplus(x))`` (Misra, "Mish: A Self Regularized Non-Monotonic Activation Function", BMVC 2020,
    arXiv:1908.08681), and its derivative, from one exponential of x: with ``u = e^x``, ``n = u (u + 2)`` and
    ``D = n + 2``, ``tanh(softplus(x)) = ((1 + u)^2 - 1) / ((1 + u)^2 + 1) = n / D``, and the derivative
    ``t + x sigmoid(x) (1 - t^2)`` becomes ``t + 4 x u (1 + u) / D^2`` (``1 - t^2 = 4 (1 + u)^2 / D^2``,
    ``sigmoid = u / (1 + u)``, ``u (1 + u) = n - u``): no cancellation in ``1 - t^2``. x is clamped at 20 in all but
    the product ``x t`` (past 20 t and sigmoid are 1 in float32 and the second term of the slope below its rounding;
    unclamped, ``u^2`` would overflow from 44 and ``x u (1 + u)`` for huge x). Float32: within 2.3
    eps of float64 Mish relative (torch's own: 2.1) and the derivative within 1.6 eps absolute (torch's: 8.2) on
    [-20, 20], measured against float64 autograd. 13 plain passes cost 2.3-3.7 ns per value against torch's 8.3 for
    ``mish`` and ``mish_backward`` (this machine, one thread), which evaluate tanh(softplus) twice.

    With ``scratch`` (:class:`_MishScratch`) the values go through in chunks of ``MISH_CHUNK`` whose temporaries (the
    clamped x, u, 1 / D) are the scratch's, written into y and the slope: the same operations in the same order on
    each value, bit for bit the same y and slope."""
    if scratch is not None and _dense(x):
        return scratch.mish_and_slope(x)
    xc = torch.clamp(x, max=20.0)
    u = torch.exp(xc)
    n = torch.add(u, 2.0).mul_(u)
    r = torch.add(n, 2.0).reciprocal_()
    t = n.mul(r)
    y = torch.mul(x, t)
    slope = t.add_(n.sub_(u).mul_(xc).mul_(r).mul_(r), alpha=4.0)
    return y, slope


def _dense(x: torch.Tensor) -> bool:
    """x's values fill its memory without gaps, in the order of a contiguous or channels-last tensor."""
    return x.is_contiguous() or (x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last))


#: Values per chunk of :meth:`_MishScratch.mish_and_slope`: three float32 temporaries of 1 MB. ResNet-9 width 16's
#: largest Mish input at 224 px, 32 x 224 x 224, in ms (this machine, one thread, medians of 15): whole-tensor
#: temporaries made anew 16.3, kept in a scratch 6.6, chunks of 2^18 5.2, of 2^16 5.6, of 2^14 10.0 (every
#: operation's own overhead); at 16 x 224 x 224: 9.3, 2.9, 2.6, 3.9, 6.6.
MISH_CHUNK = 2**18


class _MishScratch:
    """:func:`_mish_and_slope` chunk by chunk with its temporaries kept, across layers and images (one image's
    statistics, or one chunk's, call it once per Mish layer). Whole-tensor temporaries made anew at every layer
    were the memory the attack's passes took beyond the plain forward and backward pass's: freed mid-pass, C's
    allocator handed it back to the operating system and the next layer took it again as fresh pages (ResNet-9
    width 16 at 224 px: ~4700 minor page faults per pass, none for the plain pass)."""

    def __init__(self) -> None:
        self._buffers = torch.empty(3, MISH_CHUNK, dtype=torch.float32)

    def mish_and_slope(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y and the slope of a dense float32 x (:func:`_dense`), laid out as x."""
        y, slope = torch.empty_like(x), torch.empty_like(x)
        k = x.numel()
        flat_x, flat_y, flat_s = (t.as_strided((k,), (1,)) for t in (x, y, slope))  # the same element order
        for start in range(0, k, MISH_CHUNK):
            stop = min(k, start + MISH_CHUNK)
            xc, u, r = self._buffers[:, : stop - start]
            xs, t, n = flat_x[start:stop], flat_y[start:stop], flat_s[start:stop]
            torch.clamp(xs, max=20.0, out=xc)
            torch.exp(xc, out=u)
            torch.add(u, 2.0, out=n).mul_(u)
            torch.add(n, 2.0, out=r).reciprocal_()
            torch.mul(n, r, out=t)
            n.sub_(u).mul_(xc).mul_(r).mul_(r)
            torch.add(t, n, alpha=4.0, out=n)  # the slope, t + 4 (n - u) xc r^2, as t.add_(..., alpha=4.0)
            t.mul_(xs)  # y = x t
        return y, slope


class _MishFunction(torch.autograd.Function):
    """Mish whose forward keeps its derivative (:func:`_mish_and_slope`) for the backward, a single product."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        entered = _MishWithSlope.scratches()
        y, slope = _mish_and_slope(x, entered[-1] if entered else None)
        ctx.save_for_backward(slope)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            # The slope is saved without its graph: a second derivative through it would silently miss Mish's own
            # (x^3 + mish(x) read as 6x instead of 6x + mish''(x)); torch's once_differentiable does not catch it
            # when the incoming gradient needs none.
            raise RuntimeError("_MishFunction (the attack's Mish) has no second derivative: run the model outside "
                               "_MishWithSlope for create_graph=True")
        (slope,) = ctx.saved_tensors
        return grad * slope


class _MishWithSlope(torch.overrides.TorchFunctionMode):
    """Within it, ``torch.nn.functional.mish`` of a float32 CPU tensor (not in place) is :class:`_MishFunction`:
    the model's Mish layers (``nn.Mish`` calls it) without changing the model; everything else runs as it is.
    ResNet-9's default activation is Mish; its forward and backward took ~20% of a pass. Its temporaries go to
    ``scratch`` (a fresh :class:`_MishScratch` unless one is passed to keep across passes), which
    :class:`_MishFunction` finds on :meth:`scratches` while the mode is entered. The stack is the thread's own, as
    torch's mode stack is: two threads running attacks at once never share a scratch."""

    _entered = threading.local()

    @staticmethod
    def scratches() -> list[_MishScratch]:
        """The scratches of the modes this thread has entered, innermost last."""
        stack = getattr(_MishWithSlope._entered, "stack", None)
        if stack is None:
            stack = _MishWithSlope._entered.stack = []
        return stack

    def __init__(self, scratch: _MishScratch | None = None) -> None:
        super().__init__()
        self.scratch = _MishScratch() if scratch is None else scratch

    def __enter__(self):
        _MishWithSlope.scratches().append(self.scratch)
        try:
            return super().__enter__()
        except BaseException:
            _MishWithSlope.scratches().pop()
            raise

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            _MishWithSlope.scratches().pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func is torch.nn.functional.mish and not kwargs.get("inplace", False) and len(args) == 1
                and type(args[0]) is torch.Tensor and args[0].dtype == torch.float32
                and args[0].device.type == "cpu"):
            return _MishFunction.apply(args[0])
        return func(*args, **kwargs)


class _MaxPoolFunction(torch.autograd.Function):
    """``max_pool2d`` of a contiguous (NCHW) float32 CPU tensor computed on a channels-last copy: torch's
    channels-last kernel takes each window's first largest value (or NaN) as its NCHW kernel does, so the values
    and the indices are bit for bit those of the NCHW kernel (the tests compare both on ties, signed zeros, NaN,
    padding, dilation and ceil mode), and the backward is torch's own NCHW backward from the input and the
    indices, as the plain layer's. The channels go through in chunks (:data:`POOL_CHUNK`) whose channels-last copy
    and results live in the entered mode's :class:`_PoolScratch`: only the output and the indices are new tensors,
    as for the plain layer."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scratch: _PoolScratch, kernel_size, stride, padding, dilation,
                ceil_mode: bool) -> torch.Tensor:
        settings = (kernel_size, stride, padding, dilation, ceil_mode)
        n, c, h, w = x.shape
        oh, ow = (_pooled_size(size, k, s, p, d, ceil_mode)
                  for size, k, s, p, d in zip((h, w), kernel_size, stride, padding, dilation, strict=True))
        y = torch.empty((n, c, oh, ow), dtype=torch.float32)
        indices = torch.empty((n, c, oh, ow), dtype=torch.int64)
        step = equal_chunk_size(c, max(1, POOL_CHUNK // max(1, n * h * w)))  # channels per chunk
        for start in range(0, c, step):
            stop = min(c, start + step)
            shape = (n, stop - start, h, w)
            xc = scratch.take(0, shape, torch.float32).copy_(x[:, start:stop])
            yc = scratch.take(1, (*shape[:2], oh, ow), torch.float32)
            ic = scratch.take(2, (*shape[:2], oh, ow), torch.int64)
            torch.ops.aten.max_pool2d_with_indices.out(xc, *settings, out=yc, indices=ic)
            y[:, start:stop].copy_(yc)
            indices[:, start:stop].copy_(ic)
        ctx.save_for_backward(x, indices)
        ctx.settings = settings
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, indices = ctx.saved_tensors
        return (torch.ops.aten.max_pool2d_with_indices_backward(grad, x, *ctx.settings, indices),
                None, None, None, None, None, None)


#: Input values per chunk of channels in :class:`_MaxPoolFunction` (its kept channels-last copy: 2 MB), the channels
#: split into equal chunks. The channels-last kernel runs along the channels: fewer than ~8 per chunk are slow.
#: ResNet-9 width 16's pools at 224 px, forward and backward (this machine, one thread, medians of 21), torch's NCHW
#: kernel against chunks of 2^18 / 2^19 / 2^20 values: 32 x 224 x 224 10.2 against 8.0 / 5.0 / 5.7 ms,
#: 64 x 112 x 112 5.1 against 1.9 / 2.1 / 1.9, 128 x 56 x 56 2.5 against 0.9 / 0.9 / 0.9.
POOL_CHUNK = 2**19


def _pooled_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """Output length of a pooling window along one axis (torch's ``pooling_output_shape``)."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:  # the last window must start inside the input or left padding
        out -= 1
    return out


class _PoolScratch:
    """Kept buffers of :class:`_MaxPoolFunction` (the channels-last input copy, values and indices), grown to the
    largest call and reused by every later one."""

    def __init__(self) -> None:
        self._flat: list[torch.Tensor] = [torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.int64)]

    def take(self, which: int, shape: tuple[int, int, int, int], dtype: torch.dtype) -> torch.Tensor:
        n, c, h, w = shape
        k = n * c * h * w
        if self._flat[which].numel() < k:
            self._flat[which] = torch.empty(k, dtype=dtype)
        return self._flat[which][:k].as_strided(shape, (h * w * c, 1, w * c, c))  # channels-last


class _MaxPoolChannelsLast(torch.overrides.TorchFunctionMode):
    """Within it, ``torch.nn.functional.max_pool2d`` of a 4-D contiguous (NCHW) float32 CPU tensor, without
    ``return_indices``, is :class:`_MaxPoolFunction`: the model's MaxPool2d layers in the batch-1 passes (torch's
    NCHW kernel took 12% of a ResNet-9 pass at 224 px) without changing the model; everything else runs as it is.
    ``scratch`` (a fresh :class:`_PoolScratch` unless one is passed to keep across passes) holds the buffers."""

    def __init__(self, scratch: _PoolScratch | None = None) -> None:
        super().__init__()
        self.scratch = _PoolScratch() if scratch is None else scratch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func is torch.nn.functional.max_pool2d and len(args) == 2 and not kwargs.get("return_indices", False)
                and set(kwargs) <= {"stride", "padding", "dilation", "ceil_mode", "return_indices"}
                and type(args[0]) is torch.Tensor and args[0].dtype == torch.float32
                and args[0].device.type == "cpu" and args[0].ndim == 4 and args[0].is_contiguous()):
            kernel_size = _pair(args[1])
            stride = _pair(kwargs.get("stride") or kernel_size)  # None or () means the kernel size
            return _MaxPoolFunction.apply(args[0], self.scratch, kernel_size, stride,
                                          _pair(kwargs.get("padding", 0)), _pair(kwargs.get("dilation", 1)),
                                          bool(kwargs.get("ceil_mode", False)))
        return func(*args, **kwargs)


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(t) for t in v]


def _query(x: torch.Tensor) -> torch.Tensor:
    """The block's query ``w . x`` for one normalised image (1 x C x H x W): the mean of its values (all rows hold
    the same query; the gain is applied by the caller). One function for both routes, so both reduce alike."""
    return x.mean()


def _summed_image_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The sum over images of each image's own batch-1 loss, ``cross_entropy(logits[b:b+1], labels[b:b+1])``.

    torch's default reduction is the mean over the non-ignored targets of the pass (``ignore_index`` -100): one
    value per image for N x K logits, but the mean over the image's H x W positions for per-pixel logits
    (N x K x H x W, label maps). A batch's ``reduction="sum"`` would weigh each image's gradient by its pixel
    count, so each image's mean is formed here over its own positions (its gradient is then that of its batch-1
    loss; an image whose targets are all ignored gives NaN, as its batch-1 pass does).
    """
    per = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    n = per.shape[0]
    counted = (labels != -100).reshape(n, -1).sum(dim=1)
    return (per.reshape(n, -1).sum(dim=1) / counted).sum()


def _conv_weight_squares(module: nn.Conv2d, a: torch.Tensor, g: torch.Tensor,
                         scratch: _FoldScratch | None = None) -> torch.Tensor:
    """Per image, the float32 sum of squares of a convolution's weight gradient, from its input ``a`` and output
    gradient ``g`` (B x C x H x W each).

    Image b's weight gradient is ``G_b^T U_b`` with ``G_b`` its T x C_out output gradient and ``U_b`` its T x K
    input patches (K = C_in k_h k_w). Where T (K + C_out) < K C_out, i.e. on small maps (ResNet-9's last block at 64
    px: 8 x 8 positions, 128 channels), its squared norm is formed without it, as ``sum((U_b U_b^T) * (G_b G_b^T))``
    (the "ghost norm": Li, Tramer, Liang and Hashimoto, "Large Language Models Can Be Strong Differentially Private
    Learners", ICLR 2022, arXiv:2110.05679, section 4). On large maps (at least :data:`FOLDED_MIN_POSITIONS`
    output positions) all images' weight gradients come from one weight gradient of a grouped convolution with
    the images folded into the channels (:func:`_folded_conv_weight_grads`); elsewhere by torch's own weight
    gradient of the batch-1 convolution, image by image.
    """
    n, co = g.shape[0], g.shape[1]
    positions = g.shape[2] * g.shape[3]
    k = a.shape[1] * module.kernel_size[0] * module.kernel_size[1]
    if module.groups == 1 and positions * (k + co) < k * co:
        patches = torch.nn.functional.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)
        out = g.reshape(n, co, positions)
        return (torch.bmm(patches.transpose(1, 2), patches) * torch.bmm(out.transpose(1, 2), out)).sum(dim=(1, 2))
    if n > 1 and positions >= FOLDED_MIN_POSITIONS:
        gw = _folded_conv_weight_grads(module, a, g, scratch).reshape(n, -1)
        return (gw * gw).sum(dim=1)
    gw = [torch.ops.aten.convolution_backward(
        g[i : i + 1], a[i : i + 1], module.weight, None, module.stride, module.padding, module.dilation, False,
        [0, 0], module.groups, [False, True, False])[1] for i in range(len(a))]
    return torch.stack([(v * v).sum() for v in gw])


#: Output positions from which a convolution's per-image weight gradients are formed in one grouped call
#: (:func:`_folded_conv_weight_grads`) instead of one call per image. Measured on this 2-core machine (CPU time, 15
#: interleaved repeats, ResNet-9 width 16 at 64 px, channels-last, ms per image, one call per image against one
#: grouped call, chunks of 4 and of 6 images): 64 x 64 maps 3->16 channels 0.46 / 0.23 and 0.32 / 0.16, 16->32
#: 0.61 / 0.54 and 0.57 / 0.52; 32 x 32 maps 32->32 0.36 / 0.29 and 0.35 / 0.26, 32->64 0.63 / 0.57 and
#: 0.56 / 0.47; 16 x 16 maps 64->128 0.59 / 0.66 and 0.56 / 0.64 (slower: the bound).
FOLDED_MIN_POSITIONS = 32 * 32


class _FoldScratch:
    """What :func:`_folded_conv_weight_grads` keeps between its calls within one :func:`image_statistics` call:
    each convolution's weight repeated for a chunk's images (the weights do not change during the call), and the
    buffers the folded input and output gradient are copied into, one per shape (a fresh copy of each, as
    ``reshape`` makes, is new memory at every layer of every chunk: 0.27 against 0.10 ms for 4 images' 64 x 64 x 32
    gradient). The values and layouts are those of the fresh copies, so the weight gradients are bit for bit the
    same (a test checks)."""

    def __init__(self) -> None:
        self._weights: dict[tuple, torch.Tensor] = {}
        self._buffers: dict[tuple, torch.Tensor] = {}

    def weight(self, module: nn.Conv2d, n: int) -> torch.Tensor:
        w = module.weight
        key = (id(module), n, w.data_ptr(), w._version)
        folded = self._weights.get(key)
        if folded is None:
            folded = _repeated_weight(w.detach(), n)
            self._weights[key] = folded
        return folded

    def fold(self, which: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B x C x H x W) as 1 x (B C) x H x W, positions outer, image and channel inner (a copy)."""
        n, c, h, w = x.shape
        key = (which, h, w, n * c, x.dtype, x.device)
        buf = self._buffers.get(key)
        if buf is None:
            buf = torch.empty((h, w, n * c), dtype=x.dtype, device=x.device)
            self._buffers[key] = buf
        buf.view(h, w, n, c).copy_(x.permute(2, 3, 0, 1))
        return buf.permute(2, 0, 1)[None]


def _repeated_weight(weight: torch.Tensor, n: int) -> torch.Tensor:
    folded = weight.expand(n, *weight.shape).reshape(n * weight.shape[0], *weight.shape[1:])
    return folded.contiguous(memory_format=torch.channels_last)


def _folded_conv_weight_grads(module: nn.Conv2d, a: torch.Tensor, g: torch.Tensor,
                              scratch: _FoldScratch | None = None) -> torch.Tensor:
    """The B per-image weight gradients (B C_out x C_in/groups x k_h x k_w) of a convolution, from its input ``a``
    and output gradient ``g`` (B x C x H x W each), by one weight gradient of a grouped convolution: the images
    folded into the channels (input 1 x (B C_in) x H x W, output gradient 1 x (B C_out) x H' x W', B x groups
    groups, the weight repeated B times), whose group b is image b's convolution alone, so that its weight
    gradient's block b is image b's batch-1 weight gradient (Opacus' "expanded weights" / functorch trick; equal up
    to float32 summation order). The folded tensors are laid out channels-last (positions outer, image and channel
    inner), where torch's grouped convolution is fast. ``scratch`` keeps the repeated weight and the copies'
    memory between calls (:class:`_FoldScratch`; the same values).
    """
    n = a.shape[0]
    scratch = _FoldScratch() if scratch is None else scratch
    a1, g1, folded = scratch.fold("input", a), scratch.fold("output gradient", g), scratch.weight(module, n)
    return torch.ops.aten.convolution_backward(
        g1, a1, folded, None, module.stride, module.padding, module.dilation, False, [0, 0], n * module.groups,
        [False, True, False])[1]


def image_statistics(model: nn.Module, block: ImprintBlock, images: torch.Tensor, labels: torch.Tensor, *,
                     mean: np.ndarray, std: np.ndarray, progress=None, batched: bool | None = None) -> ImageStatistics:
    """One forward and backward pass per image: delta, m, G.

    The block's K x D weight gradient is never formed: the pre-activations ``h`` are a leaf of the graph and
    ``grad W_i = dL/dh_i * x``, ``grad b_i = dL/dh_i`` by the chain rule (checked against autograd through
    :class:`ImprintBlock` in the tests).

    For a model made only of modules that treat images one by one (:func:`_samplewise`: dpaudit's ResNet-9 and
    small CNN, any Sequential of convolutions, Linear, GroupNorm, activations and pooling, without tied weights,
    reparametrised layers or hooks; class logits N x K or per-pixel logits with label maps) the images go through
    in batches of about ``BATCH_VALUES`` input values, and the per-image gradient norms come from each layer's input
    and output gradient (:func:`_batched_model_statistics`): the same statistics as batch-1 passes up to float32
    rounding, at less cost for small images (:data:`BATCHED_MAX_PIXELS`). ``batched=False`` forces batch-1 passes,
    ``True`` the batched route (refusing a model it cannot serve); None (default) chooses.

    Raises
    ------
    ConfigError
        When the block holds less than ``DEAD_BLOCK_RHO`` of the gradient norm of each of the first
        ``JUDGED_IMAGES`` images (the constant-pattern pitfall: normalisation after a bias-free layer cancels the
        block's output), or when their per-sample gradients are all exactly zero.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    # Everything meets the model on its device (the block's buffers, the images, the labels); what the attacker
    # reads per image comes back to the CPU in one transfer (the sums of squares) plus three scalars.
    device = next(iter(params), block.thresholds).device
    m_t = torch.as_tensor(np.asarray(mean), dtype=torch.float32, device=device)
    s_t = torch.as_tensor(np.asarray(std), dtype=torch.float32, device=device)
    images, labels = images.to(device), labels.to(device)
    n = images.shape[0]
    delta = np.zeros(n)
    active = np.zeros(n, dtype=np.int64)
    gnorm = np.zeros(n)
    bnorm = np.zeros(n)
    xnorm1 = np.zeros(n)
    thresholds = block.thresholds.detach().to(device)
    if block.readout.device != device:
        raise ConfigError(f"the imprint block is on {block.readout.device} and the model on {device}. Fix: move "
                          "both to one device (run_attack(device=...) does).")
    pixels = images.shape[-2] * images.shape[-1]
    use_batches = (pixels <= BATCHED_MAX_PIXELS and _samplewise(model)) if batched is None else batched
    if batched and not _samplewise(model):
        raise ConfigError("image_statistics(batched=True) needs a model whose modules treat images one by one "
                          "(convolutions, Linear, GroupNorm, activations, pooling; no tied weights, "
                          "reparametrised layers or hooks). Fix: pass batched=None.")
    chunk = equal_chunk_size(n, max(1, BATCH_VALUES // max(1, images[0].numel()))) if use_batches else 1
    judged = min(n, JUDGED_IMAGES)
    scratch = _FoldScratch() if use_batches else None  # kept across the chunks
    mish = _MishScratch()  # kept across the chunks or images
    pool = _PoolScratch()  # kept across the images of batch-1 passes
    was_training = model.training
    model.train()  # the client computes its update in training mode
    try:
        start = 0
        while start < n:
            stop = min(n, start + chunk)
            x = _normalise(images[start:stop].float(), m_t, s_t)
            out = None
            if use_batches:
                out = _batched_model_statistics(model, block, x, labels[start:stop], thresholds, first=start == 0,
                                                scratch=scratch, mish=mish)
                if out is None:  # a layer ran twice or was written in place: batch-1 passes from here on
                    use_batches, chunk = False, 1
                    continue
            for j in range(stop - start):
                i = start + j
                if out is None:
                    h0, dh, model_sq = _single_model_statistics(model, block, x[j : j + 1], labels[i : i + 1],
                                                                thresholds, params, first=i == 0, mish=mish,
                                                                pool=pool)
                else:
                    h0, dh, model_sq = out[0][j], out[1][j].double(), float(out[2][j])
                act = (h0 > 0).cpu().numpy()
                m = int(np.nonzero(act)[0].max())
                d = float(dh[0])
                x1 = float(torch.sqrt((x[j].double() ** 2).sum() + 1.0))
                block_norm = abs(d) * np.sqrt(m + 1) * x1
                delta[i], active[i], bnorm[i], xnorm1[i] = d, m, block_norm, x1
                gnorm[i] = np.sqrt(model_sq + block_norm**2)
                if i == judged - 1:
                    _judge_block(block, gnorm[:judged], bnorm[:judged])
                if progress is not None:
                    progress(1)
            start = stop
    finally:
        model.train(was_training)
    return ImageStatistics(delta, active, gnorm, bnorm, xnorm1)


def _single_model_statistics(model, block, x, label, thresholds, params, *, first: bool,
                             mish: _MishScratch | None = None, pool: _PoolScratch | None = None):
    """The pre-activations h (K), dL/dh (K, float64) and the model's squared gradient norm for one normalised
    image (1 x C x H x W), from one forward and backward pass of batch 1."""
    with torch.no_grad():
        h0 = block.gain * (_query(x) - thresholds)
    h = h0.clone().requires_grad_(True)
    inp = block.connect(torch.relu(h)[None], x)
    # Mish layers as in the batched route (_MishWithSlope). ResNet-9 (width 16) at 224 px, same process, alternating
    # repeats, CPU time: the whole 9-level attack 1.57 -> 1.54x the floor (median 0.98x, faster in 7 of 9), successes
    # and SSIM unchanged; G within 4.6e-6 of a float64 model (torch's mish: 3.2e-6), the model's part 8.6e-8 (8.9e-8).
    # Its temporaries are kept across layers and images (_MishScratch; bit for bit the same): the 9-level attack
    # 1.50 -> 1.41x the floor (same process, alternating, CPU time, 11 repeats: median 0.95x, faster in 9), page
    # faults of the 9-level attack 19500 -> 7800. MaxPool2d layers run on channels-last copies (_MaxPoolChannelsLast;
    # bit for bit torch's NCHW pooling): the 9-level attack 1.43 -> 1.37x the floor (same process, alternating, CPU
    # time, 11 repeats: median 0.97x, faster in 10).
    with _MishWithSlope(mish), _MaxPoolChannelsLast(pool):
        logits = model(inp)
    if first:
        _one_output_check(logits)
    loss = torch.nn.functional.cross_entropy(logits, label.long())
    grads = torch.autograd.grad(loss, [h, *params], allow_unused=True)
    # Per-tensor float32 sums of squares (torch's cascade summation: relative error ~1e-8 at 6.6M values,
    # measured against float64), added in float64; 13x faster than converting the gradient to float64.
    # One transfer for all of them (a GPU would otherwise wait once per tensor); the same float32 values
    # are added in the same order as before, so the CPU result is bit for bit unchanged.
    sums = [(g * g).sum() for g in grads[1:] if g is not None]
    model_sq = sum(torch.stack(sums).tolist()) if sums else 0
    return h0, grads[0].double(), model_sq


def _one_output_check(logits: torch.Tensor) -> None:
    classes = logits.shape[1] if logits.ndim > 1 else logits.shape[0]  # cross_entropy's class axis
    if classes < 2:
        raise ConfigError(
            f"the model has {classes} output: with a single class the cross-entropy loss is "
            "constant and its gradient identically zero, so there is nothing to invert. Fix: attack a "
            "model with at least 2 outputs (dpaudit attack --arch builds one for unlabelled data).")


def _judge_block(block: ImprintBlock, gnorm: np.ndarray, bnorm: np.ndarray) -> None:
    """The attack cannot work through this model when, on every judged image, the per-sample gradient is zero or
    the block holds less than ``DEAD_BLOCK_RHO`` of it (:data:`JUDGED_IMAGES`)."""
    judged = gnorm.size
    if not np.any(gnorm > 0):
        raise ConfigError(
            f"the per-sample gradient of each of the first {judged} images is exactly zero (the loss does not depend "
            "on the weights: e.g. a saturated or constant model output), so there is nothing to invert. Fix: attack "
            "another model (dpaudit attack --arch resnet9 initialises a fresh one).")
    share = bnorm / np.maximum(gnorm, 1e-300)
    if np.any(share > DEAD_BLOCK_RHO[block.connection]):
        return
    # Suggest only what is not already in use (a user was once told to switch to the setting they had).
    fixes = [] if block.pattern_kind == "random" else ["use the random readout pattern (ImprintBlock(pattern='random'))"]
    if block.connection != "addition":
        fixes.append("pass --connection addition")
    fixes = fixes or ["attack another model (the block cannot be read through this one)"]
    raise ConfigError(
        f"the imprint block holds at most {share.max():.2e} of the per-sample gradient norm over the first {judged} "
        "images: the downstream model is invariant to the block's output (a bias-free layer followed by GroupNorm "
        f"cancels a constant pattern; the {block.connection} connection needs at least "
        f"{DEAD_BLOCK_RHO[block.connection]:g}). Fix: {', or '.join(fixes)}.")


def weak_block_note(rho: np.ndarray, connection: str) -> str | None:
    """The note an attack result carries when some images hold less than ``DEAD_BLOCK_RHO[connection]`` of their
    per-sample gradient norm in the block (None when none does).

    :func:`image_statistics` refuses a block dead on every judged image; one that is weak on some images only is
    attacked as it is, and those images' reconstructions are noisier (eta grows as 1 / rho), so the success rate
    over all images may understate the risk for them: the reader is told how many.
    """
    rho = np.asarray(rho, dtype=np.float64)
    threshold = DEAD_BLOCK_RHO[connection]
    weak = int(np.count_nonzero(rho < threshold))
    if not weak:
        return None
    return (f"{weak} of {rho.size} images hold less than {threshold:g} of their per-sample gradient norm in the "
            f"imprint block ({connection} connection); their reconstructions are noisier, so the success rate may "
            "understate the risk for them")


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


@dataclass(frozen=True)
class PooledNoise:
    """Standard-normal draws from which :func:`pooled_views` builds each decoder's exact view (arrays over images).

    For image ``i`` let ``xi_0..xi_{K-1}`` be the K i.i.d. N(0, I_{D+1}) noise rows of :func:`replay` and ``e``
    the unit vector ``[x, 1] / |[x, 1]|`` (the direction of the clean rows). Neither decoder needs the K x (D+1)
    noise itself:

    * the strong decoder sees the rows only through the prefix sums ``S_k`` (its likelihood-ratio test needs
      ``|S_k|^2``, its output is ``S_m / (m + 1)``). Split ``xi_j = a_j e + xi_j'``: the ``a_j`` are i.i.d.
      N(0, 1); the Gram matrix of the ``xi_j'`` (in the D-dimensional complement of ``e``) is Wishart_K(D, I),
      drawn by Bartlett's decomposition ``L L^T`` (Bartlett, Proc. R. Soc. Edinb. 53, 1933; L lower triangular,
      ``L_jj^2 ~ chi^2_{D-j}`` for j = 0..K-1, ``L_jl ~ N(0, 1)`` below the diagonal); and, given that Gram matrix,
      the direction of any fixed combination of the ``xi_j'`` is uniform on the unit sphere of the complement and
      independent of it (the law of the ``xi_j'`` is invariant under rotations of the complement). So
      ``|S_k|^2 = (n_k kappa + s A_k)^2 + s^2 |R_k|^2`` with ``A_k = a_0 + .. + a_k``, ``R_k`` = row k of
      ``cumsum(L)``, and ``S_m = (n_m kappa + s A_m) e + s |R_m| u`` with ``u`` uniform on that sphere;
    * the paper decoder's reduction reads each differenced row only through its bias entry and its weight mean,
      i.e. through the projections of ``xi_j`` on the orthonormal ``b = e_{D+1}`` and ``w = [1, .., 1, 0] / sqrt(D)``
      (i.i.d. N(0, 1): ``alpha_j``, ``beta_j``); the kept row's remaining noise ``xi_k' - xi_{k-1}'`` lies in the
      complement of ``b`` and ``w``, is independent of those projections, and is N(0, v P) with v = 1 for row 0
      and 2 otherwise: ``sqrt(v) h`` with ``h`` a projected standard normal vector.

    Every noise level's view is therefore exactly distributed as the row-wise replay's (the tests compare both
    statistically), at O(K^2 + D) draws per image instead of O(K D). The same draws serve every level (common
    random numbers), as in :func:`replay`.

    Attributes
    ----------
    along: N x K, the ``a_j``.
    bartlett_cumsum: N x K, ``|R_k|`` (norms of the cumulative sums of the rows of the Bartlett factor).
    direction: N x (D+1) float32, ``u`` (unit, orthogonal to ``e``).
    bias_noise, mean_noise: N x K, ``alpha_j`` and ``beta_j``.
    rest: N x (D+1) float32, ``h`` (standard normal in the complement of ``b`` and ``w``).
    unit: N x (D+1) float32, ``e`` (not random; kept to avoid recomputing it per level).
    unit_bias, unit_mean: N, the bias entry of ``e`` and the mean of its weight entries (float64; the paper
    decoder's choice reads ``e`` only through them, at every level).
    """

    along: np.ndarray
    bartlett_cumsum: np.ndarray
    direction: np.ndarray
    bias_noise: np.ndarray
    mean_noise: np.ndarray
    rest: np.ndarray
    unit: np.ndarray
    unit_bias: np.ndarray
    unit_mean: np.ndarray


def draw_pooled_noise(rng: np.random.Generator, z: np.ndarray, bins: int) -> PooledNoise:
    """Draw :class:`PooledNoise` for normalised images ``z`` (N x D)."""
    n, d = z.shape
    along = rng.standard_normal((n, bins))
    lower = np.tril(rng.standard_normal((n, bins, bins)), k=-1)
    idx = np.arange(bins)
    lower[:, idx, idx] = np.sqrt(rng.chisquare(d - idx, size=(n, bins)))  # Wishart_K(D, I): dof D - j, j = 0..K-1
    rcum = np.sqrt(np.einsum("nkl,nkl->nk", *(2 * (np.cumsum(lower, axis=1),))))
    e = _unit_rows(z)
    g = rng.standard_normal((n, d + 1), dtype=np.float32)
    g -= (np.einsum("nd,nd->n", g, e, dtype=np.float64)[:, None] * e).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    h = rng.standard_normal((n, d + 1), dtype=np.float32)
    h[:, -1] = 0.0  # remove the component along b = e_{D+1}
    h[:, :-1] -= h[:, :-1].mean(axis=1, keepdims=True)  # ... and along w = [1, .., 1, 0] / sqrt(D)
    return PooledNoise(along, rcum, g, rng.standard_normal((n, bins)), rng.standard_normal((n, bins)), h, e,
                       e[:, -1].astype(np.float64), e[:, :-1].mean(axis=1, dtype=np.float64))


def _unit_rows(z: np.ndarray) -> np.ndarray:
    """``[x, 1] / |[x, 1]|`` per row of ``z`` (float32, N x (D+1))."""
    e = np.empty((z.shape[0], z.shape[1] + 1), dtype=np.float32)
    e[:, :-1] = z
    e[:, -1] = 1.0
    e /= np.sqrt(np.einsum("nd,nd->n", z, z, dtype=np.float64) + 1.0)[:, None].astype(np.float32)
    return e


def pooled_views(stats: ImageStatistics, noise: PooledNoise, *, noise_multiplier: float,
                 max_grad_norm: float, observations: int = 1, decoders: tuple[str, ...] = ("strong", "paper")):
    """Each decoder's exact view at one noise level (see :class:`PooledNoise`), for all images at once.

    Returns
    -------
    dict
        ``"strong"``: ``(avg, m)``, the mean of the chosen prefix of rows (N x (D+1)) and the chosen m, both as the
        likelihood-ratio test of :func:`dpaudit.attacks.decoders.choose_prefix` picks them from the full view;
        ``"paper"``: ``(row, keep)``, the differenced row breaching's reduction keeps (N x (D+1)) and its index
        (-1: none), from :func:`paper_view` (which forms only the rows asked for).
    """
    n, k = noise.along.shape
    s = noise_multiplier * max_grad_norm / np.sqrt(observations)
    kappa = stats.clip_factor(max_grad_norm) * stats.delta * stats.x_norm1  # clean rows = kappa * e on rows 0..m
    e = noise.unit
    rows = np.arange(k)
    out = {}
    if "strong" in decoders:
        count = np.minimum(rows[None, :], stats.active_rows[:, None]) + 1.0  # n_k: clean rows in prefix 0..k
        coef = count * kappa[:, None] + s * np.cumsum(noise.along, axis=1)
        score = (coef**2 + (s * noise.bartlett_cumsum) ** 2) / (rows + 1.0)  # |S_k|^2 / (k + 1)
        m = np.argmax(score, axis=1)
        pick = np.arange(n)
        avg = (coef[pick, m] / (m + 1.0)).astype(np.float32)[:, None] * e
        avg += (s * noise.bartlett_cumsum[pick, m] / (m + 1.0)).astype(np.float32)[:, None] * noise.direction
        out["strong"] = (avg, m)
    if "paper" in decoders:
        view = paper_view(stats, noise, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                          observations=observations)
        out["paper"] = (view.rows(), view.keep)
    return out


@dataclass(frozen=True)
class PaperView:
    """The paper decoder's view at one noise level (see :class:`PooledNoise`): the differenced row breaching's
    reduction keeps, per image, and that row for the images asked for (:meth:`rows`).

    The choice needs only the K bias entries and weight means per image; the kept row itself is N x (D+1), so an
    attack that has decoded an image's row before (the same noise-only row at another level) need not form it.

    Attributes
    ----------
    keep: N, the kept differenced row (-1: none).
    noise: the draws (their ``unit`` and ``rest`` build the rows).
    along_unit, along_rest, bias_shift, mean_shift: N each, the kept row's coefficients: ``along_unit * e +
    along_rest * h``, plus ``bias_shift`` on the bias entry and ``mean_shift`` on every weight entry.
    """

    keep: np.ndarray
    noise: PooledNoise
    along_unit: np.ndarray
    along_rest: np.ndarray
    bias_shift: np.ndarray
    mean_shift: np.ndarray

    def rows(self, images: np.ndarray | None = None) -> np.ndarray:
        """The kept differenced rows (len x (D+1), float32) of ``images`` (indices; default every image)."""
        pick = slice(None) if images is None else np.asarray(images)
        row = self.along_unit[pick].astype(np.float32)[:, None] * self.noise.unit[pick]
        row += self.along_rest[pick].astype(np.float32)[:, None] * self.noise.rest[pick]
        row[:, -1] += self.bias_shift[pick].astype(np.float32)
        row[:, :-1] += self.mean_shift[pick].astype(np.float32)[:, None]
        return row


def paper_view(stats: ImageStatistics, noise: PooledNoise, *, noise_multiplier: float, max_grad_norm: float,
               observations: int = 1) -> PaperView:
    """The paper decoder's exact view at one noise level, for all images at once (see :class:`PaperView`)."""
    n, k = noise.along.shape
    s = noise_multiplier * max_grad_norm / np.sqrt(observations)
    kappa = stats.clip_factor(max_grad_norm) * stats.delta * stats.x_norm1  # clean rows = kappa * e on rows 0..m
    d = noise.unit.shape[1] - 1
    gamma = np.zeros((n, k))
    gamma[:, 0] = 1.0
    top = stats.active_rows + 1
    has = top < k
    gamma[np.nonzero(has)[0], top[has]] = -1.0  # clean differenced rows: +c on row 0, -c on row m + 1
    dalpha = np.diff(noise.bias_noise, axis=1, prepend=0.0)
    dbeta = np.diff(noise.mean_noise, axis=1, prepend=0.0)
    bias = gamma * (kappa * noise.unit_bias)[:, None] + s * dalpha
    wmean = gamma * (kappa * noise.unit_mean)[:, None] + s * dbeta / np.sqrt(d)
    keep = paper_choice(bias, wmean)
    pick = np.arange(n)
    kk = np.maximum(keep, 0)
    return PaperView(keep, noise, gamma[pick, kk] * kappa, s * np.sqrt(np.where(kk == 0, 1.0, 2.0)),
                     s * dalpha[pick, kk], s * dbeta[pick, kk] / np.sqrt(d))
