"""Benchmark: dpaudit's tight ReRo route against the straightforward dp_accounting route, side by side.

Reference (dp_accounting 0.6.0): ``from_gaussian_mechanism(sigma, sampling_prob=q,
value_discretization_interval=1e-4, use_connect_dots=True, pessimistic_estimate=True).self_compose(T)``, then the
Neyman-Pearson step on the REMOVE direction's PMF (``_pmf_remove``). Points: the spec's table and the seed paper's
RadImageNet setting. Also timed: the relaxed bound per point, and a 20-epsilon profile (noise for each epsilon,
then worst-case and relaxed bound at one kappa).

Usage: ``python bench/bench_bounds.py`` (a few minutes) or ``python bench/bench_bounds.py --quick``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Comparison, report

from dpaudit.bounds import noise_for_epsilon, rero_bound
from dpaudit.bounds.pld import _log_moments_cached, composed_pld

POINTS = [
    ("spec 1: s1.0 q.01 T1000 k1e-3", 1.0, 0.01, 1000, 1e-3),
    ("spec 2: s0.8 q.05 T500 k1e-4", 0.8, 0.05, 500, 1e-4),
    ("spec 3: MSD s1.664 T53000", 1.66405, 1 / 106, 53000, 1 / 106),
    ("spec 4: s0.34 q.002 T20000 k1e-6", 0.34, 0.002, 20000, 1e-6),
    ("RadImageNet s0.448 T16150", 0.44783, 3328 / 1077000, 16150, 1 / 1077000),
]


def reference_gamma(sigma: float, q: float, steps: int, kappa: float) -> float:
    """dp_accounting's PLD (REMOVE direction), self-composed, then an exact Neyman-Pearson step."""
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    pld = pld_lib.from_gaussian_mechanism(sigma, sampling_prob=q, value_discretization_interval=1e-4,
                                          use_connect_dots=True, pessimistic_estimate=True)
    pmf = pld.self_compose(steps)._pmf_remove
    probs = pmf._probs
    losses = (pmf._lower_loss + np.arange(probs.size)) * pmf._discretization
    order = np.argsort(-losses)
    m, loss = probs[order], losses[order]
    p_mass = m * np.exp(-loss)
    cum_p = np.cumsum(p_mass)
    j = int(np.searchsorted(cum_p, kappa))
    before_p = cum_p[j - 1] if j > 0 else 0.0
    before_q = np.sum(m[:j])
    return float(pmf._infinity_mass + before_q + (kappa - before_p) * np.exp(loss[j]))


def ours(sigma: float, q: float, steps: int, kappa: float, threat_model: str = "worst_case") -> float:
    composed_pld.cache_clear()  # time a cold computation, as a user's first call
    _log_moments_cached.cache_clear()
    return float(rero_bound(sigma, q, steps, kappa, threat_model=threat_model).gamma[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two points, one repeat, a 6-epsilon profile")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    points = POINTS[::3] if args.quick else POINTS
    repeats = 1 if args.quick else args.repeats

    print("Worst case: dpaudit tight vs dp_accounting (1e-4, self_compose, Neyman-Pearson)")
    rows = []
    for name, s, q, t, k in points:
        rows.append(Comparison.run(name, ours=lambda s=s, q=q, t=t, k=k: ours(s, q, t, k),
                                   reference=lambda s=s, q=q, t=t, k=k: reference_gamma(s, q, t, k),
                                   repeats=repeats))
    report(rows, value_label="gamma", fmt=lambda v: "-" if v is None else f"{v:.6f}")
    worst_rel = max(abs(r.ours_value - r.reference_value) / r.reference_value for r in rows)
    print(f"max relative difference {worst_rel:.2e} (goal <= 1e-3); "
          f"min speed-up {min(r.speedup for r in rows):.1f}x (goal >= 5x)\n")

    print("Relaxed threat model (no reference library; the seed paper's code takes ~36 s per point)")
    rel_rows = [Comparison.run(name, ours=lambda s=s, q=q, t=t, k=k: ours(s, q, t, k, "relaxed"), reference=None,
                               repeats=repeats) for name, s, q, t, k in points]
    report(rel_rows, value_label="gamma", fmt=lambda v: "-" if v is None else f"{v:.6f}")
    print(f"slowest relaxed point {max(r.ours_median for r in rel_rows):.2f} s (goal < 2 s)\n")

    n_eps = 6 if args.quick else 20
    epsilons = np.geomspace(0.5, 100, n_eps)
    q, steps, kappa, delta = 1 / 106, 53000, 1 / 106, 8e-7
    print(f"Profile: {n_eps} epsilons, MSD Liver setting (q 1/106, T 53000, kappa 1/106): sigma by PLD, then "
          "worst-case and relaxed bounds")
    composed_pld.cache_clear()
    _log_moments_cached.cache_clear()
    t0 = time.perf_counter()
    for eps in epsilons:
        sigma = noise_for_epsilon(float(eps), q, steps, delta)
        w = rero_bound(sigma, q, steps, kappa).gamma[0]
        r = rero_bound(sigma, q, steps, kappa, threat_model="relaxed").gamma[0]
        print(f"  eps {eps:8.3f}  sigma {sigma:8.4f}  worst {100 * w:7.3f}%  relaxed {100 * r:7.3f}%", flush=True)
    total = time.perf_counter() - t0
    print(f"profile total {total:.1f} s for {n_eps} epsilons (goal < 20 s for 20)")


if __name__ == "__main__":
    main()
