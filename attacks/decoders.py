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

from dataclasses import dataclass

import numpy as np
from dpaudit.errors import invalid

DECODERS = ("strong", "paper", "paper-all")
DENOISERS = ("tv", "none")

#: Total-variation weight per unit of pixel noise std (Chambolle's algorithm, skimage ``denoise_tv_chambolle``).
#: Chosen on scikit-image's bundled pictures at 64x64x3 over noise std 0.01..0.2 (``bench/bench_attack.py
#: --calibrate-tv`` prints the sweep); SSIM is flat within 0.01 between 0.7 and 1.3.
TV_WEIGHT_PER_NOISE_STD = 1.0

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
    """The strong decoder: one image H x W x C in [0, 1].

    Parameters
    ----------
    rows:
        The attacker's view of the block, K x (D+1) (weight gradient rows with the bias gradient appended).
    noise_std:
        Known per-entry noise std of ``rows`` (sigma * C / sqrt(T)); 0 without noise.
    denoiser:
        ``"tv"`` (total variation, Chambolle) or ``"none"``.
    """
    if denoiser not in DENOISERS:
        raise invalid("denoiser", denoiser, f"one of {list(DENOISERS)}")
    m = choose_prefix(rows)
    avg = rows[: m + 1].astype(np.float64).mean(axis=0)  # averaging, not differencing: noise std / sqrt(m+1)
    scale = avg[-1]  # f * delta: scale and sign from the averaged bias gradient
    if scale == 0.0:
        return np.clip(layout.to_image(np.zeros(rows.shape[1] - 1)), 0.0, 1.0)
    image = layout.to_image(avg[:-1] / scale)
    if denoiser == "tv" and noise_std > 0:
        level = noise_std / np.sqrt(m + 1) / abs(scale)  # per-value std of avg/scale, normalised units
        pixel_std = level * layout.std  # per channel
        if float(np.max(pixel_std)) > MIN_DENOISE_STD:
            image = _denoise_tv(image, pixel_std)
    return np.clip(image, 0.0, 1.0)


def _denoise_tv(image: np.ndarray, pixel_std: np.ndarray) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    # Channels share one weight, taken at the mean noise level (the normalisation std differs little by channel).
    weight = TV_WEIGHT_PER_NOISE_STD * float(np.mean(pixel_std))
    # Pre-clip very noisy values so one outlier cannot dominate the TV problem; denoising happens in [-.5, 1.5].
    return denoise_tv_chambolle(np.clip(image, -0.5, 1.5), weight=weight, channel_axis=-1)


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
    cands, wmean = _breaching_rows(rows, layout)
    if len(cands) == 0:  # breach_padding: a zero (normalised) image
        return np.clip(layout.to_image(np.zeros(rows.shape[1] - 1)), 0.0, 1.0)
    # breach_reduction "weight": torch.topk(weight_grad.mean(dim=1)[bias_grad != 0].abs(), 1, largest=False)
    keep = int(np.argmin(np.abs(wmean)))
    return np.clip(layout.to_image(cands[keep]), 0.0, 1.0)


def decode_paper_all(rows: np.ndarray, layout: Layout) -> np.ndarray:
    """Breaching's candidates without the reduction: n_candidates x H x W x C (at least one, zero-padded)."""
    cands, _ = _breaching_rows(rows, layout)
    if len(cands) == 0:
        cands = np.zeros((1, rows.shape[1] - 1))
    return np.clip(layout.to_image(cands), 0.0, 1.0)
