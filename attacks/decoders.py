"""Decoders: from the attacker's noisy view of the imprint block (K x (D+1)) to images in [0, 1].

* ``strong`` (dpaudit's default): likelihood-ratio choice of the active prefix, average of the active rows,
  scale and sign from the averaged bias gradient, de-normalise, total-variation denoising at the known noise level,
  clip. An auditor must not under-state risk; this is the decoder the headline uses.
* ``paper``: the breaching decoder the seed paper used (``ImprintAttacker.reconstruct`` with
  ``breach_reduction: weight`` of breaching's ``config/attack/imprint.yaml``, April 2023): difference adjacent
  rows, divide weight by bias rows with non-zero bias gradient, keep the one with the smallest absolute mean
  weight gradient, clamp to the valid range. Under any noise every row has a non-zero bias gradient and this rule
  keeps a pure-noise row.
* ``paper-all``: the same without the reduction: every candidate row is returned and scoring picks the one with
  the minimum distance to each input.

Every decoder works on one image's rows; the input is the normalised image, the output de-normalised H x W x C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dpaudit.errors import invalid

DECODERS = ("strong", "paper", "paper-all")

#: What ``--decoder`` names, in ``dpaudit attack`` and ``dpaudit profile`` alike: one decoder, or ``all``, the
#: decoders an attacker runs (``strong`` and ``paper``; the profile's default). ``paper-all`` scores every candidate
#: row of the paper decoder against the training images, a diagnostic of the paper decoder's reduction rule, and is
#: run only when named.
DECODER_CHOICES: dict[str, tuple[str, ...]] = {"strong": ("strong",), "paper": ("paper",),
                                                "paper-all": ("paper-all",), "all": ("strong", "paper")}


def decoders_for(choice: str) -> tuple[str, ...]:
    """The decoders ``--decoder choice`` runs (:data:`DECODER_CHOICES`)."""
    if choice not in DECODER_CHOICES:
        raise invalid("decoder", choice, f"one of {', '.join(map(str, DECODER_CHOICES))}", "pass --decoder all")
    return DECODER_CHOICES[choice]


def decoder_choice(decoders: tuple[str, ...]) -> str | None:
    """The ``--decoder`` value that runs exactly ``decoders`` (None when no single value does)."""
    return next((name for name, ds in DECODER_CHOICES.items() if ds == tuple(decoders)), None)
DENOISERS = ("tv", "none")

#: Total-variation weight per unit of pixel noise std. Chosen on scikit-image's bundled pictures at 64x64x3 over
#: noise std 0.01..0.2 with skimage's ``denoise_tv_chambolle``; SSIM is flat within 0.01 between 0.7 and 1.3.
TV_WEIGHT_PER_NOISE_STD = 1.0

#: Chambolle-Pock iterations and initial primal step of :func:`denoise_tv`. Chosen on scikit-image's bundled
#: pictures at 64x64x3, noise std 0.003..0.2 (``bench/bench_attack.py --calibrate-tv`` prints the sweep): mean SSIM
#: and the count above 0.8 at least skimage's ``denoise_tv_chambolle`` (eps 2e-4) at every level; more iterations
#: approach the exact ROF minimiser, which is not better in SSIM than skimage's early-stopped one.
TV_ITERATIONS = 12
TV_TAU0 = 1.0

#: Below this pixel noise std (a quarter of an 8-bit grey level) denoising cannot change an 8-bit image; skip it.
MIN_DENOISE_STD = 0.25 / 255


@dataclass(frozen=True)
class Layout:
    """How to turn a normalised flat vector back into an image: shape (C, H, W) and per-channel mean/std."""

    shape: tuple[int, int, int]
    mean: np.ndarray
    std: np.ndarray

    def to_image(self, flat: np.ndarray) -> np.ndarray:
        """Normalised flat vector(s) (..., D) -> de-normalised images (..., H, W, C), not clipped."""
        c, h, w = self.shape
        x = flat.reshape(*flat.shape[:-1], c, h, w)
        x = x * self.std[:, None, None] + self.mean[:, None, None]
        return np.moveaxis(x, -3, -1)

    def denormalise_(self, flat: np.ndarray) -> np.ndarray:
        """:meth:`to_image` of a float64 array that may be overwritten: the same values, computed in place (no
        temporaries of the images' size); the result views ``flat``'s memory, one channel plane after another."""
        c, h, w = self.shape
        x = flat.reshape(*flat.shape[:-1], c, h, w)
        x *= self.std[:, None, None]
        x += self.mean[:, None, None]
        return np.moveaxis(x, -3, -1)

    def valid_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Normalised values of black and white per flat entry (for breaching's clamp)."""
        _, h, w = self.shape
        lo = np.repeat(-self.mean / self.std, h * w)
        hi = np.repeat((1.0 - self.mean) / self.std, h * w)
        return lo, hi


def choose_prefix(rows: np.ndarray) -> int:
    """Maximum-likelihood active prefix 0..m under white Gaussian noise of known variance.

    Model: rows 0..m hold the same unknown vector u plus noise, rows above hold noise only. The profile
    log-likelihood of prefix m is ``|S_m|^2 / (2 s^2 (m + 1))`` plus a constant (S_m the sum of rows 0..m, the
    number of free parameters does not depend on m), so the likelihood-ratio test between any two prefixes picks
    the argmax of ``|S_m|^2 / (m + 1)``. Noise-free, the true m wins strictly.
    """
    s = np.cumsum(rows.astype(np.float64), axis=0)
    score = np.einsum("kd,kd->k", s, s) / np.arange(1, rows.shape[0] + 1)
    return int(np.argmax(score))


def decode_strong(rows: np.ndarray, layout: Layout, noise_std: float, *, denoiser: str = "tv") -> np.ndarray:
    """The strong decoder on one full view: one image H x W x C in [0, 1].

    Parameters
    ----------
    rows:
        The attacker's view of the block, K x (D+1) (weight gradient rows with the bias gradient appended).
    noise_std:
        Known per-entry noise std of ``rows`` (sigma * C / sqrt(T)); 0 without noise.
    denoiser:
        ``"tv"`` (total variation) or ``"none"``.
    """
    m = choose_prefix(rows)
    avg = rows[: m + 1].astype(np.float64).mean(axis=0)  # averaging, not differencing: noise std / sqrt(m+1)
    return decode_pooled(avg[None], np.array([m]), layout, noise_std, denoiser=denoiser)[0]


def decode_pooled(avg: np.ndarray, prefix: np.ndarray, layout: Layout, noise_std: float, *,
                  denoiser: str = "tv") -> np.ndarray:
    """The strong decoder after pooling, for many images at once: N x H x W x C in [0, 1] (float32).

    Parameters
    ----------
    avg:
        N x (D+1): the mean of each image's chosen prefix of rows 0..m (weight part, then the bias gradient).
    prefix:
        The chosen m per image (the pooled noise std is ``noise_std / sqrt(m + 1)``).
    noise_std:
        Per-entry noise std of the unpooled rows (sigma * C / sqrt(T)).
    """
    if denoiser not in DENOISERS:
        raise invalid("denoiser", denoiser, f"one of {', '.join(map(str, DENOISERS))}")
    avg = np.asarray(avg)
    if avg.dtype not in (np.float32, np.float64):
        avg = avg.astype(np.float64)
    scale = avg[:, -1].astype(np.float64)  # f * delta: scale and sign from the averaged bias gradient
    dead = scale == 0.0
    safe = np.where(dead, 1.0, scale)
    todo = np.zeros(len(avg), dtype=bool)
    if denoiser == "tv" and noise_std > 0:
        # Per-value std of avg / scale in normalised units, then per channel in pixel units.
        level = noise_std / np.sqrt(np.asarray(prefix, dtype=np.float64) + 1.0) / np.abs(safe)
        # Channels share one weight, taken at the mean noise level (the normalisation std differs little by channel).
        pixel_std = np.where(dead, 0.0, level * float(np.mean(layout.std)))
        todo = np.where(dead, 0.0, level * float(np.max(layout.std))) > MIN_DENOISE_STD
    # One channel plane after another in memory: the denoiser and the SSIM read planes, so no layout copy is made
    # between the decoder and the score. Images to denoise carry noise far above float32 rounding: they are
    # de-normalised in float32, one product by std / scale and one sum per value (within 2 ulp of the float64
    # route, 6x faster at 224 px); the others (without noise: the exact images, bit for bit the paper decoder's)
    # in float64, rounded once. Each image's route depends on itself only.
    c, h, w = layout.shape
    fast = todo if avg.dtype == np.float32 else np.zeros_like(todo)
    planes = np.empty((len(avg), c, h, w), dtype=np.float32)
    if fast.any():
        factor = (layout.std[None, :] / safe[fast, None]).astype(np.float32)
        sub = avg[fast] if not fast.all() else avg
        out = planes[fast] if not fast.all() else planes
        np.multiply(sub[:, :-1].reshape(len(sub), c, h, w), factor[:, :, None, None], out=out)
        out += layout.mean.astype(np.float32)[:, None, None]
        if not fast.all():
            planes[fast] = out
    if not fast.all():
        sub = avg[~fast] if fast.any() else avg
        flat = sub[:, :-1] / safe[~fast, None]  # in float64 (float32 / float64 promotes each value exactly)
        flat[dead[~fast]] = 0.0
        c_first = np.moveaxis(layout.denormalise_(flat), -1, 1)
        if fast.any():
            planes[~fast] = c_first
        else:
            planes[...] = c_first
    images = np.moveaxis(planes, 1, -1)
    if todo.any():
        # Pre-clip very noisy values so one outlier cannot dominate the TV problem; denoise in [-.5, 1.5]. (The
        # images left alone are clipped to [0, 1] below, which this clip does not change.)
        np.clip(images, -0.5, 1.5, out=images)
        if todo.all():
            images = denoise_tv(images, TV_WEIGHT_PER_NOISE_STD * pixel_std)
        else:
            images[todo] = denoise_tv(images[todo], TV_WEIGHT_PER_NOISE_STD * pixel_std[todo])
    return np.clip(images, 0.0, 1.0, out=images)


def denoise_tv(images: np.ndarray, weight: np.ndarray, *, iterations: int = TV_ITERATIONS,
               tau0: float = TV_TAU0) -> np.ndarray:
    """Isotropic total-variation denoising (ROF) of N x H x W x C images, each channel on its own.

    Solves ``min_u weight * TV(u) + |u - f|^2 / 2`` per image and channel, the problem scikit-image's
    ``denoise_tv_chambolle(f, weight=weight, channel_axis=-1)`` solves (forward differences, Neumann boundary),
    by Chambolle and Pock's accelerated primal-dual algorithm (J. Math. Imaging Vis. 40, 2011,
    doi:10.1007/s10851-010-0251-1, Algorithm 2, section 6.2.1: ``theta = 1 / sqrt(1 + 2 gamma tau)`` with the
    data term's modulus gamma = 1; ``tau sigma L^2 = 1`` with ``L^2 = 8``), vectorised over images and channels in
    float32 torch with a fixed number of iterations. Each plane is solved at weight 1 on ``f / weight`` and scaled
    back (``ROF_w(f) = w ROF_1(f / w)``), so one step size serves every noise level.

    The tests compare per-image SSIM with scikit-image's solver on its bundled pictures.
    """
    import torch

    x = np.asarray(images, dtype=np.float32)
    n, h, w, c = x.shape
    wt = np.repeat(np.asarray(weight, dtype=np.float64).reshape(n), c)
    if n == 0:
        return x.copy()
    # Planes (a free view when the images are stored plane after plane, as the decoders write them).
    planes = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).reshape(n * c, h, w)
    scale = torch.from_numpy(wt.astype(np.float32)).view(-1, 1, 1)
    out = torch.empty_like(planes)
    chunk = equal_chunk_size(n * c, max(1, _TV_CHUNK_VALUES // (h * w)))
    with torch.no_grad():
        for s in range(0, n * c, chunk):
            torch.mul(_rof_unit(planes[s : s + chunk] / scale[s : s + chunk], iterations, tau0),
                      scale[s : s + chunk], out=out[s : s + chunk])
    return np.moveaxis(out.reshape(n, c, h, w).numpy(), 1, -1)


def equal_chunk_size(n: int, most: int) -> int:
    """Items per chunk when ``n`` items go through in chunks of at most ``most``: as equal as they can be (11 planes
    by at most 5: 4 + 4 + 3, not 5 + 5 + 1; 12 images by at most 8: 6 + 6), so that no short last chunk runs at the
    per-call cost of a small one."""
    if n <= 0:
        return max(1, most)
    chunks = -(-n // most)
    return -(-n // chunks)


#: Values per plane chunk of :func:`denoise_tv` (each state tensor 1 MB in float32). Measured on this 2-core EPYC (2 MB
#: L2 per core, 32 MB L3), 12 iterations, minimum CPU time over 128K..4M values (12 and 108 images of 64 px, 3 and
#: 27 of 224 px): 256K and 512K best, 128K (the earlier setting: 64 px 18 planes, 224 px 2 planes) 5-8% slower,
#: 1M 3-8% slower, 4M 25-70% slower. A plane's result does not depend on the chunk (a test checks).
_TV_CHUNK_VALUES = 256 * 1024


def _rof_unit(g, iterations: int, tau: float):
    """Chambolle-Pock Algorithm 2 for ``min_u TV(u) + |u - g|^2 / 2`` on P x H x W planes (in-place updates).

    Each plane is stored flat (H W values, row-major), so every pass is one contiguous run per plane: the vertical
    forward difference is a shift by W, the horizontal one a shift by 1 (its last column, which would pair a row's
    end with the next row's start, is zeroed: Neumann boundary). The dual variable q = (qx, qy) lives in one
    buffer with W zeros of padding in front of each component, so the divergence's backward differences are
    shifts too and one division projects both; the primal buffers rotate instead of being copied, and every
    shifted view is made once: 15 cheap passes over the planes per iteration. The last iteration's
    extrapolation (ubar) is not computed: nothing reads it.
    """
    import torch

    p, h, w = g.shape
    n = h * w
    g = g.reshape(p, n)
    buffers = (g.clone(), g.clone(), torch.empty_like(g))  # u, ubar, and the next u
    norm = torch.empty_like(g)
    # Dual variable, |q| <= 1: qx vertical (stays 0 on the last row), qy horizontal (0 on the last column); the
    # padding in front stays 0.
    qp = torch.zeros((2, p, n + w), dtype=g.dtype)
    q, qx, qy = qp[:, :, w:], qp[0, :, w:], qp[1, :, w:]
    qx_head, qy_head = qx[:, :-w], qy[:, :-1]
    qx_before, qy_before = qp[0, :, :n], qp[1, :, w - 1 : w - 1 + n]  # q shifted by one row / one column
    qy_last_column = qy.view(p, h, w)[:, :, -1]
    # (below, above, right, left) neighbours of each buffer: the forward differences of grad(ubar)
    shifted = {id(b): (b[:, w:], b[:, :-w], b[:, 1:], b[:, :-1]) for b in buffers}
    u, ubar, d = buffers
    sigma = 1.0 / (8.0 * tau)
    for it in range(iterations):
        below, above, right, left = shifted[id(ubar)]
        qx_head.add_(below, alpha=sigma).sub_(above, alpha=sigma)  # q += sigma grad(ubar)
        qy_head.add_(right, alpha=sigma).sub_(left, alpha=sigma)
        qy_last_column.zero_()
        # Projection onto |q| <= 1: q * rsqrt(max(1, qx^2 + qy^2)). sqrt(qx^2 + qy^2) is within 1 ulp of
        # torch.hypot and 2.5x faster; hypot's overflow guard is not needed (the planes are pixels clipped to
        # [-0.5, 1.5] over the TV weight). The reciprocal square root and a product in place of the square root
        # and a quotient: 7% less TV time, within 2.4e-7 of it on the attack's images (float32 rounding).
        torch.mul(qx, qx, out=norm).addcmul_(qy, qy).clamp_(min=1.0).rsqrt_()
        q.mul_(norm)
        torch.sub(qx, qx_before, out=d)  # d = div q (the negative adjoint of the forward-difference gradient)
        d.add_(qy).sub_(qy_before).add_(g)
        c = 1.0 / (1.0 + tau)
        d.lerp_(u, c)  # prox of tau |u - g|^2 / 2: u^{n+1} = c u^n + (1 - c)(div q + g)
        theta = 1.0 / math.sqrt(1.0 + 2.0 * tau)
        if it + 1 < iterations:
            u.lerp_(d, 1.0 + theta)  # ubar = u^{n+1} + theta (u^{n+1} - u^n), in u^n's buffer
        u, ubar, d = d, u, ubar
        tau *= theta
        sigma /= theta
    return u.reshape(p, h, w)


def _breaching_rows(rows: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Breaching's candidates: differenced rows divided by their bias gradient, clamped; and their weight means."""
    diff = rows.astype(np.float64).copy()
    diff[1:] -= rows[:-1]  # "cumulative" structure: row i - row i-1 (breaching's loop runs over original values)
    bias = diff[:, -1]
    valid = bias != 0
    weights = diff[valid, :-1]
    cands = weights / bias[valid, None]
    lo, hi = layout.valid_range()
    cands = np.minimum(np.maximum(cands, lo), hi)  # torch.max(torch.min(inputs, (1 - dm) / ds), -dm / ds)
    return cands, weights.mean(axis=1)


def decode_paper(rows: np.ndarray, layout: Layout) -> np.ndarray:
    """Breaching's imprint decoder as the seed paper ran it: one image H x W x C in [0, 1]."""
    diff = rows.astype(np.float64).copy()
    diff[1:] -= rows[:-1]
    keep = paper_choice(diff[None, :, -1], diff[None, :, :-1].mean(axis=-1))[0]
    return decode_paper_rows(diff[None, max(keep, 0)], np.array([keep]), layout)[0]


def paper_choice(bias: np.ndarray, weight_mean: np.ndarray) -> np.ndarray:
    """Breaching's reduction over the differenced rows (N x K each): the kept row per image, -1 if none.

    ``breach_reduction: weight``: among rows with a non-zero bias gradient, the one with the smallest absolute mean
    weight gradient (``torch.topk(weight_grad.mean(dim=1)[bias_grad != 0].abs(), 1, largest=False)``); ties go
    to the lower row.
    """
    score = np.where(bias != 0, np.abs(weight_mean), np.inf)
    keep = np.argmin(score, axis=1)
    return np.where(np.isfinite(score[np.arange(len(keep)), keep]), keep, -1)


def decode_paper_rows(diff_rows: np.ndarray, keep: np.ndarray, layout: Layout) -> np.ndarray:
    """The kept differenced rows (N x (D+1)) divided by their bias gradient and clamped: N x H x W x C in [0, 1].

    An image with no kept row (``keep == -1``) decodes to breaching's padding, the zero normalised image.
    """
    diff_rows = np.asarray(diff_rows)
    if diff_rows.dtype not in (np.float32, np.float64):
        diff_rows = diff_rows.astype(np.float64)
    none = np.asarray(keep) < 0
    bias = np.where(none, 1.0, diff_rows[:, -1].astype(np.float64))
    cands = diff_rows[:, :-1] / bias[:, None]  # in float64 (float32 / float64 promotes each value exactly)
    if none.any():
        cands[none] = 0.0
    # torch.max(torch.min(inputs, (1 - dm) / ds), -dm / ds), per channel (valid_range's values, not repeated)
    c, _, _ = layout.shape
    per_channel = cands.reshape(len(cands), c, -1)
    np.maximum(per_channel, (-layout.mean / layout.std)[:, None], out=per_channel)
    np.minimum(per_channel, ((1.0 - layout.mean) / layout.std)[:, None], out=per_channel)
    images = layout.denormalise_(cands)
    return np.clip(images, 0.0, 1.0, out=images).astype(np.float32)


def decode_paper_all(rows: np.ndarray, layout: Layout) -> np.ndarray:
    """Breaching's candidates without the reduction: n_candidates x H x W x C (at least one, zero-padded)."""
    cands, _ = _breaching_rows(rows, layout)
    if len(cands) == 0:
        cands = np.zeros((1, rows.shape[1] - 1))
    return np.clip(layout.to_image(cands), 0.0, 1.0)
