"""Privacy loss distributions (PLD): pessimistic discretisation, composition, epsilon and the Neyman-Pearson step.

A PLD here is the law of the privacy loss L = log dQ/dP under Q, on the grid {i h}, plus an atom at +infinity.
P is implicit: an atom at loss l with Q-mass m has P-mass m e^{-l}; missing P-mass sits at loss -infinity.
Its hockey-stick curve is delta(eps) = Q(L = inf) + E_Q[(1 - e^{eps - L})_+] and its trade-off curve follows by
Neyman-Pearson. Everything computed here is a *sound upper bound* for the continuous mechanism:

* **Discretisation** (connect-the-dots, Doroshenko, Ghazi, Kamath, Kumar, Manurangsi, PETS 2022, arXiv
  2207.04380v1, Section 3): the curve t -> delta(log t) is convex; interpolating it linearly between the grid
  points e^{i h} gives a curve above it, which is the hockey-stick curve of the discrete PLD built here. We obtain
  the masses without second differences: the mass of each loss interval (a, b] is split between its two ends so
  that both its Q-mass and its P-mass are preserved (a dilation, hence more informative than the original pair,
  Blackwell). The region above the last grid point goes to that point and to the +infinity atom the same way; the
  region below the first grid point is moved up to it (moving Q-mass to a higher loss never lowers delta).
* **Composition** by FFT in a window [lo, hi] chosen by a Chernoff bound on the composed loss (tail mass
  ``TAIL_BOUND`` on each side). Mass above the window wraps around to low losses; its Chernoff bound is added to the
  infinity atom, which more than compensates. Mass below the window wraps to the top (a pessimistic move). A long
  run's T-th power of the spectrum is taken from an accurate 1 + A_k at the frequencies that survive it
  (:func:`_accurate_power`): the FFT's ulp-level round-off, multiplied by T there, made most of some brackets.
* **Loss cap** (``LOSS_CAP``): at tiny noise (sigma ~ 0.02, the seed paper's epsilon = 1e9) the per-step loss
  reaches 10^3..10^6, beyond float64's exp range and far beyond any FFT window. The per-step grid stops at the last
  grid point at or below ``LOSS_CAP``; everything above goes to that point and to the infinity atom by the same
  P- and Q-mass preserving split as the rest of the top region (a dilation, so still sound; the infinity atom is
  pessimistic for epsilon at delta, where it counts fully, and for the Neyman-Pearson step, where it is Q-mass at
  no P-cost). The products e^eps P(.) are formed as exp(eps + log P(.)), P in log space, so nothing overflows
  or underflows into a wrong split. When the cap costs tightness, epsilon falls back to the RDP bound
  (:func:`epsilon_pld`), and ReRo / MIA bounds are close to 1 there anyway (which is the correct answer).
* **Lower end** (:func:`_garbled_step`): a pair *less* informative than the continuous one, on a grid anchored at the
  pile's own loss: cells centred on the grid points, each balanced to its grid point's loss exactly by small
  fractions of its neighbours (post-processing), anything left over settled in the safe direction. Every power and
  delta read from it and from its compositions is a sound *lower* bound, second order in h like the upper end; the
  pair [lower, upper] is the proven bracket every tight number reports.
* **Two levels** (:func:`_block_size`, :func:`_regrid`): a long run whose blocks of ~sqrt(T) steps are smooth is
  composed block by block on a finer grid, each block moved onto a coarser grid (connect-the-dots of its atoms for
  the upper end, balanced cells for the lower end: both sound), then the blocks composed: the same blur as one
  level, in FFT windows 5-10x smaller.
* **Nesting.** The grid with step h/2 contains the one with step h, so the chord interpolation at h lies above
  the one at h/2: the bound at h/2 is both sound and tighter (one level). The reported numerical error is the
  bracket's width; nested grids only estimate it where no lower end converges (the dual route's deep reads).
* **Speed** (measured in ``bench/bench_bounds.py``): the complex power of a spectrum is taken only where it does
  not underflow, reads of the Neyman-Pearson step and of epsilon touch only the top atoms they need, and the
  refinement starts at the grid step it usually ends at where windows are small, else probes once and jumps to the
  grid step the probe's bracket predicts (it closes as h^2).

Nothing here imports dp_accounting; the tests and the benchmark use dp_accounting 0.6.0 as the reference.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from dataclasses import dataclass, field

import numpy as np
from numpy import fft as np_fft
from scipy import fft as sp_fft
from scipy import special

from dpaudit.bounds._mechanism import StepPair
from dpaudit.config import DELTA_EXAMPLE
from dpaudit.errors import NumericalError, invalid
from dpaudit.heap import heap_keeps, one_blas_thread, reuse_freed_memory

#: The neighbouring relation every epsilon and bound here assumes: data sets that differ by adding or removing one
#: record (both directions are accounted, see ``epsilon_pld``). Reported in the profile's reporting checklist.
ADJACENCY = "add/remove"
#: Chernoff bound on the composed mass left outside the FFT window on each side (1e-16: far below any kappa or
#: delta a user can sensibly ask for, so the compensation it adds to the infinity atom never shows in a printed digit).
TAIL_BOUND = 1e-16
#: Mass the per-step discretisation sends to the infinity atom, in total over all steps (sound, adds <= 1e-14).
INF_BUDGET = 1e-14
#: Largest FFT window we allow (2^24 points: 128 MiB of spectrum); beyond it we refuse rather than swap.
MAX_WINDOW = 1 << 24
#: The first grid step keeps the composed window near this many points (2^21: ~0.3 s per FFT; see initial_h_run).
WINDOW_TARGET = 1 << 21
#: Largest finite per-step privacy loss kept on the grid; larger losses join the infinity atom (module notes).
#: 700 < log(max float64) = 709.8, so e^eps alone never overflows either, and at h = 0.05 the per-step grid holds at
#: most 14000 atoms. Only sigma below about 0.04 (any q) has per-step Q-mass above it beyond 1e-20.
LOSS_CAP = 700.0


#: How often :func:`refine` quadruples the grid step when the composed window does not fit (h up to 64x coarser).
COARSEN_ATTEMPTS = 3


class WindowTooLargeError(NumericalError):
    """The composed PLD needs a larger FFT window than ``MAX_WINDOW`` at this grid step."""


class PileBoundaryError(NumericalError):
    """The discretisation found no boundary of the loss's first pile in float64 (k-record pairs whose losses reach
    ~1e19 nats at k / sigma ~1e10, where a grid step is below their rounding): the PLD cannot be formed; callers that
    have a sound alternative (the RDP of a dominating mechanism) use it."""


#: :meth:`DiscretePld.epsilon_lower` given the upper end ``near`` reads a first chunk this many times as deep as
#: ``near`` lies (plus 64 atoms): the lower end's crossing lies below the upper end's by the bracket's width, at most
#: a few 1e-3 relative on refine's first rounds, far less than 10% of the depth.
EPSILON_READ_MARGIN = 1.1


def _decay_filter(x: np.ndarray, h: float) -> np.ndarray:
    """y[n] = sum_{i <= n} x[i] e^{-h (n - i + 1)} (the filter scipy.signal.lfilter([d], [1, -d], x) computes,
    d = e^{-h}; without importing scipy.signal, which costs about a second at start-up).

    Vectorised in blocks of B points with B h <= 300, so that the in-block weights e^{h i} stay far from float
    overflow; within a block y = d^k (carry + cumsum(x_i d^{-i})), a sum of non-negative terms (full relative
    precision); the carry crosses blocks in a short loop.
    """
    n = x.size
    block = max(1, min(n, int(300.0 / h)))
    nb = -(-n // block)
    if nb == 1:
        # One block (every read of a window shorter than 300 / h atoms): its own contribution is all of it, no
        # padding and no carry (the carry 0 adds 0 * d^{k+1} = 0 to each non-negative term: the same numbers).
        k = np.arange(n, dtype=float)
        return np.cumsum(x * np.exp(h * k)) * np.exp(-h * (k + 1.0))
    padded = np.zeros(nb * block)
    padded[:n] = x
    xb = padded.reshape(nb, block)
    k = np.arange(block, dtype=float)
    up = np.exp(h * k)  # d^{-i}
    down = np.exp(-h * (k + 1.0))  # d^{k+1}
    inner = np.cumsum(xb * up[None, :], axis=1) * down[None, :]  # the block's own contribution
    carry_decay = down  # the incoming carry y_prev (value at the previous block's last point) decays as d^{k+1}
    out = np.empty_like(xb)
    carry = 0.0
    for b in range(nb):
        out[b] = inner[b] + carry * carry_decay
        carry = float(out[b, -1])
    return out.ravel()[:n]


def _tails(m: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    """For each atom j of masses m on a grid of step h: S_j = sum_{i > j} m_i and R_j = sum_{i > j} m_i
    e^{l_j - l_i}, so that delta(l_j) = infinity_mass + S_j - R_j."""
    rev = m[::-1]
    s = np.concatenate([np.cumsum(rev)[::-1][1:], [0.0]])
    # R_{j} = e^{-h} (m_{j+1} + R_{j+1}): a first-order linear filter run from the top.
    r_rev = _decay_filter(rev, h)  # r_rev[n] = sum_{i<=n} rev_i e^{-h (n-i+1)}
    r = np.concatenate([r_rev[::-1][1:], [0.0]])
    return s, r


#: :meth:`DiscretePld._epsilon` reads chunks of this many atoms or more (a crossing deep in a long window: small q,
#: where the loss spans 5 nats at grid steps of 4e-7) by first locating the crossing on sums over blocks of
#: ``COARSE_BLOCK`` atoms (:func:`_skip_blocks`), over at most ``COARSE_REACH`` times the chunk at a time.
COARSE_READ = 1 << 16
COARSE_BLOCK = 4096
COARSE_REACH = 8


def _skip_blocks(masses: np.ndarray, guard: float, h: float, a_lim: int, b: int, carry_s: float, carry_r: float,
                 infinity: float, target: float) -> tuple[int, float, float, bool]:
    """The top b' of the block of atoms (blocks of ``COARSE_BLOCK`` below b, down to a_lim >= 1) that holds the
    crossing of :meth:`DiscretePld._epsilon`, with the carries there: (b', sum_{i >= b'} m_i, sum_{i >= b'} m_i
    e^{l_b' - l_i}, True); or the lowest block's start with its carries and False where the crossing lies below it.

    Block c's sums are Q_c = sum m_i and W_c = sum m_i e^{-(l_i - l_c)} (l_c its lowest atom's loss: terms in (0, 1]
    while COARSE_BLOCK h <= 300), so the carries at its lowest atom are S + Q_c and A = W_c + e^{-h B} A_above, sums
    of non-negative terms as in :func:`_tails`; delta just below the block is infinity + S - e^{-h} A, which grows
    downwards: the crossing is in the first block (from the top) where it exceeds the target. ``guard``: every mass
    lowered by it first (as the chunks are)."""
    block = COARSE_BLOCK if h * COARSE_BLOCK <= 300.0 else max(1, int(300.0 / h))
    nb = (b - a_lim) // block
    if nb < 1:
        return b, carry_s, carry_r, True
    start = b - nb * block
    m = masses[start:b]
    if guard:
        m = np.maximum(m - guard, 0.0)
    m = m.reshape(nb, block)
    q = m.sum(axis=1).tolist()
    with one_blas_thread():  # (see dpaudit.heap: a matrix-vector product of nb x COARSE_BLOCK)
        w = (m @ np.exp(-h * np.arange(block))).tolist()
    decay, step = math.exp(-h * block), math.exp(-h)
    s, r = carry_s, carry_r
    for c in range(nb - 1, -1, -1):
        s_below, r_below = s + q[c], w[c] + decay * r
        if infinity + s_below - step * r_below > target:
            return start + (c + 1) * block, s, r, True
        s, r = s_below, r_below
    return start, s, r, False


#: The last :meth:`DiscretePld._top_read`: (pld, alpha, atoms, losses, P-masses); emptied by clear_caches.
_KEPT_TOP: list = [None]
#: The last :meth:`DiscretePld.power_lower`: (pld, alpha's bytes, result), read back by power_lower_and_guard right
#: after it; emptied by clear_caches.
_KEPT_LOWER: list = [None]


@dataclass(frozen=True, eq=False)
class DiscretePld:
    """A discrete privacy loss distribution on the grid {i h : i = lo .. lo + len(masses) - 1} plus +infinity.

    Attributes
    ----------
    h:
        Grid step (discretisation interval) of the loss.
    lo:
        Grid index of ``masses[0]``.
    masses:
        Q-masses of the finite atoms (non-negative).
    infinity_mass:
        Q-mass of the atom at loss +infinity (P-mass 0): a test that can never err.
    capped:
        True when ``LOSS_CAP`` cut the per-step grid (then the continuous moments no longer describe it).
    offset:
        The grid is {offset + i h} (see :func:`_step_pld`: anchored where the mass piles up); composing adds the
        offsets.
    optimistic:
        True for the garbled (lower-bound) discretisation: every power and delta read from it is a sound lower
        bound; False (default) for connect-the-dots, a sound upper bound.
    noise:
        The FFT round-off level observed when composing (the most negative mass before clipping; 0 per step).
    slack:
        Optimistic PLDs: a bound on the Q-mass a composition may have wrapped from below its window to the top
        (``TAIL_BOUND`` per FFT window, added up over the blocks of a two-level composition); the readers of the
        lower end allow for it. 0 per step.
    plain_steps:
        How many of the composed steps' spectrum powers were taken the plain way (squarings of the FFT, about
        ``plain_steps`` ulp relative per frequency, see :meth:`roundoff`); 0 per step and where every power was
        taken by :func:`_accurate_power`.
    spectrum_ulps:
        An estimate of the composed spectrum's relative round-off, in ulps (:meth:`roundoff`): steps + 2 log2(steps)
        for each plain power, :func:`_accurate_ulps` for each accurate one, a part's own times its steps, and
        2 log2(n) for the FFTs. 0 per step.
    """

    h: float
    lo: int
    masses: np.ndarray = field(repr=False)
    infinity_mass: float
    capped: bool = False
    offset: float = 0.0
    optimistic: bool = False
    noise: float = 0.0
    slack: float = 0.0
    plain_steps: int = 0
    spectrum_ulps: float = 0.0

    @functools.cached_property
    def losses(self) -> np.ndarray:
        losses = self.offset + self.h * (self.lo + np.arange(self.masses.size))
        losses.setflags(write=False)
        return losses

    @functools.cached_property
    def mass_deficit(self) -> float:
        """How much the masses, infinity atom included, fall short of 1 (>= 0): floating-point round-off that
        composing multiplies (a step's masses summing to 1 - 2 ulp lose about T times that: 1.5e-10 at T = 7.2e5).
        It is a relative error of about that size on every composed atom (:func:`compose_parts`), so the upper
        readers of a connect-the-dots PLD divide what they read by the total, 1 - mass_deficit: power
        (:meth:`power_and_depth`, :meth:`dual_power`), :meth:`delta` and :meth:`epsilon` (whose target delta is
        multiplied by it). A power near 1 read as 1 - 1.5e-10 was below the truth (sigma 0.6, q 0.055, k 5,
        T 718190: dp_accounting's optimistic power alone lies at 1 - 8e-11); a small delta moves by its 1.5e-10th
        part. The lower readers leave it out (a lower bound may only fall)."""
        return max(0.0, 1.0 - self.infinity_mass - float(np.sum(self.masses)))

    @property
    def _kept(self) -> float:
        """1 - :attr:`mass_deficit` on a connect-the-dots PLD (what its upper readers divide by), 1 otherwise."""
        return 1.0 if self.optimistic else 1.0 - self.mass_deficit

    @functools.cached_property
    def _finite_atoms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(index, Q-mass, loss, log Q-mass) of the atoms with mass > 0: what both the binned and the exact MGF of
        :func:`_chernoff_ends` read (a sparse per-step lattice forms only its atoms' losses), formed once."""
        pos = np.flatnonzero(self.masses > 0)
        m = self.masses[pos]
        return pos, m, self.losses_at(pos), np.log(m)

    def losses_at(self, index: np.ndarray | slice) -> np.ndarray:
        """The losses of the atoms ``masses[index]`` (an index array or a slice), without forming every atom's loss:
        the same numbers as ``losses[index]`` (the same operations on each), at the cost of the atoms read (a read
        near the top of a window of 1e7 atoms, or the few atoms of a sparse per-step lattice)."""
        i = np.arange(self.masses.size)[index] if isinstance(index, slice) else np.asarray(index)
        return self.offset + self.h * (self.lo + i)

    def _loss_of(self, i: int) -> float:
        """The loss of the atom ``masses[i]``: ``losses_at`` of one index (the same operations on float64), without
        forming an array."""
        return float(self.offset + self.h * float(self.lo + i))

    # -- hockey-stick curve -------------------------------------------------------------------------------------

    def _tails(self) -> tuple[np.ndarray, np.ndarray]:
        """:func:`_tails` of every atom."""
        return _tails(self.masses, self.h)

    def delta(self, epsilon: float) -> float:
        """delta(eps) = Q(L = inf) + E_Q[(1 - e^{eps - L})_+] (exact for this discrete PLD; on a connect-the-dots
        PLD divided by its total, 1 - :attr:`mass_deficit`, as every upper reader is: delta(0), the advantage of a
        membership test, near 1 after a long run)."""
        losses = self.losses
        top = losses > epsilon
        m = self.masses[top]
        return min(1.0, float(self.infinity_mass + np.sum(m * -np.expm1(epsilon - losses[top]))) / self._kept)

    def swapped_delta(self, epsilon: float, steps: int) -> float:
        """An upper bound on delta(eps) of the *swapped* pair (the add direction's, from the remove direction's
        connect-the-dots PLD of the same run, and the reverse), at eps >= 0, for a PLD composed of ``steps`` steps
        by FFT; +inf where the round-off allowance below does not leave a meaningful bound.

        For probability measures P and Q and any event S, P(S) - e^eps Q(S) = 1 - e^eps + e^eps (Q(S^c) -
        e^{-eps} P(S^c)), so delta_{P||Q}(eps) = 1 - e^eps + e^eps delta_{Q||P}(-eps) (the hockey-stick divergences
        of a pair and of its swap; e.g. Zhu, Dong, Wang, "Optimal Accounting of Differential Privacy via
        Characteristic Function", AISTATS 2022, on tradeoff functions and their inverses). The add direction's pair
        is the remove direction's swapped, step by step and so composed. This PLD bounds delta_{Q||P} from above at
        every eps, negative ones included: connect-the-dots splits each cell into a pair the cell's observations are
        a post-processing of (Blackwell; Doroshenko et al., PETS 2022), the tail cut and the pessimistic round-off
        margins only move Q-mass up in loss or take P-mass away, products of dominating pairs dominate, and the
        composition's window wraps mass from below to the top (higher loss) and counts what wraps from above at
        +infinity (``TAIL_BOUND``). With the masses m_l at losses l divided by their total (as every upper reader
        here), the bound 1 - e^eps + e^eps delta(-eps) reads, without cancellation between e^eps-sized terms,

            (1 - sum_l m_l e^{-l}) + sum_{l <= -eps} m_l (e^{-l} - e^eps).

        Round-off. Unlike every other reader here, this one weighs the masses by e^{-l}, up to e^{-(the window's
        lowest loss)}, e^17 to e^36 in some windows: the FFT's round-off on the composed masses, harmless to readers
        that weigh them by at most 1, is then multiplied (the observed-noise guard, :attr:`noise_guard`, was 4-40
        times short of it there). The allowance added follows the normwise bound instead: a real FFT of n points is
        within about 6 log2(n) ulp of its result's 2-norm (Higham, Accuracy and Stability of Numerical Algorithms,
        2nd ed., SIAM 2002, Theorem 24.2); the per-step spectra (|z| <= 1, masses of 2-norm at most 1) carry that
        into each z^T at most T times over (plus the squarings' own 2 log2 T ulp), and the inverse FFT (2-norm
        divided by sqrt(n)) adds its own, so the composed masses' error vector has a 2-norm of at most
        E = 12 (T + 2 log2 T + 2) log2(n) ulp (twice that, for a two-level composition's regridding and other
        phases). By Cauchy-Schwarz the read is then off by at most E ||e^{-l}||_2, which is added, with 4 n ulp of
        each sum of n terms. A read below minus that allowance is refused (+inf) as inconsistent. Long runs and deep
        windows thereby do not settle here (the allowance exceeds the target); the caller settles them otherwise."""
        if self.optimistic:
            raise NumericalError("swapped_delta needs a connect-the-dots (upper) PLD")
        if not (epsilon >= 0.0 and math.isfinite(epsilon)):
            return math.inf
        kept = self._kept
        if not kept > 0.0:
            return math.inf
        ulp = float(np.finfo(float).eps)
        n = self.masses.size
        steps = max(int(steps), 1)
        error_norm = 12.0 * (steps + 2.0 * math.log2(steps) + 2.0) * max(math.log2(max(n, 2)), 1.0) * ulp
        losses = self.losses
        with np.errstate(over="ignore", invalid="ignore"):
            p_of = np.exp(-losses)  # e^{-l}: each atom's P-mass per unit of Q-mass
            total_p = float((self.masses * p_of).sum()) / kept
            low = losses <= -epsilon
            swapped = 0.0
            if low.any():
                # e^{-l} - e^eps = e^eps (e^{-l - eps} - 1), with its full relative precision (-l - eps >= 0)
                gap = np.exp(epsilon) * np.expm1(-losses[low] - epsilon)
                swapped = float((gap * self.masses[low]).sum()) / kept
            weights_norm = math.sqrt(float(np.square(p_of).sum()))  # ||e^{-l}||_2 (inf past e^354: refused)
            allowance = (error_norm * weights_norm + 4.0 * n * ulp * (total_p + 1.0 + swapped)) / kept
        read = (1.0 - total_p) + swapped
        if not (math.isfinite(read) and math.isfinite(allowance)) or read < -allowance:
            return math.inf
        return read + allowance

    def epsilon(self, target_delta: float) -> float:
        """The smallest eps >= 0 with delta(eps) <= target_delta (+inf if the infinity atom alone exceeds it), the
        masses divided by their total on a connect-the-dots PLD (:attr:`mass_deficit`): the same curve as
        :meth:`delta`. A read that is not a number (a NaN mass) is +inf: an unknown epsilon, never 0."""
        eps = self._epsilon(target_delta * self._kept, self.infinity_mass, 0.0)
        return eps if eps == eps else math.inf

    def _epsilon(self, target_delta: float, infinity: float, guard: float, depth: int | None = None) -> float:
        """:meth:`epsilon` of this PLD with the infinity atom ``infinity`` and every mass lowered by ``guard``.

        delta(l_j) = infinity + S_j - R_j only involves the atoms above l_j, and epsilon at a small delta lies in
        the top of the PLD: the tails are computed chunk by chunk from the top (4096 atoms first, then twice as many
        each time: the crossing of a composed window lies a third of the way down, so each chunk reads at most about
        as much again as needed; fourfold chunks read 20480 atoms for a crossing 9000 deep) until a chunk reaches
        below the crossing; each chunk's tails are its own plus what the atoms above it carry in: S_j gains their
        Q-mass, R_j gains e^{l_j - l_b} (m_b + R_b), b the lowest atom above. ``depth``: the first chunk reaches this
        many atoms down instead (where the crossing is known to lie about there, see :meth:`epsilon_lower`); the
        chunks after it double as before, so any depth gives the same epsilon up to the round-off of the carries."""
        if not infinity < target_delta:  # (a NaN infinity atom: +inf, as every NaN read here)
            return math.inf
        n = self.masses.size
        h = self.h
        b = n  # the current chunk is [a, b); every atom from b up is done
        carry_s = carry_r = 0.0  # sum_{i >= b} m_i, and m_b + R_b
        size = 4096 if depth is None else max(4096, depth)
        while True:
            if size >= COARSE_READ and b > 2 * COARSE_BLOCK:
                # A deep read: find the block of COARSE_BLOCK atoms that holds the crossing from block sums first
                # (two passes over the atoms, against about ten for their tails), then read only that block.
                b, carry_s, carry_r, found = _skip_blocks(self.masses, guard, h, max(b - COARSE_REACH * size, 1), b,
                                                          carry_s, carry_r, infinity, target_delta)
                if not found:
                    size *= 2
                    continue
                size = 2 * COARSE_BLOCK
            a = max(b - size, 0)
            top = self.masses[a:b]
            if guard:
                top = np.maximum(top - guard, 0.0)
            s, r = _tails(top, h)
            if carry_s or carry_r:
                s = s + carry_s
                r = r + carry_r * np.exp(-h * np.arange(b - a, 0, -1))
            d = infinity + s - r  # decreasing in j
            if a == 0 or d[0] > target_delta:
                break
            carry_s = float(s[0] + top[0])
            carry_r = float(top[0] + r[0])
            b, size = a, 2 * size
        hit = np.nonzero(d <= target_delta)[0]
        if not hit.size:
            # The crossing is the chunk above's lowest atom l_b: solve on (l_{b-1}, l_b], this chunk's last atom.
            j = b - a
        else:
            j = int(hit[0])
        if j == 0:  # (only when a == 0: otherwise d[0] > target)
            # Below the lowest atom l_0 every atom counts: delta(eps) = inf + S - e^{eps - l_0} (m_0 + R_0), exact
            # (the lowest atom itself is not enough for the lower end: the curve may reach the target below it).
            rest = infinity + s[0] + top[0] - target_delta
            if rest <= 0.0 or top[0] + r[0] <= 0.0:
                return 0.0
            low = self._loss_of(a)
            eps = low + math.log(rest / (top[0] + r[0]))
            return eps if eps != eps else max(0.0, min(low, eps))  # (NaN passed on: max / min would drop it)
        # On (l_{j-1}, l_j]: delta(eps) = inf + S_{j-1} - e^{eps - l_{j-1}} R_{j-1}; solve delta(eps) = target.
        eps = self._loss_of(a + j - 1) + math.log((infinity + s[j - 1] - target_delta) / r[j - 1])
        return eps if eps != eps else max(0.0, eps)

    def epsilon_lower(self, target_delta: float, near: float | None = None) -> float:
        """A sound *lower* bound on the continuous pair's epsilon at ``target_delta`` from the optimistic (garbled)
        PLD: masses lowered by the FFT round-off guard (delta only falls), and the mass the composition may have
        wrapped from below its window to the top (``slack``) allowed for in the target.

        ``near``: where the crossing is expected (the upper end of the same bracket, e.g. the connect-the-dots PLD's
        epsilon at the same grid step): the read's first chunk then reaches a little below it (EPSILON_READ_MARGIN),
        instead of doubling from 4096 atoms (a window of 30720 atoms with its crossing 10000 deep read 28672 atoms in
        three chunks). Only how far each chunk reaches changes: the bound is the same up to round-off."""
        if not self.optimistic:
            raise NumericalError("epsilon_lower needs the optimistic (garbled) PLD")
        depth = None
        if near is not None and math.isfinite(near):
            top = self.offset + self.h * (self.lo + self.masses.size - 1)
            reach = (top - near) / self.h
            if 0.0 < reach < self.masses.size:
                depth = int(EPSILON_READ_MARGIN * reach) + 64
        target = target_delta + self.slack
        if target != target:  # (a slack that is not a number: no lower bound above 0; _epsilon would read +inf)
            return 0.0
        eps = self._epsilon(target, 0.0, self.noise_guard, depth)
        return eps if eps == eps else 0.0  # (a read that is not a number: no lower bound above 0)

    def deltas_on_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """(eps_j, delta(eps_j)) at every grid point, for the dual route."""
        s, r = self._tails()
        return self.losses, self.infinity_mass + s - r

    # -- Neyman-Pearson --------------------------------------------------------------------------------------------

    def dual_power(self, alpha: np.ndarray) -> np.ndarray:
        """Power of the *swapped* pair from this PLD's hockey-stick curve (the dual route).

        If this is the add-direction PLD of (P, Q), i.e. of the pair (Q, P), then for the original pair
        f(alpha) >= sup_eps e^{-eps} (1 - delta_add(eps) - alpha) (the trade-off / hockey-stick duality, e.g.
        Dong, Roth, Su 2022, arXiv 1905.02383v3, Proposition 2.12), and power = 1 - f. The sup over this PLD's
        grid points is exact for it (the expression is monotone between atoms). Reads this PLD from the top only.
        """
        alpha = np.atleast_1d(np.asarray(alpha, dtype=float))
        eps, d = self.deltas_on_grid()
        d = np.minimum(d / self._kept, 1.0)  # divided by the total (mass_deficit): delta only rises, the power too
        keep = eps < 700
        eps, d = eps[keep], d[keep]
        w = np.exp(-eps)
        base = w * (1.0 - d)
        best = np.array([np.max(base - w * a) for a in alpha])
        return np.clip(1.0 - np.maximum(best, 0.0), 0.0, 1.0)

    def power(self, alpha: np.ndarray) -> np.ndarray:
        """max { Q(E) : P(E) <= alpha } for each alpha: the exact Neyman-Pearson step (randomised on the boundary
        atom) over atoms sorted by decreasing loss. Reads the atoms from the top only as far as alpha needs."""
        return self.power_and_depth(alpha)[0]

    @functools.cached_property
    def _mass_norm(self) -> float:
        """||masses||_2 (by einsum's own loop: a BLAS dot woke its threads, 5.7 ms a call after an FFT)."""
        return math.sqrt(float(np.einsum("i,i", self.masses, self.masses)))

    def atoms_above(self, loss: float) -> int:
        """How many finite atoms lie above ``loss`` (what a read from the top down to it sums)."""
        n = self.masses.size
        if not math.isfinite(loss):
            return 0 if loss > 0 else n
        return max(0, min(n, n - 1 - math.floor((loss - self.offset) / self.h - self.lo)))

    def roundoff(self, weights: float) -> float:
        """An *estimate* (not a proof) of the composition's round-off on a weighted sum of composed masses whose
        weights have the 2-norm ``weights`` (sqrt(atoms) for a sum of that many masses): ``spectrum_ulps`` ulp times
        ||masses||_2 times ``weights``; 0 per step.

        Why. The composed spectrum carries about ``spectrum_ulps`` ulp relative at every live frequency (a power by
        squarings: the FFT's round-off on z, ~ulp for |z| near 1, times the exponent; the accurate power: its own
        estimate, :func:`_accurate_ulps`), so by Parseval the composed masses' error vector has a 2-norm of about
        spectrum_ulps ulp ||masses||_2, and a weighted sum of them is off by at most the weights' 2-norm times that
        (Cauchy-Schwarz; delta's weights 1 - e^{eps - l} are near 0 just above eps, where a sparse run's masses
        pile up: sigma 0.5, q 1e-6, T 1e6, delta 1e-5, 11 million atoms above, the weights' norm 1e3 times smaller). The error is a smooth wave, positive where the masses are near 0, which the observed-noise
        guard (:attr:`noise_guard`, the most negative mass) does not see: at delta 1e-10 the plain route moved a
        one-level composition's delta by up to 0.8% (sigma 0.676, q 0.00103, T 3e4), epsilon's upper end below the
        exact value; the accurate route, by 2.2% at delta 2.7e-13 (sigma 1.65, q 0.01007, T 55413, 1.2e6 points).
        Against the accurate route (plain powers) and a long-double one (accurate powers) the actual error of the
        delta read was 5e-5 to 0.08 times this estimate (tests/test_bounds_roundoff.py keeps such checks). The
        readers (:func:`composed_for`) take the accurate route where it could move what they read by more than
        ``ROUTE_SHARE``, and allow for it where even that one could."""
        if self.spectrum_ulps == 0.0 or weights == 0.0:
            return 0.0
        estimate = self.spectrum_ulps * float(np.finfo(float).eps) * self._mass_norm * weights
        # An estimate that is not a number is an unknown round-off, not none: +inf (the readers' allowances then
        # give up the read, never drop it; every reader takes a NaN as 0).
        return estimate if estimate == estimate else math.inf

    @property
    def noise_guard(self) -> float:
        """The FFT round-off allowed for on every composed mass: 8x the level observed (the most negative mass
        before clipping: the round-off is spread evenly over the bins) and at least 4 ulp of the largest mass.
        An estimate of the round-off, not a proof: both ends of the bracket are exact up to floating point."""
        top = float(self.masses.max()) if self.masses.size else 0.0
        return max(8.0 * self.noise, 4.0 * float(np.finfo(float).eps) * top)

    def power_lower(self, alpha: np.ndarray) -> np.ndarray:
        """A sound *lower* bound on max { Q(E) : P(E) <= alpha } of the continuous pair, from the optimistic
        (garbled) PLD: every atom's Q-mass is lowered and its P-mass raised by the FFT round-off guard, the mass the
        composition may have wrapped from below its window to the top (``slack``) is subtracted, and gamma >=
        alpha (a blind test) holds for every pair."""
        if not self.optimistic:
            raise NumericalError("power_lower needs the optimistic (garbled) PLD")
        alpha = np.atleast_1d(np.asarray(alpha, dtype=float))
        guarded = self._np_lower(alpha, *self._top_read(alpha)[:2], self.noise_guard)
        _KEPT_LOWER[0] = (self, alpha.tobytes(), guarded.copy())
        return guarded

    def _top_read(self, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_top` at ``alpha.max()``, kept for the next read at the same sizes (refine's stop rule reads the
        guard's share right after the lower end: the same atoms, formed once)."""
        key = float(alpha.max())
        kept = _KEPT_TOP[0]
        if kept is None or kept[0] is not self or kept[1] != key:
            kept = (self, key, *self._top(key))
            _KEPT_TOP[0] = kept  # one read kept in all (a deep read of a long window is ~100 MB)
        return kept[2:]

    def power_lower_and_guard(self, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`power_lower`, and how much of it the round-off guard takes: the same read with the guard 0, less
        the guarded one (>= 0). That share stays about the same on a finer grid composed the same way (the guard,
        ``noise_guard``, is ulps of the largest mass, which falls as h, over the atoms read, which grow as 1 / h),
        unlike the discretisation's part of a bracket (h^2): :func:`refine` reads it to tell whether a finer round
        can help."""
        if not self.optimistic:
            raise NumericalError("power_lower needs the optimistic (garbled) PLD")
        alpha = np.atleast_1d(np.asarray(alpha, dtype=float))
        m, losses, p_mass = self._top_read(alpha)
        kept = _KEPT_LOWER[0]
        if kept is not None and kept[0] is self and kept[1] == alpha.tobytes():
            guarded = kept[2].copy()  # power_lower's result on these atoms, just formed
        else:
            guarded = self._np_lower(alpha, m, losses, self.noise_guard)
        # The read without the guard takes the P-masses the top read formed (the same float64 operations as
        # _np_lower's at nu = 0: log(m + 0) = log m, and m >= 0 is its own Q-mass).
        plain = self._np_lower(alpha, m, losses, 0.0, p_mass)
        return guarded, np.maximum(plain - guarded, 0.0)

    def _np_lower(self, alpha: np.ndarray, m: np.ndarray, losses: np.ndarray, nu: float,
                  p_mass: np.ndarray | None = None) -> np.ndarray:
        """:meth:`power_lower` on the top atoms ``m`` (from :meth:`_top`) with the round-off guard ``nu``;
        ``p_mass``: where nu is 0, the atoms' P-masses as :meth:`_top` formed them (the same numbers)."""
        if p_mass is not None and nu == 0.0:
            qm, pm = m, p_mass
        else:
            # (in place on two arrays: the same operations as max(m - nu, 0) and exp(log(m + nu) - losses))
            qm = np.subtract(m, nu)
            np.maximum(qm, 0.0, out=qm)
            pm = np.add(m, nu)
            with np.errstate(over="ignore", divide="ignore"):  # an atom of mass 0 (past 1e11 steps): log -inf, P 0
                np.log(pm, out=pm)
                np.subtract(pm, losses, out=pm)
                np.exp(pm, out=pm)
        cum_p = np.cumsum(pm)
        j = np.minimum(np.searchsorted(cum_p, alpha, side="left"), m.size - 1)
        cum_q = np.cumsum(qm[:max(int(j.max()), 1)])  # (only the prefix read: the same partial sums)
        before_p = np.where(j > 0, cum_p[np.maximum(j - 1, 0)], 0.0)
        before_q = np.where(j > 0, cum_q[np.maximum(j - 1, 0)], 0.0)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            frac = np.where(np.isfinite(pm[j]) & (pm[j] > 0), np.minimum(np.maximum(alpha - before_p, 0.0) / pm[j], 1.0), 0.0)
        out = before_q + frac * qm[j] - self.slack
        return np.clip(np.maximum(out, alpha), 0.0, 1.0)

    def _top(self, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The atoms a Neyman-Pearson step at size ``alpha`` reads, top (largest loss) first, with their P-masses:
        the shortest top part whose P-mass reaches alpha, or every atom. Grown twofold from 4096 atoms (as
        :meth:`_epsilon` reads), so a read near the top of a long PLD (small alpha, the usual kappa) touches little of
        it and past the crossing at most as much again; each atom's P-mass is formed once (a read of the whole PLD, e.g. the ROC up to FPR 1, pays it once, not for every size tried)."""
        rev = self.masses[::-1]
        n = rev.size
        # The chunks are formed in place in three arrays of the whole length, joined as they are read (each chunk's
        # P-mass summed once): a read down to the bulk of a window of 1e7 atoms (kappa 0.1 at small q) touches each
        # atom a few times, not once per doubling, and copies nothing (np.empty maps pages only as they are written).
        # The masses are copied top first into a contiguous array: numpy's vectorised log and exp (and every later
        # pass of the readers) take contiguous arrays only; on the reversed view the log ran element by element,
        # 5x slower, rounding some atoms (49 of 5.4e6) 1 ulp apart from the vectorised log the guarded read takes.
        # Each chunk's losses are formed in its own slice (top first, only as far as the read goes): the operations
        # of losses_at, offset + h * (lo + i), on the same integers, with one temporary of the chunk's size (the
        # indices) instead of five (a read to the bulk of a window of 4.4e6 atoms faulted in ~140 MB more).
        m, losses, p = np.empty(n), np.empty(n), np.empty(n)
        k, grown, total = 0, min(n, 4096), 0.0
        while True:
            chunk_m, chunk_l, chunk_p = m[k:grown], losses[k:grown], p[k:grown]
            chunk_m[...] = rev[k:grown]
            np.multiply(np.arange(self.lo + n - 1 - k, self.lo + n - 1 - grown, -1), self.h, out=chunk_l)
            np.add(chunk_l, self.offset, out=chunk_l)
            with np.errstate(over="ignore", divide="ignore"):
                # exp(log m - loss), 0 where m is not > 0 (log 0 = -inf gives 0 already; NaN is set to 0 too)
                np.log(chunk_m, out=chunk_p)
                np.subtract(chunk_p, chunk_l, out=chunk_p)
                np.exp(chunk_p, out=chunk_p)
            chunk_p[~(chunk_m > 0)] = 0.0
            total += float(np.sum(chunk_p))
            k = grown
            if k >= n or total >= alpha * (1 + 1e-9):
                break
            grown = min(2 * k, n)
        return m[:k], losses[:k], p[:k]

    def power_and_depth(self, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`power` and, for each alpha, the loss of the atom where the step stopped."""
        alpha = np.atleast_1d(np.asarray(alpha, dtype=float))
        m, losses, p_mass = self._top(float(alpha.max()))
        cum_p = np.cumsum(p_mass, out=p_mass)  # (the P-masses are read only as these partial sums: no copy)
        j = np.searchsorted(cum_p, alpha, side="left")  # first atom at which the P-budget is reached
        out = np.empty_like(alpha)
        full = j >= m.size  # (only when m is every atom: _top)
        jj = j[~full]
        # (the partial sums of the prefix read only: the same numbers)
        cum_q_at = np.cumsum(m[:max(int(jj.max()), 1)])[np.maximum(jj - 1, 0)] if jj.size else np.zeros(0)
        kept = self._kept  # an upper reader divides by the total (round-off lost in composing: mass_deficit)
        if full.any():
            out[full] = (self.infinity_mass + float(np.sum(m))) / kept
        before_p = np.where(jj > 0, cum_p[np.maximum(jj - 1, 0)], 0.0)
        before_q = np.where(jj > 0, cum_q_at, 0.0)
        rest = np.maximum(alpha[~full] - before_p, 0.0)
        with np.errstate(over="ignore"):
            frac = np.where(rest > 0, np.exp(np.log(np.maximum(rest, 1e-320)) + losses[jj]), 0.0)
        out[~full] = (self.infinity_mass + before_q + np.minimum(frac, m[jj])) / kept
        depth = losses[np.minimum(j, m.size - 1)]
        return np.minimum(out, 1.0), depth


# -- discretisation ---------------------------------------------------------------------------------------------------

def _step_pld(pair: StepPair, h: float, direction: str, inf_budget: float, optimistic: bool = False,
              max_points: int | None = None) -> DiscretePld:
    """Discretisation of one step's PLD on the grid anchored at the loss where the mass concentrates.

    ``direction="remove"``: the pair (P, Q) = (target absent, target present), loss log dQ/dP under Q; the one the
    ReRo bound and membership inference use. ``direction="add"``: the swapped pair, loss log dP/dQ under P.
    ``optimistic=False``: connect-the-dots (pessimistic, a sound upper bound). ``optimistic=True``: a garbling of
    the pair (a sound *lower* bound on every power and delta, see :func:`_garbled_step`).

    Grid anchor. The grid is {offset + i h} with offset = the end of the loss's
    support where the mass piles up: min_loss = log(1 - q)^k for the remove direction, -min_loss for the add
    direction. At small sigma almost all the mass of "target not sampled" sits at that one loss value; on the
    unanchored grid {i h} with h > |log(1 - q)| connect-the-dots splits it between 0 and -h, which invents a
    distinguishing signal among the steps that never saw the target, and every nested grid h / 2^n makes the same
    split (so the nested error estimate saw no change): sigma 0.05, q 0.002, T 10, kappa 0.2 gave 0.219821 against
    the exact 0.215857. On the anchored grid that mass lands on a grid point and the split is exact. Any grid is
    sound for connect-the-dots (the chord argument does not depend on where the grid points are); anchored grids
    at h and h / 2 are still nested.

    ``max_points``: refuse (:class:`WindowTooLargeError`) a grid of more points than this before forming it. A
    per-step grid longer than the composed window is folded onto it (:func:`compose_parts`), but forming one past
    ``MAX_WINDOW`` costs the memory the cap exists for: at h = 1e-7 a grid to 7 nats (sigma 0.5, q 1e-6) is 7e7
    points, 4 s and 600 MB; refine then takes a coarser step.
    """
    if optimistic:
        return _garbled_step(pair, h, direction, inf_budget, max_points)
    if direction == "remove":
        lo_loss = pair.min_loss
        # Right end: beyond x_max the Q-tail is below the budget (each mixture component's tail is).
        hi_loss = _tail_loss(pair, inf_budget)
        if not math.isfinite(lo_loss):
            lo_loss = _left_cut(pair, inf_budget, direction)
            offset = 0.0  # q = 1 worst case: no atom to anchor, the loss is Gaussian
        else:
            offset = lo_loss
        i_lo = math.floor((lo_loss - offset) / h)
        # Cap the grid at LOSS_CAP (module notes): the top region then holds all losses above the cap. The cap
        # index floor((LOSS_CAP - offset) / h) keeps nested grids nested (the finer one's top is never lower).
        i_cap = math.floor((LOSS_CAP - offset) / h)
        capped = math.ceil((hi_loss - offset) / h) > i_cap
        i_hi = max(min(math.ceil((hi_loss - offset) / h), i_cap), i_lo + 1)
        _check_points(i_hi - i_lo + 1, max_points)
        anchored = offset == lo_loss

        def boundaries(idx: np.ndarray) -> np.ndarray:
            xb = pair.x_of_loss(offset + h * idx)  # increasing
            if anchored and idx[0] == i_lo:
                xb[0] = pair.lower  # the anchor is the infimum of the loss: the first interval starts there
            return xb

        def q_of(idx: np.ndarray) -> np.ndarray:
            xb = boundaries(idx)
            return pair.masses(xb[:-1], xb[1:])[1]

        idx = _lattice(i_lo, i_hi, q_of, LATTICE_BUDGET * inf_budget)
        eps = offset + h * idx
        xb = boundaries(idx)
        # The cells (lower, xb_0], the intervals (xb_i, xb_{i+1}], and (xb_last, inf) in one pass.
        _, q_all, log_p_all = pair.cell_masses(np.concatenate([[pair.lower], xb, [math.inf]]))
        q_int, log_p_int = q_all[1:-1], log_p_all[1:-1]
        q_top, log_p_top = q_all[-1:], log_p_all[-1:]
        # Below i_lo the loss is < lo only when lo came from a cut; that mass moves up to the first grid point.
        q_below = float(q_all[0])
    else:
        # Loss' = -L under P; interval (eps_a, eps_b] of loss' is L in [-eps_b, -eps_a), x in [x(-eps_b), x(-eps_a)).
        hi_loss = -pair.min_loss
        if not math.isfinite(hi_loss):
            raise NumericalError("the add-direction PLD needs q < 1 or k = 1")  # q = 1 uses symmetry instead
        offset = hi_loss  # anchored at the top, where the add direction's mass piles up
        lo_loss = _left_cut(pair, inf_budget, direction)
        i_lo = min(math.floor((lo_loss - offset) / h), -1)  # at least one interval below the anchor
        i_hi = 0
        _check_points(i_hi - i_lo + 1, max_points)

        def boundaries(idx: np.ndarray) -> np.ndarray:
            xb = pair.x_of_loss(-(offset + h * idx))  # decreasing in eps
            if idx[-1] == i_hi and pair.relaxed:
                xb[-1] = pair.lower
            return xb

        def q_of(idx: np.ndarray) -> np.ndarray:
            xb = boundaries(idx)
            return pair.masses(xb[1:], xb[:-1])[0]

        idx = _lattice(i_lo, i_hi, q_of, LATTICE_BUDGET * inf_budget)
        eps = offset + h * idx
        xb = boundaries(idx)
        # Ascending x: the cells (lower, xb_last], the intervals (xb_{i+1}, xb_i], and (xb_0, inf) in one pass
        # (measure swap: "Q" of the add direction is P).
        q_all, p_all, _ = pair.cell_masses(np.concatenate([[pair.lower], xb[::-1], [math.inf]]), log_p=False)
        q_int, p_int = q_all[-2:0:-1], p_all[-2:0:-1]
        q_top, p_top = q_all[:1], p_all[:1]
        q_below = float(q_all[-1])
        capped = False  # the add-direction loss is at most -min_loss = -log(1 - q)^k
        with np.errstate(divide="ignore"):
            log_p_int, log_p_top = np.log(np.maximum(p_int, 0.0)), np.log(np.maximum(p_top, 0.0))
    n = eps.size
    on_points = np.zeros(n)
    # Split the interval (a, b] = (eps_i, eps_{i+1}] between its ends, preserving Q- and P-mass (connect the dots;
    # the chord argument holds for any two grid points, so the wide tail intervals of _lattice are split the same
    # way). e^{eps_a} P and e^{eps_b} P are formed as exp(eps + log P): both are <= the interval's Q-mass (up to
    # round-off), so nothing overflows, and P-masses below 1e-308 keep their relative precision.
    #
    # The share of b is up = (Q - e^{eps_a} P) / (1 - e^{-w}), w = eps_b - eps_a, and a gets the rest, Q - up: the
    # Q-mass is kept exactly, whatever the round-off. The numerator is a difference of two nearly equal numbers (the
    # interval's loss is within w of eps_a), so it carries an absolute error of a few ulp of Q + e^{eps_a} P, i.e.
    # a relative error of about ulp / w in up: 1e-9 at w = 1e-7 (small q: the per-step loss spans micro-nats). Forming
    # both shares by cancellation and dropping the negative ones lost that much mass per interval to the infinity
    # atom, where T = 1e6 steps added it up (sigma 1, q 1e-6, T 1e6, kappa 1e-6: 2.0e-4 for an exact 1.006e-6).
    # Here up is raised by ``SPLIT_ROUNDOFF`` ulp of Q + e^{eps_a} P over (1 - e^{-w}), above the round-off measured
    # (see there), and kept in [0, Q]: that moves at most that much Q-mass from eps_a up to eps_b, which never lowers
    # a power or a delta, and keeps the P-mass up to a relative error of that order times w.
    width = np.diff(eps)
    with np.errstate(over="ignore", invalid="ignore"):  # only past e^709 (refine never goes there); see below
        tp_a = np.exp(eps[:-1] + log_p_int)
        chord = -np.expm1(-width)
        up = (q_int - tp_a + SPLIT_ROUNDOFF * np.finfo(float).eps * (q_int + tp_a)) / chord
        up = np.minimum(np.maximum(up, 0.0), q_int)
        down = q_int - up
    on_points[1:] += up
    on_points[:-1] += down
    top_finite = min(math.exp(float(eps[-1] + log_p_top[0])), float(q_top[0]))
    on_points[-1] += top_finite
    on_points[0] += q_below
    infinity = max(float(q_top[0]) - top_finite, 0.0)
    # Conservation: the split keeps every cell's Q-mass, up to round-off. Where it cannot (a grid step past
    # log(max float) = 709.8 overflows e^h: the mass would vanish, and every delta read from it would fall), the
    # Q-mass not on a finite atom goes to +infinity: the pessimistic PLD stays a sound upper bound.
    bad = ~np.isfinite(on_points)
    if bad.any():
        on_points[bad] = 0.0
    kept = float(on_points.sum()) + infinity
    cells = float(q_int.sum() + q_top[0] + q_below)
    if not math.isfinite(cells):  # (cells' masses not a number: every bit of mass unknown, all of it at +infinity)
        infinity = 1.0
    elif not math.isfinite(kept) or cells - kept > 1e-12:
        infinity = min(infinity + max(cells - (kept if math.isfinite(kept) else 0.0), 0.0), 1.0)
    masses = np.zeros(i_hi - i_lo + 1)
    masses[idx - i_lo] = on_points
    return DiscretePld(h=h, lo=i_lo, masses=masses, infinity_mass=infinity, capped=capped, offset=offset)


#: The connect-the-dots split (:func:`_step_pld`) moves this many ulp of each interval's Q + e^{eps_a} P up to the
#: interval's top, over the chord 1 - e^{-w}, to cover the round-off of the difference Q - e^{eps_a} P. That
#: round-off is not a few ulp of Q: Q and P are themselves differences of normal tails, so their error scales with
#: the tails, not the cell. Measured against mpmath (60 digits) on the cells of sigma 1 / q 1e-6 / h 3e-8 and
#: sigma 0.8 / q 1e-5 / h 1e-7, it reached 60 ulp of Q + e^{eps_a} P (8 ulp, the first choice, fell short in about a
#: quarter of the cells); 128 leaves a factor 2 over what was seen. Each ulp moved costs at most one grid step of
#: loss on that much mass (the margin is clipped to Q: at worst the cell rounds up whole, the plain pessimistic
#: estimate), so a generous margin costs no visible tightness. This covers the measured round-off; it is not a
#: proof for every cell of every pair.
SPLIT_ROUNDOFF = 128.0
#: Per-step lattices up to this many points are used whole; longer ones keep every point only where the mass is
#: (see :func:`_lattice`).
LATTICE_FULL = 8192
#: Mass (relative to the per-step tail budget INF_BUDGET / T, i.e. 1e-6 / T in all) that _lattice may split across
#: wide intervals. Not a soundness matter (any split is sound); it only keeps the blur far below the bracket.
LATTICE_BUDGET = 1e8


def _lattice(i_lo: int, i_hi: int, q_of, budget: float) -> np.ndarray:
    """The grid indices the per-step discretisation uses, a subset of i_lo..i_hi with both ends.

    Short lattices are used whole. On a long one (small h against a wide loss range: large sigma with small q, or
    k > 1, where the loss reaches tens of nats with vanishing mass), blocks of M = 2^m points whose Q-mass is below
    budget / (number of blocks) keep only their end points: their mass is split between two grid points M h
    apart, which is as sound as any connect-the-dots split (and garbled the same way for the lower end); the total
    mass treated this coarsely is below ``budget``, the size of what the tail cut already sends to infinity.
    ``q_of(idx)`` returns the Q-masses of the intervals between consecutive indices.
    """
    n = i_hi - i_lo + 1
    if n <= LATTICE_FULL:
        return np.arange(i_lo, i_hi + 1)
    block = 1 << max(1, math.ceil(math.log2(n / (LATTICE_FULL / 4))))
    coarse = np.arange(i_lo, i_hi + 1, block)
    if coarse[-1] != i_hi:
        coarse = np.append(coarse, i_hi)
    mass = q_of(coarse)
    busy = mass > budget / mass.size
    keep = np.zeros(n, dtype=bool)
    spread = np.repeat(busy, block)[:n]  # block j covers indices coarse[j] .. coarse[j + 1] - 1
    keep[:spread.size] = spread
    keep[coarse - i_lo] = True
    return i_lo + np.nonzero(keep)[0]


def _x_at(pair: StepPair, losses: np.ndarray) -> np.ndarray:
    """x_of_loss with the infinite ends mapped to the ends of the observation's support."""
    losses = np.asarray(losses, dtype=float)
    out = np.empty_like(losses)
    finite = np.isfinite(losses)
    if finite.any():
        out[finite] = pair.x_of_loss(losses[finite])
    out[losses == math.inf] = math.inf
    out[losses == -math.inf] = pair.lower
    return out


def _cell_masses(pair: StepPair, direction: str, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Q-mass, log P-mass) of the direction's loss intervals (a, b] (a may be -inf, b +inf). ``"add"``: the
    loss is -L and the measures swap (its Q is P)."""
    if direction == "remove":
        xa, xb = _x_at(pair, a), _x_at(pair, b)
        return pair.masses(xa, xb)[1], pair.log_p_masses(xa, xb)
    # -L in (a, b]  <=>  L in [-b, -a)  <=>  x in [x(-b), x(-a))
    p, q = pair.masses(_x_at(pair, -np.asarray(b, dtype=float)), _x_at(pair, -np.asarray(a, dtype=float)))
    with np.errstate(divide="ignore"):
        return p, np.log(np.maximum(q, 0.0))


def _contiguous_cells(pair: StepPair, direction: str, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_cell_masses` of the cells between consecutive loss boundaries ``bounds`` (ascending). Their
    x-boundaries are made monotone first, so the cells partition the observations exactly: round-off in
    ``x_of_loss`` (or boundaries out of order) can empty a cell but never count an observation twice."""
    if direction == "remove":
        xs = np.maximum.accumulate(_x_at(pair, bounds))
        _, q, log_p = pair.cell_masses(xs)
        return q, log_p
    xs = np.maximum.accumulate(_x_at(pair, -np.asarray(bounds, dtype=float)[::-1]))  # ascending x: descending -L
    p, q, _ = pair.cell_masses(xs, log_p=False)
    with np.errstate(divide="ignore"):
        return p[::-1], np.log(np.maximum(q, 0.0))[::-1]


def _pile_cell(pair: StepPair, direction: str, h: float, end: float) -> tuple[float, float]:
    """The pile of mass at the end ``end`` of the loss' support where it piles up (log(1 - q)^k for the remove
    direction, its negative for the add direction), as one cell: its boundary c and its own loss l_c, with c
    h/2 away from l_c so that the midpoint cells above it (below it for the add direction) start centred on
    their grid points l_c + i h (see :func:`_garbled_step`). Any c gives a sound garbling; this one a tight one."""
    s = 1.0 if direction == "remove" else -1.0  # remove: the pile is (-inf, c], c > end; add: (c, inf), c < end

    def own_loss(c: np.ndarray) -> np.ndarray:
        if pair.relaxed or not np.all(np.isfinite(c)):
            ends = np.full(c.shape, s * -math.inf)
            q, lp = _cell_masses(pair, direction, *((ends, c) if s > 0 else (c, ends)))
        else:
            q, lp = _pile_masses(pair, direction, c)
        with np.errstate(divide="ignore", invalid="ignore"):
            loss = np.log(q) - lp
        return np.where(np.isfinite(loss), loss, np.nan)  # an empty pile (underflow) has no loss: never a hit

    # The distance s (c - l_c) grows from 0 (c at the end) to infinity (the pile is everything, l_c = 0): scan for
    # the first c where it reaches h/2 on geometric steps of 2^(1/8) from h/32 to 2^60 h (the first PILE_SCAN_FIRST
    # of them in one call, the rest in another only if none of those reached it: each c's loss is its own, so the hit
    # is the same), then refine inside the step that crossed it (64 positions); the boundary's own loss is the
    # refinement's.
    c = end + s * h * PILE_SCAN
    with np.errstate(invalid="ignore"):
        hit = np.nonzero(s * (c[:PILE_SCAN_FIRST] - own_loss(c[:PILE_SCAN_FIRST])) >= h / 2)[0]
        if not hit.size and c.size > PILE_SCAN_FIRST:
            rest = c[PILE_SCAN_FIRST:]
            hit = PILE_SCAN_FIRST + np.nonzero(s * (rest - own_loss(rest)) >= h / 2)[0]
    if not hit.size:
        raise PileBoundaryError(f"no pile boundary found for {pair} (direction {direction})")
    j = int(hit[0])
    start = end if j == 0 else float(c[j - 1])
    c = start + (float(c[j]) - start) * np.linspace(0.0, 1.0, 65)[1:]
    loss = own_loss(c)
    with np.errstate(invalid="ignore"):
        hit = np.nonzero(s * (c - loss) >= h / 2)[0]
    i = int(hit[0]) if hit.size else c.size - 1
    return float(c[i]), float(loss[i])


def _pile_masses(pair: StepPair, direction: str, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_cell_masses` of the worst-case pair's pile cells, (-inf, c] for the remove direction and (c, inf) for
    the add direction (c finite), equal to it bit for bit at a third of the numpy calls (each costs ~1 us on the few
    hundred cells :func:`_pile_cell` scans): both cells are {X <= x} (x = x_of_loss(c), resp. x_of_loss(-c)), whose
    normal masses ndtr((x - j) / sigma) are what :func:`_mass_normal` returns for (-inf, x] (its lower tail minus
    ndtr(-inf) = 0), and whose log P-mass log_ndtr(x / sigma) + 0 is what :func:`_log_mass_normal` returns (its
    smaller tail is log_ndtr(-inf) = -inf); the mixture's Q-mass is summed over the same components in the same
    order as :meth:`StepPair.masses`."""
    sigma = pair.noise_multiplier
    x = pair.x_of_loss(c if direction == "remove" else -c)
    p = special.ndtr((x - 0.0) / sigma)
    qm = None
    for j, wj in enumerate(np.exp(pair.log_weights)):
        if wj > 0:
            term = wj * (p if j == 0 else special.ndtr((x - float(j)) / sigma))
            qm = term if qm is None else qm + term
    if qm is None:
        qm = np.zeros_like(p)
    if direction == "remove":
        return qm, special.log_ndtr((x - 0.0) / sigma) + 0.0
    with np.errstate(divide="ignore"):
        return p, np.log(np.maximum(qm, 0.0))


#: Where :func:`_pile_cell` looks for the pile's boundary, in grid steps from the end of the support.
PILE_SCAN = np.exp2(np.arange(-40, 481) / 8.0)
#: ... the first this many of them first (to 2^20 h: from sigma 0.05 to 50, q 1e-6 to 0.99, T 10 to 1e5, on grids
#: 8x coarser to 40x finer than initial_h_run's, the hit was at most the 174th), which costs a third of the whole scan.
PILE_SCAN_FIRST = 200


@functools.lru_cache(maxsize=64)
def _tail_loss(pair: StepPair, budget: float) -> float:
    """The per-step loss at the tail cut: L(x) at the x beyond which Q's mass is below ``budget``
    (:meth:`StepPair.x_tail`). Cached (both ends of a bracket cut there; emptied by :func:`clear_caches`)."""
    return float(pair.loss(np.array([pair.x_tail(budget)]))[0])


def _check_points(points: int, max_points: int | None) -> None:
    """Refuse a per-step grid of more than ``max_points`` points (see :func:`_step_pld`)."""
    if max_points is not None and points > max_points:
        raise WindowTooLargeError(
            f"the per-step privacy loss needs {points} grid points, and its composition an FFT window at least as "
            f"long (limit {max_points})")


def _garbled_step(pair: StepPair, h: float, direction: str, inf_budget: float, max_points: int | None = None
                  ) -> DiscretePld:
    """One step's PLD garbled onto a grid: a pair *less* informative than the continuous one (the optimistic,
    lower end of the bracket; every power and delta read from it, and from its compositions, is a sound lower
    bound).

    Cells. The loss axis is cut into cells centred on the grid points E_j (boundaries at the midpoints
    (E_j + E_{j+1}) / 2): cell j holds the observations whose loss lies in it, with Q-mass q_j and P-mass p_j, and
    its own loss log(q_j / p_j) is E_j + O(h^2). Where the mass piles up (the end of the support at log(1 - q)^k;
    :func:`_pile_cell`) one cell holds the pile and the grid is anchored at the pile's own loss, so that atom is
    exact. Balance. Each cell then takes a small fraction (O(h)) of the same cell's P- and Q-mass from a
    neighbour, from the one below when its loss is above E_j and from the one above when it is below, so that the
    merged atom's loss is E_j (:func:`_balance_cells`). Cutting cells into fractions and merging pieces is a
    Markov kernel on the observation (post-processing); what is left unbalanced is rounded in the safe direction,
    Q-mass e^{E_j} P (never more than the merged atom's Q-mass, never less P-mass than it has). The result
    (Q' <= a post-processing of Q, P' >= the same post-processing of P, as measures) has power max{Q'(E) : P'(E)
    <= alpha} and delta'(eps) at most the continuous pair's, and so has every composition (products of such
    measures keep both inequalities).

    Why balance exactly: rounding each cell's loss down to its grid point instead would inflate P by
    sum_j q_j (l_j - E_j) per step, a bias that compounds over T steps (T = 53000 at sigma 1.66, q 1/106 turned
    it into 0.2 nats); balanced atoms keep both total masses, and the gap to the continuous pair is second order in
    h (only the mixing inside each cell is lost, as for connect-the-dots). Cells centred on the grid points keep the
    balancing fractions O(h): a chain of exactly balanced cells started at the pile's grid point (the construction
    used before) pairs every other cell with nothing and loses as much as a grid twice as coarse.
    """
    if direction == "remove":
        end = pair.min_loss
        hi_loss = _tail_loss(pair, inf_budget)
        anchored = math.isfinite(end)
        if anchored:
            pile_end, offset = _pile_cell(pair, direction, h, end)
            i_lo = 0
        else:  # q = 1 worst case: the loss is Gaussian, no pile
            offset = 0.0
            i_lo = math.floor(_left_cut(pair, inf_budget, direction) / h)
        i_cap = math.floor((LOSS_CAP - offset) / h)
        capped = math.ceil((hi_loss - offset) / h) > i_cap
        i_hi = max(min(math.ceil((hi_loss - offset) / h), i_cap), i_lo + 1)
        _check_points(i_hi - i_lo + 1, max_points)
    else:
        end = -pair.min_loss
        if not math.isfinite(end):
            raise NumericalError("the add-direction PLD needs q < 1 or k = 1")  # q = 1 uses symmetry instead
        anchored, capped = True, False  # the add-direction loss is at most -min_loss
        pile_end, offset = _pile_cell(pair, direction, h, end)
        i_lo = min(math.floor((_left_cut(pair, inf_budget, direction) - offset) / h), -1)
        i_hi = 0
        _check_points(i_hi - i_lo + 1, max_points)

    def q_of(idx: np.ndarray) -> np.ndarray:
        return _contiguous_cells(pair, direction, offset + h * idx)[0]

    idx = _lattice(i_lo, i_hi, q_of, LATTICE_BUDGET * inf_budget)
    grid = offset + h * idx
    bounds = np.empty(grid.size + 1)
    bounds[0], bounds[-1] = -math.inf, math.inf
    bounds[1:-1] = 0.5 * (grid[:-1] + grid[1:])
    if anchored:
        bounds[1 if direction == "remove" else -2] = pile_end
    q, log_p = _contiguous_cells(pair, direction, bounds)
    masses = np.zeros(i_hi - i_lo + 1)
    masses[idx - i_lo] = _balance_cells(grid, q, log_p)
    return DiscretePld(h=h, lo=i_lo, masses=masses, infinity_mass=0.0, capped=capped, offset=offset,
                       optimistic=True)


#: Most rounds of the balancing fixed point in :func:`_balance_cells` (it stops when the shares settle to 1e-12:
#: what a share is still off by leaves an atom unbalanced by that fraction of its excess, settled safely below):
#: each round multiplies the remaining error of the fractions by one more fraction, O(h) in the bulk and up to ~0.3
#: next to the pile, so a handful of rounds suffice; where fractions near 1 keep it from settling, the leftovers are
#: settled in the safe direction anyway.
BALANCE_ROUNDS = 60
#: A merged atom whose excess q - e^E p is negative by at most this fraction of its Q-mass counts as balanced: the
#: excess itself is formed with a relative round-off of a few ulp (the bracket is exact up to floating point, as
#: the FFT's noise_guard says); without it a pile sitting exactly on its grid point could be dropped for -1e-19.
BALANCE_TOLERANCE = 1e-12


def _balance_shares(c_below: np.ndarray, c_above: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shares (keep, up, down) of the balancing fixed point of :func:`_balance_cells`: cell j keeps keep_j,
    gives up_j to cell j + 1 and down_j to cell j - 1, with up_j = keep_{j+1} c_below_{j+1} and down_j = keep_{j-1}
    c_above_{j-1} (pro rata where they ask for more than the cell holds), keep_j = 1 - up_j - down_j."""
    n = c_below.size
    keep = np.ones(n)
    up = np.zeros(n)  # up[j]: fraction of cell j merged into j + 1
    down = np.zeros(n)  # down[j]: fraction of cell j merged into j - 1
    # Jacobi rounds, in place, on the window [a, b) of cells whose shares still move: cell j's share depends on its
    # neighbours', so once a round leaves every cell outside [first - 1, last + 2) of the cells that moved by
    # more than 1e-12, the next round recomputes only that window (the bulk, where the fractions are O(h), settles
    # in a few rounds; the cells next to the pile, fractions up to ~0.3, take the rest). Each cell's keep, up and
    # down are always recomputed together, so keep + up + down = 1 (or keep = 0 with up + down = 1) holds for every
    # cell throughout: the pieces below partition each cell whatever round the iteration stops at.
    a, b = 0, n
    for done in range(BALANCE_ROUNDS):
        if b - a <= BALANCE_SCALAR:
            _balance_rounds_scalar(keep, up, down, c_below, c_above, a, b, BALANCE_ROUNDS - done)
            break
        top = min(b, n - 1)  # up[j] = keep[j + 1] c_below[j + 1] for j < n - 1
        if top > a:
            np.multiply(keep[a + 1:top + 1], c_below[a + 1:top + 1], out=up[a:top])
        start = max(a, 1)  # down[j] = keep[j - 1] c_above[j - 1] for j >= 1
        if b > start:
            np.multiply(keep[start - 1:b - 1], c_above[start - 1:b - 1], out=down[start:b])
        # (in place, on views of the window: the same IEEE operations as up[over] /= given[over] and
        # np.maximum(1.0 - up - down, 0.0), a third fewer temporaries and calls)
        u, d = up[a:b], down[a:b]
        given = u + d
        over = given > 1.0
        if over.any():
            np.divide(u, given, out=u, where=over)
            np.divide(d, given, out=d, where=over)
        new_keep = np.subtract(1.0, u, out=given)
        new_keep -= d
        np.maximum(new_keep, 0.0, out=new_keep)
        old = keep[a:b]
        moved = np.subtract(new_keep, old)
        np.abs(moved, out=moved)
        moving = np.flatnonzero(~(moved <= 1e-12))  # (NaN counts as moving, as before)
        old[...] = new_keep
        if not moving.size:
            break
        a, b = max(a + int(moving[0]) - 1, 0), min(a + int(moving[-1]) + 2, n)
    return keep, up, down


#: :func:`_balance_shares` runs its rounds on Python floats once the window of moving cells is this short: a numpy
#: round costs ~10 us whatever its size, and the cells next to the pile take 10-20 rounds on a few dozen cells
#: (sigma 5, q 0.1: 26 rounds, the last 15 on 48 cells or fewer).
BALANCE_SCALAR = 48


def _balance_rounds_scalar(keep: np.ndarray, up: np.ndarray, down: np.ndarray, c_below: np.ndarray,
                           c_above: np.ndarray, a: int, b: int, rounds: int) -> None:
    """The rest of :func:`_balance_shares`' rounds (at most ``rounds``, from the window [a, b)), in place, on Python
    floats: the same IEEE operations on the same numbers in the same order as its numpy rounds, so the shares are
    equal to theirs bit for bit (a test checks it). The window moves by at most one cell a side per round: lists of
    the window and that margin are enough."""
    n = keep.size
    r0, r1 = max(a - rounds, 0), min(b + rounds, n)
    kl, ul, dl = keep[r0:r1].tolist(), up[r0:r1].tolist(), down[r0:r1].tolist()
    cb, ca = c_below[r0:r1].tolist(), c_above[r0:r1].tolist()
    last_up = n - 1 - r0  # (list index of the last cell: it has no up; list index 0 with r0 = 0 has no down)
    for _ in range(rounds):
        i0, i1 = a - r0, b - r0
        # (Jacobi: every new share from the last round's keep. The loop overwrites kl[j] after reading kl[j + 1]
        # (not yet overwritten) and keeps the last round's kl[j - 1] in ``before``.)
        first = last = -1
        before = kl[i0 - 1] if i0 > 0 else 0.0
        for j in range(i0, i1):
            u = kl[j + 1] * cb[j + 1] if j < last_up else ul[j]
            d = before * ca[j - 1] if j + r0 >= 1 else dl[j]
            before = kl[j]
            given = u + d
            if given > 1.0:
                u /= given
                d /= given
            k = 1.0 - u - d
            if k < 0.0:  # (np.maximum(k, 0.0): NaN stays NaN)
                k = 0.0
            ul[j], dl[j] = u, d
            if not abs(k - before) <= 1e-12:  # (NaN counts as moving)
                if first < 0:
                    first = j - i0
                last = j - i0
            kl[j] = k
        if first < 0:
            break
        a, b = max(a + first - 1, 0), min(a + last + 2, n)
    keep[r0:r1], up[r0:r1], down[r0:r1] = kl, ul, dl


def _balance_cells(grid: np.ndarray, q: np.ndarray, log_p: np.ndarray, slack: np.ndarray | float = 0.0
                   ) -> np.ndarray:
    """Q-masses at the grid points E_j of the balanced garbling of cells (q_j, log p_j), cell j around E_j.

    With excess x_j = q_j - e^{E_j} p_j (> 0: the cell's loss is above E_j), a cell with x_j > 0 takes the fraction
    c_j r_j of the cell below, c_j = x_j / (e^{E_j} p_{j-1} - q_{j-1}) (each unit of it lowers the excess by that
    much), and one with x_j < 0 the fraction -x_j r_j / (q_{j+1} - e^{E_j} p_{j+1}) of the cell above, r_j being
    the share of cell j it keeps itself. The shares depend on the gifts, so the fractions are a fixed point, found
    by at most ``BALANCE_ROUNDS`` rounds (the fractions are O(h), so it settles in a few); a cell asked for more than
    it holds gives it pro rata.

    What is left unbalanced is settled in the safe direction. A merged atom whose loss is >= E_j keeps its Q-mass
    and is given P-mass Q e^{-E_j} >= its own (the P-measure may only grow). One whose loss is below E_j cannot
    sit at E_j with its Q-mass: just enough of its pieces with loss below E_j is dropped (both masses: dropping
    observations is a sub-Markov kernel, and any test of the reduced pair is a test of the original one with the
    same power and no more size) to bring its loss to E_j. Products e^{E} p are formed as exp(E + log p), so
    nothing overflows. ``slack``: an excess this far below zero (per cell, absolute) still counts as balanced,
    besides ``BALANCE_TOLERANCE``: the round-off guard the caller already took off its cells' masses.
    """
    n = grid.size
    # (Differences, quotients and products formed into preallocated arrays where the plain form took a temporary
    # and a copy: the same IEEE operations on the same numbers, 17% less time at ~1200 cells.)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        own = np.exp(grid + log_p)  # e^{E_j} p_j
        from_below = np.zeros(n)  # e^{E_j} p_{j-1}
        from_below[1:] = np.exp(grid[1:] + log_p[:-1])
        from_above = np.zeros(n)  # e^{E_j} p_{j+1}
        from_above[:-1] = np.exp(grid[:-1] + log_p[1:])
        excess = np.where(q > 0, q - own, 0.0)
        lowers = np.zeros(n)  # per unit of cell j-1 merged into j: how much it lowers the excess
        np.subtract(from_below[1:], q[:-1], out=lowers[1:])
        raises = np.zeros(n)  # per unit of cell j+1 merged into j: how much it raises the excess
        np.subtract(q[1:], from_above[:-1], out=raises[:-1])
        take_below = (excess > 0) & (lowers > 0)
        take_above = (excess < 0) & (raises > 0)
        c_below = np.zeros(n)
        np.divide(excess, lowers, out=c_below, where=take_below)
        c_above = np.zeros(n)
        np.divide(-excess, raises, out=c_above, where=take_above)
    keep, up, down = _balance_shares(c_below, c_above)
    # The merged atom j: keep_j of cell j, up_{j-1} of cell j-1, down_{j+1} of cell j+1; each piece's Q-mass and
    # its excess at E_j (q - e^{E_j} p, negative for pieces with loss below E_j).
    q0, x0 = keep * q, keep * excess
    q1, x1, q2, x2 = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    np.multiply(up[:-1], q[:-1], out=q1[1:])
    with np.errstate(invalid="ignore"):  # 0 * inf (no share of an unbounded excess): NaN, read as 0 below
        np.multiply(-up[:-1], lowers[1:], out=x1[1:])
        np.multiply(down[1:], q[1:], out=q2[:-1])
        np.multiply(down[1:], raises[:-1], out=x2[:-1])
    for x in (x0, x1, x2):
        x[np.isnan(x)] = 0.0
    merged_q = q0 + q1
    merged_q += q2
    merged_x = x0 + x1
    merged_x += x2
    # Loss below E_j (beyond round-off, BALANCE_TOLERANCE): drop the fraction f of its low-loss pieces that brings
    # it to E_j.
    short = merged_x < -(BALANCE_TOLERANCE * merged_q + slack)
    if short.any():
        low_x = np.where(x0 < 0, -x0, 0.0) + np.where(x1 < 0, -x1, 0.0) + np.where(x2 < 0, -x2, 0.0)
        low_q = np.where(x0 < 0, q0, 0.0) + np.where(x1 < 0, q1, 0.0) + np.where(x2 < 0, q2, 0.0)
        f = np.minimum(-merged_x / np.where(low_x > 0, low_x, 1.0), 1.0)
        merged_q = np.where(short, merged_q - f * low_q, merged_q)
    return np.maximum(merged_q, 0.0)


def _left_cut(pair: StepPair, budget: float, direction: str) -> float:
    """A loss below which the measure of the direction has mass <= budget (cutting there is sound anyway)."""
    if direction == "add":
        # loss' = -L(x) < c exactly when x > x(-c): P's upper tail beyond sigma Phibar^{-1}(budget) (twice for |X|).
        share = budget / 2 if pair.relaxed else budget
        x_cut = pair.noise_multiplier * -float(special.ndtri(share))
        return -float(pair.loss(np.array([x_cut]))[0])
    lo = -1.0
    while True:
        if direction == "remove":
            x = pair.x_of_loss(np.array([lo]))
            _, mass = pair.masses(np.array([pair.lower]), x)
        else:
            x = pair.x_of_loss(np.array([-lo]))
            mass, _ = pair.masses(x, np.array([math.inf]))
        if mass[0] <= budget or lo < -1e6:
            return lo
        lo *= 1.5


# -- composition ------------------------------------------------------------------------------------------------------

#: The Chernoff optimum is located on a copy of each per-step PLD summed into at most about this many bins (see
#: :func:`_mgf_bins`); the bound itself is then evaluated with the exact discrete MGF (see :func:`_chernoff_ends`).
MGF_BINS = 512


def _mgf_bins(pld: DiscretePld) -> tuple[np.ndarray, np.ndarray]:
    """The per-step PLD's atoms grouped into bins of consecutive atoms, each bin's mass at its mean loss: (log mass,
    mean loss of each bin), for :func:`_log_mgf_binned`. A bin ends every (grid length / (MGF_BINS / 2)) grid
    points and every 1 / (MGF_BINS / 2) of the mass (at most MGF_BINS + 1 bins); up to MGF_BINS atoms stay as they are.

    Only the location of the Chernoff optimum depends on this copy (each end is then the exact Chernoff bound at
    the lambdas found, sound whichever they are). At the bins' mean losses the copy has the exact mean and loses
    only the spread inside each bin; the mass-share bins resolve a bulk narrower than one equal-width bin. Bins of
    equal width each placed at its end in the direction of lambda (the copy used before) moved a bulk within 5e-3
    nats of the pile by up to a bin's width (0.1 nats) at every step, T times over: at sigma 1, q 1e-4, k 10,
    T 1e6 the optimum went to the largest lambda and the window's lower end to -278 nats where -10.3 holds (an FFT
    window 9x longer than needed, 2.2 s of a 2.5 s bound)."""
    pos, m, losses, log_m = pld._finite_atoms
    if not pos.size:  # no finite mass (everything at +infinity, or dropped)
        return np.full(1, -math.inf), np.full(1, pld.offset)
    if pos.size <= MGF_BINS:
        return log_m, losses
    half = MGF_BINS // 2
    width = -(-pld.masses.size // half)
    below = np.cumsum(m)
    below = (below - m) / below[-1]  # the share of the mass below each atom
    share_bin = np.minimum((below * half).astype(np.int64), half - 1)
    starts = np.flatnonzero(np.concatenate([[True], (np.diff(pos // width) != 0) | (np.diff(share_bin) != 0)]))
    sums = np.add.reduceat(m, starts)
    # Each bin's mean loss, measured from its lowest atom (no cancellation against a large offset).
    first = losses[starts]
    rel = losses - np.repeat(first, np.diff(np.append(starts, pos.size)))
    return np.log(sums), first + np.add.reduceat(m * rel, starts) / sums


def _log_mgf_binned(pld: DiscretePld, lams: np.ndarray, bins: tuple | None = None) -> np.ndarray:
    """log E[e^{lam L}] at each (signed) lam of the binned copy of the discrete PLD (:func:`_mgf_bins`: each bin's
    mass at its mean loss, so at most the exact MGF, by Jensen, and close to it where the bins are narrow against
    1 / |lam|), used only to locate the Chernoff optimum. ``bins``: :func:`_mgf_bins` of ``pld``, when already
    formed."""
    log_m, at = _mgf_bins(pld) if bins is None else bins
    return _logsumexp_rows(log_m[None, :] + lams[:, None] * at[None, :])


def _log_mgf(pld: DiscretePld, lams: np.ndarray) -> np.ndarray:
    """log E[e^{lam L}] over the finite atoms of a discrete PLD at each lam (exact)."""
    pos, _, losses, log_m = pld._finite_atoms  # (a sparse per-step lattice: only its atoms' losses are formed)
    if not pos.size:
        return np.full(lams.shape, -math.inf)  # no finite mass (everything at +infinity, or dropped)
    return _logsumexp_rows(log_m[None, :] + lams[:, None] * losses[None, :])


def _logsumexp_rows(e: np.ndarray) -> np.ndarray:
    top = e.max(axis=1)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(e - safe[:, None]).sum(axis=1)) + safe


#: The Chernoff parameters searched (:func:`_chernoff_ends`): from 1e-7 (the optimum is about sqrt(2 log(1/TAIL_BOUND))
#: / (composed std), down to ~1e-5 for T = 1e6) to 1e3, a factor ~2.2 apart; the optimum is then refined by x1.4 with
#: exact MGFs.
CHERNOFF_LAMBDAS = np.geomspace(1e-7, 1e3, 31)
#: The Chernoff search from a start first tries this many of ``CHERNOFF_LAMBDAS`` below and above it.
CHERNOFF_REACH = (2, 2)
#: ... and otherwise every this many of them (0, 3, ..., 30), then those next to the best.
CHERNOFF_STRIDE = 3


def _chernoff_ends(parts, start: tuple[int, int] | None = None) -> tuple[float, float, tuple[int, int]]:
    """Losses (lo, hi) with (composed mass below lo) <= TAIL_BOUND and (composed mass above hi) <= TAIL_BOUND, by
    Chernoff: P(S > u) <= exp(sum_i T_i K_i(lam) - lam u) for lam > 0 (and the mirror image, lam < 0, for the left
    tail), over the phases i of the schedule. The minimising lam of each side is located on binned copies of the
    per-step PLDs (:func:`_log_mgf_binned`), then each bound is evaluated with their exact discrete MGFs near it.
    Both sides are evaluated in one pass (rows of one array: each side's numbers are those of a pass of its own).

    ``start``: indices into ``CHERNOFF_LAMBDAS`` (right side, left side) where the search begins (e.g. those a
    composition of a nearly equal law found); returned with the ends as the indices this search found. Where it
    begins changes only how many lambdas are tried, never the lambda found (below)."""
    log_tau = math.log(TAIL_BOUND)
    lams = CHERNOFF_LAMBDAS
    bins = [_mgf_bins(pld) for pld, _ in parts]

    def ends(hi_idx: np.ndarray, lo_idx: np.ndarray) -> tuple[int, int]:
        # right: u(lam) = (sum T K(lam) - log tau) / lam, lam > 0; left: the same with -lam, mirrored
        signed = np.concatenate([lams[hi_idx], -lams[lo_idx]])
        total = sum(steps * _log_mgf_binned(pld, signed, b) for (pld, steps), b in zip(parts, bins, strict=True))
        n = hi_idx.size
        return (int(hi_idx[int(np.argmin((total[:n] - log_tau) / lams[hi_idx]))]),
                int(lo_idx[int(np.argmin((total[n:] - log_tau) / lams[lo_idx]))]))

    # Each side's u is unimodal in lam: K is convex with K(0) <= 0 (a log-MGF; the binned copy is one too, of a fixed
    # law), so lam K' - K - log tau, the sign of u', only grows. The minimum over all 31 lambdas is
    # therefore found from any range of them that holds it inside: a lambda whose u is at most its neighbours' is the
    # minimum (the first of equal ones, as argmin over all 31 takes). With a ``start``, CHERNOFF_REACH lambdas below
    # and above it are tried first; a side without one, or whose minimum lies at the edge of that range, is searched
    # on every CHERNOFF_STRIDE-th lambda and then next to the best of those.
    every = np.arange(lams.size)
    found: tuple[int, int] | None = None
    inside = [False, False]
    if start is not None:
        near = [np.arange(max(c - CHERNOFF_REACH[0], 0), min(c + CHERNOFF_REACH[1] + 1, lams.size))
                for c in (min(max(c, 0), lams.size - 1) for c in start)]
        found = ends(*near)
        inside = [i in (0, lams.size - 1) or r[0] < i < r[-1] for i, r in zip(found, near, strict=True)]
    if not all(inside):
        coarse = every[::CHERNOFF_STRIDE]
        best = ends(coarse, coarse)
        fine = [np.arange(max(c - CHERNOFF_STRIDE + 1, 0), min(c + CHERNOFF_STRIDE, lams.size)) for c in best]
        searched = ends(*fine)
        found = tuple(f if ok else g for f, g, ok in zip(found or searched, searched, inside, strict=True))
    return (*_chernoff_window(parts, found), found)


def _chernoff_window(parts, found: tuple[int, int]) -> tuple[float, float]:
    """The Chernoff ends (lo, hi) of :func:`_chernoff_ends` at the located lambdas ``found`` (indices into
    ``CHERNOFF_LAMBDAS``, right and left side): each side's bound with the exact discrete MGFs at the lambda and
    1.4 times either way, the best of the three. A Chernoff bound holds at any lambda, so the ends are sound
    whichever ``found`` is; the located ones make them tight."""
    log_tau = math.log(TAIL_BOUND)
    i_hi, i_lo = found
    best_hi, best_lo = float(CHERNOFF_LAMBDAS[i_hi]), float(CHERNOFF_LAMBDAS[i_lo])
    near_hi = np.array([best_hi / 1.4, best_hi, best_hi * 1.4])
    near_lo = np.array([best_lo / 1.4, best_lo, best_lo * 1.4])
    k = sum(steps * _log_mgf(pld, np.concatenate([near_hi, -near_lo])) for pld, steps in parts)
    hi = float(np.min((k[:3] - log_tau) / near_hi))
    lo = -float(np.min((k[3:] - log_tau) / near_lo))
    return lo, hi


def _spectrum_power(z: np.ndarray, steps: int, masses: np.ndarray | None = None, width: int | None = None, *,
                    overwrite: bool = False) -> np.ndarray:
    """:func:`_spectrum_power_route`'s power alone."""
    return _spectrum_power_route(z, steps, masses, width, overwrite=overwrite)[0]


def _spectrum_power_route(z: np.ndarray, steps: int, masses: np.ndarray | None = None, width: int | None = None, *,
                          overwrite: bool = False, accurate: bool = False) -> tuple[np.ndarray, bool, float]:
    """z ** steps, elementwise, computed only where |z|^steps > e^-700: a mass distribution's spectrum has |z| <= 1
    with equality at frequency 0, so for long runs almost every frequency's power underflows to nothing (the
    composed law is smooth on the grid's scale).

    The power is taken by repeated squaring (:func:`_int_power`), not numpy's ``z ** steps``: numpy multiplies out
    only exponents below 100 and takes every larger one as exp(steps log z), a complex log and exp per frequency, 4-5
    times the cost of the 2 log2(steps) complex products (about half of a 1.2e7-point composition at T = 300, where
    a spike-like per-step law keeps every frequency live). Both round as about steps ulp relative (each squaring
    doubles the relative error carried in; the log's error is multiplied by steps): the FFT round-off the lower end
    guards against (``noise_guard``, measured on each composition) is of the same size either way.

    ``masses``: the (folded) sequence z is the real FFT of, of length ``width`` (zero-padded where shorter; by
    default its own); where given, a long run's live frequencies are taken by :func:`_accurate_power` instead (about
    steps / 1000 times less round-off), where that is cheap. ``overwrite``: z may be overwritten (a caller's
    temporary): where every frequency is live (short runs of spike-like steps) the power is taken in it, without the
    zeroed copy and the gathered one (the same products in the same order: the same numbers bit for bit; at a window
    of 1e7 points each copy is 80 MB).

    ``accurate``: take :func:`_accurate_power` wherever ``masses`` are given, at any steps and up to
    ``ACCURATE_FORCED_SHARE`` terms per point (where the plain route's round-off is known to matter:
    :meth:`DiscretePld.roundoff`). Returns (the power, True where it was taken the plain way, an estimate of its
    relative round-off in ulps: steps + 2 log2(steps) the plain way, :func:`_accurate_ulps` the accurate one)."""
    plain_ulps = steps + 2.0 * math.log2(max(steps, 1))
    if steps == 1:
        return z, False, plain_ulps
    live = (z.real ** 2 + z.imag ** 2) > math.exp(-1400.0 / steps)
    powered = None
    if masses is not None and (accurate or steps >= ACCURATE_STEPS):
        error: list = []
        powered = _accurate_power(masses, np.flatnonzero(live), steps, forced=accurate, error=error,
                                  n=masses.size if width is None else max(width, masses.size))
        if powered is not None:
            out = np.zeros_like(z)
            out[live] = powered
            return out, False, (error[0] if error else 0.0)  # (no live frequency: nothing to err)
    if overwrite and live.all():
        return _int_power(z, steps, overwrite=True), True, plain_ulps
    out = np.zeros_like(z)
    out[live] = _int_power(z[live], steps)
    return out, True, plain_ulps


#: :func:`_spectrum_power` takes the live frequencies of runs of at least this many steps by :func:`_accurate_power`
#: (False: always from the FFT, the plain route).
ACCURATE_SPECTRUM = True
#: (The FFT route's round-off, about steps ulp relative, matters only for long runs: at T 1e4 it is 1e-12.)
ACCURATE_STEPS = 1 << 16
#: ... where the direct sums it forms (near atoms times live frequencies) are at most this many terms ...
ACCURATE_TERMS = 1 << 23
#: ... and at most this many per point of the FFT window (a term costs ~25-45 ns, about an FFT's cost per point:
#: relaxed, k 10, sigma 1, q 1e-5, T 1e6 forms 0.37 per point; at T 1e4 the bulk's 288 atoms times 13000 live
#: frequencies were 1.8 per point, 0.4 s for an FFT of 0.05 s).
ACCURATE_SHARE = 0.5
#: ... and its near atoms are at most this many (their exact sum is formed on a list).
ACCURATE_NEAR = 1 << 16
#: ... its near atoms leave at most this many times 1 / steps of the mass to the far part (summed by an FFT: steps
#: times its round-off is then about an ulp of 1 times log2(n), against the plain route's steps ulp; at relaxed, k 10,
#: sigma 1, q 1e-5, T 1e6, 1e-3 gave the same error against a long-double reference, 3.9e-19 for 3.8e-19, at twice
#: the near atoms).
ACCURATE_FAR = 1.0
#: Where the plain route's round-off matters (``accurate``: :func:`_spectrum_power_route`), the accurate one is
#: taken up to this many terms per point of the FFT window, whatever the steps, with no other limit (a spike-like step
#: with nearly every frequency live may need more: it keeps the plain route, and the readers its allowance).
ACCURATE_FORCED_SHARE = 64.0
#: ... with a near part narrowed (where the usual one is costly) as long as the far part's estimated round-off
#: (:func:`_accurate_ulps`) stays within this many ulps.
ACCURATE_FORCED_FAR_ULPS = 64.0


#: :class:`_Cumulative`'s block length.
CUMULATIVE_BLOCK = 4096


class _Cumulative:
    """Where the running sum of masses x >= 0 passes a level, as from ``np.searchsorted(np.cumsum(x), level, side)``,
    but from block sums and one block's running sum (without the n-point running sum: 92 MB written and read at
    1.15e7 points, twice per composition). The sums are added in another order, so a level within a few ulp of a
    running sum may be located an atom off: :func:`_accurate_power` uses it to split near and far parts, where an
    atom either way changes only which route sums it, not what is summed."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.running = np.cumsum(np.add.reduceat(x, np.arange(0, x.size, CUMULATIVE_BLOCK)))
        self.total = float(self.running[-1])

    def index(self, level: float, side: str) -> int:
        j = int(np.searchsorted(self.running, level, side=side))
        if j >= self.running.size:
            return self.x.size
        start = j * CUMULATIVE_BLOCK
        before = float(self.running[j - 1]) if j else 0.0
        local = before + np.cumsum(self.x[start:start + CUMULATIVE_BLOCK])
        return start + int(np.searchsorted(local, level, side=side))


def _accurate_power(x: np.ndarray, k: np.ndarray, steps: int, *, forced: bool = False,
                    error: list | None = None, n: int | None = None) -> np.ndarray | None:
    """z_k ** steps at the frequencies ``k`` of z = rfft(x, n) (x: masses >= 0 on a circle of n points, x.size by
    default; a shorter x is zero-padded, without a padded copy), with
    a round-off of about (|steps log z_k| + a few) ulp instead of the FFT route's steps times the FFT's; None where
    the direct sums below would exceed ``ACCURATE_TERMS`` terms, ``ACCURATE_SHARE`` terms per point or
    ``ACCURATE_NEAR`` atoms (then the caller takes the FFT route). ``forced``: only past ``ACCURATE_FORCED_SHARE``
    terms per point, with the near part narrowed where that is cheaper (see below). ``error``: a list the estimate
    of this power's relative round-off in ulps is appended to (:func:`_accurate_ulps`).

    Why. A real FFT's round-off is normwise: ||fl(z) - z||_2 <= log2(n) eta / (1 - log2(n) eta) ||z||_2 with eta a
    few ulp (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., SIAM 2002, Theorem 24.2; Schatzman,
    SIAM J. Sci. Comput. 17(5), 1996, measures the same sqrt(log n) ulp in practice), i.e. an absolute error of about
    an ulp of ||x||_2 at every frequency, and z ** steps multiplies a relative error of z by steps. The frequencies
    that survive a long run have |z| close to 1 (|z|^steps > e^-700), so each carries about steps ulp: at relaxed,
    k 10, sigma 1, q 1e-5, T 1e6 the composed masses were 1.4e-11 relative off and their most negative value, which
    the lower end's round-off guard follows (``noise_guard``), made ~90% of the ReRo bracket.

    How. With c the atoms' mean index (rounded), z_k = w^{c k} (1 + A_k), w = e^{-2 pi i / n}, and
    A_k = (S_near - 1) + sum_near x_j (w^{(j - c) k} - 1) + w^{-c k} Z_far_k, where "near" is the shortest index range
    around the bulk that leaves at most ``ACCURATE_FAR`` / steps of the mass to the rest ("far", by an FFT of its
    own). Each near term is formed from its exact integer phase r = (j - c) k mod n taken in (-n/2, n/2]: w^r - 1 =
    -2 sin^2(pi r / n) - i sin(2 pi r / n), a few ulp of itself (:func:`_near_sums`: formed from split
    offsets by matrix products, each term still a few ulp of itself); the sums are inner products, within
    gamma_J sum |x_j (w^r - 1)| (Higham, Section 3.1, eq. (3.5)), a few ulp of |A_k|'s own size, not of 1. The far
    part's FFT error is the normwise one above, on a mass <= ACCURATE_FAR / steps: steps times it stays below
    ACCURATE_FAR ulp times log2(n) sqrt(n) at its worst. Then z_k ** steps = exp(steps log(1 + A_k)) w^{c steps k},
    the log by log1p (|1 + A|^2 = 1 + 2 Re A + |A|^2) and atan2, w^{c steps k} from the exact integer (c steps mod n)
    k mod n: the result's relative error is about ulp (|steps log(1 + A_k)| + log2 steps), a few hundred ulp where
    |z|^steps is not negligible (its real part is >= -700) and the phase steps Im A_k is a few hundred radians,
    against the FFT route's ~steps ulp. The composed masses (irfft, normwise again) then carry the inverse FFT's own
    ulp-level round-off and this; ``noise_guard`` measures it as before (tests/test_bounds_spectrum.py checks both
    routes against the exact multinomial composition in mpmath, and the guard covering the error).
    """
    n = x.size if n is None else n
    if k.size == 0:
        return np.zeros(0, dtype=complex)
    budget = ACCURATE_FORCED_SHARE * n if forced else min(ACCURATE_TERMS, ACCURATE_SHARE * n)
    if 16 * k.size > budget:  # (nearly every frequency live, a spike-like step: not worth locating the bulk)
        return None
    cum = _Cumulative(x)
    total = cum.total
    if not total > 0.0:
        return None

    def ends(far: float) -> tuple[int, int]:
        return cum.index(0.5 * far, "right"), min(cum.index(total - 0.5 * far, "left"), x.size - 1)

    far = ACCURATE_FAR / steps * total
    a, b = ends(far)
    squares = None  # the far part's sum of squares, where the narrowing below forms it
    if forced and (b - a + 1) * k.size > ACCURATE_SHARE * n:
        # Forced and costly (a sparse run, T q ~ 1: every frequency live): a narrower near part, as long as its far
        # part's FFT round-off (see _accurate_ulps: steps sqrt(n) ||far||_2 ulp) stays within
        # ACCURATE_FORCED_FAR_ULPS: the far mass grows fourfold a time. (sigma 0.5, q 1e-6, T 1e6: the near part
        # the never-sampled pile alone, the rest's 1e-6 spread over 1e7 points, ~1 ulp.) Sums of squares of the far
        # part, each the last one's plus what it gained (no cancellation against the pile's; each atom once).
        squares = float(np.einsum("i,i", x[:a], x[:a])) + float(np.einsum("i,i", x[b + 1:], x[b + 1:]))
        wider = far
        while True:
            wider *= 4.0
            if not wider < total:
                break
            a2, b2 = ends(wider)
            if b2 < a2:
                break
            gained = float(np.einsum("i,i", x[a:a2], x[a:a2])) + float(np.einsum("i,i", x[b2 + 1:b + 1],
                                                                                  x[b2 + 1:b + 1]))
            if ACCURATE_FAR_ULPS * steps * math.sqrt(n * (squares + gained)) > ACCURATE_FORCED_FAR_ULPS:
                break
            a, b, squares = a2, b2, squares + gained
    if (b - a + 1) * k.size > budget or (b - a + 1 > ACCURATE_NEAR and not forced):
        return None
    near = x[a:b + 1]
    listed = near.tolist()
    s_near = math.fsum(listed)
    deficit = math.fsum([*listed, -1.0])  # S_near - 1 rounded once (s_near - 1.0 would carry s_near's rounding)
    with one_blas_thread():  # (see dpaudit.heap: the sums below are matrix-vector products)
        c = a + round(float(np.dot(near, np.arange(near.size, dtype=float))) / s_near) if s_near > 0 else a
        kk = k.astype(np.int64)
        d = _near_sums(near, np.arange(a, b + 1, dtype=np.int64) - c, kk, n)
    d += deficit
    # The far part: x outside [a, b] (each atom once; masses >= 0, so a positive sum is a positive atom).
    far_l1 = float(x[:a].sum()) + float(x[b + 1:].sum())
    if squares is None:
        squares = float(np.einsum("i,i", x[:a], x[:a])) + float(np.einsum("i,i", x[b + 1:], x[b + 1:]))
    far_l2 = math.sqrt(squares)
    block = None
    if far_l1 > 0.0:
        shift = (c * kk) % n
        low = _low_band_rfft(x, int(kk[-1]), n=n, hole=(a, b)) if LOW_BAND else None
        if low is not None:
            far_k, block = low[0][k], low[1]
        else:
            rest = x.copy()
            rest[a:b + 1] = 0.0
            far_k = np_fft.rfft(rest, n=n)[k]
        d += far_k * np.exp(2j * math.pi * np.where(shift > n // 2, shift - n, shift) / n)
    re = 2.0 * d.real + (d.real * d.real + d.imag * d.imag)
    with np.errstate(divide="ignore"):  # (|1 + A| = 0: log -inf, the power 0)
        log_abs = 0.5 * np.log1p(re)
    arg = np.arctan2(d.imag, 1.0 + d.real)
    turn = ((c * steps) % n * kk) % n
    phase = steps * arg - 2.0 * math.pi * np.where(turn > n // 2, turn - n, turn) / n
    power = np.exp(steps * log_abs) * (np.cos(phase) + 1j * np.sin(phase))
    if error is not None:
        far_ulps = ACCURATE_FAR_ULPS * steps * math.sqrt(n) * far_l2
        if block is not None:  # (the decimated transform's block sums: see _low_band_rfft)
            far_ulps += ACCURATE_FAR_ULPS * steps * math.sqrt(block) * far_l1
        error.append(_accurate_ulps(power, steps * np.abs(log_abs) + steps * np.abs(arg),
                                    steps * math.sqrt(near.size) * np.abs(d), far_ulps, steps))
    return power


#: :func:`_accurate_power` takes its far part's spectrum by :func:`_low_band_rfft`, and :func:`compose_parts` its
#: composed masses by :func:`_low_band_irfft`, where the live frequencies lie in a low band (False: full FFTs, the
#: route before).
LOW_BAND = True
#: ... where the decimated transform's length n / W is at least this many times the band (the Taylor argument at most
#: pi / LOW_BAND_RATIO: 14 terms to 2^-64) ...
LOW_BAND_RATIO = 16
#: ... and its blocks W at least this long (shorter ones save little over the FFT) ...
LOW_BAND_MIN_BLOCK = 8
#: ... on windows of at least this many points (below, a full FFT costs about as little: 2 ms at 1.6e5 points).
LOW_BAND_WINDOW = 1 << 20


def _low_band_plan(n: int, top: int) -> tuple[int, int] | None:
    """(block W, Taylor terms P) for a decimated transform of n points on the band [0, top] (see
    :func:`_low_band_rfft`); None where n < ``LOW_BAND_WINDOW`` or n has no divisor W >= ``LOW_BAND_MIN_BLOCK`` with
    n / W >= ``LOW_BAND_RATIO`` (top + 1)."""
    if n < LOW_BAND_WINDOW:
        return None
    limit = n // (LOW_BAND_RATIO * (top + 1))
    block = next((w for w in range(limit, LOW_BAND_MIN_BLOCK - 1, -1) if n % w == 0), None)
    if block is None:
        return None
    alpha_top = math.pi * top * block / n
    terms, size = 1, 1.0
    while size > 2.0 ** -64:
        size *= alpha_top / terms
        terms += 1
    return block, terms


def _half_block_turn(block: int, k: np.ndarray, n: int) -> np.ndarray:
    """e^(-i pi (W - 1) k / n) = w^((W - 1) k / 2), from the exact integer (W - 1) k mod 2n."""
    turn = ((block - 1) * k) % (2 * n)
    return np.exp(-1j * math.pi * np.where(turn > n, turn - 2 * n, turn) / n)


def _low_band_rfft(x: np.ndarray, top: int, *, n: int | None = None, hole: tuple[int, int] | None = None
                   ) -> tuple[np.ndarray, int] | None:
    """(rfft(x, n)[:top + 1], the block length W) for a real x (zero-padded to n points, x.size by default), with
    x[a:b + 1] taken as 0 where ``hole`` = (a, b) (without a copy of x: the blocks it meets are summed from a copy of
    their own), by a decimated transform; None where :func:`_low_band_plan` finds no plan (then the caller's FFT).

    Why. A long run's live frequencies (|z_k|^T > e^-700) are a low band, 8113 of 5.8e6 at sigma 0.5, q 1e-6, T 1e6,
    where the far part's full FFT (11.5e6 points) was a third of the composition. How. With j = W b + u, u in
    [0, W) and t_u = (2 u - (W - 1)) / W in (-1, 1): w^(j k) = w^(W b k) w^((W - 1) k / 2) e^(-i alpha_k t_u),
    alpha_k = pi k W / n <= pi / LOW_BAND_RATIO, and the last factor's Taylor series in t_u, cut where
    alpha^P / P! <= 2^-64, gives X_k = w^((W - 1) k / 2) sum_p (-i alpha_k)^p / p! G_p(k), G_p the (n / W)-point real
    FFT of the block moments M_p(b) = sum_u x_(W b + u) t_u^p (a matrix product, n P multiply-adds). The cut's
    remainder is within 2^-64 e^alpha ||x||_1; each G_p's round-off is the FFT's normwise one on ||M_p|| <= ||x||,
    summed with weights totalling e^alpha < 1.3; the moments add an inner product's gamma_W of ||x||_1
    (:func:`_accurate_power` counts sqrt(W) ||x||_1 ulp for it; measured against a long-double FFT: at most 3.3 ulp
    of ||x||_1, the full FFT's 1.8). Cost: the matrix product and P FFTs of n / W points, against one FFT of n
    (0.07-0.12 s against 0.3-0.5 s at 11.5e6 points)."""
    n = x.size if n is None else n
    plan = _low_band_plan(n, top)
    if plan is None:
        return None
    block, terms = plan
    t = (2.0 * np.arange(block) - (block - 1)) / block
    powers = np.vander(t, terms, increasing=True)  # W x P
    moments = np.zeros((n // block, terms))  # (n / W) x P
    whole = x.size // block
    with one_blas_thread():
        moments[:whole] = x[:whole * block].reshape(whole, block) @ powers

        def recompute(first: int, last: int, a: int = 0, b: int = -1) -> None:
            # rows first..last from a zero-padded copy, with x[a:b + 1] zeroed
            seg = np.zeros((last - first + 1) * block)
            part = x[first * block:(last + 1) * block]
            seg[:part.size] = part
            seg[max(a - first * block, 0):max(b + 1 - first * block, 0)] = 0.0
            moments[first:last + 1] = seg.reshape(-1, block) @ powers

        if x.size > whole * block:  # the last, partial row
            recompute(whole, whole)
        if hole is not None and hole[0] <= hole[1]:
            recompute(hole[0] // block, min(hole[1] // block, (x.size - 1) // block), *hole)
    spectra = sp_fft.rfft(moments.T, axis=1)[:, :top + 1]  # P x (top + 1)
    k = np.arange(top + 1)
    rotate = -1j * (math.pi * block / n) * k  # -i alpha_k
    out = spectra[terms - 1].copy()
    for p in range(terms - 1, 0, -1):  # Horner: sum_p (-i alpha_k)^p / p! G_p(k)
        out = spectra[p - 1] + out * (rotate / p)
    return out * _half_block_turn(block, k, n), block


def _low_band_irfft(spectrum: np.ndarray, n: int) -> np.ndarray | None:
    """irfft(spectrum, n) for a half spectrum that is 0 past its first ``spectrum.size`` entries (the band [0, top],
    top = spectrum.size - 1 < n / 2), by the decimated transform of :func:`_low_band_rfft` run backwards; None where
    :func:`_low_band_plan` finds no plan.

    With j = W b + u: y_j = (1 / n) Re sum_k c_k S_k w^(-j k) (c_0 = 1, c_k = 2; irfft reads S_0's real part only) =
    (1 / W) sum_p t_u^p R_p(b), R_p = irfft over n / W points of S_k w^(-(W - 1) k / 2) (i alpha_k)^p / p! (the
    k = 0 entry is S_0 at p = 0 and 0 after, alpha_0 = 0). The cut's remainder is within 2^-64 e^alpha of
    sum_k |S_k| 2 / n per point (at 8113 live frequencies 2^-12 of the inverse FFT's own round-off); each R_p carries
    the inverse FFT's normwise round-off of n / W points, and the sum over p a few ulp of each point's terms: the
    composed masses' round-off stays what the lower end's guard measures (``noise_guard``: their most negative
    value). Cost: P inverse FFTs of n / W points and a matrix product of n P multiply-adds."""
    top = spectrum.size - 1
    if not 2 * top < n:
        return None
    plan = _low_band_plan(n, top)
    if plan is None:
        return None
    block, terms = plan
    k = np.arange(top + 1)
    rotate = 1j * (math.pi * block / n) * k  # i alpha_k
    term = spectrum * np.conj(_half_block_turn(block, k, n))
    coefficients = np.empty((terms, top + 1), dtype=complex)
    coefficients[0] = term
    for p in range(1, terms):
        term = term * (rotate / p)
        coefficients[p] = term
    rows = n // block
    parts = sp_fft.irfft(coefficients, n=rows, axis=1)  # P x (n / W)
    t = (2.0 * np.arange(block) - (block - 1)) / block
    with one_blas_thread():
        # (the p = 0 term added last, to the sum of the small ones, and 1 / W once: against a long-double inverse
        # FFT, at most 2.3 ulp of the largest mass, the full inverse FFT's 2.8; the whole sum in one product and
        # 1 / W in its factors made 4.4, past the 4 ulp floor of noise_guard)
        out = parts[1:].T @ np.vander(t, terms, increasing=True)[:, 1:].T  # (n / W) x W
        out += parts[0][:, None]
        out /= block
    return out.reshape(n)

#: :func:`_near_sums` forms its phase factors on blocks of about this many entries (temporaries in cache).
NEAR_BLOCK = 1 << 17


def _phase_minus_one(v: np.ndarray, k: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """w^(v k) - 1 for w = e^(-2 pi i / n), as (real, imaginary) arrays of shape (v.size, k.size): from the exact
    integer phase r = v k mod n taken in (-n/2, n/2], as -2 sin^2(pi r / n) - i sin(2 pi r / n), each within a few
    ulp of itself (a small angle keeps its relative precision; 1 - cos would not)."""
    r = np.multiply.outer(v, k) % n
    r[r > n // 2] -= n
    angle = r * (math.pi / n)
    half = np.sin(angle)
    return -2.0 * half * half, -np.sin(2.0 * angle)


def _near_sums(near: np.ndarray, offsets: np.ndarray, k: np.ndarray, n: int) -> np.ndarray:
    """A(k) = sum_j near_j (w^(o_j k) - 1), w = e^(-2 pi i / n), at the integer frequencies k (shape (K,), complex),
    for masses ``near`` >= 0 at the consecutive integer offsets ``offsets`` (:func:`_accurate_power`'s near part).

    Each term's factor is within a few ulp of itself, as if formed from its own phase, but only (H + B) phases are
    evaluated per frequency instead of J = near.size: each offset is split o = o_hi B + o_lo with B a power of two
    near sqrt(J) and o_lo in [-B/2, B/2), and w^(o k) - 1 = U_hi U_lo + U_hi + U_lo with U_hi = w^(o_hi B k) - 1,
    U_lo = w^(o_lo k) - 1 (exact algebra), so that, with X the masses laid out as an H x B matrix,
    A = sum_hi U_hi (X U_lo + rowsum X) + colsum(X) U_lo: matrix products. Where o_hi != 0, |o| >= B/2, so each
    piece is at most about twice the term's angle |o k| 2 pi / n and the real parts (-theta^2 / 2 to leading order)
    cancel by at most a factor of about 7: each term keeps a few ulp of its own size. (A product of sines and
    cosines of large angles would not: the split is what keeps small angles small.) That holds while no phase wraps
    the circle: (|o| + B/2) k < n/2 for every term. Past it a term whose phase wraps to near 0 (o k close to a
    multiple of n) is small while its pieces are not (each at most 2): where 8 times the mass of the terms that may
    wrap exceeds ``NEAR_SPLIT_CANCEL`` times |A(k)| (a lattice-like bulk; a smooth one keeps |A| above that mass),
    that frequency is summed term by term instead (:func:`_near_sums_direct`), as are all of them below
    ``NEAR_SPLIT_MIN`` masses.
    Cost: J K multiply-adds in BLAS and (H + B) K sines, against J K sines and cosines formed one by one (sigma 0.5,
    q 1e-6, T 1e6: J = 4369, K = 8113, 1.0 s before, see bench/bench_bounds.py)."""
    size = near.size
    if size < NEAR_SPLIT_MIN:
        return _near_sums_direct(near, offsets, k, n)
    width = 1 << max(0, round(0.5 * math.log2(size)))
    half = width // 2
    hi = (offsets + half) // width
    lo = offsets - hi * width
    first = int(hi[0])
    rows = int(hi[-1]) - first + 1
    x = np.zeros((rows, width))
    x[hi - first, lo + half] = near
    row_sums = x.sum(axis=1)[:, None]
    col_sums = x.sum(axis=0)
    lo_values = np.arange(-half, width - half, dtype=np.int64)
    hi_values = np.arange(first, first + rows, dtype=np.int64) * width
    reach = int(np.max(np.abs(offsets))) + half  # (no phase wraps while 2 reach k < n)
    # The mass of the terms whose phases may wrap at frequency k: |o| + B/2 >= n / (2 k), from the masses by |o|.
    by_reach = np.abs(offsets) + half
    order = np.argsort(by_reach)
    reaches = by_reach[order]
    beyond = np.concatenate((np.cumsum(near[order][::-1])[::-1], [0.0]))  # beyond[i] = mass of order[i:]
    out = np.empty(k.size, dtype=complex)
    chunk = max(1, NEAR_BLOCK // (rows + width))
    for start in range(0, k.size, chunk):
        kc = k[start:start + chunk]
        lo_re, lo_im = _phase_minus_one(lo_values, kc, n)
        hi_re, hi_im = _phase_minus_one(hi_values, kc, n)
        p_re = x @ lo_re + row_sums  # X (U_lo + 1): X E_lo
        p_im = x @ lo_im
        got = out[start:start + chunk]
        got.real = (np.einsum("hk,hk->k", hi_re, p_re) - np.einsum("hk,hk->k", hi_im, p_im) + col_sums @ lo_re)
        got.imag = (np.einsum("hk,hk->k", hi_re, p_im) + np.einsum("hk,hk->k", hi_im, p_re) + col_sums @ lo_im)
        wrapped = np.flatnonzero(2 * reach * kc >= n)
        if wrapped.size:
            # (each wrapping term's pieces are at most 2 each: a few ulp of 8 x_o at most, against the sum's own)
            mass = beyond[np.searchsorted(reaches, n / (2.0 * kc[wrapped]) - 1.0, side="left")]
            redo = wrapped[8.0 * mass > NEAR_SPLIT_CANCEL * np.abs(got[wrapped])]
            if redo.size:
                got[redo] = _near_sums_direct(near, offsets, kc[redo], n)
    return out


#: :func:`_near_sums` sums bulks of fewer masses term by term ...
NEAR_SPLIT_MIN = 64
#: ... and, past the frequency where a phase may wrap, each frequency where 8 times the wrapping terms' mass (a bound
#: on their pieces' size) exceeds its sum this many times (their round-off, a few ulp of the pieces, is then a few
#: times NEAR_SPLIT_CANCEL ulp of the sum at most, within the sqrt(J) ulp :func:`_accurate_ulps` counts for
#: J >= NEAR_SPLIT_MIN).
NEAR_SPLIT_CANCEL = 8.0


def _near_sums_direct(near: np.ndarray, offsets: np.ndarray, k: np.ndarray, n: int) -> np.ndarray:
    """:func:`_near_sums` term by term: each factor w^(o k) - 1 from its own exact phase (:func:`_phase_minus_one`),
    J K sines and cosines, on blocks of about ``NEAR_BLOCK`` terms."""
    out = np.empty(k.size, dtype=complex)
    chunk = max(1, NEAR_BLOCK // near.size)
    for start in range(0, k.size, chunk):
        re, im = _phase_minus_one(offsets, k[start:start + chunk], n)
        out.real[start:start + chunk] = near @ re
        out.imag[start:start + chunk] = near @ im
    return out


#: :func:`_accurate_ulps`' weight on the far part's FFT round-off (see there; measured against a long-double
#: reference of the same algorithm: sigma 1.65, q 0.01007, T 55413, windows of 0.3e6 to 1.2e6 points, 55 to 190 ulp
#: rms, this term 2.3 to 4.6 times that).
ACCURATE_FAR_ULPS = 2.0


def _accurate_ulps(power: np.ndarray, size: np.ndarray, sums: np.ndarray, far: float, steps: int) -> float:
    """An estimate (not a proof) of :func:`_accurate_power`'s relative round-off, in ulps, weighted as the composed
    masses feel it: the rms over frequencies weighted by |z^T|^2 (by Parseval, the masses' error 2-norm over their
    own). Per frequency: the exponentials' arguments times an ulp each (``size`` = steps (|log|1 + A|| +
    |arg(1 + A)|)); the J near terms' sums forming A, about sqrt(J) ulp of |A|, times steps (``sums``); the far
    part's FFT, whose round-off at a low frequency reaches about an ulp of its 1-norm, sqrt(n) ||far||_2, times steps
    (``far``, the largest term where the window is long: 1.2e6 points, 190 ulp measured); and 2 log2(steps) + 16."""
    weight = power.real ** 2 + power.imag ** 2
    total = float(weight.sum())
    if total == 0.0:
        return 0.0
    if not math.isfinite(total):  # (a NaN power: an unknown round-off, never none)
        return math.inf
    # Only where the power is not 0: where |1 + A| rounds to 0 its log is -inf, ``size`` inf, and 0 x inf would make
    # the estimate NaN, which its readers took as no round-off at all (sigma 2, q 0.5, T 10, delta 1e-14).
    held = weight > 0.0
    per = size[held] + sums[held] + (far + 2.0 * math.log2(max(steps, 2)) + 16.0)
    return math.sqrt(float(np.einsum("i,i", weight[held], per * per)) / total)


def _int_power(z: np.ndarray, steps: int, *, overwrite: bool = False) -> np.ndarray:
    """z ** steps for an integer steps >= 1, elementwise, by binary exponentiation: z^(2^i) for each bit i of steps,
    multiplied into the result where the bit is set (at most 2 log2(steps) complex products, in place; in z itself
    where ``overwrite``)."""
    result = None
    base = z if overwrite else z.copy()
    while True:
        if steps & 1:
            result = base.copy() if result is None else np.multiply(result, base, out=result)
        steps >>= 1
        if not steps:
            return result
        np.multiply(base, base, out=base)


def _fold(masses: np.ndarray, width: int) -> np.ndarray:
    """The masses summed modulo ``width`` (atom i to bin i mod width), for an FFT window shorter than the grid.

    The discrete Fourier transform of length ``width`` of a sequence equals that of its folded copy at every
    frequency (aliasing: e^{-2 pi i k (j + width) / width} = e^{-2 pi i k j / width}), so the circular convolution of
    folded per-step PLDs is exactly the composed PLD folded modulo ``width``, which is what an FFT window shorter
    than the composed support computes anyway: the mass outside the Chernoff window [lo, hi] wraps around into it
    whether it came from a long per-step grid or from the composition, and its Chernoff bound (TAIL_BOUND per side,
    computed from the whole per-step PLD) is accounted for as before. At small q with k > 1 the per-step loss
    reaches 70 nats with vanishing mass, while the composed loss stays within 26 nats by Chernoff: the window was
    the per-step grid's length, 2.6x the Chernoff window (sigma 0.5, q 1e-6, k 5, T 1e4)."""
    if masses.size <= width:
        return masses
    # Each further stretch of ``width`` atoms added in turn, in the order a sum over the rows of the zero-padded
    # (rows, width) array takes (x + 0 = x: the same numbers bit for bit), without forming that padded copy (a
    # per-step grid of 1.5e7 atoms: 120 MB written and read again).
    folded = masses[:width].copy()
    for start in range(width, masses.size, width):
        stretch = masses[start:start + width]
        folded[:stretch.size] += stretch
    return folded


#: :func:`composed_run`'s accurate route composes in one level where that window is at most this many points: a
#: two-level composition's blocks are short runs (sqrt(T) steps) of spike-like steps with nearly every frequency live,
#: which the accurate power declines (``ACCURATE_FORCED_SHARE``), keeping their plain round-off (sigma 0.5, q 0.001,
#: T 2e5, delta 1e-12: the upper end +inf behind its allowance; one level: 0.4e6 points, 55 ms, plain_steps 0).
ACCURATE_ONE_LEVEL_WINDOW = 1 << 22

#: Fold per-step grids longer than the composed window onto it (:func:`_fold`) rather than widen the window ...
FOLD_STEPS = True
#: ... where the grid is at least this many times longer than the window (see :func:`compose_parts`).
FOLD_SAVING = 1.25


#: A composition whose whole support (sum of T_i times the per-step grid's length) is at most this many points is
#: taken on all of it, without the Chernoff window (:func:`compose_parts`): an FFT of 4096 points costs a small
#: fraction of the Chernoff search (about 30 numpy calls, ~0.2 ms), and nothing wraps around. The short runs'
#: coarse settling compositions (:func:`epsilon_pld_refined`, e.g. sigma 5, q 0.1, T 10: 1490 points) are such.
DIRECT_WINDOW = 4096


def _whole_support(parts) -> int:
    """The number of grid points the composition of ``parts`` ((pld, steps), steps > 0) can have mass on."""
    return sum(s * (p.masses.size - 1) for p, s in parts) + 1


def compose(pld: DiscretePld, steps: int) -> DiscretePld:
    """The ``steps``-fold self-composition (see :func:`compose_parts`)."""
    return compose_parts([(pld, steps)])


def compose_parts(parts, *, accurate: bool = False) -> DiscretePld:
    """The composition of ``steps_i`` copies of each per-step PLD ``pld_i`` (one per phase of a schedule), by FFT in
    one Chernoff-sized window (see the module notes). The per-step PLDs share the grid step h; their offsets add.

    ``parts`` is a sequence of (pld, steps). ``accurate``: every power by :func:`_accurate_power` where it can be
    (:func:`_spectrum_power_route`); the result's ``plain_steps`` counts the steps whose power was not.
    Heterogeneous composition is exact here: the composed PLD of independent steps is the convolution of their PLDs
    (Koskela, Jalko, Honkela, AISTATS 2020, Section 3), whatever each step's mechanism.
    Compositions of nearly the same law (:func:`composed_run`: one run and direction at other grid steps, both ends
    of the bracket) start their Chernoff search where the last one found its optimum (only fewer lambdas tried: the
    window is the same, see :func:`_chernoff_ends`).
    """
    parts = [(p, s) for p, s in parts if s > 0]
    if len(parts) == 1 and parts[0][1] == 1:
        return parts[0][0]
    h = parts[0][0].h
    optimistic = parts[0][0].optimistic
    chernoff_key = getattr(_COMPOSING, "key", None)
    if _whole_support(parts) <= DIRECT_WINDOW:
        # The whole composed support fits in a window no longer than the Chernoff search costs: compose on all of it
        # (no mass wraps; the ends at -inf / +inf leave the window at the support's ends, below), and skip the search.
        lo_loss, hi_loss, chernoff_key = -math.inf, math.inf, None
    else:
        twin = _UPPER_LAMBDAS.get(chernoff_key) if optimistic and TWIN_LAMBDAS else None
        lo_loss = hi_loss = None
        if twin is not None and twin[0] == h:
            # The lower end's twin: the upper end of the same run and direction was just composed at this grid step.
            # Its located lambdas bound this law's tails too (any lambda gives a sound Chernoff bound), so the ends
            # are evaluated there with this PLD's exact MGFs, and kept where the window is at most TWIN_WIDTH times
            # the upper end's (the garbled and the connect-the-dots PLDs differ by O(h^2) in the bulk; at tiny sigma
            # the add direction's tails differ and the upper end's lambdas gave windows up to 7000x too long).
            found = twin[1]
            lo_loss, hi_loss = _chernoff_window(parts, found)
            if not hi_loss - lo_loss <= TWIN_WIDTH * twin[2]:
                lo_loss = hi_loss = None
        if lo_loss is None:
            lo_loss, hi_loss, found = _chernoff_ends(parts, _chernoff_start(chernoff_key))
    if chernoff_key is not None:
        if len(_CHERNOFF_STARTS) >= 256:  # many runs in one process (a calibration): keep it small
            _CHERNOFF_STARTS.clear()
            _UPPER_LAMBDAS.clear()
        _CHERNOFF_STARTS[chernoff_key] = found
        if not optimistic:
            _UPPER_LAMBDAS[chernoff_key] = (h, found, hi_loss - lo_loss)
    offset = sum(s * p.offset for p, s in parts)
    base = sum(s * p.lo for p, s in parts)
    top = sum(s * (p.lo + p.masses.size - 1) for p, s in parts)
    # An end the Chernoff search could not place (-inf / +inf: e.g. sigma 1e-4, where the moment generating function
    # overflows) leaves the window at the support's end there: no mass can wrap, only the window grows.
    lo = max(math.floor((lo_loss - offset) / h) - 1, base) if math.isfinite(lo_loss) else base
    hi = min(math.ceil((hi_loss - offset) / h) + 1, top) if math.isfinite(hi_loss) else top
    # The window need not hold a per-step grid: a grid longer than it is folded onto it (below). Where the Chernoff
    # ends cross (hi < lo: the composed Q-mass is at most 2 TAIL_BOUND, a per-step PLD that lost nearly all its
    # mass), the window is the longest per-step grid, as it always was.
    # Folding is taken only where it shortens the window by FOLD_SAVING or more: the lower end's round-off guard
    # follows the FFT's round-off, which varies from one window length to another (sigma 0.5, q 1e-6, T 1e6: 9.95e6
    # points folded, 1.15e7 not, the guard 1.6x larger, the bracket at kappa 1e-6 2.5% wide for 1.2%), so a window
    # only a little shorter is not worth it (sigma 1, q 1e-5, k 5, T 1e6: 1.5x shorter, three rounds become two).
    width = hi - lo + 1
    longest = max(p.masses.size for p, _ in parts)
    if not FOLD_STEPS or width < 1 or longest < FOLD_SAVING * width:
        width = max(width, longest)
    if width <= MAX_WINDOW:  # (next_fast_len takes no width past 2^63)
        # (5-smooth: numpy.fft's transforms, used below, are then the same bits as scipy.fft's; at other lengths
        # their inverse's 1 / n differs in the last bit, e.g. n = 2731, so a width must not skip this rounding)
        width = sp_fft.next_fast_len(width, real=True)
    if width > MAX_WINDOW:
        raise WindowTooLargeError(
            f"the composed privacy loss needs an FFT window of {width} points (limit {MAX_WINDOW})")
    spectrum = None
    plain_steps, ulps = 0, 2.0 * math.log2(width) + len(parts)  # (the inverse FFT's and the products' own)
    for p, s in parts:
        folded = _fold(p.masses, width)
        term, plain, own = _spectrum_power_route(np_fft.rfft(folded, n=width), s,
                                                 folded if ACCURATE_SPECTRUM else None, width, overwrite=True,
                                                 accurate=accurate)
        # A relative error carried in by a part (a block's own powers) is multiplied by s as well, whichever route.
        plain_steps += s * (p.plain_steps + plain)
        ulps += s * p.spectrum_ulps + own
        spectrum = term if spectrum is None else spectrum * term
    composed = None
    if LOW_BAND and width >= LOW_BAND_WINDOW:
        # (every power is 0 past its live frequencies: a long run's spectrum is a low band; see _low_band_irfft)
        head = width // (LOW_BAND_RATIO * LOW_BAND_MIN_BLOCK)
        if not spectrum[head:].any():
            live = np.flatnonzero(spectrum[:head])
            composed = _low_band_irfft(spectrum[:live[-1] + 1], width) if live.size else np.zeros(width)
    if composed is None:
        composed = np_fft.irfft(spectrum, n=width)
    spectrum = term = None  # (freed before the roll below makes its copy: a lower peak of fresh memory)
    # Bin j of the circular result holds loss index base + j (mod width); we want bin k = loss index lo + k (np.roll
    # by (base - lo) mod width, as two slices).
    shift = (base - lo) % width
    if shift:
        composed = np.concatenate((composed[width - shift:], composed[:width - shift]))
    # FFT round-off leaves tiny negative masses: clip them, and keep the size of the most negative one as the
    # observed noise level of this composition (the round-off is spread evenly over the bins).
    noise = max(-float(composed.min()), 0.0)
    np.maximum(composed, 0.0, out=composed)
    if optimistic:
        # Lower end: no infinity atom; the (Chernoff-bounded, <= TAIL_BOUND) mass wrapped from below the window to
        # the top, and what the parts carry, is subtracted by the reader (``slack``).
        slack = sum(s * p.slack for p, s in parts) + TAIL_BOUND
        total = float(composed.sum())
        if total > 1.0:
            # Round-off in the per-step masses (a few ulp), compounded over T steps, can lift the total Q-mass
            # above 1, which no garbling has: drop the excess evenly (dropping observations is a sub-Markov kernel).
            composed /= total
        return DiscretePld(h=h, lo=lo, masses=composed, infinity_mass=0.0, offset=offset, optimistic=True,
                           noise=noise, slack=slack, plain_steps=plain_steps, spectrum_ulps=ulps)
    log_finite = sum(s * math.log1p(-p.infinity_mass) if p.infinity_mass < 1 else -math.inf for p, s in parts)
    finite = math.exp(log_finite)
    # + the Chernoff bound of the mass wrapped from above the window. (Round-off in the per-step interval masses, a
    # few ulp of each, compounds over T steps into a relative error of about T ulp on every composed atom, e.g.
    # 3e-10 at T = 1e5: a relative error, not mass missing from one place, so it is not moved to the infinity
    # atom, where it would count in full against delta; the upper readers divide by the total instead:
    # DiscretePld.mass_deficit.)
    infinity = 1.0 - finite + TAIL_BOUND
    return DiscretePld(h=h, lo=lo, masses=composed, infinity_mass=min(infinity, 1.0), offset=offset, noise=noise,
                       plain_steps=plain_steps, spectrum_ulps=ulps)


def composed_run(run: tuple[tuple[StepPair, int], ...], h: float, direction: str, optimistic: bool = False,
                 accurate: bool = False) -> DiscretePld:
    """Cached: discretise each phase's step at grid step h and compose them (``run``: (pair, steps) per phase).
    ``accurate``: every spectrum power by the accurate route where it can be (:func:`compose_parts`; what
    :func:`composed_for` asks for where the plain route's round-off matters to a read). The cache is keyed on all
    five arguments however they are passed (epsilon's and ReRo's reads of the same run share compositions)."""
    return _composed_run(run, h, direction, bool(optimistic), bool(accurate))


@functools.lru_cache(maxsize=16)
def _composed_run(run: tuple[tuple[StepPair, int], ...], h: float, direction: str, optimistic: bool,
                  accurate: bool) -> DiscretePld:
    """:func:`composed_run`, cached."""
    total = sum(steps for _, steps in run)
    inf_budget = INF_BUDGET / total

    def direction_of(pair: StepPair) -> str:
        # q = 1, worst case: N(0, s^2) against N(k, s^2) is symmetric, the add direction equals the remove one
        # (and has no finite anchor: log(1 - q) = -inf).
        return "remove" if (direction == "add" and pair.sampling_probability == 1.0 and not pair.relaxed) \
            else direction

    block = _block_size(run, h)
    if accurate and block is not None and _window_estimate(run, h, block=None) <= ACCURATE_ONE_LEVEL_WINDOW:
        block = None  # (a block's short run of spike-like steps keeps the plain route: see the constant)
    if block is not None:
        # Two levels (see _block_size): blocks of m steps on the finer grid h / sqrt(2), each block re-discretised
        # onto the coarser grid h sqrt(m / 2), the blocks composed there. Blur T h^2 / 2 from each level, as much
        # as one level at h; the last, largest window is sqrt(m / 2) times smaller.
        (pair, steps), = run
        step = _step_pld(pair, h / math.sqrt(2.0), direction_of(pair), inf_budget, optimistic, MAX_WINDOW)
        coarse = h * math.sqrt(block / 2.0)
        parts = [(_regrid(compose_parts([(step, block)], accurate=accurate), coarse), steps // block)]
        if steps % block:
            parts.append((_regrid(compose_parts([(step, steps % block)], accurate=accurate), coarse), 1))
        return compose_parts(parts, accurate=accurate)
    # A step composed with others (or itself) needs a window as long as its grid: refuse a longer grid unformed.
    limit = MAX_WINDOW if total > 1 else None
    parts = [(_PROBE_STEPS.pop((pair, h, direction_of(pair), inf_budget, optimistic, limit), None)
              or _step_pld(pair, h, direction_of(pair), inf_budget, optimistic, limit), steps) for pair, steps in run]
    _COMPOSING.key = (run, direction)
    try:
        return compose_parts(parts, accurate=accurate)
    finally:
        _COMPOSING.key = None


#: Where the Chernoff search of the last one-level composition of each (run, direction) found its optimum
#: (:func:`compose_parts`): a speed hint only. Emptied by :func:`clear_caches`, and when it holds 256 runs.
_CHERNOFF_STARTS: dict = {}
#: The (run, direction) :func:`composed_run` is composing in this thread (the key of ``_CHERNOFF_STARTS``).
_COMPOSING = threading.local()
#: (grid step, located lambdas, window width in nats) of the last upper-end (connect-the-dots) composition of each (run, direction) in one
#: level: the lower end composed next at the same grid step takes its window at those lambdas (``TWIN_LAMBDAS``).
#: Emptied by :func:`clear_caches`, and with ``_CHERNOFF_STARTS``.
_UPPER_LAMBDAS: dict = {}
#: The lower end of a bracket takes its Chernoff window at the lambdas its upper end (same run, direction and grid
#: step) located, without a search of its own (sound at any lambda; sigma 5, q 0.1, T 10: ~0.1 ms of ~2.3 ms).
TWIN_LAMBDAS = True
#: ... where that window is at most this many times as wide as the upper end's (else the lower end searches its own).
TWIN_WIDTH = 1.05


def _chernoff_start(key) -> tuple[int, int] | None:
    """Where :func:`_chernoff_ends` begins its search for the composition ``key`` ((run, direction), or None): where
    the last composition of the same run and direction found its optimum, else the other direction's optimum
    mirrored (right and left side swapped: the add direction's loss is about the remove direction's negated, e.g.
    sigma 1, q 0.1, T 10: (23, 29) and (29, 23); sigma 2, q 0.1: (24, 28) and (28, 25)), else None. A speed hint
    only: the search finds the same lambdas from any start."""
    if key is None:
        return None
    start = _CHERNOFF_STARTS.get(key)
    if start is None:
        run, direction = key
        other = _CHERNOFF_STARTS.get((run, "add" if direction == "remove" else "remove"))
        start = None if other is None else (other[1], other[0])
    return start


#: Runs of at least this many steps may be composed in two levels (:func:`_block_size`).
TWO_LEVEL_STEPS = 1024
#: ... when a block's core (its steps that did not see the target, |x| <= 2 sigma: sqrt(m) times the per-step
#: spread) spans at least this many points of the coarser grid, so that the coarser grid sees a smooth bump. At small
#: sigma the steps that did not see the target barely move the loss (a spike next to the pile at m log(1 - q)) and
#: the loss is made by the few that did: a coarser grid would blur both (sigma 0.34, q 0.002, T 20000: twice the
#: bracket; sigma 0.2, q 0.001, T 1e6: a quarter of the mass next to the pile dropped by the lower end).
TWO_LEVEL_CORE_POINTS = 8.0


#: At most this many candidate block sizes are tried for one that divides T (:func:`_dividing_block`). The 30%
#: range holds fewer for T up to about 1.9e8 (m ~ sqrt(T) <= 13653), where the search is unchanged; above, T
#: comes from a history or flags far beyond any training run (1e30 steps searched ~3e14 candidates), and the
#: search stops after this many.
DIVISOR_SEARCH = 4096


def _dividing_block(steps: int, block: int) -> int:
    """A block size up to 30% larger than ``block`` that divides ``steps``, saving the remainder's composition (one
    FFT window per end); ``block`` itself when none of the first :data:`DIVISOR_SEARCH` candidates divides it.
    Either is sound: :func:`composed_run` composes steps // m blocks and then the steps % m left over, all T steps,
    as it does for a prime T. Only the speed differs (one window more)."""
    last = min(int(1.3 * block), block + DIVISOR_SEARCH - 1)
    return next((m for m in range(block, last + 1) if steps % m == 0), block)


def _block_size(run: tuple[tuple[StepPair, int], ...], h: float) -> int | None:
    """Steps per block of a two-level composition at grid step h, or None for one level.

    One level composes T steps on grid h in one FFT window of about (composed span) / h points. Two levels compose
    blocks of m ~ sqrt(T) steps on grid h / sqrt(2) and T / m blocks on grid H = h sqrt(m / 2): the windows are
    (block span) / (h / sqrt 2) and (composed span) / H, both about T^{1/4} / sqrt(2) times the per-step spread /
    h instead of sqrt(T): 5-10x fewer points for T of 1e4 to 1e6. Both levels' discretisations are sound
    (connect-the-dots and the balanced garbling of a discrete PLD, :func:`_regrid`), and each adds about half of one
    level's blur at h, so the bracket at h is about as wide as one level's. Used for one phase whose blocks are
    smooth on the coarser grid (``TWO_LEVEL_CORE_POINTS``) and whose windows it shrinks; a schedule of several
    phases keeps one level (its phases share one grid).
    """
    if len(run) != 1:
        return None
    pair, steps = run[0]
    if steps < TWO_LEVEL_STEPS:
        return None
    block = _dividing_block(steps, round(math.sqrt(steps)))
    coarse = h * math.sqrt(block / 2.0)
    core_var = _loss_moments(pair)[2]
    if math.sqrt(block * core_var) < TWO_LEVEL_CORE_POINTS * coarse:
        return None
    one = _window_estimate(run, h, block=None)
    two = _window_estimate(run, h, block=block)
    return block if two < 0.5 * one else None


def _regrid(pld: DiscretePld, step: float) -> DiscretePld:
    """A discrete PLD moved onto the coarser grid pld.offset + step j, soundly for its end of the bracket.

    Upper end (connect the dots, a dilation): an atom at loss l between grid points a <= l < b goes to a and b with
    its Q-mass and its P-mass preserved, Q_b = Q (1 - e^{a - l}) / (1 - e^{-step}). Lower end: the atoms within
    step / 2 of each grid point form a cell, guarded against the FFT round-off first (Q-mass lowered, P-mass
    raised by ``noise_guard``), and the cells are balanced onto their grid points (:func:`_balance_cells`). The
    atom at grid index 0, pld.offset, is where a block's "never sampled" pile sits (the per-step grids are anchored
    there, :func:`_garbled_step`): it keeps a cell of its own, exact. Merged with its neighbours it would sit at the
    end of the support with nothing beyond it to balance with (the add direction's pile is its top), and a cell
    whose loss is below its grid point with nothing above is dropped whole (0.2, 0.001, 1e6: 61% of a block)."""
    pos = pld.masses > 0
    m, losses = pld.masses[pos], pld.losses_at(np.flatnonzero(pos))
    if pld.optimistic:
        if not m.size:
            return DiscretePld(h=step, lo=0, masses=np.zeros(1), infinity_mass=0.0, offset=pld.offset,
                               optimistic=True, slack=pld.slack, plain_steps=pld.plain_steps,
                               spectrum_ulps=pld.spectrum_ulps)
        nu = pld.noise_guard
        j = np.rint((losses - pld.offset) / step).astype(np.int64)
        pile = (pld.lo + np.nonzero(pos)[0]) == 0
        near = (j == 0) & ~pile
        j[near] = np.where(losses[near] > pld.offset, 1, -1)
        lo = int(j.min())
        n = int(j.max()) - lo + 1
        q = np.bincount(j - lo, weights=np.maximum(m - nu, 0.0), minlength=n)
        log_p_atom = np.log(m + nu) - losses
        top = np.full(n, -np.inf)
        np.maximum.at(top, j - lo, log_p_atom)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_p = np.log(np.bincount(j - lo, weights=np.exp(log_p_atom - top[j - lo]), minlength=n)) + top
        grid = pld.offset + step * (lo + np.arange(n))
        # The guard lowered each atom's Q-mass and raised its P-mass by nu: an exact atom (the pile) then reads as
        # 2 nu short of its grid point, which must not count as a loss below it (it would be dropped whole).
        guard = 4.0 * nu * np.bincount(j - lo, minlength=n)
        return DiscretePld(h=step, lo=lo, masses=_balance_cells(grid, q, log_p, guard), infinity_mass=0.0,
                           offset=pld.offset, optimistic=True, slack=pld.slack, plain_steps=pld.plain_steps,
                           spectrum_ulps=pld.spectrum_ulps)
    j = np.floor((losses - pld.offset) / step).astype(np.int64)
    below = pld.offset + step * j
    over = losses < below  # (round-off at a grid point)
    j[over] -= 1
    below[over] -= step
    upper = m * (-np.expm1(below - losses) / -math.expm1(-step))
    lo = int(j.min()) if j.size else 0
    n = int(j.max()) - lo + 2 if j.size else 1
    masses = np.bincount(j - lo, weights=m - upper, minlength=n) + np.bincount(j + 1 - lo, weights=upper, minlength=n)
    return DiscretePld(h=step, lo=lo, masses=np.maximum(masses, 0.0), infinity_mass=pld.infinity_mass,
                       offset=pld.offset, plain_steps=pld.plain_steps, spectrum_ulps=pld.spectrum_ulps)


composed_run.cache_clear = _composed_run.cache_clear  # type: ignore[attr-defined]


def composed_pld(pair: StepPair, steps: int, h: float, direction: str, optimistic: bool = False) -> DiscretePld:
    """Discretise one step at grid step h and compose it ``steps`` times (cached)."""
    return composed_run(((pair, steps),), h, direction, optimistic)


#: A read allows for the composition's round-off estimate (:meth:`DiscretePld.roundoff`) where it could move what
#: it reads by more than this share of it (epsilon: the estimate's error on delta over the delta curve's slope,
#: :func:`delta_read_error`, against epsilon or ``EPSILON_SCALE``, whichever is larger; a power: the estimate on the
#: atoms read against the power, :func:`dpaudit.bounds.rero.tight_gamma`): the upper end reads at delta less the
#: estimate (a power: plus it), the lower end at delta plus it. Below it the actual error (5e-5 to 0.08 of the
#: estimate where measured) is below 1e-7 of the value: left out, so that the usual reads stay as they were.
ALLOWANCE_SHARE = 1e-6
#: ... and composes again by the accurate route (``composed_run(..., accurate=True)``) where a plain composition's
#: estimate exceeds this share: an allowance that wide would take a fifth of epsilon's default tolerance (1e-4), a
#: 25th of ReRo's (5e-4). At the usual deltas (1e-5, 8e-7) only sparse long runs take it (T q ~ 1: sigma 0.5,
#: q 1e-6, T 1e6 at delta 1e-5, 9e-5, the plain read 1.9e-5 high; 2.5 s to 5.8 s; ReRo at kappa 1e-6 with k 5,
#: 1.6e-3, 0.6 s to 2.3 s); at delta 1e-10 long runs do (2-25x the plain composition's cost; T 321921: 0.13 s, in
#: one level).
ROUTE_SHARE = 2e-5


#: Below this epsilon the refinement's tolerance is absolute (``EPSILON_ATOL`` = 1e-4 of it): the shares above are
#: taken of it there (epsilon 0 or 1e-4 at tiny q and short runs: relative to epsilon itself, 2e-12 nats would have
#: sent sigma 2, q 1e-6, T 300 to the accurate route, 0.13 s for 0.01 s).
EPSILON_SCALE = 1e-3


def delta_read_error(pld: DiscretePld, epsilon: float) -> tuple[float, float]:
    """(the round-off estimate on delta(epsilon), :meth:`DiscretePld.roundoff` with delta's weights
    1 - e^{eps - l} on the atoms above; the delta curve's slope there, -d delta / d eps = sum_{l > eps} m_l
    e^{eps - l}), both divided by the total as every upper reader: one pass over the atoms above."""
    above = pld.atoms_above(epsilon)
    if above <= 0:
        return 0.0, 0.0
    start = pld.masses.size - above
    kept = np.exp(epsilon - pld.losses_at(slice(start, None)))  # e^{eps - l} <= 1
    slope = float(np.einsum("i,i", pld.masses[start:], kept)) / pld._kept
    np.subtract(1.0, kept, out=kept)
    return pld.roundoff(math.sqrt(float(np.einsum("i,i", kept, kept)))) / pld._kept, slope


def _epsilon_shift_share(pld: DiscretePld, epsilon: float, delta: float) -> float:
    """How far the round-off estimate could move the epsilon read at ``epsilon`` (where the curve reads about
    ``delta``): its error on delta over the curve's slope (:func:`delta_read_error`), relative to epsilon, or to
    ``EPSILON_SCALE`` below it (where the refinement's tolerance is absolute). First from bounds that cost nothing:
    the weights at most 1 (a norm of sqrt(atoms)) and the slope at least (delta - infinity_mass) / (top - epsilon)
    (the delta curve is convex, falling to the infinity atom's mass at the top atom's loss); where that already
    leaves the shift below ``ALLOWANCE_SHARE``, the atoms are not read (a pass over them, e^{eps - l}, was 15% of a
    short run's epsilon)."""
    if not math.isfinite(epsilon):
        return 0.0
    bound = pld.roundoff(math.sqrt(pld.atoms_above(epsilon)))
    if not bound > 0.0:
        return 0.0
    top = pld._loss_of(pld.masses.size - 1)
    fall = delta - pld.infinity_mass
    if fall > 0.0 and top > epsilon:
        share = bound * (top - epsilon) / fall / max(epsilon, EPSILON_SCALE)
        if share <= ALLOWANCE_SHARE:
            return share
    error, slope = delta_read_error(pld, epsilon)
    if not error > 0.0:
        return 0.0
    return (error / slope if slope > 0.0 else math.inf) / max(epsilon, EPSILON_SCALE)


#: The reads that took the accurate route, by (run, direction, end, what was read): later rounds of the same
#: refinement compose that way at once (the estimate hardly moves with the grid step). Emptied by
#: :func:`clear_caches`, and when it holds 256.
_ACCURATE_READS: set = set()


def composed_for(run: tuple[tuple[StepPair, int], ...], h: float, direction: str, shift, optimistic: bool = False,
                 accurate: bool = False, key=None) -> tuple[DiscretePld, bool, float | None]:
    """The composition a read needs: (:func:`composed_run`'s PLD, whether it took the accurate route, ``shift(pld)``
    where it was read, else None). ``shift(pld)``: the round-off estimate's share of what the read reads. The
    accurate route is taken where a plain composition's share exceeds ``ROUTE_SHARE``, at once where ``accurate``
    (the other end of the same bracket took it) or where the read ``key`` took it in an earlier round."""
    remembered = key is not None and (run, direction, optimistic, key) in _ACCURATE_READS
    pld = composed_run(run, h, direction, optimistic, accurate or remembered)
    if accurate or remembered:
        return pld, True, None
    share = shift(pld) if pld.spectrum_ulps else 0.0
    if pld.plain_steps and share > ROUTE_SHARE:
        if key is not None:
            if len(_ACCURATE_READS) >= 256:
                _ACCURATE_READS.clear()
            _ACCURATE_READS.add((run, direction, optimistic, key))
        return composed_run(run, h, direction, optimistic, True), True, None
    return pld, False, share


def upper_epsilon(run: tuple[tuple[StepPair, int], ...], h: float, direction: str, target_delta: float
                  ) -> tuple[float, DiscretePld, bool]:
    """(epsilon at ``target_delta`` from the connect-the-dots PLD at grid step h, that PLD, whether it took the
    accurate route): the route by :func:`composed_for`; where the round-off estimate could move the read by more
    than ``ALLOWANCE_SHARE``, read at the target less the estimate (at the plain read's crossing: more atoms, a
    larger estimate), +inf where that is not positive."""
    read = {}

    def shift(p: DiscretePld) -> float:
        read[p] = p.epsilon(target_delta)
        return _epsilon_shift_share(p, read[p], target_delta)

    pld, accurate, share = composed_for(run, h, direction, shift, key=("epsilon", target_delta))
    eps = read[pld] if pld in read else pld.epsilon(target_delta)
    if share is None:
        share = _epsilon_shift_share(pld, eps, target_delta)
    if share > ALLOWANCE_SHARE:
        # (at the crossing read without it: a higher epsilon has fewer atoms above, each with a smaller weight)
        allowance = delta_read_error(pld, eps)[0]
        eps = pld.epsilon(target_delta - allowance) if allowance < target_delta else math.inf
    return eps, pld, accurate


def lower_epsilon(run: tuple[tuple[StepPair, int], ...], h: float, direction: str, target_delta: float,
                  near: float, accurate: bool) -> float:
    """:meth:`DiscretePld.epsilon_lower` at grid step h (``near``: the upper end), by the accurate route where the
    upper end took it or the round-off estimate matters here (:func:`composed_for`); where it could move the read
    by more than ``ALLOWANCE_SHARE``, read at the target plus the estimate on the atoms above the read's own
    crossing (below ``near``: found by a few rounds, each read lower; 0, the trivial lower bound, if they do not
    settle); where ``near`` is +inf (the upper end lost to its allowance) always."""
    # (the garbled curve reads about the target at the upper end, within the bracket: the same slope bound)
    pld, _, share = composed_for(run, h, direction, lambda p: _epsilon_shift_share(p, near, target_delta), True,
                                 accurate, key=("epsilon", target_delta))
    if share is None:
        share = _epsilon_shift_share(pld, near, target_delta)
    if not share > ALLOWANCE_SHARE and math.isfinite(near):
        return pld.epsilon_lower(target_delta, near=near)
    used = target_delta + delta_read_error(pld, near)[0]
    for _ in range(6):
        eps = pld.epsilon_lower(used, near=near)
        wanted = target_delta + delta_read_error(pld, eps)[0]
        if wanted <= used:
            return eps
        used = target_delta + 1.25 * (wanted - target_delta)
    return 0.0


def clear_caches() -> None:
    """Forget every cached composed PLD (benchmarks time cold computations with it)."""
    composed_run.cache_clear()
    _CHERNOFF_STARTS.clear()
    _UPPER_LAMBDAS.clear()
    _tail_loss.cache_clear()
    _KEPT_TOP[0] = None
    _KEPT_LOWER[0] = None
    _PROBE_STEPS.clear()
    _ACCURATE_READS.clear()


# -- adaptive discretisation ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _loss_moments(pair: StepPair) -> tuple[float, float, float]:
    """Mean and variance of the per-step loss under Q, and its variance under P restricted to the central
    observations |x| <= 2 sigma (the spread of the steps that did not see the target, without the tail of the ones
    that did: how smooth a block of steps is, :func:`_block_size`). Quadrature on a fine x grid; only used to size
    grids."""
    sigma = pair.noise_multiplier
    x = np.linspace(pair.lower if pair.relaxed else -14 * sigma, pair.records_per_patient + 14 * sigma, 8001)
    loss = pair.loss(x)
    # Q-density up to a constant, in log space (at tiny sigma p underflows where e^L overflows).
    log_q = -0.5 * (x / sigma) ** 2 + loss
    pdf_q = np.exp(log_q - np.max(log_q))
    wq = pdf_q / pdf_q.sum()
    mean = float(np.sum(wq * loss))
    var = float(np.sum(wq * (loss - mean) ** 2))
    core = np.abs(x) <= 2 * sigma
    wp = np.exp(-0.5 * (x[core] / sigma) ** 2)
    wp /= wp.sum()
    core_mean = float(np.sum(wp * loss[core]))
    return mean, var, float(np.sum(wp * (loss[core] - core_mean) ** 2))


def initial_h(pair: StepPair, steps: int) -> float:
    """A first grid step from the spread of the composed loss (see :func:`initial_h_run`)."""
    return initial_h_run(((pair, steps),))


def initial_h_run(run: tuple[tuple[StepPair, int], ...]) -> float:
    """A first grid step from the spread of the composed loss.

    Connect-the-dots preserves each interval's Q- and P-mass; its effect on the composed loss is an added
    variance of at most T h^2 / 4. We start where that is about 2e-3 of the composed loss's variance (h = 0.08
    per-step standard deviations of the phase with the narrowest loss; then the refinement decides), and never
    finer than the window allows.
    """
    h = math.inf
    var_total = drift = 0.0
    for pair, steps in run:
        mean, var, _ = _loss_moments(pair)
        h = min(h, 0.08 * math.sqrt(max(var, 1e-300)))
        var_total += var * steps
        drift += abs(mean) * steps
    # Per-step resolution: at most 0.05 nats (where the per-step loss has structure finer than its spread, e.g.
    # the pile at log(1 - q), the bracket refinement halves further).
    h = min(h, 0.05)
    # Window: the composed loss spans about 20 of its standard deviations inside the Chernoff window (each side's
    # tail bound is 1e-16); keep that within WINDOW_TARGET points. Only very long, loud runs (T q sigma^-2 large,
    # gamma ~ 1) reach this; a coarser grid is still sound and the bracket says how far it is from the exact value.
    span = _composed_span(var_total)
    h = max(h, span / WINDOW_TARGET)
    del drift  # the drift (mean) moves the window, it does not widen it
    return float(h)


def _composed_span(var_total: float) -> float:
    """About the width of the composed loss' FFT window: 20 standard deviations inside the Chernoff window."""
    return 20 * math.sqrt(max(var_total, 1e-300)) + 1.0


@functools.lru_cache(maxsize=64)
def _widest_step(run: tuple[tuple[StepPair, int], ...]) -> float:
    """The widest loss range of one step of the run (nats): from the pile (or the left cut) to the tail cut, at most
    to ``LOSS_CAP``. Its per-step grid at step h holds about this over h points. Cached (only used to size grids;
    :func:`_window_estimate` asks for it at every grid step tried)."""
    total = sum(steps for _, steps in run)
    widest = 0.0
    for pair, _ in run:
        top = _tail_loss(pair, INF_BUDGET / total)
        bottom = pair.min_loss if math.isfinite(pair.min_loss) else -top
        widest = max(widest, min(top, LOSS_CAP) - bottom)
    return widest


def _window_estimate(run: tuple[tuple[StepPair, int], ...], h: float, block: int | str | None = "auto") -> float:
    """About the number of points of the FFT windows :func:`composed_run` uses at grid step h: the loss range they
    cover (the composed spread, or a single step's whole range to its tail cut where that is wider: short runs of
    heavy-tailed steps, small sigma) over the grid step; for a two-level composition (``block`` steps per block,
    by default :func:`_block_size`'s) the two levels' windows added."""
    total = sum(steps for _, steps in run)
    widest = _widest_step(run)
    var = sum(_loss_moments(pair)[1] * s for pair, s in run)
    if block == "auto":
        block = _block_size(run, h)
    if block is None:
        return max(20.0 * math.sqrt(var), widest) / h
    per_step = var / total
    return (max(20.0 * math.sqrt(per_step * block), widest) / (h / math.sqrt(2.0))
            + 20.0 * math.sqrt(var) / (h * math.sqrt(block / 2.0)))


#: Composed windows up to this many points are cheap next to the fixed cost of a round of the refinement (each
#: round discretises every step and composes it again): there the first round is taken at the grid step a round
#: usually ends at, not at the coarser probe (see :func:`refine`).
SMALL_WINDOW = 1 << 15
#: ... and up to this many for a one-level run with a short per-step grid (see :func:`refine`).
ONE_LEVEL_SMALL_WINDOW = 1 << 16


#: :func:`refine` stops where the next round is not expected to narrow any open bracket by this factor (the
#: discretisation's h^2 law promises 1.9x or more; round-off allowances do not narrow): see :func:`_stalled`.
STALL_SHRINK = 1.3
#: Where the first round is a probe (see :func:`refine`), it is taken this many times coarser than
#: :func:`initial_h_run`'s grid step.
PROBE_COARSENING = 4.0
#: Where the composed window at :func:`initial_h_run`'s step holds this many points or more, :func:`refine`'s probe
#: is ``WIDE_PROBE_COARSENING`` times coarser, for long one-level runs too (``WIDE_PROBE``; False: the plain route,
#: a probe PROBE_COARSENING times coarser for short runs only). There initial_h_run's step, 0.08 per-step standard
#: deviations, is set by a per-step variance that rare large losses make (sigma 0.5, q 1e-6: sd 7e-6 nats for a
#: loss range of 6.7 nats), and the bracket closes at a step 2 to 30 times coarser (relaxed and worst case, k 1 and
#: 5, T 1e4 and 1e6); a probe's round costs 1 / WIDE_PROBE_COARSENING of one at that step. Only past half of
#: MAX_WINDOW: there a round at initial_h_run's step costs 1-2 s and a round 2x finer no longer fits (relaxed, k 10,
#: sigma 1, q 1e-5, T 1e6, 5.4e6 points, closes within rtol at that step in one round and keeps it).
WIDE_PROBE = True
WIDE_WINDOW = MAX_WINDOW // 2
WIDE_PROBE_COARSENING = 16.0
#: :func:`refine`'s callers that opt in (``long_probe``: ReRo's :func:`dpaudit.bounds.rero.tight_gamma`) probe a
#: long run PROBE_COARSENING times coarser where its composed window at :func:`initial_h_run`'s step holds
#: ``LONG_WINDOW`` points or more (below WIDE_WINDOW) and both steps compose in one level (``LONG_PROBE``; False: the
#: plain route, no probe for long runs there). Relaxed, k 10, sigma 0.5, q 1e-5, T 1e6 (a 3.4e6-point window): two
#: rounds (4.1e-5, 2.4e-5) became a probe 4x coarser and one round (2.9e-5), 1.77 -> 1.02 s CPU (same process,
#: best of 2); over the 17 grid points it fires at 8.1 -> 5.7 s, four of them 0.02 to 0.14 s slower. ReRo only:
#: epsilon (delta 1e-5) at that point took a finer last round from it (1.66e-5 for 1.87e-5), 2.6 -> 3.5 s.
LONG_PROBE = True
LONG_WINDOW = 1 << 21
#: The largest factor one round of :func:`refine` refines the grid step by (after a coarsened probe: that much more).
MAX_JUMP = 8.0
#: :func:`refine`'s jump aims at the bracket width its stop rule accepts, ``rtol`` relative or ``atol`` absolute
#: (False: at ``rtol`` alone, the plain route; a bracket the atol accepts then takes a finer round than it needs).
JUMP_TO_ATOL = True
#: :func:`refine`'s jump aims at the part of each bracket a finer grid narrows, the bracket less the round-off
#: guard's share, where that share is read and the next round composes the same way (False: the whole
#: bracket).
JUMP_PAST_FLOOR = True
#: ... taken where it is at least this many times shorter than the whole bracket's jump (see :func:`refine`).
FLOOR_JUMP_SAVING = 2.0
#: From a wide probe (see :func:`refine`) the jump aims past the round-off floor by the law its brackets close at
#: there, h^WIDE_PROBE_ORDER, with room left for the floor to double, wherever that jump is shorter than the one
#: FLOOR_JUMP_SAVING allows (:func:`_wide_probe_jump`; ``WIDE_PROBE_PAST_FLOOR`` False: the plain route). At a
#: floor past the tolerance the whole bracket asked for 5.1x, 1.1e7 points (relaxed, k 5, sigma 0.5, q 1e-6, T 1e6:
#: kappa 1e-6 at its floor, 6.4e-3 of a 6.8e-3 bracket; kappa 1e-3's 2.5e-3 asks for 4.5x, 1e7 points). The
#: probe's step is far from the h^2 regime: its brackets narrowed as h^1.49 to 4x finer and h^1.50 to 5.1x (there,
#: kappa 1e-3 and 0.1), h^1.44 (worst case, k 5, kappa 0.1); with the jump's margins (aim 0.7 rtol, 15% on the
#: step) a bracket that narrows as h^1.1 still closes. Where the floor is about the tolerance it is no floor (k 10,
#: sigma 1, q 1e-6, T 1e4, kappa 1e-6: 5e-4 of a 9.5e-4 bracket, then 5.9e-4 and 3.3e-4, the bracket 4.3e-4): the
#: whole bracket's jump.
WIDE_PROBE_PAST_FLOOR = True
WIDE_PROBE_ORDER = 1.5
#: No coarsening in :func:`refine` goes past this grid step (nats): every finite per-step loss lies below
#: ``LOSS_CAP``, and a step past log(max float64) = 709.8 overflows the connect-the-dots split (e^h) into NaN
#: masses (sigma 1e-4, q 0.01, T 100 probed at 1898 nats).
MAX_GRID_STEP = LOSS_CAP / 4


@dataclass(frozen=True)
class Refined:
    """The result of the refinement: the value at the finest grid (sound), and its numerical error.

    ``lower`` is a sound lower bound on the exact value when the caller computed one (the garbled PLD), else None;
    then the error is the nested-grid estimate |value(h) - value(h/2)|.
    """

    value: np.ndarray
    coarse: np.ndarray
    h: float
    lower: np.ndarray | None = None

    @property
    def error(self) -> np.ndarray:
        """value - lower (a proven bracket) where a lower bound exists; else |value(h) - value(h/2)|, the nested-grid
        estimate (connect-the-dots converges as h^2), or the whole value where the grid could not be refined (the
        value is still a sound upper bound)."""
        if self.lower is not None:
            return np.maximum(self.value - self.lower, 0.0)
        return np.abs(self.coarse - self.value)


def _as_run(pair_or_run, steps: int | None) -> tuple[tuple[StepPair, int], ...]:
    if isinstance(pair_or_run, StepPair):
        return ((pair_or_run, int(steps)),)
    return tuple(pair_or_run)


def _wide_one_level(run: tuple[tuple[StepPair, int], ...], h: float, window: float) -> bool:
    """Whether a long run's first round at grid step h (its composed window about ``window`` points) is probed
    ``WIDE_PROBE_COARSENING`` times coarser: a window of ``WIDE_WINDOW`` points or more, composed in one level at h
    and at the probe's step (where a long run composes in two levels at the fine step and one at the coarse, the
    probe's bracket does not close as h^2 to the fine step's, see :func:`refine`)."""
    return (WIDE_PROBE and window >= WIDE_WINDOW and _block_size(run, h) is None
            and _block_size(run, min(WIDE_PROBE_COARSENING * h, MAX_GRID_STEP)) is None)


def _long_one_level(run: tuple[tuple[StepPair, int], ...], h: float, window: float) -> bool:
    """Whether a long run's first round at grid step h (its composed window about ``window`` points) is probed
    ``PROBE_COARSENING`` times coarser where the caller opts in (``LONG_PROBE``): a window of ``LONG_WINDOW`` points
    or more, short of ``WIDE_WINDOW`` (past it the wide probe or, where that does not fire, the plain route),
    composed in one level at h and at the probe's step (the reason is :func:`_wide_one_level`'s)."""
    return (LONG_PROBE and LONG_WINDOW <= window < WIDE_WINDOW and _block_size(run, h) is None
            and _block_size(run, min(PROBE_COARSENING * h, MAX_GRID_STEP)) is None)


#: :func:`refine`'s wide probe keeps its garbled per-step PLDs whole (:func:`_garbling_holds`; False: the
#: plain route, WIDE_PROBE_COARSENING whatever the garbling drops) ...
GARBLED_PROBE = True
#: ... where a garbled per-step PLD that falls short of mass 1 by more than this (round-off: ~1e-16) has
#: dropped cells the balancing could not settle (see :func:`_balance_cells`): its lower ends say nothing.
PROBE_MASS_DROP = 1e-12


def _garbling_holds(run: tuple[tuple[StepPair, int], ...], h: float) -> bool:
    """Whether every phase's garbled per-step PLD (remove direction) at grid step h keeps its Q-mass (within
    ``PROBE_MASS_DROP``). Where the grid step passes the spread of the steps that did not see the target, the
    cells next to the pile cannot be balanced and are dropped (a sound lower end, but one that reads as the
    blind guess): relaxed, sigma 0.5, q 1e-6 drops 1.4e-3 of each step's mass at h 7.7e-6 (16 times
    initial_h_run's step, 12 standard deviations of those steps' loss), none at 6e-6; over T 1e4 steps the
    composed garbled PLD kept 5e-7 of its mass, and the probe's bracket was the whole of gamma - kappa, with
    no round-off floor to read. The steps it forms are kept for the probe's composition (``_PROBE_STEPS``)."""
    total = sum(s for _, s in run)
    _PROBE_STEPS.clear()
    for pair, _ in run:
        key = (pair, h, "remove", INF_BUDGET / total, True, MAX_WINDOW if total > 1 else None)
        try:
            step = _step_pld(*key)
        except WindowTooLargeError:
            return False
        if not 1.0 - float(np.sum(step.masses)) <= PROBE_MASS_DROP:
            return False
        _PROBE_STEPS[key] = step
    return True


#: The garbled per-step PLDs :func:`_garbling_holds` formed at the probe's step, keyed by :func:`_step_pld`'s
#: arguments: :func:`composed_run` takes each once (the same numbers; not formed twice).
_PROBE_STEPS: dict = {}


def _same_route(run: tuple[tuple[StepPair, int], ...], h: float) -> bool:
    """Whether :func:`composed_run` composes ``run`` the same way (one level, or two with the same blocks) at grid
    step h and at every step :func:`refine`'s next round may take (h / 1.25 to h / ``MAX_JUMP``)."""
    here = _block_size(run, h)
    return all(_block_size(run, h / f) == here for f in (1.25, 2.0, 4.0, MAX_JUMP))


def _stalled(gap: np.ndarray, floor: np.ndarray | None, last_gap: np.ndarray | None, ok: np.ndarray) -> bool:
    """Whether no open bracket (``gap`` wide; ``ok`` marks the closed ones) would narrow by ``STALL_SHRINK`` in any
    round :func:`refine` may take next (the grid step refined by up to ``MAX_JUMP``): then it stops with the sound
    bracket it has.

    With ``floor`` (the part of each bracket that a finer grid does not narrow: the FFT round-off guard of the lower
    end, ulps of the largest mass, which falls as h, over the atoms a read crosses, which grow as 1 / h) the next
    round is predicted: the rest of the bracket, the discretisation's, closes as h^2 (both ends are second order),
    so the next bracket is at best about (gap - floor) / MAX_JUMP^2 + floor. Without it, the last round's narrowing
    judges: a bracket that a finer grid left nearly as wide (the h^2 law promises 1.9x or more for a round of 1.37x)
    has met a floor. The observed narrowing is noisy at the floor: sigma 1, q 1e-5, k 5, relaxed, T 1e6, kappa 1e-6,
    the bracket 1.6e-3 relative wide, 1.5e-3 of it guard, narrowed 1.33x by chance and took a third round of 7e6
    points for 1.6e-3 again; the prediction stops after the second.

    Either way the first round is never the last while a bracket is open (``last_gap`` None): the guard follows the
    round-off measured in each composition, which moves by up to 2x from one composition to the next, and the best
    ends of two rounds narrow a bracket that one round's draw held open (sigma 1, q 1e-6, T 1e6, kappa 1e-6:
    2.3e-3 relative, 2.1e-3 of it guard, then 1.9e-3).

    ``floor`` is passed only where every finer round refine may take composes the way this one did
    (:func:`_same_route`). Where it does not (a long run whose next round composes in two levels: its last window
    several times shorter, its round-off and guard 100x smaller), refine takes the next round without asking (sigma
    5, q 1e-5, k 5, relaxed, T 1e6, kappa 1e-6: 1.1e-3 relative, all of it guard, then 1e-5 in two levels). Without
    a floor at all (epsilon's evaluations report none), the observed narrowing judges.
    """
    if last_gap is None:
        return False
    open_ = ~ok
    if floor is not None:
        held = np.minimum(floor, gap)
        predicted = (gap - held) / MAX_JUMP**2 + held
        with np.errstate(invalid="ignore"):
            return bool(np.all(~open_ | (gap < STALL_SHRINK * predicted)))
    with np.errstate(invalid="ignore", divide="ignore"):
        shrink = last_gap / gap
    return bool(np.all(~open_ | (shrink < STALL_SHRINK)))


def _jump(closing: np.ndarray, aim: np.ndarray, ok: np.ndarray, max_jump: float) -> float:
    """How much finer :func:`refine`'s next round is: where h^2 narrows each open bracket's ``closing`` part to
    ``aim``, with 15% margin, at least 1.25 and at most ``max_jump``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.sqrt(closing / aim)
    need = float(np.max(np.where(ok | ~np.isfinite(need), 1.0, need)))
    return min(max(1.15 * need, 1.25), max_jump)


def _wide_probe_jump(gap: np.ndarray, floor: np.ndarray, tol: np.ndarray, ok: np.ndarray, max_jump: float) -> float:
    """The jump from a wide probe (``WIDE_PROBE_PAST_FLOOR``), per open bracket ``gap`` wide with ``floor`` of it
    the round-off guard's and ``tol`` the width the stop rule accepts. A bracket whose floor alone is wider than
    ``tol`` cannot close: the jump aims its other part at 0.7 ``tol`` (it then ends at its floor, see
    :func:`_stalled`). One whose floor, doubled (the guard follows the round-off measured in each composition,
    which moves by up to 2x from one to the next), leaves room below 0.7 ``tol``: its other part aims at that room.
    Either way that part closes as h^WIDE_PROBE_ORDER. Any other bracket asks for the whole-bracket h^2 jump."""
    held = np.minimum(floor, gap)
    aim = 0.7 * tol
    room = aim - 2.0 * held
    closing = gap - held
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(held >= tol, (closing / aim) ** (1.0 / WIDE_PROBE_ORDER),
                        np.where(room > 0, (closing / room) ** (1.0 / WIDE_PROBE_ORDER), np.sqrt(gap / aim)))
    need = float(np.max(np.where(ok | ~np.isfinite(need), 1.0, need)))
    return min(max(1.15 * need, 1.25), max_jump)


def _kept_floor(keep: np.ndarray, new, old) -> np.ndarray:
    """The guard's share of the lower ends :func:`refine` keeps: this round's (``new()``) where ``keep``, else the
    last round's (``old()``, called only where some entry needs it)."""
    fresh = np.asarray(new(), dtype=float)
    return fresh if np.all(keep) else np.where(keep, fresh, np.asarray(old(), dtype=float))


#: :func:`refine` runs its rounds inside :func:`dpaudit.heap.reuse_freed_memory` from the first round whose FFT
#: windows (:func:`_window_estimate`) reach this many points: from 2^14 points (128 KiB arrays, glibc's first mmap
#: threshold) its arrays came fresh from the kernel at each call (349 page faults per epsilon at sigma 5, q 0.1,
#: T 1000, a window of 30720 points), while below it the block's own cost (its ``mallopt`` calls consolidate the
#: heap, and it reads the resident set twice: 0.2 ms right after another library's large computation, its caches
#: cold) is all it adds. Half that, for the estimate's error (within 1.5x of the windows formed).
HEAP_BLOCK_WINDOW = 1 << 13


def refine(pair_or_run, steps: int | None, evaluate, *, rtol: float = 5e-4, atol: float = 1e-12,
           max_halvings: int = 6, start: float | None = None, long_probe: bool = False) -> Refined:
    """Refine the grid step until the result is accurate to ``rtol`` (relative) or ``atol`` (absolute).

    ``evaluate(h)`` returns an array of sound upper bounds computed at grid step h (monotone in h: nesting), or a
    pair (upper, lower, trust) with sound lower bounds and a mask ``trust`` of the entries whose lower bound is
    meant to converge, or (upper, lower, trust, floor) with ``floor`` the part of each bracket that a finer grid
    does not narrow (a round-off allowance, about the same at every h: see :func:`_stalled`), or a function that
    returns it, called only when the stop rule needs it. Converged: for
    trusted entries, upper - lower is within tolerance (a proven bracket); for the others, two nested grids agree
    within tolerance. From a bracket too wide the step jumps to where h^2
    closes it; otherwise it halves. The first grid step is :func:`initial_h_run`'s, or a finer one where the
    windows stay small (``SMALL_WINDOW``). ``start``: the first grid step instead (e.g. the one another bound of the
    same run ended at, whose compositions are cached: the round there costs only its reads); the refinement goes on
    from it as from any round, so the result is as sound and as accurate whatever the start. ``long_probe``: probe
    long one-level runs with windows of ``LONG_WINDOW`` points or more too (:func:`_long_one_level`; ReRo's callers).
    """
    run = _as_run(pair_or_run, steps)
    # The rounds make and drop arrays of up to hundreds of MiB: from the first round whose windows reach
    # HEAP_BLOCK_WINDOW points on, they run in the heap block (see dpaudit.heap; the same numbers either way), unless
    # glibc already keeps arrays of that size for reuse outside blocks (dpaudit.heap.heap_keeps: after an earlier
    # block set the policy, windows up to 2^18 points; the block's own cost, its mallopt calls and two reads of
    # the resident set, is then all it would add). BLAS is held to one thread only around the matrix-vector
    # products that use it (_skip_blocks, _accurate_power), not over the whole refinement: threadpoolctl's limit
    # cost 0.13 ms a call right after another library's large computation, for nothing where no product runs.
    with contextlib.ExitStack() as block:
        opened = False

        def in_block(h: float):
            nonlocal opened
            if not opened:
                window = _window_estimate(run, h)
                if window >= HEAP_BLOCK_WINDOW and not heap_keeps(int(8 * window)):
                    block.enter_context(reuse_freed_memory())
                    opened = True
            return evaluate(h)

        return _refine(run, in_block, rtol=rtol, atol=atol, max_halvings=max_halvings, start=start,
                       long_probe=long_probe)


def _refine(run: tuple[tuple[StepPair, int], ...], evaluate, *, rtol: float, atol: float, max_halvings: int,
            start: float | None, long_probe: bool) -> Refined:
    """The rounds of :func:`refine` (its arguments; ``run`` a tuple of (pair, steps) phases)."""
    if start is not None and not (isinstance(start, (int, float)) and math.isfinite(start) and start > 0):
        raise invalid("start", start, "a finite grid step > 0 (nats)", "pass the grid step another bound ended at, "
                      "or None")
    # Never coarser than MAX_GRID_STEP, whoever chose the step: past e^709 the connect-the-dots split overflows.
    h = min(initial_h_run(run) if start is None else float(start), MAX_GRID_STEP)
    # The first round is a probe: the bracket closes as h^2, so its width at h says which h closes it (below).
    # Where the composed window stays small even at the grid step a refinement usually ends at (about h / 2 for
    # rtol 5e-4 and h / 4.5 for 1e-4), the probe would cost as much as the answer: start there instead. Elsewhere
    # the probe is taken PROBE_COARSENING times coarser (its cost, windows and per-step grids, falls as 1 / h; where
    # that bracket is already narrow enough, e.g. short runs of heavy-tailed steps, it is the answer), and the jump
    # from it may go as much further. Only for runs composed in one level: a long run's bracket at the coarse step
    # (one level there, two at the fine one) does not close as h^2 from it, and the jump it predicts falls short
    # (sigma 0.5, q 1e-3, T 1e5: one round more).
    first = 2.0 * math.sqrt(5e-4 / rtol)
    coarsened = 1.0  # how much coarser than initial_h_run's step the probe is
    wide_probe = False
    # A run short enough for one level whose per-step grid stays short too (no heavy tail: its cost is the
    # composed window's) starts there up to twice that window (ONE_LEVEL_SMALL_WINDOW): the probe's round would cost
    # a third to a half of the answer's, and from sigma 0.5 to 50 at q 1e-3 to 0.5 the bracket at h / first is
    # within 1e-4 or nearly (the step the probe route ends at is 0.8 to 1.1 times h / first at T = 1000). A
    # heavy-tailed step (small sigma and q: sigma 0.2, q 1e-3, T 1000 ends 12 times coarser) keeps the probe.
    window = _window_estimate(run, h / first) if start is None else math.inf
    if window <= SMALL_WINDOW or (window <= ONE_LEVEL_SMALL_WINDOW and sum(s for _, s in run) < TWO_LEVEL_STEPS
                                  and _widest_step(run) / (h / first) <= LATTICE_FULL):
        h /= first
    elif start is None and (sum(s for _, s in run) < TWO_LEVEL_STEPS or _wide_one_level(run, h, window / first)
                            or (long_probe and _long_one_level(run, h, window / first))):
        # A window of WIDE_WINDOW points or more at initial_h_run's step (a heavy-tailed step at small q: sigma 0.5,
        # q 1e-6 spans 6.7 nats of loss at h = 5.9e-7, 1.1e7 points) takes a probe WIDE_PROBE_COARSENING times
        # coarser, long runs too where both steps compose in one level (see _wide_one_level).
        wide_probe = WIDE_PROBE and window / first >= WIDE_WINDOW
        coarsened = max(1.0, min(WIDE_PROBE_COARSENING if wide_probe else PROBE_COARSENING, MAX_GRID_STEP / h))
        # A wide probe whose garbling drops mass reads no lower end: halve its coarsening until the garbling
        # holds, down to PROBE_COARSENING (relaxed, sigma 0.5, q 1e-6: 8 times, see _garbling_holds).
        while (wide_probe and GARBLED_PROBE and coarsened > PROBE_COARSENING
               and not _garbling_holds(run, h * coarsened)):
            coarsened /= 2.0
        h *= coarsened
    # The jump from the probe may go MAX_JUMP further than initial_h_run's step; from a wide probe no further than
    # that step (the plain route's first round): there its bracket closes to a round-off floor that the probe, whose
    # composition has no floor yet, does not see (relaxed, sigma 0.5, q 1e-6, T 1e6, kappa 1e-6: 3.8e-2 relative at
    # 16 times the step, all of it discretisation, asked for a jump 22 times finer, to a window of 1.6e7 points,
    # for a bracket of 1.4e-3, nearly all of it the guard's floor).
    max_jump = coarsened * (1.0 if wide_probe else MAX_JUMP)

    def call(hh: float):
        got = evaluate(hh)
        if isinstance(got, tuple):
            up, lo, trust, *held = got
            floor = (held[0] if callable(held[0]) else functools.partial(np.asarray, held[0], dtype=float)
                     ) if held else None
            return np.asarray(up, dtype=float), np.asarray(lo, dtype=float), np.asarray(trust, dtype=bool), floor
        up = np.asarray(got, dtype=float)
        return up, None, np.zeros(up.shape, dtype=bool), None

    for attempt in range(COARSEN_ATTEMPTS + 1):
        try:
            upper, lower, trust, floor = call(h)
            break
        except WindowTooLargeError:
            # A coarser grid is still sound (only looser): widen h until the composed window fits.
            if attempt == COARSEN_ATTEMPTS or h >= MAX_GRID_STEP:
                raise
            h = min(4 * h, MAX_GRID_STEP)
    coarse = None
    last_gap = None  # the trusted brackets' widths after the previous round
    for _ in range(max_halvings + (coarsened > 1.0)):  # (the coarsened probe's round comes on top)
        with np.errstate(invalid="ignore"):
            if lower is not None:
                gap = upper - lower
                bracket_ok = (gap <= rtol * np.abs(upper)) | (gap <= atol)
            else:
                bracket_ok = np.zeros(upper.shape, dtype=bool)
            if coarse is not None:
                err = np.abs(coarse - upper)
                nested_ok = (err <= rtol * np.abs(upper)) | (err <= atol) | ~np.isfinite(upper)
            else:
                nested_ok = np.zeros(upper.shape, dtype=bool)
            ok = np.where(trust, bracket_ok, nested_ok)
        if np.all(ok):
            return Refined(value=upper, coarse=upper if coarse is None else coarse, h=h, lower=lower)
        # Nested grids (entries without a trusted bracket) halve h, except right after a coarsened probe, which
        # goes straight back to initial_h_run's step.
        factor = 2.0 if max_jump == MAX_JUMP else max(2.0, coarsened)
        if lower is not None and np.all(ok | trust):
            # Only bracketed entries are left: the bracket closes as h^2 (both ends are second order), so jump to
            # the h that should close it (with 30% margin) instead of halving step by step; brackets need no nested
            # grids, so a bracket just too wide takes a step smaller than a halving. The width aimed at is the one
            # the stop rule accepts, rtol relative or atol absolute, whichever is larger (aiming at rtol alone
            # overshot where atol decides: sigma 50, q 1e-5, T 1e6, epsilon 2.5e-4, took a 3x finer round of 3.8e6
            # points for a bracket 1.2e-7 wide against atol 1e-7).
            # Where every round the jump may reach composes as this one did, the guard's share of each bracket
            # (``floor``) stays put on a finer grid: only the rest, the discretisation's, closes as h^2, and
            # the jump aims at that part (JUMP_PAST_FLOOR; False: at the whole bracket, the plain route). At a
            # floor wider than the tolerance the whole bracket asked for the largest jump, which narrowed
            # nothing (relaxed, sigma 0.5, q 1e-6, T 1e6: the probe at 4.2e-6 within rtol at kappa 1e-3 and
            # 0.1, kappa 1e-6 1.5e-2 relative, all but 1e-5 of it guard, took a round 8 times finer, 1.1e7
            # points, for 1.4e-2).
            # It is taken only where it is at least FLOOR_JUMP_SAVING times shorter than the whole bracket's:
            # the h^2 law is only roughly met (worst case, k 5, sigma 0.5, q 1e-6, T 1e6: the probe's bracket at
            # kappa 0.1 narrowed 5.8x for a 3.4x jump, 11.5x promised), and a jump 6% shorter left it at 5.1e-4
            # against rtol 5e-4, for a third round.
            routed = (JUMP_PAST_FLOOR and floor is not None and _same_route(run, h)
                      and _block_size(run, h / max_jump) == _block_size(run, h))
            held = np.asarray(floor(), dtype=float) if routed else None
            tol = np.maximum(rtol * np.abs(upper), atol) if JUMP_TO_ATOL else rtol * np.abs(upper)
            aim = 0.7 * tol
            factor = _jump(gap, aim, ok, max_jump)
            if held is not None:
                past = _jump(gap - np.minimum(held, gap), aim, ok, max_jump)
                factor = past if FLOOR_JUMP_SAVING * past <= factor else factor
                if wide_probe and last_gap is None and WIDE_PROBE_PAST_FLOOR:
                    factor = min(factor, _wide_probe_jump(gap, held, tol, ok, max_jump))
            # A floor that the next round's route leaves behind (one level here, two there: a guard ~100x smaller)
            # says nothing of that round, and the last round's narrowing, a draw of the round-off, neither: take it
            # (sigma 5, q 1e-5, k 5, relaxed, T 1e6, kappa 1e-6: 1.1e-3 relative, then 1e-5 in two levels; on
            # another machine's FFT the observed narrowing stopped it at 1.7e-3).
            judged = floor is not None and last_gap is not None
            same_route = judged and _same_route(run, h)
            if (same_route or not judged) and _stalled(
                    gap, (np.asarray(floor(), dtype=float) if held is None else held) if same_route else None,
                    last_gap, ok):
                return Refined(value=upper, coarse=upper if coarse is None else coarse, h=h, lower=lower)
        last_gap = gap if lower is not None else None
        max_jump = MAX_JUMP
        while True:
            try:
                finer = call(h / factor)
                break
            except WindowTooLargeError:
                if factor > 2.0:  # a smaller step may still fit, and narrows the bracket more than stopping here
                    factor = max(factor / 2.0, 2.0)
                    continue
                # The finer grid does not fit: keep the sound value. Without a lower bound no error estimate is
                # available, so the reported error is the whole value (the bracket widens to [0 or kappa, value]).
                return Refined(value=upper, coarse=np.zeros_like(upper) if coarse is None else coarse, h=h,
                               lower=lower)
        coarse = upper
        # Every round's ends are sound, so the best of each is too: the smaller upper end and the larger lower end
        # (round-off, not the discretisation, can make a finer grid's end a little worse: see STALL_SHRINK).
        new_upper, new_lower, trust, new_floor = finer
        # (only where a proven bracket says how close it is: a nested-grid estimate compares this round's own value
        # with the last one, and the smaller of the two would read as converged, error 0)
        upper = np.where(trust, np.fmin(upper, new_upper), new_upper)
        if floor is not None and new_floor is not None and lower is not None and new_lower is not None:
            # the guard's part of the lower end kept (read when asked for; the last round's only where one of its
            # lower ends is kept: that read forms its top atoms again, the one kept read being this round's)
            floor = functools.partial(_kept_floor, new_lower >= lower, new_floor, floor)
        else:
            floor = new_floor
        lower = None if new_lower is None else (new_lower if lower is None else np.fmax(lower, new_lower))
        h /= factor
    # Not converged within max_halvings: the finest value stands (sound), with its honest error.
    return Refined(value=upper, coarse=upper if coarse is None else coarse, h=h, lower=lower)


# -- epsilon ------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EpsilonBound:
    """epsilon at ``target_delta`` and which accountant gave it (``"pld"`` or ``"rdp"``): a sound upper bound."""

    value: float
    accountant: str
    target_delta: float
    records_per_patient: int = 1
    label: str = "sound upper bound"

    def __float__(self) -> float:
        return self.value


def epsilon_bound(noise_multiplier: float | None = None, sampling_probability: float | None = None,
                  steps: int | None = None, target_delta: float | None = None, *, records_per_patient: int = 1,
                  schedule=None) -> EpsilonBound:
    """:func:`epsilon_pld` with its label: the value and the accountant that gave it.

    With ``records_per_patient`` k > 1 the guarantee is per patient (k records move together), from the tight
    PLD of the k-record pair; where the loss cap makes that PLD infinite or loose (small sigma), the smaller of it
    and the RDP epsilon of a dominating single-record mechanism (:func:`dominating_schedule`: sigma / k,
    1 - (1 - q)^k), both sound upper bounds. ``schedule``: a :class:`dpaudit.bounds.Schedule` in place of
    (noise_multiplier, sampling_probability, steps).
    """
    from dpaudit.bounds._mechanism import check_delta, check_records_per_patient
    from dpaudit.bounds.schedule import resolve

    sched = resolve(noise_multiplier, sampling_probability, steps, schedule)
    if target_delta is None:
        raise invalid("target_delta", None, "given", f"pass the delta at which epsilon is reported, {DELTA_EXAMPLE}")
    target_delta = check_delta(target_delta)
    k = check_records_per_patient(records_per_patient)
    run = sched.run(k)
    if k != 1:
        try:
            value = float(epsilon_pld_refined(run, None, target_delta).value[0])
        except (WindowTooLargeError, PileBoundaryError):  # no PLD at this grid: the RDP below is still sound
            value = math.inf
        total = sum(steps for _, steps in run)
        if math.isfinite(value) and not any(_capped(pair, total) for pair, _ in run):
            return EpsilonBound(value, "pld", target_delta, k)
        # Where the loss cap made the k-record PLD infinite or loose (small sigma): the RDP of a mechanism that
        # dominates it (dominating_schedule), a sound upper bound too; the smaller of the two is reported.
        rdp = _epsilon_rdp_dominating(sched, k, target_delta)
        return EpsilonBound(rdp, "rdp", target_delta, k) if rdp < value else EpsilonBound(value, "pld", target_delta, k)
    try:
        tight = float(epsilon_pld_refined(run, None, target_delta).value[0])
    except (WindowTooLargeError, PileBoundaryError):
        tight = math.inf  # the PLD does not fit even on a 64x coarser grid (or cannot be formed); RDP is still sound
    total = sum(steps for _, steps in run)
    if math.isfinite(tight) and not any(_capped(pair, total) for pair, _ in run):
        return EpsilonBound(tight, "pld", target_delta)  # uncapped PLD: within 1e-4 of exact, RDP never below it
    # Sound upper bound = min of two sound upper bounds on the same epsilon (PLD above; RDP: Mironov, Talwar, Zhang
    # arXiv 1908.10530v1 with the conversion of Balle et al. arXiv 1905.09982v2, Theorem 21). RDP wins only where
    # the loss cap made the PLD pessimistic (see epsilon_pld); the reported number stays a sound upper bound.
    from dpaudit.bounds.rdp import epsilon_rdp

    rdp = epsilon_rdp(target_delta=target_delta, schedule=sched)
    return EpsilonBound(rdp, "rdp", target_delta) if rdp <= tight else EpsilonBound(tight, "pld", target_delta)


def _epsilon_rdp_dominating(schedule, k: int, target_delta: float) -> float:
    """The RDP epsilon of a mechanism that dominates the k-record run: :func:`dominating_schedule`'s where every
    phase's sigma / k is at least the accountants' floor (``MIN_NOISE_MULTIPLIER``); a phase below it (k above
    sigma / 1e-4, e.g. k 1e5 at sigma 1) counts as the Gaussian mechanism of noise multiplier sigma / k without
    sampling, RDP alpha k^2 / (2 sigma^2) per step (Mironov 2017, arXiv 1702.07476v3, Proposition 7), which
    dominates the sampled one: (P', Q) of dominating_schedule is (N(k, sigma^2), N(0, sigma^2)) post-processed by
    the kernel that replaces x by a fresh N(0, sigma^2) draw with probability 1 - q' (it keeps N(0, sigma^2)), so
    the data-processing inequality bounds its Renyi divergences (both directions) by the Gaussian pair's."""
    from dpaudit.bounds.rdp import DEFAULT_ORDERS, epsilon_of_rdp, epsilon_rdp, rdp_per_step
    from dpaudit.config import MIN_NOISE_MULTIPLIER

    if all(p.noise_multiplier / k >= MIN_NOISE_MULTIPLIER for p in schedule.phases):
        return epsilon_rdp(target_delta=target_delta, schedule=dominating_schedule(schedule, k))
    orders = np.asarray(DEFAULT_ORDERS)
    rdp = np.zeros(orders.size)
    for p in schedule.merged().phases:
        sigma_k = p.noise_multiplier / k
        if sigma_k >= MIN_NOISE_MULTIPLIER:
            (dom,) = dominating_schedule(type(schedule)((p,)), k).phases
            rdp = rdp + rdp_per_step(dom.noise_multiplier, dom.sampling_probability) * p.steps
        else:
            rdp = rdp + orders / (2 * sigma_k ** 2) * p.steps  # rdp_per_step's q = 1 case, below the floor
    return epsilon_of_rdp(rdp, target_delta)


def dominating_schedule(schedule, records_per_patient: int):
    """A single-record DP-SGD schedule whose every phase dominates that phase's k-record pair (``records_per_patient``
    = k, aligned gradients, each record sampled on its own): noise multiplier sigma / k, sampling probability
    1 - (1 - q)^k. Its accountants' epsilon (e.g. RDP) is then a sound upper bound on the k-record epsilon.

    Proof (a garbling): per step the k-record pair is P = sum_j w_j N(j, sigma^2) with w_j = Binom(j; k, q), against
    Q = N(0, sigma^2) (sensitivity in units of the clip norm). Let q' = 1 - (1 - q)^k = 1 - w_0 and
    P' = (1 - q') N(0, sigma^2) + q' N(k, sigma^2). The kernel K that draws j >= 1 with probability w_j / q' and maps
    x to (j / k) x + N(0, sigma^2 (1 - j^2 / k^2)) keeps N(0, sigma^2) and sends N(k, sigma^2) to
    sum_j (w_j / q') N(j, sigma^2): K Q = Q and K P' = P. So (P, Q) and (Q, P) are post-processings of (P', Q) and
    (Q, P'), and every Renyi divergence of them is at most theirs (the data-processing inequality; van Erven and
    Harremoes, IEEE Trans. Inf. Theory 2014); Renyi DP adds up over the steps (Mironov 2017, arXiv 1702.07476v3,
    Proposition 1), so the dominating schedule's RDP bounds the k-record run's at every order. (P', Q) scaled by
    1 / k is the Poisson-subsampled Gaussian with noise multiplier sigma / k and sampling probability q'. Checked
    without the proof in the tests: one step's hockey-stick divergences by quadrature."""
    from dpaudit.bounds.schedule import Phase, Schedule

    k = int(records_per_patient)
    return Schedule(tuple(Phase(p.noise_multiplier / k, -math.expm1(k * math.log1p(-p.sampling_probability))
                                if p.sampling_probability < 1.0 else 1.0, p.steps) for p in schedule.phases))


def epsilon_pld(noise_multiplier: float | None = None, sampling_probability: float | None = None,
                steps: int | None = None, target_delta: float | None = None, *, schedule=None) -> float:
    """Tight epsilon at ``target_delta`` for DP-SGD (Poisson sampling, add/remove adjacency): a sound upper bound.

    The maximum over the add and the remove direction of the smallest eps with delta(eps) <= target_delta, each
    from the pessimistic connect-the-dots PLD composed ``steps`` times (module notes), refined until the proven
    bracket is within 1e-4 relative (or ``EPSILON_ATOL``, 1e-7, absolute: epsilon below 1e-3); the finer (smaller,
    still sound) value is returned.

    Parameters
    ----------
    noise_multiplier:
        sigma > 0.
    sampling_probability:
        q in (0, 1].
    steps:
        T >= 1.
    target_delta:
        delta in (0, 1).
    schedule:
        A :class:`dpaudit.bounds.Schedule` (phases with their own sigma, q and steps, e.g. Opacus' accountant
        history) in place of (noise_multiplier, sampling_probability, steps): the phases' PLDs are composed exactly.

    Returns
    -------
    float
        epsilon, a sound upper bound: min(tight PLD, RDP) (:func:`epsilon_bound` says which one). Both are sound upper bounds on the same epsilon, so
        their minimum is too. The PLD is the smaller one except at tiny noise (sigma below about 0.04, e.g. the
        seed paper's epsilon = 1e9), where ``LOSS_CAP`` sends per-step losses above 700 to the infinity atom and the
        PLD becomes infinite or loose; there the value is the RDP bound (Opacus' orders, :func:`epsilon_rdp`).

    References
    ----------
    Doroshenko et al., "Connect the Dots: Tighter Discrete Approximations of Privacy Loss Distributions",
    PETS 2022 (arXiv 2207.04380). Koskela, Jalko, Honkela, "Computing Tight Differential Privacy Guarantees Using
    FFT", AISTATS 2020.
    """
    return epsilon_bound(noise_multiplier, sampling_probability, steps, target_delta, schedule=schedule).value


def rdp_fallback_causes(schedule, target_delta: float, records_per_patient: int = 1) -> tuple[str, ...]:
    """Why :func:`epsilon_bound` may report RDP rather than the tight PLD for this run, in words: the loss cap
    (small sigma: per-step losses above :data:`LOSS_CAP` join the infinity atom, so the PLD is pessimistic), and a
    ``target_delta`` at or below :data:`INF_BUDGET`, the mass the discretisation may send to the infinity atom
    (the PLD's epsilon is then infinite whatever the noise). Empty when neither holds (the PLD is then finite
    unless its grid does not fit, the one remaining cause, named last)."""
    run = schedule.run(records_per_patient)
    total = sum(steps for _, steps in run)
    causes = []
    if any(_capped(pair, total) for pair, _ in run):
        causes.append(f"per-step privacy loss above {LOSS_CAP:g} counted as infinite at this noise")
    if target_delta <= INF_BUDGET:
        causes.append(f"target_delta {target_delta:g} is at or below {INF_BUDGET:g}, the probability the PLD may "
                      "count as infinite loss, where its epsilon can be infinite at any noise")
    return tuple(causes) or ("the PLD's grid does not fit this run",)


def _capped(pair: StepPair, steps: int = 1) -> bool:
    """Whether the per-step loss exceeds LOSS_CAP with Q-mass above the tail budget (sigma below ~0.04).

    ``steps``: the run's length, whose per-step PLDs cut their tails at the budget INF_BUDGET / steps (cached,
    :func:`_tail_loss`): that cut lies further out, so where its loss is a nat or more below the cap, the cut at
    INF_BUDGET is below the cap too (L is increasing; the margin is far above its round-off), without forming it."""
    if steps > 1 and _tail_loss(pair, INF_BUDGET / steps) <= LOSS_CAP - 1.0:
        return False
    return _tail_loss(pair, INF_BUDGET) > LOSS_CAP


#: :func:`epsilon_pld_refined` first bounds a direction not yet refined on a grid this many times coarser (None: never),
#: which settles it where its upper end lies below the other direction's lower end. At 8x the composition costs
#: about a third of the fine one (per-step grid and window 8x shorter, the fixed costs stay), and the upper end is
#: still within a few 1e-3 relative of the fine one (the error grows as h^2): the add direction of every
#: single-round point of the benchmark's grid is settled there. Never coarser than refine's probe
#: (``PROBE_COARSENING`` times :func:`initial_h_run`'s step).
SETTLE_COARSENING: float | None = 8.0
#: ... or as much coarser as that limit allows, where that is at least this (a round at initial_h_run's step, the
#: first and often the only one of a long run, T >= 1024: sigma 0.5, q 1e-6, T 1e6 settles the add direction 4x
#: coarser at 0.05 s, its epsilon 0.018 against the remove direction's 0.027, instead of 0.6 s on the fine grid).
SETTLE_COARSENING_MIN = 4.0


#: :func:`epsilon_pld_refined` settles a direction from the other direction's upper end of the same round first
#: (:meth:`DiscretePld.swapped_delta`: the add pair is the remove pair swapped), before any composition of its own
#: (False: only the coarse settling composition below, the route before). A settled direction's epsilon is proven at
#: most the other's lower end, so the value is the other direction's upper end: the same as the route before, or
#: smaller where that route's own upper end of the settled direction came out above it (still sound either way);
#: sigma 5, q 0.1, T 10 to 1000 saved its coarse composition, 0.2-0.4 ms of 2-3 ms. Where the read's round-off
#: allowance is too wide (long runs, deep windows: :meth:`DiscretePld.swapped_delta`) the coarse route settles.
SWAPPED_SETTLE = True


#: :func:`epsilon_pld_refined` stops on a proven bracket within ``rtol`` relative or this many nats absolute,
#: whichever is larger: it matters only for epsilon below 1e-3 (1e-4 relative of 1e-3), where it is at most a few
#: units of the 4th significant digit shown. Below it the bracket may stop narrowing altogether (sigma 50, q 1e-5,
#: T 1e6: epsilon 2.5e-4, both ends converge 5.8e-8 apart, the round-off allowances of 1e6 steps; two more rounds
#: took 6 s of 9 s and narrowed it 1.8x, then 1.08x).
EPSILON_ATOL = 1e-7


def epsilon_pld_refined(pair_or_run, steps: int | None, target_delta: float, *, rtol: float = 1e-4) -> Refined:
    """epsilon at ``target_delta`` with its nested-grid error (see :func:`epsilon_pld`); ``pair_or_run`` is a
    :class:`StepPair` with ``steps``, or a run (a tuple of (pair, steps) phases)."""
    run = _as_run(pair_or_run, steps)
    # q = 1 worst case everywhere: the Gaussian mechanism is symmetric, both directions coincide.
    symmetric = all(p.sampling_probability == 1.0 and not p.relaxed for p, _ in run)

    directions = ("remove",) if symmetric else ("remove", "add")
    latest: dict[str, tuple[float, float]] = {}  # direction -> (upper, lower) at the finest grid it was refined to
    # The coarse settling grid is never coarser than refine's own coarsened probe: a round on the probe's grid is
    # cheap already (small windows), and a grid much coarser than it rarely settles anything.
    settle_limit = 0.0 if SETTLE_COARSENING is None else PROBE_COARSENING * initial_h_run(run)
    total_steps = sum(steps for _, steps in run)

    def evaluate(h: float):
        # The garbled PLDs of both directions give a sound lower bound (delta only falls under garbling), so the
        # refinement stops on a proven bracket: |epsilon - exact| <= upper - lower <= rtol * upper. A direction whose
        # upper bound is at or below the best lower bound cannot be the maximum (its exact epsilon is below the
        # other's): it keeps the bracket it has (or none) and only the other is refined (the maximum is the same).
        # The direction with the larger upper end so far goes first (the remove direction in the first round: for
        # the Poisson-subsampled Gaussian it is the larger one, Mironov, Talwar, Zhang, arXiv 1908.10530v1,
        # Theorem 5 for RDP; only an order, any order gives the same maximum). A direction not yet bounded is first
        # composed SETTLE_COARSENING times coarser (connect-the-dots is sound at any grid step, and that costs a
        # fraction of the fine composition): where that upper end is already below the other's lower end, the
        # direction is settled without its fine composition.
        order = sorted(directions, key=lambda d: -latest[d][0] if d in latest else 0.0)
        composed_here: dict[str, DiscretePld] = {}  # this round's upper-end compositions, by direction
        for d in order:
            best_lower = max((lo for _, lo in latest.values()), default=-math.inf)
            if d in latest and latest[d][0] <= best_lower:
                continue
            # A direction not yet bounded, with the other one composed at this grid step: its delta at the best
            # lower end, read off the other direction's upper end (the swapped pair: DiscretePld.swapped_delta),
            # at most target_delta settles it there, without a composition of its own (its epsilon is then at most
            # best_lower; where that read does not settle it, the coarse composition below may).
            if SWAPPED_SETTLE and d not in latest and best_lower > -math.inf and best_lower >= 0.0:
                other = next((pld for o, pld in composed_here.items() if o != d), None)
                if other is not None and other.swapped_delta(best_lower, total_steps) <= target_delta:
                    latest[d] = (best_lower, -math.inf)
                    continue
            # (up to the limit: a round at initial_h_run's step, the first of a long run, settles 4x coarser)
            settle = 0.0 if SETTLE_COARSENING is None else min(SETTLE_COARSENING, settle_limit / h)
            if d not in latest and best_lower > -math.inf and settle >= SETTLE_COARSENING_MIN:
                coarse = upper_epsilon(run, h * settle, d, target_delta)[0]
                if coarse <= best_lower:
                    latest[d] = (coarse, -math.inf)
                    continue
            # (both ends by the accurate route where the plain route's round-off matters at this delta: composed_for)
            # (no floor is reported to refine for the allowances: passed as one, its jumps past the floor took
            # sigma 0.344, q 2.47e-6, T 11136, delta 7.9e-7 to 1.7e7 points, 11.7 s for 3.3 s, the same bracket)
            upper, composed_here[d], accurate = upper_epsilon(run, h, d, target_delta)
            if upper <= best_lower:
                latest[d] = (upper, latest[d][1] if d in latest else -math.inf)
                continue
            lower = lower_epsilon(run, h, d, target_delta, upper, accurate)
            if d in latest:
                # Every round's ends are sound: keep the best of each (a finer round whose composition could only
                # keep plain powers may allow for more round-off than a coarser one did, up to +inf).
                upper, lower = min(upper, latest[d][0]), max(lower, latest[d][1])
            latest[d] = (upper, lower)
        upper = max(up for up, _ in latest.values())
        lower = max(lo for _, lo in latest.values())
        finite = math.isfinite(upper)
        return np.array([upper]), np.array([min(lower, upper)]), np.array([finite])

    return refine(run, None, evaluate, rtol=rtol, atol=EPSILON_ATOL)
