"""Benchmark: dpaudit's bounds against the straightforward dp_accounting route, side by side in one run.

Sections (``--sections``, default all):

* ``rero``: the worst-case bound, dpaudit tight (cold caches) against dp_accounting 0.6.0 at discretisation 1e-4
  (``from_gaussian_mechanism(sigma, sampling_prob=q, value_discretization_interval=1e-4, use_connect_dots=True,
  pessimistic_estimate=True).self_compose(T)``, then the Neyman-Pearson step on the REMOVE direction's PMF) on the
  spec's table and the seed paper's RadImageNet point. Goal: >= 20x at every spec point, agreement 1e-3.
* ``relaxed``: the relaxed bound on the same points (no reference library; the seed paper's code takes ~36 s).
* ``grid``: no slow corners: every (threat model, records_per_patient in 1, 5, 10, sigma >= 0.05, q, T <= 1e6) point
  of a grid, three kappas at once, in process. Goal: every point under 2 s.
* ``epsilon``: epsilon (PLD) at equal accuracy (1e-4 relative): dpaudit's ``epsilon_pld`` against dp_accounting at
  the coarsest interval (1e-2, 5e-3, ...) whose value agrees with the next finer one to 1e-4 relative (the
  interval search is not timed). Goal: >= 5x at every point.
* ``cli``: whole processes, interleaved: ``dpaudit --help``; ``dpaudit bounds`` on the spec's last point (worst
  case, relaxed, MIA and epsilon); ``dpaudit bounds`` on the RadImageNet point against a ``python -c`` process running
  the dp_accounting route for the worst case alone. Goals: < 0.5 s, < 1 s, >= 5x.
* ``profile``: a 20-epsilon profile (noise for each epsilon, then worst-case and relaxed bound at one kappa).

Machines are noisy (this one is shared): ratios within one run are what counts; every row is the median of
``--repeats`` interleaved repetitions; ``--cpu-time`` times in-process rows by CPU time instead of wall time.
Usage: ``python bench/bench_bounds.py [--quick] [--cpu-time] [--sections rero,cli]``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Comparison, report

from dpaudit.bounds import epsilon_pld, noise_for_epsilon, rero_bound
from dpaudit.bounds.pld import clear_caches

SPEC = [
    ("spec 1: s1.0 q.01 T1000 k1e-3", 1.0, 0.01, 1000, 1e-3),
    ("spec 2: s0.8 q.05 T500 k1e-4", 0.8, 0.05, 500, 1e-4),
    ("spec 3: MSD s1.664 T53000", 1.66405, 1 / 106, 53000, 1 / 106),
    ("spec 4: s0.34 q.002 T20000 k1e-6", 0.34, 0.002, 20000, 1e-6),
]
RADIMAGENET = ("RadImageNet s0.448 T16150", 0.44783, 3328 / 1077000, 16150, 1 / 1077000)


def reference_gamma(sigma: float, q: float, steps: int, kappa: float, interval: float = 1e-4) -> float:
    """dp_accounting's PLD (REMOVE direction), self-composed, then an exact Neyman-Pearson step."""
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    pld = pld_lib.from_gaussian_mechanism(sigma, sampling_prob=q, value_discretization_interval=interval,
                                          use_connect_dots=True, pessimistic_estimate=True)
    pmf = pld.self_compose(steps)._pmf_remove
    probs = pmf._probs
    losses = (pmf._lower_loss + np.arange(probs.size)) * pmf._discretization
    order = np.argsort(-losses)
    m, loss = probs[order], losses[order]
    cum_p = np.cumsum(m * np.exp(-loss))
    j = int(np.searchsorted(cum_p, kappa))
    before_p = cum_p[j - 1] if j > 0 else 0.0
    return float(pmf._infinity_mass + np.sum(m[:j]) + (kappa - before_p) * math.exp(loss[j]))


