"""The k > 1 inversion of the loss, x_of_loss, from the Hermite start against the linear start it replaces."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import dpaudit.bounds._mechanism as mechanism
from dpaudit.bounds._mechanism import StepPair
from dpaudit.bounds.pld import clear_caches, composed_pld


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def _both(pair: StepPair, eps: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, np.ndarray]:
    monkeypatch.setattr(mechanism, "HERMITE_START", False)
    plain = pair.x_of_loss(eps)
    monkeypatch.setattr(mechanism, "HERMITE_START", True)
    return plain, pair.x_of_loss(eps)


@pytest.mark.parametrize("threat_model", ["relaxed", "worst_case"])
@pytest.mark.parametrize(("sigma", "q", "k"), [(0.5, 1e-5, 10), (1.0, 1e-3, 5), (0.2, 0.1, 2), (5.0, 1e-6, 10)])
def test_hermite_start_finds_the_same_roots(threat_model, sigma, q, k, rng, monkeypatch) -> None:
    # Both routes stop at a 1e-14 relative Newton step, so they agree to that plus the root's own conditioning: an
    # ulp of eps moves the root by ulp / L'(x) (near the relaxed model's flat bottom, a lot). The residual L(x) - eps
    # stays at the round-off of eps everywhere.
    pair = StepPair(sigma, q, k, threat_model)
    lo = pair.min_loss if np.isfinite(pair.min_loss) else -30.0
    eps = lo + np.sort(np.concatenate([rng.exponential(1e-4, 3000), rng.uniform(0, 15, 3000)]))
    plain, hermite = _both(pair, eps, monkeypatch)
    s2 = sigma ** 2
    terms = np.exp(pair._log_terms(hermite) - pair.loss(hermite)[None, :])
    j = pair.means[:, None]
    tanh = np.tanh(j * hermite[None, :] / s2) if pair.relaxed else 1.0
    slope = np.sum(terms * j / s2 * tanh, axis=0)
    ulp = np.finfo(float).eps * np.maximum(np.abs(eps), 1.0)
    with np.errstate(divide="ignore"):
        allowed = 1e-13 * np.maximum(np.abs(plain), 1.0) + 64 * ulp / slope
    assert np.all(np.abs(hermite - plain) <= allowed)
    resid = np.abs(pair.loss(hermite) - eps)
    assert np.all(resid <= 64 * ulp)


def test_hermite_start_takes_fewer_passes(monkeypatch) -> None:
    # Bounded work: count the losses evaluated by the Newton iteration (the table's 4097 included) on 2e5 losses of
    # the relaxed k 10, sigma 0.5, q 1e-5 step; the Hermite start needs at most 2.5 passes over them, the linear
    # start 4 or more.
    pair = StepPair(0.5, 1e-5, 10, "relaxed")
    eps = pair.min_loss + np.linspace(1e-7, 6.0, 200_000)
    seen: list[int] = []
    log_terms = StepPair._log_terms

    def counting(self, x, rows=None):
        seen.append(np.size(x))
        return log_terms(self, x, rows)

    monkeypatch.setattr(StepPair, "_log_terms", counting)
    work = {}
    for flag in (False, True):
        monkeypatch.setattr(mechanism, "HERMITE_START", flag)
        seen.clear()
        pair.x_of_loss(eps)
        work[flag] = sum(seen) / eps.size
    assert work[False] >= 4.0
    assert work[True] <= 2.5


def test_hermite_start_brackets_overlap_the_linear_starts(monkeypatch) -> None:
    # A composed ReRo-direction PLD (relaxed k 10, sigma 0.5, q 1e-5, T 1e4) and its garbled lower bound: the deltas
    # of the two routes differ by under 1e-3 of the bracket's width (the boundaries near the flat bottom move with
    # round-off) and the pessimistic one stays above the optimistic one of the other route.
    pair = StepPair(0.5, 1e-5, 10, "relaxed")
    out = {}
    for flag in (False, True):
        monkeypatch.setattr(mechanism, "HERMITE_START", flag)
        clear_caches()
        upper = composed_pld(pair, 10_000, 2e-4, "remove")
        lower = composed_pld(pair, 10_000, 2e-4, "remove", optimistic=True)
        out[flag] = [(upper.delta(e), lower.delta(e)) for e in (0.0, 0.5, 1.0)]
    clear_caches()
    for (up_p, lo_p), (up_h, lo_h) in zip(out[False], out[True], strict=True):
        assert up_h >= lo_p and up_p >= lo_h
        gap = up_p - lo_p  # the bracket's own width: the routes differ by far less
        assert abs(up_h - up_p) <= 1e-3 * gap + 1e-15
        assert abs(lo_h - lo_p) <= 1e-3 * gap + 1e-15


@pytest.mark.parametrize("threat_model", ["relaxed", "worst_case"])
@pytest.mark.parametrize(("sigma", "q", "k"), [(0.5, 1e-6, 5), (1.0, 1e-3, 10), (0.2, 0.1, 1)])
def test_chunked_loss_passes_equal_the_whole_pass(threat_model, sigma, q, k, rng, monkeypatch) -> None:
    # L, L' and the inverse taken in chunks of LOSS_CHUNK points (a short last one included) against one pass over
    # all of them: every operation is per point, so bit for bit.
    pair = StepPair(sigma, q, k, threat_model)
    lo = pair.min_loss if np.isfinite(pair.min_loss) else -30.0
    eps = lo + np.sort(np.concatenate([rng.exponential(1e-4, 1500), rng.uniform(0, 15, 1500)]))
    x = np.sort(rng.uniform(-5.0, 5.0 + k, 3001))
    monkeypatch.setattr(mechanism, "LOSS_CHUNK", 1 << 62)
    whole = (pair.loss(x), *pair._loss_and_slope(x), pair.x_of_loss(eps))
    monkeypatch.setattr(mechanism, "LOSS_CHUNK", 256)
    chunked = (pair.loss(x), *pair._loss_and_slope(x), pair.x_of_loss(eps))
    for a, b in zip(whole, chunked, strict=True):
        assert a.shape == b.shape
        assert np.array_equal(a, b)


@pytest.mark.parametrize("threat_model", ["relaxed", "worst_case"])
@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 512, 513, 514])
def test_chunked_loss_passes_at_the_chunk_boundaries(threat_model, n, rng, monkeypatch) -> None:
    # Runs of fewer points than a chunk, exactly a multiple of it, and one or two more: the same numbers as one pass.
    # A last chunk of one point would sum the components along the contiguous axis (numpy's pairwise order, not the
    # row by row order of wider arrays), a different rounding with 8 or more components (k 10 here).
    pair = StepPair(1.0, 0.3, 10, threat_model)
    x = rng.uniform(-5.0, 15.0, n)
    monkeypatch.setattr(mechanism, "LOSS_CHUNK", 1 << 62)
    whole = (pair.loss(x), *pair._loss_and_slope(x))
    monkeypatch.setattr(mechanism, "LOSS_CHUNK", 256)
    chunked = (pair.loss(x), *pair._loss_and_slope(x))
    for a, b in zip(whole, chunked, strict=True):
        assert a.shape == b.shape == (n,)
        assert np.array_equal(a, b)
