"""Canary membership audit of one DP-SGD training run (``dpaudit mia audit``).

m canaries (training images given a wrong label, so that only memorisation explains a low loss on them) are
each put into the training set by an independent fair coin flip; the model is trained once with the DP
configuration under audit (:func:`dpaudit.audit.train.train`, the same code as ``dpaudit train``); each canary is
scored by the trained model's loss (optionally minus a reference model's loss, in the spirit of RMIA: Zarifzadeh,
Liu, Chang, Shokri, "Low-Cost High-Power Membership Inference Attacks", ICML 2024, arXiv 2312.03262); and the
one-run theorem of Steinke, Nasr, Jagielski (NeurIPS 2023, arXiv 2305.08846v1, Theorem 3) turns the guesses into an
**empirical lower bound** on epsilon, reported next to the accountant's **sound upper bound**.

Soundness notes
---------------
* The guess counts are chosen with a Bonferroni correction over the tried counts (default) or on a held-out half
  of the canaries; never by looking at the same coin flips that are counted.
* The reference model is trained on the non-canary images only, so it is independent of the coin flips.
* The training set size varies with the coin flips (about m/2 +- sqrt(m)/2 canaries join); the accountant's
  epsilon is the one of the run that actually happened (its q = batch / N).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from dpaudit.attacks.binomial import clopper_pearson_limits
from dpaudit.attacks.lower_bounds import (
    one_run_ceiling,
    one_run_from_scores,
)
from dpaudit.audit.configs import CanaryAuditConfig, TrainConfig
from dpaudit.audit.results import CanaryAuditResult, TprAtFpr, TrainResult
from dpaudit.audit.train import train
from dpaudit.checkpoint import load_checkpoint
from dpaudit.errors import invalid

__all__ = ["CanaryAuditConfig", "CanaryAuditResult", "TprAtFpr", "canary_scores", "run_canary_audit"]

# ----------------------------------------------------------------------------------------------------------
# pieces
# ----------------------------------------------------------------------------------------------------------

def _wrong_labels(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random label different from the true one (mislabelled canaries)."""
    if num_classes < 2:
        raise invalid("num_classes", num_classes, "at least 2 for mislabelled canaries")
    shift = rng.integers(1, num_classes, size=labels.size)
    return (labels + shift) % num_classes


@torch.no_grad()
def canary_scores(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                  mean: tuple[float, ...], std: tuple[float, ...], batch_size: int = 256) -> np.ndarray:
    """Per-image cross-entropy loss of ``model`` (eval mode) on normalised ``images`` with ``labels``."""
    model.eval()
    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    out = []
    for i in range(0, len(images), batch_size):
        x = (images[i:i + batch_size] - m) / s
        logits = model(x)
        out.append(torch.nn.functional.cross_entropy(logits, labels[i:i + batch_size], reduction="none"))
    return torch.cat(out).double().numpy()


def _roc(scores: np.ndarray, member: np.ndarray, points: int = 201) -> tuple[tuple[tuple[float, float], ...], float]:
    """Empirical ROC (flag 'member' when score >= t) at up to ``points`` thresholds, and the AUC (Mann-Whitney)."""
    pos, neg = scores[member], scores[~member]
    thr = np.unique(scores)[::-1]
    tpr = np.concatenate([[0.0], [np.mean(pos >= t) for t in thr]])
    fpr = np.concatenate([[0.0], [np.mean(neg >= t) for t in thr]])
    idx = np.unique(np.linspace(0, tpr.size - 1, min(points, tpr.size)).round().astype(int))
    # AUC = P[score of a member > score of a non-member] + ties / 2
    diff = pos[:, None] - neg[None, :]
    auc = float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))
    return tuple((float(fpr[i]), float(tpr[i])) for i in idx), auc


def _tpr_at_fpr(scores: np.ndarray, member: np.ndarray, fprs: tuple[float, ...], confidence: float
                ) -> tuple[TprAtFpr, ...]:
    pos, neg = scores[member], scores[~member]
    neg_desc = np.sort(neg)[::-1]
    level = 1.0 - (1.0 - confidence) / 2.0
    rows = []
    for f in fprs:
        k = math.floor(f * neg.size)  # at most k false positives
        thr = float(neg_desc[k]) if k < neg.size else -math.inf
        tp, fp = int(np.sum(pos > thr)), int(np.sum(neg > thr))
        lo, hi = clopper_pearson_limits(np.array([tp]), pos.size, level)
        _, fhi = clopper_pearson_limits(np.array([fp]), neg.size, confidence)
        rows.append(TprAtFpr(fpr_target=f, threshold=thr, true_positives=tp, positives=int(pos.size),
                             false_positives=fp, negatives=int(neg.size), tpr=tp / pos.size,
                             tpr_low=float(lo[0]), tpr_high=float(hi[0]), fpr=fp / neg.size,
                             fpr_high=float(fhi[0])))
    return tuple(rows)