def reference_epsilon(sigma: float, q: float, steps: int, delta: float, interval: float) -> float:
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    pld = pld_lib.from_gaussian_mechanism(sigma, sampling_prob=q, value_discretization_interval=interval,
                                          use_connect_dots=True, pessimistic_estimate=True)
    return float(pld.self_compose(steps).get_epsilon_for_delta(delta))


def ours(sigma: float, q: float, steps: int, kappa, threat_model: str = "worst_case", k: int = 1):
    clear_caches()  # time a cold computation, as a user's first call
    return rero_bound(sigma, q, steps, kappa, threat_model=threat_model, records_per_patient=k).gamma


def section_rero(repeats: int, quick: bool) -> None:
    print("Worst case: dpaudit tight vs dp_accounting (1e-4, self_compose, Neyman-Pearson)")
    points = [SPEC[0], SPEC[3]] if quick else [*SPEC, RADIMAGENET]
    rows = [Comparison.run(name, ours=lambda s=s, q=q, t=t, k=k: float(ours(s, q, t, k)[0]),
                           reference=lambda s=s, q=q, t=t, k=k: reference_gamma(s, q, t, k), repeats=repeats)
            for name, s, q, t, k in points]
    report(rows, value_label="gamma", fmt=lambda v: "-" if v is None else f"{v:.6f}")
    worst_rel = max(abs(r.ours_value - r.reference_value) / r.reference_value for r in rows)
    spec_rows = [r for r in rows if r.name.startswith("spec")]
    print(f"max relative difference {worst_rel:.2e} (goal <= 1e-3); min speed-up on the spec table "
          f"{min(r.speedup for r in spec_rows):.1f}x (goal >= 20x)\n")


def section_relaxed(repeats: int, quick: bool) -> None:
    print("Relaxed threat model (no reference library; the seed paper's code takes ~36 s per point)")
    points = [SPEC[0], SPEC[3]] if quick else [*SPEC, RADIMAGENET]
    rows = [Comparison.run(name, ours=lambda s=s, q=q, t=t, k=k: float(ours(s, q, t, k, "relaxed")[0]),
                           reference=None, repeats=repeats) for name, s, q, t, k in points]
    report(rows, value_label="gamma", fmt=lambda v: "-" if v is None else f"{v:.6f}")
    print(f"slowest relaxed point {max(r.ours_median for r in rows):.2f} s (goal < 2 s)\n")


def section_grid(quick: bool) -> None:
    sigmas = (0.05, 0.2, 1.0, 5.0)
    qs = (1e-3, 0.1)
    steps = (10, 10_000, 1_000_000)
    ks = (1, 5, 10)
    if quick:
        sigmas, steps, ks = (0.05, 1.0), (10, 1_000_000), (1, 5)
    kappas = np.array([1e-6, 1e-3, 0.1])
    print(f"No slow corners: {2 * len(ks) * len(sigmas) * len(qs) * len(steps)} points (threat model x k x sigma x "
          "q x T), kappa 1e-6, 1e-3, 0.1 at once, cold caches, in process")
    times = []
    for tm, k, s, q, t in itertools.product(("worst_case", "relaxed"), ks, sigmas, qs, steps):
        t0, c0 = time.perf_counter(), time.process_time()
        g = ours(s, q, t, kappas, tm, k)
        times.append((time.process_time() - c0, time.perf_counter() - t0, tm, k, s, q, t, g))
    times.sort(key=lambda r: r[0], reverse=True)
    print("(CPU time of this process is the figure on this shared machine: wall time follows everyone's load)")
    print(f"{'threat model':<12} {'k':>3} {'sigma':>6} {'q':>6} {'T':>8} {'cpu (s)':>8} {'wall (s)':>8}  gamma at kappa")
    for cpu, wall, tm, k, s, q, t, g in times[:10]:
        print(f"{tm:<12} {k:>3} {s:>6g} {q:>6g} {t:>8d} {cpu:8.2f} {wall:8.2f}  " + " ".join(f"{v:.4g}" for v in g))
    k5 = [r for r in times if r[3] == 5 and r[2] == "relaxed"]
    print(f"slowest point {times[0][0]:.2f} s CPU ({max(r[1] for r in times):.2f} s wall); slowest k = 5 relaxed "
          f"{k5[0][0]:.2f} s CPU; median {statistics.median(r[0] for r in times):.2f} s; points over 2 s CPU: "
          f"{sum(r[0] > 2 for r in times)} (goal: none)\n")


