"""The spectrum's power z^T by repeated squaring: equal to the exact power up to its round-off, and the bounds read from
compositions that use it equal to those of numpy's power (exp(T log z) for T >= 100) within their proven brackets.
A long run's live frequencies from the accurate 1 + A_k (_accurate_power): against the exact multinomial composition,
within the round-off guard, and the bounds within the FFT route's brackets."""

from __future__ import annotations

import itertools
import math

import mpmath
import numpy as np
import pytest

import dpaudit.bounds.pld as pld
from dpaudit.bounds.pld import _int_power, _spectrum_power, clear_caches, epsilon_pld_refined

STEPS = (1, 2, 3, 99, 100, 101, 300, 1000, 65537, 1_000_000)


@pytest.mark.parametrize("steps", STEPS)
def test_int_power_matches_mpmath(steps: int) -> None:
    # Reference: mpmath at 40 digits. A spectrum's values lie in the unit disc; those near its edge are the ones whose
    # power survives a long run. Round-off: each squaring doubles the relative error carried in, so about steps ulp.
    rng = np.random.default_rng(steps)
    z = np.exp(1j * rng.uniform(-np.pi, np.pi, 64)) * (1.0 - rng.uniform(0.0, 1.0 / steps, 64))
    got = _int_power(z, steps)
    mpmath.mp.dps = 40
    want = np.array([complex(mpmath.power(mpmath.mpc(v.real, v.imag), steps)) for v in z])
    assert np.all(np.abs(got - want) <= 8.0 * steps * np.finfo(float).eps * np.abs(want) + 1e-300)


def test_spectrum_power_keeps_the_live_frequencies_only() -> None:
    # |z|^T at or below e^-700 is left at 0 (as before); every other frequency is its power.
    rng = np.random.default_rng(300)
    steps = 300
    z = np.exp(1j * rng.uniform(-np.pi, np.pi, 4096)) * rng.uniform(0.0, 1.0, 4096)
    got = _spectrum_power(z, steps)
    live = np.abs(z) ** 2 > np.exp(-1400.0 / steps)
    assert np.all(got[~live] == 0)
    np.testing.assert_allclose(got[live], z[live] ** steps, rtol=1e-12)
    assert _spectrum_power(z, 1) is z


def _both_routes(monkeypatch, sigma: float, q: float, steps: int, delta: float):
    clear_caches()
    fast = epsilon_pld_refined(pld.StepPair(sigma, q), steps, delta)
    with monkeypatch.context() as m:
        m.setattr(pld, "_int_power", lambda z, s, overwrite=False: z ** s)  # numpy's power: the plain route
        clear_caches()
        plain = epsilon_pld_refined(pld.StepPair(sigma, q), steps, delta)
    clear_caches()
    return fast, plain


@pytest.mark.parametrize(("sigma", "q", "steps"), list(itertools.product((0.05, 50.0), (1e-6, 1.0), (1, 1_000_000))))
def test_epsilon_equals_the_plain_power_within_its_bracket(monkeypatch, sigma: float, q: float, steps: int) -> None:
    fast, plain = _both_routes(monkeypatch, sigma, q, steps, 1e-5)
    width = float(plain.value[0] - plain.lower[0]) if plain.lower is not None else 0.0
    assert abs(float(fast.value[0]) - float(plain.value[0])) <= width + 1e-12 * abs(float(plain.value[0]))
    if fast.lower is not None and plain.lower is not None:
        assert float(fast.lower[0]) <= float(plain.value[0]) and float(plain.lower[0]) <= float(fast.value[0])


@pytest.mark.slow
def test_epsilon_small_q_short_run_equals_the_plain_power(monkeypatch) -> None:
    # sigma 0.5, q 1e-6, T 300: every frequency of a 1.2e7-point window is live (the per-step law is nearly a spike).
    fast, plain = _both_routes(monkeypatch, 0.5, 1e-6, 300, 1e-5)
    assert abs(float(fast.value[0]) - float(plain.value[0])) <= float(plain.value[0] - plain.lower[0])


# -- the accurate route for long runs' live frequencies (_accurate_power) ---------------------------------------------

