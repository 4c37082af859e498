"""``run_attack``: the imprint-layer reconstruction attack under DP-SGD, end to end, with frozen results.

One forward and backward pass per image (:func:`dpaudit.attacks.imprint.image_statistics`), then for every noise
level an exact replay of the attacker's view of the block, every requested decoder, and SSIM scoring. Success
fractions are **empirical** (a lower bound on the risk: a stronger attack may exist); the headline of every noise
level is the strongest decoder's success, named.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from dpaudit.attacks.decoders import (
    DECODERS,
    DENOISERS,
    Layout,
    decode_paper_all,
    decode_paper_rows,
    decode_pooled,
)
from dpaudit.attacks.imprint import (
    ImageStatistics,
    ImprintBlock,
    PaperView,
    clean_block_gradient,
    draw_pooled_noise,
    image_statistics,
    paper_view,
    pooled_views,
    replay,
    weak_block_note,
)
from dpaudit.attacks.results import SUCCESS_SSIM, AttackResult, AttackRow
from dpaudit.attacks.scenario import ACCOUNTANTS, CONNECTIONS, SCORINGS
from dpaudit.attacks.scoring import (
    SSIM_VARIANT,
    NearestMatcher,
    SsimReference,
    clopper_pearson,
    keep_mask,
    nearest_match,
)
from dpaudit.config import check_replayed_noise
from dpaudit.errors import DataError, check_int, check_positive, invalid
from dpaudit.heap import reuse_freed_memory
from dpaudit.runtime import resolve_device

if TYPE_CHECKING:
    from dpaudit.bounds import NoiseForEpsilon

#: Progress callback: ``progress(done, total, what)`` after every unit of work (an image's forward and backward
#: pass, or an image decoded at one noise level); ``what`` says what is done in the user's units (images' gradients,
#: noise levels decoded), as the console shows it.
Progress = Callable[[int, int, str], None]


def noise_for_epsilons(epsilons: Sequence[float], *, n_train: int, epochs: int, target_delta: float,
                       accountant: str = "pld") -> list[NoiseForEpsilon]:
    """Noise multipliers of the seed paper's attack scenario for target epsilons, each with its label.

    The malicious server sets batch size 1: q = 1 / N, T = epochs * N (seed paper, Table 3 caption: "the noise
    multiplier sigma is given for the empirical attack scenario where an adversary manipulated hyperparameters in
    their favour"). ``accountant="pld"`` (default) is tight: for a given epsilon it yields the smaller sigma, the
    stronger attack, which is the conservative choice for an auditor; ``"rdp"`` reproduces the paper's Opacus RDP
    accounting. ``inf`` maps to sigma 0 (no noise). A target beyond the noise search range (e.g. 1e12) gets the
    range's smallest sigma, and its ``epsilon`` (the label for the results) is what that sigma achieves, with a
    ``note`` saying why (:class:`dpaudit.bounds.NoiseForEpsilon`).
    """
    n_train = check_int("n_train", n_train, fix="pass the number of training images, --n-train")
    epochs = check_int("epochs", epochs, fix="pass the number of training epochs, --epochs")
    if accountant not in ACCOUNTANTS:
        raise invalid("accountant", accountant, f"one of {', '.join(map(str, ACCOUNTANTS))}", "pass --accountant pld")
    from dpaudit.bounds import NoiseForEpsilon, calibrate_epsilon

    levels = []
    for eps in epsilons:
        eps = check_positive("epsilon", eps, allow_zero=False) if math.isfinite(float(eps)) else float(eps)
        if eps == math.inf:
            levels.append(NoiseForEpsilon(math.inf, 0.0, math.inf, accountant, False))
            continue
        levels.append(calibrate_epsilon(eps, 1.0 / n_train, epochs * n_train, target_delta, accountant=accountant))
    return levels


def _validate(images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float]):
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise invalid("images", getattr(images, "shape", type(images).__name__), "a float tensor N x C x H x W",
                      cls=DataError)
    n, c = images.shape[0], images.shape[1]
    if n == 0:
        raise invalid("images", 0, "at least one image", "pass --n-images 1 or more", cls=DataError)
    if labels.shape[0] != n:
        raise invalid("labels", labels.shape[0], f"one label per image ({n})", cls=DataError)
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0 or not (math.isfinite(lo) and math.isfinite(hi)):
        raise invalid("images", f"values in [{lo:.3g}, {hi:.3g}]", "pixel values in [0, 1]",
                      "pass un-normalised images; the attack normalises them with mean/std", cls=DataError)
    mean_a = np.asarray(mean, dtype=np.float64).reshape(-1)
    std_a = np.asarray(std, dtype=np.float64).reshape(-1)
    if mean_a.size == 1:
        mean_a = np.repeat(mean_a, c)
    if std_a.size == 1:
        std_a = np.repeat(std_a, c)
    if mean_a.size != c or std_a.size != c:
        raise invalid("mean/std", (mean_a.size, std_a.size), f"one value per channel ({c})")
    if np.any(std_a <= 0) or not np.all(np.isfinite(std_a)) or not np.all(np.isfinite(mean_a)):
        raise invalid("std", std_a.tolist(), "finite values > 0")
    return mean_a, std_a


# Every image's passes, decoders and scoring make and drop arrays of tens of MB (224 px): kept for reuse while the
# attack runs (dpaudit.heap; the same result bit for bit, tests/test_heap.py). bench/bench_attack.py, five runs
# alternated with and without: 1.25-1.39x the floor against 1.37-1.56x at 224 px (137-158 against 151-183 CPU ms
# per image), 1.00-1.10x against 1.04-1.24x at 64 px; each run with the block beat the run beside it at 224 px.
@reuse_freed_memory()
def run_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, mean: Sequence[float],
               std: Sequence[float], noise_multipliers: Sequence[float],
               decoders: Sequence[str] = ("strong", "paper"), connection: str = "linear", bins: int = 10,
               max_grad_norm: float = 1.0, observations: int = 1, seed: int = 0, scoring: str = "nearest",
               epsilons: Sequence[float | None] | None = None, progress: Progress | None = None,
               denoiser: str = "tv", gain: float = 1e-3, keep_images: int = 0, device: str = "cpu") -> AttackResult:
    """Run the imprint-layer attack against ``model`` on ``images`` for every noise multiplier and decoder.

    Parameters
    ----------
    model:
        Any classifier taking normalised N x C x H x W images; the imprint block is prepended.
    images, labels:
        Float tensor N x C x H x W in [0, 1] and integer labels (the client's loss is cross-entropy).
    mean, std:
        Per-channel normalisation the model expects (one value is broadcast).
    noise_multipliers:
        DP-SGD sigmas to replay (0 = no noise). Batch size 1, clip norm ``max_grad_norm`` (Opacus semantics).
    decoders:
        Any of ``"strong"``, ``"paper"``, ``"paper-all"``.
    observations:
        T: the same image observed T times (federated rounds); the averaged view has sigma / sqrt(T).
    scoring:
        ``"nearest"`` (seed paper: each input gets its nearest reconstruction) or ``"paired"``.
    epsilons:
        Optional epsilon per noise multiplier (reported only).
    keep_images:
        Keep the ``keep_images`` best reconstructions per row (only for ``--save-images``; 0 keeps none).
    device:
        Where the model's forward and backward passes run (the only work on the model): ``"cpu"``, ``"cuda"``,
        ``"cuda:N"`` or ``"auto"`` (a visible GPU, else the CPU), as training's ``--device``. The model is moved
        there for the passes and back to its own device after. The noise, the decoders and the SSIM scoring run on
        the CPU whatever the device (NumPy; the per-image statistics come back once per image). A GPU's kernels
        are not bitwise those of the CPU: its results differ by float32 rounding.

    Returns
    -------
    AttackResult
        Frozen; success rates are empirical (lower bounds on risk). Its ``notes`` count the images that hold less
        than ``DEAD_BLOCK_RHO`` of their gradient norm in the block (:func:`dpaudit.attacks.imprint.weak_block_note`).
    """
    target = resolve_device(device)  # first: a GPU that is not there is named before any work
    mean_a, std_a = _validate(images, labels, mean, std)
    sigmas = [check_replayed_noise("noise_multiplier", s) for s in noise_multipliers]
    if not sigmas:
        raise invalid("noise_multipliers", [], "at least one value", "pass --sigmas 0,1e-4,1e-3")
    decoders = tuple(decoders)
    for d in decoders:
        if d not in DECODERS:
            raise invalid("decoder", d, f"one of {', '.join(map(str, DECODERS))}", "pass --decoder strong|paper|all")
    if not decoders or len(set(decoders)) != len(decoders):
        raise invalid("decoders", list(decoders), "a non-empty list without repeats")
    if connection not in CONNECTIONS:
        raise invalid("connection", connection, f"one of {', '.join(map(str, CONNECTIONS))}", "pass --connection linear")
    if scoring not in SCORINGS:
        raise invalid("scoring", scoring, f"one of {', '.join(map(str, SCORINGS))}")
    if denoiser not in DENOISERS:
        raise invalid("denoiser", denoiser, f"one of {', '.join(map(str, DENOISERS))}")
    max_grad_norm = check_positive("max_grad_norm", max_grad_norm, fix="pass a positive clip norm, e.g. 1.0")
    observations = check_int("observations", observations, fix="pass --observations 1 or more")
    keep_images = check_int("keep_images", keep_images, minimum=0)
    if epsilons is None:
        epsilons = [None] * len(sigmas)
    if len(epsilons) != len(sigmas):
        raise invalid("epsilons", len(epsilons), f"one per noise multiplier ({len(sigmas)})")

    gt_all = images.detach().float().permute(0, 2, 3, 1).numpy()
    keep = keep_mask(gt_all)
    n_excluded = int((~keep).sum())
    if not keep.any():
        raise invalid("images", f"{len(keep)} images", "at least one image with more than 10% non-zero pixels",
                      "pass other images (the seed paper excludes almost-black images)", cls=DataError)
    images = images[torch.as_tensor(keep)]
    labels = labels[torch.as_tensor(keep)]
    gt = gt_all[keep]
    n, c, h, w = images.shape
    layout = Layout((c, h, w), mean_a, std_a)
    block = ImprintBlock((c, h, w), mean=mean_a, std=std_a, bins=bins, connection=connection, gain=gain, seed=seed)

    total = n + n * len(sigmas)
    done = [0]
    levels = len(sigmas)

    def tick(k: int = 1) -> None:
        done[0] += k
        if progress is None:
            return
        if done[0] <= n:
            what = f"gradients of {done[0]}/{n} images"
        else:
            level = (done[0] - n) // n
            what = (f"noise level {level}/{levels} decoded ({n} images, {len(decoders)} decoder"
                    f"{'s' if len(decoders) > 1 else ''})")
        progress(done[0], total, what)

    home = next(model.parameters(), torch.empty(0)).device
    try:
        stats = image_statistics(model.to(target), block.to(target), images, labels, mean=mean_a, std=std_a,
                                 progress=tick)
    finally:
        model.to(home)
    z = ((images.detach().float().numpy() - mean_a[:, None, None].astype(np.float32)) / std_a[:, None, None].astype(np.float32))
    z = z.reshape(n, -1)
    factor = stats.clip_factor(max_grad_norm)
    rho = stats.rho
    # One draw per image serves every noise level (common random numbers); see PooledNoise for why it is exact.
    noise = draw_pooled_noise(np.random.default_rng([seed, 1]), z, block.bins)
    reference = SsimReference(gt)
    matcher = NearestMatcher(gt)
    paper_noise_rows = _NoiseRowCache(stats.active_rows)
    last_scored: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # decoder -> its last (candidates, ssim, matched)

    rows: list[AttackRow] = []
    for sigma, eps in zip(sigmas, epsilons, strict=True):
        recs: dict[str, np.ndarray] = {}
        owners: np.ndarray | None = None
        noise_std = sigma * max_grad_norm / math.sqrt(observations)
        if "strong" in decoders:
            avg, prefix = pooled_views(stats, noise, noise_multiplier=sigma, max_grad_norm=max_grad_norm,
                                       observations=observations, decoders=("strong",))["strong"]
            recs["strong"] = decode_pooled(avg, prefix, layout, noise_std, denoiser=denoiser)
        if "paper" in decoders:
            recs["paper"] = paper_noise_rows(paper_view(stats, noise, noise_multiplier=sigma,
                                                        max_grad_norm=max_grad_norm, observations=observations),
                                             layout)
        if "paper-all" in decoders:  # every candidate row: the full K x (D+1) view, row by row
            cands, own = [], []
            for i in range(n):
                clean = clean_block_gradient(z[i], stats.delta[i], int(stats.active_rows[i]), block.bins, factor[i])
                xi = np.random.default_rng([seed, 2, i]).standard_normal(clean.shape, dtype=np.float32)
                found = decode_paper_all(replay(clean, xi, sigma, max_grad_norm, observations), layout)
                cands.append(found)
                own.append(np.full(len(found), i))
            recs["paper-all"] = np.concatenate(cands).astype(np.float32)
            owners = np.concatenate(own)
        tick(n)
        eta = stats.eta(sigma, max_grad_norm, observations)
        for d in decoders:
            cand = recs[d]
            owner = owners if d == "paper-all" else np.arange(n)
            # Scores depend only on the candidates (one per input for strong and paper): the same candidates as
            # any decoder's last ones (this decoder's at the previous level; without noise the strong and the paper
            # decoder both return the exact images) get the same scores. paper-all's come with owners: not shared.
            same = None if d == "paper-all" else next(
                (prev for key, prev in last_scored.items() if key != "paper-all" and _same_images(prev[0], cand)),
                None)
            if same is not None:
                ssim, matched = same[1], same[2]
            else:
                ssim, matched = _score(gt, cand, owner, scoring, reference, matcher)
            last_scored[d] = (cand, ssim, matched)
            succ = int((ssim > SUCCESS_SSIM).sum())
            lo, hi = clopper_pearson(succ, n)
            best_idx = np.argsort(-ssim, kind="stable")[:keep_images]
            rows.append(AttackRow(
                noise_multiplier=sigma, epsilon=None if eps is None else float(eps), decoder=d, n_images=n,
                success_rate=succ / n, ci_low=lo, ci_high=hi, mean_ssim=float(ssim.mean()),
                mean_rho=float(rho.mean()), ssim=ssim, eta=eta, best_indices=best_idx,
                best_images=cand[matched[best_idx]] if keep_images else np.zeros((0, 1, 1, 1))))
    weak = weak_block_note(rho, connection)
    return AttackResult(rows=tuple(rows), n_excluded=n_excluded, image_shape=(c, h, w), ssim_variant=SSIM_VARIANT,
                        rho=rho, connection=connection, bins=block.bins, max_grad_norm=max_grad_norm,
                        success_ssim=SUCCESS_SSIM, observations=observations, scoring=scoring, seed=seed,
                        notes=() if weak is None else (weak,))


class _NoiseRowCache:
    """The paper decoder's candidates from kept rows that hold no signal, decoded once and reused at every level.

    The clean differenced rows are non-zero only on row 0 and row m + 1 (see :func:`pooled_views`). Any other
    kept row is ``s * xi`` for the noise scale s and noise xi that do not change between levels (common random
    numbers), and breaching's decoder divides its weight part by its bias entry: s cancels, so the candidate is
    the same image at every noise level (up to the float32 rounding of the view). Keeping the first decoding of
    each (image, kept row) makes equal levels give bit-equal candidate sets, which ``run_attack`` then scores once.
    A row decoded before is not even formed (:meth:`PaperView.rows` builds only the others).
    """

    def __init__(self, active_rows: np.ndarray) -> None:
        self._signal_row = np.asarray(active_rows) + 1  # m + 1 (== K: no such row)
        self._keep = np.full(len(self._signal_row), -1)
        self._images: np.ndarray | None = None
        self._handed_out = False  # self._images was returned: copied before it is written again

    def __call__(self, view: PaperView, layout: Layout) -> np.ndarray:
        """:func:`decode_paper_rows` of ``view``'s kept rows, forming and decoding only the rows not seen before.

        A level whose every kept row was seen before gets the stored images themselves (no copy; at most noise
        levels every row is: the bench's grids, 7 of 9), which the caller reads and never writes."""
        keep = view.keep
        noise_only = (keep >= 1) & (keep != self._signal_row)
        c, h, w = layout.shape
        if self._images is None:  # stored plane after plane, as the decoders write their images
            self._images = np.moveaxis(np.zeros((len(keep), c, h, w), dtype=np.float32), 1, -1)
        same = noise_only & (keep == self._keep)
        if same.all():
            self._handed_out = True
            return self._images
        images = np.empty_like(self._images)
        images[same] = self._images[same]
        todo = np.nonzero(~same)[0]
        images[todo] = decode_paper_rows(view.rows(todo), keep[todo], layout)
        new = noise_only & ~same
        if new.any():
            if self._handed_out:
                self._images, self._handed_out = self._images.copy(order="K"), False
            self._images[new] = images[new]
            self._keep[new] = keep[new]
        return images


def _same_images(a: np.ndarray, b: np.ndarray) -> bool:
    """``np.array_equal(a, b)`` for two candidate sets (N x H x W x C), deciding most unequal pairs from the first
    row of every image (a full comparison of 224 px images costs about a third of an SSIM scoring); the same
    array is the same set (the paper decoder's cache hands out its stored images at most levels)."""
    return a is b or (a.shape == b.shape and np.array_equal(a[:, 0], b[:, 0]) and np.array_equal(a, b))


def _score(gt: np.ndarray, cand: np.ndarray, owner: np.ndarray, scoring: str,
           reference: SsimReference, matcher: NearestMatcher) -> tuple[np.ndarray, np.ndarray]:
    """SSIM of each input against its assigned reconstruction, and the assigned candidate's index."""
    n = gt.shape[0]
    if scoring == "nearest":
        matched = matcher(cand)
    else:  # paired: among the input's own candidates (one for strong/paper), the nearest
        matched = np.empty(n, dtype=np.int64)
        for i in range(n):
            idx = np.nonzero(owner == i)[0]
            matched[i] = idx[nearest_match(gt[i : i + 1], cand[idx])[0]] if len(idx) > 1 else idx[0]
    if len(cand) == n and np.array_equal(matched, np.arange(n)):
        return reference(cand), matched
    # Gather in the candidates' plane-after-plane layout (a plain cand[matched] would interleave the channels).
    return reference(np.moveaxis(np.moveaxis(cand, -1, 1)[matched], 1, -1)), matched


__all__ = ["AttackResult", "AttackRow", "ImageStatistics", "noise_for_epsilons", "run_attack"]