def _reference_interval(sigma: float, q: float, steps: int, delta: float, rtol: float = 1e-4) -> tuple[float, float]:
    """The coarsest dp_accounting interval whose epsilon agrees with the next finer one to ``rtol``."""
    interval = 1e-2
    value = reference_epsilon(sigma, q, steps, delta, interval)
    while interval > 1e-6:
        finer = reference_epsilon(sigma, q, steps, delta, interval / 2)
        if abs(finer - value) <= rtol * abs(finer):
            return interval, finer
        interval, value = interval / 2, finer
    return interval, value


def section_epsilon(repeats: int, quick: bool) -> None:
    delta = 1e-5
    # The worst-case, k = 1 part of the grid that dp_accounting can reach (it has no k > 1 or relaxed pair; below
    # sigma 0.5 at long T its 1e-4-accurate interval search takes minutes per point).
    points = [(s, q, t) for s, q, t in itertools.product((0.5, 1.0, 2.0, 5.0), (1e-3, 0.1), (10, 1000, 100_000))]
    points += [(1.0, 1e-3, 1_000_000)]
    if quick:
        points = [(1.0, 0.01, 10_000), (2.0, 0.1, 100)]
    print(f"Epsilon (PLD, delta {delta:g}) at equal accuracy (1e-4 relative): dpaudit vs dp_accounting at its "
          "coarsest interval that reaches it (found first, not timed)")
    rows = []
    for s, q, t in points:
        interval, fine = _reference_interval(s, q, t, delta)
        rows.append(Comparison.run(
            f"s{s:g} q{q:g} T{t} (ref {interval:.0e})",
            ours=lambda s=s, q=q, t=t: (clear_caches(), epsilon_pld(s, q, t, delta))[1],
            reference=lambda s=s, q=q, t=t, iv=interval: reference_epsilon(s, q, t, delta, iv),
            repeats=repeats, fine=fine))
    report(rows, value_label="epsilon", fmt=lambda v: "-" if v is None else f"{v:.6g}")
    rel = max(abs(r.ours_value - r.extra["fine"]) / r.extra["fine"] for r in rows)
    print(f"max relative difference to dp_accounting's converged value {rel:.1e}; min speed-up "
          f"{min(r.speedup for r in rows):.1f}x (goal >= 5x)\n")


