"""Figures of the attack (matplotlib imported lazily, inside each function).

* :func:`plot_ssim_error_cdf`: the empirical CDF of the SSIM error 1 - SSIM, one curve per noise level and decoder
  (seed paper, Figure 3 left).
* :func:`save_best_reconstructions`: the best reconstructions next to their originals (patient images: only
  written when the user asks for them with ``--save-images``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dpaudit.attacks.reconstruction import AttackResult
from dpaudit.errors import ConfigError
from dpaudit.outputs import save_figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(row) -> str:
    from dpaudit.numfmt import upper

    # the row's epsilon is the accountant's (a sound upper bound): rounded up, as everywhere it is shown
    eps = "" if row.epsilon is None else f", eps<={upper(row.epsilon)}"
    return f"sigma={row.noise_multiplier:g}{eps}, {row.decoder}"


def plot_ssim_error_cdf(result: AttackResult, path: str | Path) -> Path:
    """Write the SSIM-error CDF (fraction of images with 1 - SSIM below x) to ``path`` (PNG or PDF)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for row in result.rows:
        err = np.sort(1.0 - np.asarray(row.ssim))
        frac = np.arange(1, len(err) + 1) / len(err)
        ax.step(np.concatenate([[0.0], err, [1.0]]), np.concatenate([[0.0], frac, [1.0]]), where="post",
                label=_label(row), linestyle="-" if row.decoder == "strong" else "--")
    ax.axvline(1.0 - result.success_ssim, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("SSIM error (1 - SSIM)")
    ax.set_ylabel("fraction of images (empirical CDF)")
    ax.set_title(f"Imprint attack, {result.connection} connection; success: SSIM > {result.success_ssim:g}", fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    try:
        save_figure(fig, path, dpi=150)
    finally:
        plt.close(fig)
    return path


def save_best_reconstructions(result: AttackResult, originals: np.ndarray, path: str | Path) -> Path:
    """One row per (noise level, decoder): the best reconstructions above their originals (N x H x W x C)."""
    plt = _pyplot()
    rows = [r for r in result.rows if len(r.best_indices)]
    k = max((len(r.best_indices) for r in rows), default=0)
    if not rows or k == 0:
        raise ConfigError("no reconstructions were kept. Fix: run the attack with keep_images > 0.")
    fig, axes = plt.subplots(2 * len(rows), k, figsize=(1.3 * k, 2.7 * len(rows)), squeeze=False)
    for r_i, row in enumerate(rows):
        for j in range(k):
            top, bottom = axes[2 * r_i, j], axes[2 * r_i + 1, j]
            top.axis("off")
            bottom.axis("off")
            if j >= len(row.best_indices):
                continue
            img = np.clip(row.best_images[j], 0, 1)
            top.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray")
            top.set_title(f"SSIM {row.ssim[row.best_indices[j]]:.2f}", fontsize=6)
            orig = originals[row.best_indices[j]]
            bottom.imshow(orig.squeeze(-1) if orig.shape[-1] == 1 else orig, cmap="gray")
        axes[2 * r_i, 0].set_title(_label(row), fontsize=6, loc="left")
    fig.tight_layout()
    path = Path(path)
    try:
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)
    return path