def _exact_composition(n: int, steps: int, atoms: list[tuple[int, float]]) -> np.ndarray:
    """The steps-fold circular convolution of the masses ``atoms`` ((index, mass), the first the bulk) on n points,
    exactly (mpmath, 40 digits): the multinomial sum over how many steps took each atom. The masses are the float64
    numbers the FFT is given (their sum is 1 only to an ulp; the composed total is that sum to the power steps)."""
    mpmath.mp.dps = 40
    (j0, m0), rest = atoms[0], atoms[1:]
    log_m0 = mpmath.log(mpmath.mpf(m0))
    log_m = [mpmath.log(mpmath.mpf(m)) for _, m in rest]
    log_fact = [mpmath.loggamma(c + 1) for c in range(60)]
    log_steps = mpmath.loggamma(steps + 1)
    out = [mpmath.mpf(0)] * n
    # counts beyond 60 (atoms of mass >= 1e-7: means <= 10 at these steps) or 4 (rarer atoms) carry < 1e-40
    for counts in itertools.product(*[range(60) if m > 1e-7 else range(4) for _, m in rest]):
        c0 = steps - sum(counts)
        log_p = log_steps - mpmath.loggamma(c0 + 1) + c0 * log_m0
        index = j0 * c0
        for (j, _), lm, c in zip(rest, log_m, counts, strict=True):
            log_p += c * lm - log_fact[c]
            index += j * c
        out[index % n] += mpmath.exp(log_p)
    return np.array([float(v) for v in out])


#: (n, steps, atoms): a bulk of three atoms with a rare far one (the far part's own FFT), the bulk across the circle's
#: seam (indices n - 1, 0, 1: the signed phases), a bulk off index 0 at T = 1e6.
COMPOSITIONS = [(1024, 100_000, [(300, None), (301, 4e-5), (299, 6e-5), (900, 1e-9)]),
                (1024, 100_000, [(0, None), (1, 4e-5), (1023, 6e-5), (517, 1e-9)]),
                (4096, 1_000_000, [(5, None), (6, 5e-6), (7, 2e-6), (3000, 1e-10)])]


@pytest.mark.parametrize(("n", "steps", "atoms"), COMPOSITIONS)
def test_accurate_power_matches_the_exact_composition(monkeypatch, n: int, steps: int, atoms) -> None:
    # Reference: the exact multinomial composition (mpmath). The FFT route's z^T carries about T ulp relative at the
    # frequencies that survive (|z| ~ 1); the accurate route an ulp or so of the largest mass. Both routes' errors
    # must stay within the round-off guard the lower end reads with (8x the most negative mass, at least 4 ulp of
    # the largest), and the accurate route's must be far below the FFT route's.
    monkeypatch.setattr(pld, "ACCURATE_SHARE", 1e9)  # (these windows are short: let the cost cap not decide)
    x = np.zeros(n)
    for j, m in atoms[1:]:
        x[j] = m
    x[atoms[0][0]] = 1.0 - sum(m for _, m in atoms[1:])
    exact = _exact_composition(n, steps, [(atoms[0][0], float(x[atoms[0][0]])), *atoms[1:]])
    z = pld.sp_fft.rfft(x)
    errors = {}
    for name, masses in (("plain", None), ("accurate", x)):
        composed = pld.sp_fft.irfft(_spectrum_power(z, steps, masses), n=n)
        guard = max(8.0 * max(-float(composed.min()), 0.0), 4.0 * np.finfo(float).eps * float(composed.max()))
        errors[name] = float(np.max(np.abs(composed - exact)))
        assert errors[name] <= guard, name
    assert errors["accurate"] <= 1e-3 * errors["plain"]
    assert errors["accurate"] <= 4.0 * np.finfo(float).eps * float(exact.max())


#: (near masses' length, frequencies, window n, the mean's index, a pile): one atom, a short bulk (both term by
#: term), a bulk whose phases wrap the circle several times at the top frequencies (J K > n), a wide one (B = 64, 69
#: rows) whose offsets are all on one side of 0, a pile of three atoms at offsets -1, 0, 1 over a faint bulk (the
#: offsets split across 0: an uncentred split, o_lo in [0, B), loses ~B^2 ulp there), and a lattice: two atoms at
#: offsets 0 and 2000 where 2000 k wraps to 8 past a multiple of n at k = 332001 (the split's pieces are ~1 there and
#: the sum ~1e-9: that frequency is summed term by term; found by review, 2026-12-03).
NEAR_SUMS = [(1, 50, 1000, 0, None), (37, 400, 4096, 18, None), (300, 900, 20_000, 150, None),
             (4369, 60, 11_520_000, -10, None), (300, 900, 1_000_000, 150, "pile"),
             (4096, 300, 1_000_003, 2048, "lattice")]


