"""The spectrum's power z^T by repeated squaring: equal to the exact power up to its round-off, and the bounds read from
compositions that use it equal to those of numpy's power (exp(T log z) for T >= 100) within their proven brackets."""

from __future__ import annotations

import itertools

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
        m.setattr(pld, "_int_power", lambda z, s: z ** s)  # numpy's power: the plain route
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