#: Why the audit's training run names no checkpoint, metrics or curve file.
KEPT_NO_FILES = ("the audit's training run keeps no files: its checkpoint, metrics and training curve were written "
                 "to a temporary folder, removed after scoring the canaries (checkpoint, metrics_path and "
                 "curve_path are null)")


def _train_and_load(cfg: TrainConfig, splits: Any, workdir: str, progress: Callable[[int, int, str], None] | None
                    ) -> tuple[TrainResult, torch.nn.Module]:
    result = train(replace(cfg, out=workdir, seeds=1), splits=splits, progress=progress)
    return result, load_checkpoint(result.checkpoint).build_model()


# ----------------------------------------------------------------------------------------------------------
# the audit
# ----------------------------------------------------------------------------------------------------------

def run_canary_audit(config: CanaryAuditConfig, *, splits: Any = None,
                     progress: Callable[[int, int, str], None] | None = None) -> CanaryAuditResult:
    """Coin-flip canaries into training, train once, score, and bound epsilon from below.

    Parameters
    ----------
    config:
        The audit; ``config.train`` is the DP configuration.
    splits:
        Pre-built :class:`dpaudit.data.DatasetSplits`; loaded from ``config.train`` when None.
    progress:
        Passed to the training run(s).
    """
    from dpaudit.data import load_splits, require_classes

    t0 = time.perf_counter()
    tc = config.train
    if splits is None:
        splits = load_splits(tc.dataset, data_dir=tc.data_dir, image_size=tc.image_size, seed=tc.seed,
                             max_images=tc.max_images,
                             labels=tc.labels, window=tc.window, slice_axis=tc.slice_axis)
    require_classes(splits, "the canary membership audit")
    n = len(splits.train)
    m = config.canaries
    if m >= n:
        raise invalid("canaries", m, f"fewer than the training images ({n})", f"pass --canaries {n - 1} or fewer")
    rng = np.random.default_rng([config.seed, 0x6D6961])
    perm = rng.permutation(n)
    pool, base_idx = np.sort(perm[:m]), np.sort(perm[m:])
    canary_ds = splits.train.subset(pool, name="canaries")
    labels = _wrong_labels(canary_ds.labels.numpy(), splits.num_classes, rng)
    canary_ds = type(canary_ds)(canary_ds.images, torch.from_numpy(labels).long(), canary_ds.label_names,
                                canary_ds.groups, canary_ds.patient_ids, "canaries")
    member = rng.random(m) < 0.5  # the coin flips (Steinke et al. 2023, section 2: S uniform on {-1, +1}^m)
    base = splits.train.subset(base_idx)
    train_ds = base.concat(canary_ds.subset(np.flatnonzero(member)), name=splits.train.name)
    audit_splits = replace(splits, train=train_ds)

    with tempfile.TemporaryDirectory(prefix="dpaudit-mia-") as tmp:
        result, model = _train_and_load(tc, audit_splits, tmp + "/target", progress)
        loss = canary_scores(model, canary_ds.images, canary_ds.labels, mean=splits.mean, std=splits.std)
        scores = -loss
        ref_seconds = None
        if config.score == "reference":
            t_ref = time.perf_counter()
            ref_splits = replace(splits, train=base)
            _, ref_model = _train_and_load(tc, ref_splits, tmp + "/reference", progress)
            ref_loss = canary_scores(ref_model, canary_ds.images, canary_ds.labels, mean=splits.mean,
                                     std=splits.std)
            scores = ref_loss - loss  # log p_target(y|x) - log p_reference(y|x)
            ref_seconds = time.perf_counter() - t_ref
    # The audit's model lived in the temporary folder, gone now: its files are not named (a path into a deleted
    # folder reads as a file one could open).
    result = replace(result, checkpoint=None, metrics_path=None, curve_path=None,
                     notes=(*result.notes, KEPT_NO_FILES))

    delta = float(result.target_delta)
    audit = one_run_from_scores(scores, member, delta=delta, confidence=config.confidence,
                                selection=config.selection, seed=config.seed)
    # The most this design can certify: all evaluated canaries guessed right, at the level actually used.
    level = 1.0 - (1.0 - config.confidence) / audit.tries if audit.selection == "bonferroni" else config.confidence
    ceiling = one_run_ceiling(audit.bound.canaries, delta=delta, confidence=level)
    roc, auc = _roc(scores, member)
    return CanaryAuditResult(
        canaries=config.canaries, score=config.score, confidence=config.confidence, selection=config.selection,
        seed=config.seed, one_run=audit, accountant_epsilon=result.epsilon_achieved, epsilon_rdp=result.epsilon_rdp,
        epsilon_target=result.epsilon_target, target_delta=delta, ceiling=ceiling, members=int(member.sum()),
        tpr_at_fpr=_tpr_at_fpr(scores, member, config.fprs, config.confidence), roc=roc, auc=auc, train=result,
        seconds=time.perf_counter() - t0, reference_seconds=ref_seconds)