@pytest.mark.parametrize(("size", "frequencies", "n", "centre", "pile"), NEAR_SUMS)
@pytest.mark.skipif(np.finfo(np.longdouble).eps >= np.finfo(float).eps / 1000, reason="no extended long double here")
def test_near_sums_keep_each_term_to_a_few_ulp(size: int, frequencies: int, n: int, centre: int,
                                               pile: str | None) -> None:
    # Reference: each term in 80-bit long double (64-bit mantissa, 2048x finer than a double's ulp), from the same
    # exact integer phases. _near_sums forms w^(o k) - 1 from split offsets (o_hi B + o_lo) by matrix products; its
    # real part (every term <= 0) must stay within a few ulp of itself, relative, and the whole within a few ulp of
    # the terms' absolute sum (the imaginary part's terms cancel: relative to that sum).
    rng = np.random.default_rng(size)
    near = rng.random(size) ** 3
    if pile == "pile":
        near *= 1e-12
        near[centre - 1:centre + 2] = (0.3, 0.4, 0.3)
    elif pile == "lattice":
        near *= 0.0
        near[centre] = near[centre + 2000] = 0.5
    near /= near.sum()
    offsets = np.arange(size, dtype=np.int64) - centre
    k = np.unique(np.concatenate([np.arange(min(frequencies, 20)), rng.integers(0, n // 2 + 1, frequencies),
                                  [332001] if pile == "lattice" else []])).astype(np.int64)
    got = pld._near_sums(near, offsets, k, n)
    r = np.multiply.outer(offsets, k) % n
    r[r > n // 2] -= n
    angle = r.astype(np.longdouble) * (np.longdouble(np.pi) + np.longdouble(1.2246467991473532e-16)) / n
    terms_re = near.astype(np.longdouble)[:, None] * (-2 * np.sin(angle) ** 2)
    terms_im = near.astype(np.longdouble)[:, None] * -np.sin(2 * angle)
    want_re, want_im = terms_re.sum(axis=0), terms_im.sum(axis=0)
    scale = np.sqrt(terms_re ** 2 + terms_im ** 2).sum(axis=0)
    eps = np.finfo(float).eps
    assert np.all(np.abs(got.real - want_re) <= 16 * eps * np.abs(want_re))
    assert np.all(np.hypot(got.real - want_re, got.imag - want_im) <= 16 * eps * scale)


def test_accurate_power_takes_the_fft_route_where_its_sums_are_long(monkeypatch) -> None:
    # Beyond ACCURATE_TERMS terms (near atoms x live frequencies), ACCURATE_SHARE terms per point or ACCURATE_NEAR
    # atoms the caller's FFT route stands: None. Here 20 near atoms x 100 live frequencies on 1024 points.
    x = np.zeros(1024)
    x[:20] = 0.05
    live = np.arange(100)
    for name, limit, less in (("ACCURATE_TERMS", 2000, 1999), ("ACCURATE_SHARE", 2000 / 1024, 1999 / 1024),
                              ("ACCURATE_NEAR", 20, 19)):
        with monkeypatch.context() as m:
            m.setattr(pld, "ACCURATE_SHARE", 2.0)
            m.setattr(pld, name, limit)
            assert pld._accurate_power(x, live, 1000) is not None
            m.setattr(pld, name, less)
            assert pld._accurate_power(x, live, 1000) is None


#: sigma 0.05 and 50 x q 1e-6 and 1 x T 1 and 1e6 (the T 1e6 corners in the slow run), and the relaxed k 10 point
#: whose bracket the FFT route's round-off held open.
ACCURATE_EXTREMES = [pytest.param(s, q, t, marks=[pytest.mark.slow] if t > 1 else [])
                     for s, q, t in itertools.product((0.05, 50.0), (1e-6, 1.0), (1, 1_000_000))]


def _accurate_and_plain(monkeypatch, compute):
    clear_caches()
    fast = compute()
    with monkeypatch.context() as m:
        m.setattr(pld, "ACCURATE_SPECTRUM", False)
        clear_caches()
        plain = compute()
    clear_caches()
    return fast, plain


@pytest.mark.parametrize(("sigma", "q", "steps"), [*ACCURATE_EXTREMES, (1.0, 1e-3, 100_000),
                                                   pytest.param(0.5, 1e-6, 300, marks=pytest.mark.slow)])
def test_epsilon_with_the_accurate_power_brackets_the_plain_one(monkeypatch, sigma, q, steps) -> None:
    # Both are proven brackets of the same exact epsilon: they overlap.
    fast, plain = _accurate_and_plain(monkeypatch, lambda: epsilon_pld_refined(pld.StepPair(sigma, q), steps, 1e-5))
    for r in (fast, plain):
        assert float(r.lower[0]) <= float(r.value[0])
    assert float(fast.lower[0]) <= float(plain.value[0]) and float(plain.lower[0]) <= float(fast.value[0])


@pytest.mark.parametrize("threat_model", ["worst_case", "relaxed"])
@pytest.mark.parametrize(("sigma", "q", "steps", "k"), [
    *[pytest.param(s, q, t, k, marks=[pytest.mark.slow] if t > 1 else [])
      for s, q, t, k in itertools.product((0.05, 50.0), (1e-6, 1.0), (1, 1_000_000), (1, 10))],
    (1.0, 1e-3, 100_000, 1), pytest.param(1.0, 1e-5, 1_000_000, 10, marks=pytest.mark.slow)])
def test_rero_with_the_accurate_power_brackets_the_plain_one(monkeypatch, sigma, q, steps, k, threat_model) -> None:
    # ReRo brackets (worst-case and relaxed, per image and per patient of 10) by both routes overlap kappa by kappa.
    from dpaudit.bounds import rero_bound

    kappa = np.array([1e-6, 1e-3, 0.1])
    fast, plain = _accurate_and_plain(monkeypatch, lambda: rero_bound(sigma, q, steps, kappa, threat_model=threat_model,
                                                                      records_per_patient=k))
    assert np.all(fast.lower <= fast.upper) and np.all(plain.lower <= plain.upper)
    assert np.all(fast.lower <= plain.upper) and np.all(plain.lower <= fast.upper)


def test_relaxed_patient_point_takes_one_full_round(monkeypatch) -> None:
    # relaxed, k 10, sigma 1, q 1e-5, T 1e6: the FFT route's round-off guard held ~90% of the first full round's
    # bracket at kappa 1e-6 (1.6e-3 relative) and a second full round of 5.4e6-point windows followed; with the
    # accurate power the first full round's bracket is within rtol (5e-4) at every kappa and stands alone. Work, not
    # time: at most one full-size round (one grid step composed at full size), after at most one probe (ReRo's long
    # one-level probe, LONG_PROBE) whose windows hold about a quarter of its points; the accurate power is taken.
    from dpaudit.bounds import rero as rero_module
    from dpaudit.bounds import rero_bound

    points: dict[float, int] = {}
    accurate = []
    real, real_power = rero_module.composed_run, pld._accurate_power

    def spy(run, h, direction, optimistic=False, accurate=False):
        got = real(run, h, direction, optimistic, accurate)
        points[h] = max(points.get(h, 0), got.masses.size)
        return got

    def power_spy(x, k, steps, **kwargs):
        got = real_power(x, k, steps, **kwargs)
        accurate.append(got is not None)
        return got

    monkeypatch.setattr(rero_module, "composed_run", spy)
    monkeypatch.setattr(pld, "_accurate_power", power_spy)
    clear_caches()
    got = rero_bound(1.0, 1e-5, 1_000_000, np.array([1e-6, 1e-3, 0.1]), threat_model="relaxed",
                     records_per_patient=10)
    clear_caches()
    full = max(points.values())
    rounds = sorted(points, reverse=True)  # coarsest first
    assert len(rounds) <= 2 and points[rounds[-1]] == full
    # (the probe is 4x coarser than initial_h_run's step and the jump from it lands 3.94x finer: its composed support
    # holds 0.253 of the full round's points, 5.5e5 of 2.16e6)
    assert len(rounds) == 1 or points[rounds[0]] <= 0.26 * full
    assert any(accurate)
    assert np.all(got.upper - got.lower <= 5e-4 * got.upper)


# -- the decimated transforms of a low band (_low_band_rfft, _low_band_irfft) ------------------------------------------

_EXTENDED = np.finfo(np.longdouble).eps < np.finfo(float).eps / 1000


def _sparse_masses(n: int, rng) -> np.ndarray:
    # A per-step law of a sparse run: a pile of a few atoms, and a faint spread with a spike, over the whole circle.
    x = 1e-12 * rng.random(n) ** 4
    x[n // 3:n // 3 + 5] += (0.1, 0.2, 0.4, 0.2, 0.1)
    x[(2 * n) // 3] += 1e-7
    return x / x.sum()


@pytest.mark.skipif(not _EXTENDED, reason="no extended long double here")
@pytest.mark.parametrize(("n", "top"), [(61_440, 47), (61_440, 1), (1 << 16, 255), (3 * 5**5, 10)])
def test_low_band_rfft_matches_a_long_double_fft(monkeypatch, n: int, top: int) -> None:
    # Reference: scipy's FFT in 80-bit long double. The decimated transform (block moments, Taylor series to 2^-64)
    # must match it within a few ulp of ||x||_1 at every frequency of the band, as the full FFT does.
    monkeypatch.setattr(pld, "LOW_BAND_WINDOW", 0)
    x = _sparse_masses(n, np.random.default_rng(n + top))
    got, block = pld._low_band_rfft(x, top)
    assert n % block == 0 and block >= pld.LOW_BAND_MIN_BLOCK and n // block >= pld.LOW_BAND_RATIO * (top + 1)
    want = pld.sp_fft.rfft(x.astype(np.longdouble))[:top + 1]
    assert got.shape == (top + 1,)
    assert np.max(np.abs(got - want)) <= 8 * np.finfo(float).eps * x.sum()
    # As _accurate_power calls it: the near part [a, b] a hole (its blocks summed from a copy), and x shorter than
    # the window (zero-padded without a copy: the last, partial block too).
    short = x[:n - 2 * block - 3]
    a, b = n // 3 - 1, n // 3 + 7
    rest = short.copy()
    rest[a:b + 1] = 0.0
    got, _ = pld._low_band_rfft(short, top, n=n, hole=(a, b))
    want = pld.sp_fft.rfft(rest.astype(np.longdouble), n=n)[:top + 1]
    assert np.max(np.abs(got - want)) <= 8 * np.finfo(float).eps * rest.sum()
    assert np.array_equal(short, x[:n - 2 * block - 3])  # (x itself untouched)


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 20_000])
def test_cumulative_locates_levels_as_the_running_sum(size: int) -> None:
    # Integer masses: every running sum is exact, whatever the order, so _Cumulative's block sums must locate each
    # level exactly where np.searchsorted(np.cumsum(x), level, side) does, both sides, levels on and between sums.
    rng = np.random.default_rng(size)
    x = rng.integers(0, 3, size).astype(float)
    x[rng.random(size) < 0.5] = 0.0
    x[0] += 1.0
    running = np.cumsum(x)
    located = pld._Cumulative(x)
    assert located.total == running[-1]
    for level in [0.0, 0.5, 1.0, *rng.integers(0, int(running[-1]) + 2, 40), running[-1], running[-1] + 1]:
        for side in ("left", "right"):
            assert located.index(float(level), side) == int(np.searchsorted(running, level, side=side))


def test_low_band_plan_declines_where_it_saves_nothing(monkeypatch) -> None:
    # Windows below LOW_BAND_WINDOW, bands too wide for a block of LOW_BAND_MIN_BLOCK, and a prime n keep the FFT.
    assert pld._low_band_plan(pld.LOW_BAND_WINDOW - 1, 10) is None
    assert pld._low_band_plan(1 << 21, (1 << 21) // (pld.LOW_BAND_RATIO * pld.LOW_BAND_MIN_BLOCK)) is None
    assert pld._low_band_plan(2_097_143, 10) is None  # (a prime)
    block, terms = pld._low_band_plan(1 << 21, 100)
    assert (1 << 21) % block == 0 and (math.pi / pld.LOW_BAND_RATIO) ** terms / math.factorial(terms) < 2.0 ** -64


@pytest.mark.skipif(not _EXTENDED, reason="no extended long double here")
@pytest.mark.parametrize(("n", "steps"), [(61_440, 2_000_000), (1 << 16, 20_000_000)])
def test_low_band_irfft_matches_a_long_double_inverse(monkeypatch, n: int, steps: int) -> None:
    # Reference: scipy's inverse FFT in 80-bit long double of the same half spectrum: a composed law's (the per-step
    # spectrum's live frequencies to the power steps, 0 elsewhere). Within 4 ulp of the largest mass everywhere (the
    # floor of DiscretePld.noise_guard; the whole sum in one matrix product reached 4.4 at a peak, found by review),
    # and no more negative than the full inverse FFT's most negative mass allows (the lower end's guard reads it).
    monkeypatch.setattr(pld, "LOW_BAND_WINDOW", 0)
    z = pld.sp_fft.rfft(_sparse_masses(n, np.random.default_rng(n)))
    live = np.abs(z) ** 2 > math.exp(-1400.0 / steps)
    top = int(np.flatnonzero(live)[-1])
    assert 0 < top < n // (pld.LOW_BAND_RATIO * pld.LOW_BAND_MIN_BLOCK)
    spectrum = np.where(live, pld._int_power(z, steps), 0)
    got = pld._low_band_irfft(spectrum[:top + 1], n)
    want = pld.sp_fft.irfft(spectrum.astype(np.clongdouble), n=n)
    full = pld.sp_fft.irfft(spectrum, n=n)
    scale = float(want.max())
    assert np.max(np.abs(got - want)) <= 4 * np.finfo(float).eps * scale
    assert got.min() >= min(2 * float(full.min()), 0.0) - 4 * np.finfo(float).eps * scale


@pytest.mark.skipif(not _EXTENDED, reason="no extended long double here")
@pytest.mark.parametrize("n", [1_152_000, 2_000_000])
def test_low_band_irfft_keeps_smooth_peaks_within_the_guard_floor(n: int) -> None:
    # The review's cases (2026-12-03): Gaussian half spectra exp(-k^2 / (2 kappa^2)) e^(-2 pi i k c / n), k <= 37
    # kappa, at several widths and centres. A peak's error reached 1.03-1.09x noise_guard's floor of 4 ulp of the
    # largest mass (the whole sum in one matrix product, 1 / W in its factors); the full FFT's stays near 0.5-0.7x.
    rng = np.random.default_rng(n)
    for kappa in (1.0, 2.6):
        top = int(kappa * math.sqrt(1400))
        k = np.arange(top + 1)
        for c in (12345, int(rng.integers(0, n))):
            spectrum = np.exp(-0.5 * (k / kappa) ** 2) * np.exp(-2j * math.pi * k * c / n)
            got = pld._low_band_irfft(spectrum, n)
            full = np.zeros(n // 2 + 1, dtype=complex)
            full[:top + 1] = spectrum
            want = pld.sp_fft.irfft(full.astype(np.clongdouble), n=n)
            assert np.max(np.abs(got - want)) <= 4 * np.finfo(float).eps * float(want.max()), (kappa, c)


def test_epsilon_with_the_low_band_transforms_equals_the_full_ffts(monkeypatch) -> None:
    # sigma 1, q 1e-5, T 1e6 composes by the accurate route on windows of 1.2e6 points whose live frequencies are a
    # low band (137 of 5.8e5): the decimated transforms are taken, and epsilon equals the full FFTs' to 1e-12.
    calls = []
    real = pld._low_band_irfft
    monkeypatch.setattr(pld, "_low_band_irfft", lambda *a: calls.append(a[1]) or real(*a))
    clear_caches()
    low = pld.epsilon_bound(1.0, 1e-5, 1_000_000, 1e-5).value
    assert calls
    monkeypatch.setattr(pld, "LOW_BAND", False)
    clear_caches()
    full = pld.epsilon_bound(1.0, 1e-5, 1_000_000, 1e-5).value
    clear_caches()
    assert low == pytest.approx(full, rel=1e-12)


@pytest.mark.parametrize(("sigma", "q", "steps", "direction"), [(1.0, 0.01, 1000, "remove"), (0.5, 1e-3, 20_000, "add"),
                                                                (2.0, 1e-4, 300, "remove")])
def test_compositions_are_the_same_with_numpy_and_scipy_ffts(monkeypatch, sigma, q, steps, direction) -> None:
    # The window's transforms are numpy.fft's (it transforms in its output array: the largest compositions' peak
    # memory 18-22% lower than scipy.fft's padded copies and scratch). Both wrap pocketfft: the same bits at the
    # 5-smooth widths next_fast_len gives (their inverses' 1 / n differ in the last bit at some other lengths).
    from scipy import fft

    from dpaudit.bounds._mechanism import StepPair
    run = ((StepPair(sigma, q), steps),)
    h = pld.initial_h_run(run)
    got = {}
    for name, module in (("numpy", np.fft), ("scipy", fft)):
        monkeypatch.setattr(pld, "np_fft", module)
        for optimistic, accurate in itertools.product((False, True), (False, True)):
            clear_caches()
            got[name, optimistic, accurate] = pld.composed_run(run, h, direction, optimistic, accurate).masses
    clear_caches()
    for optimistic, accurate in itertools.product((False, True), (False, True)):
        assert np.array_equal(got["numpy", optimistic, accurate], got["scipy", optimistic, accurate])