def _process(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one whole process; CPU = the child's user + system time (load-independent)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def section_cli(repeats: int) -> None:
    # The dpaudit of this interpreter's environment first (a shim on PATH may belong to another Python).
    beside = Path(sys.executable).with_name("dpaudit")
    exe = str(beside) if beside.exists() else shutil.which("dpaudit")
    py = sys.executable
    _, s, q, t, k = RADIMAGENET
    here = str(Path(__file__).resolve().parent)
    ref_code = (f"import sys; sys.path.insert(0, {here!r}); from bench_bounds import reference_gamma; "
                f"print(reference_gamma({s!r}, {q!r}, {t!r}, {k!r}))")
    cases = {
        "dpaudit --help": [exe, "--help"],
        "dpaudit bounds spec 4 (--json, all)": [exe, "bounds", "--sigma", "0.34", "--q", "0.002", "--steps", "20000",
                                                "--delta", "8e-7", "--kappa", "1e-6", "--json"],
        "dpaudit bounds RadImageNet (all)": [exe, "bounds", "--sigma", repr(s), "--q", repr(q), "--steps", str(t),
                                             "--kappa", repr(k), "--json"],
        "python dp_accounting RadImageNet": [py, "-c", ref_code],
    }
    print(f"CLI, whole processes (interleaved, median of {repeats}; wall and CPU = user + system):")
    times: dict[str, list[tuple[float, float]]] = {c: [] for c in cases}
    for _ in range(repeats):
        for c, argv in cases.items():
            times[c].append(_process(argv))
    wall = {c: statistics.median(w for w, _ in v) for c, v in times.items()}
    cpu = {c: statistics.median(u for _, u in v) for c, v in times.items()}
    for c in cases:
        print(f"  {c:<40} wall {wall[c]:6.2f} s  cpu {cpu[c]:6.2f} s   (wall runs: "
              f"{', '.join(f'{w:.2f}' for w, _ in times[c])})")
    ref, ours_c = "python dp_accounting RadImageNet", "dpaudit bounds RadImageNet (all)"
    print(f"  --help {wall['dpaudit --help']:.2f} s wall / {cpu['dpaudit --help']:.2f} s CPU (goal < 0.5 s); bounds "
          f"spec 4 {wall['dpaudit bounds spec 4 (--json, all)']:.2f} s wall / "
          f"{cpu['dpaudit bounds spec 4 (--json, all)']:.2f} s CPU (goal < 1 s); RadImageNet: dp_accounting worst "
          f"case alone / dpaudit bounds (worst, relaxed, MIA, epsilon) = {wall[ref] / wall[ours_c]:.1f}x wall, "
          f"{cpu[ref] / cpu[ours_c]:.1f}x CPU (goal >= 5x)\n")


def section_profile(quick: bool) -> None:
    n_eps = 6 if quick else 20
    epsilons = np.geomspace(0.5, 100, n_eps)
    q, steps, kappa, delta = 1 / 106, 53000, 1 / 106, 8e-7
    print(f"Profile: {n_eps} epsilons, MSD Liver setting (q 1/106, T 53000, kappa 1/106): sigma by PLD, then "
          "worst-case and relaxed bounds")
    clear_caches()
    t0 = time.perf_counter()
    for eps in epsilons:
        sigma = noise_for_epsilon(float(eps), q, steps, delta)
        w = rero_bound(sigma, q, steps, kappa).gamma[0]
        r = rero_bound(sigma, q, steps, kappa, threat_model="relaxed").gamma[0]
        print(f"  eps {eps:8.3f}  sigma {sigma:8.4f}  worst {100 * w:7.3f}%  relaxed {100 * r:7.3f}%", flush=True)
    total = time.perf_counter() - t0
    print(f"profile total {total:.1f} s for {n_eps} epsilons (goal < 20 s for 20)\n")


SECTIONS = ("rero", "relaxed", "grid", "epsilon", "cli", "profile")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer points, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time in-process rows by this process's CPU time (both sides are single-threaded), "
                        "not wall time: on a shared, loaded machine wall times follow everyone else's load")
    args = parser.parse_args()
    if args.cpu_time:
        import types

        import harness

        harness.time = types.SimpleNamespace(perf_counter=time.process_time)  # the harness' only clock
    repeats = 1 if args.quick else args.repeats
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    print(f"bench_bounds: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n", flush=True)
    for name in chosen:
        if name == "rero":
            section_rero(repeats, args.quick)
        elif name == "relaxed":
            section_relaxed(repeats, args.quick)
        elif name == "grid":
            section_grid(args.quick)
        elif name == "epsilon":
            section_epsilon(repeats, args.quick)
        elif name == "cli":
            section_cli(max(repeats, 3))
        elif name == "profile":
            section_profile(args.quick)
        else:
            raise SystemExit(f"unknown section {name!r}; choose from {SECTIONS}")


if __name__ == "__main__":
    main()
