"""Monte Carlo estimate of the ReRo curve (validation only; an *estimate* with a confidence interval).

Sample the composed loss S = sum_t L(X_t) under Q (target present), estimate the P-tail by importance weights:
P(S > t) = E_Q[e^{-S} 1{S > t}]. For each kappa, the threshold t_kappa is where the weighted tail reaches kappa and
gamma = Q(S > t_kappa) (the Neyman-Pearson test). The 95% interval is a percentile bootstrap over the samples.
"""

from __future__ import annotations

import numpy as np

from dpaudit.bounds._mechanism import StepPair
from dpaudit.errors import invalid

#: Most draws of one step's privacy loss a Monte Carlo estimate may take (samples x steps, all phases): the cost of
#: :func:`sample_losses` is one binomial, one normal and one loss evaluation per draw, ~80 ns at k = 1 (measured:
#: 2e7 draws in 1.6 s on one core), so 5e8 draws are ~40 s per threat model. Counted, never timed; beyond it we
#: refuse before drawing (a run of 1e6 steps at the default 20000 samples would take hours, and 1e12 steps
#: overflows numpy's array shape). The cost per draw also grows with records_per_patient (k + 1 loss terms,
#: pruned above 64), which this count does not weigh.
MC_DRAWS_MAX = 500_000_000


def check_mc_work(steps: int, samples: int, *, steps_flag: str = "steps", min_samples: int = 100) -> None:
    """Refuse a Monte Carlo estimate of more than :data:`MC_DRAWS_MAX` draws (``samples`` x ``steps``), before any
    is drawn. ``steps_flag``: how the message names where the steps came from (``--steps``, ``--history``);
    ``min_samples``: the fewest samples an estimate may take (below it only fewer steps or another method help)."""
    if samples * steps <= MC_DRAWS_MAX:
        return
    cap = MC_DRAWS_MAX // steps
    where = "" if steps_flag == "steps" else f" of {steps_flag}"
    why = f"--method mc draws --mc-samples x steps, at most {MC_DRAWS_MAX:,} in all"
    tight = "--method tight (the default: a sound upper bound that draws no samples)"
    if cap >= min_samples:
        raise invalid("--mc-samples", samples, f"at most {cap:,} for the {steps:,} steps{where} ({why})",
                      f"pass --mc-samples {cap} or fewer, or {tight}")
    raise invalid(steps_flag, steps, f"at most {MC_DRAWS_MAX // min_samples:,} steps in all for --method mc "
                  f"({why}; --mc-samples is at least {min_samples})", f"pass {tight}, or fewer steps")


def sample_losses(pair: StepPair, steps: int, samples: int, rng: np.random.Generator,
                  chunk: int = 2_000_000) -> np.ndarray:
    """``samples`` draws of the composed loss under Q (processed in chunks to bound memory)."""
    sigma, k, q = pair.noise_multiplier, pair.records_per_patient, pair.sampling_probability
    out = np.zeros(samples)
    per = max(1, chunk // steps)
    for start in range(0, samples, per):
        n = min(per, samples - start)
        shift = rng.binomial(k, q, size=(n, steps)).astype(float)
        x = shift + sigma * rng.standard_normal((n, steps))
        if pair.relaxed:
            x = np.abs(x)
        out[start:start + n] = pair.loss(x.ravel()).reshape(n, steps).sum(axis=1)
    return out


def _gamma_from_samples(s_desc: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    n = s_desc.size
    cum_p = np.cumsum(np.exp(-s_desc)) / n  # P(S >= s_(j)) estimated under Q
    j = np.searchsorted(cum_p, kappa, side="left")
    return np.minimum(j, n) / n


def mc_gamma(pair_or_run, steps: int | None, kappa: np.ndarray, *, samples: int = 20_000, seed: int | None = 0,
             bootstrap: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, lower, upper) of gamma(kappa) from ``samples`` Monte Carlo draws (95% percentile bootstrap).
    ``pair_or_run``: a :class:`StepPair` with ``steps``, or a run (a tuple of (pair, steps) phases, summed).
    ``seed`` 0 by default, so that one input gives one estimate (None: fresh entropy)."""
    rng = np.random.default_rng(seed)
    run = ((pair_or_run, steps),) if isinstance(pair_or_run, StepPair) else tuple(pair_or_run)
    s = sum(sample_losses(pair, t, samples, rng) for pair, t in run)
    est = _gamma_from_samples(np.sort(s)[::-1], kappa)
    boots = np.empty((bootstrap, kappa.size))
    for b in range(bootstrap):
        res = rng.choice(s, size=s.size, replace=True)
        boots[b] = _gamma_from_samples(np.sort(res)[::-1], kappa)
    lower, upper = np.percentile(boots, [2.5, 97.5], axis=0)
    return est, np.minimum(lower, est), np.maximum(upper, est)
