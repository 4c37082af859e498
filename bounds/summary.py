"""``bounds_summary``: every formal guarantee of one DP-SGD configuration, as one use case.

``dpaudit bounds`` renders it and the profile's bounds stage stores it: epsilon (labelled with the accountant that
gave it), the RDP epsilon Opacus reports, the worst-case and relaxed ReRo bounds at the given priors, and the
worst-case membership-inference curve. All are sound upper bounds for ``method="tight"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dpaudit.bounds.mia import MiaCurve, mia_curve
from dpaudit.bounds.pld import EpsilonBound, epsilon_bound, rdp_fallback_causes
from dpaudit.bounds.rdp import epsilon_rdp
from dpaudit.bounds.rero import MC_SAMPLES, ReRoBound, rero_bound
from dpaudit.bounds.schedule import Schedule, resolve
from dpaudit.errors import invalid
from dpaudit.heap import computing_block


@dataclass(frozen=True)
class BoundsSummary:
    """The guarantees of one DP-SGD run (sigma, q, steps) at ``target_delta`` and the priors ``worst_case.kappa``.

    ``epsilon``: per record (the accountant's, what training calibrates); ``epsilon_patient``: per patient when
    ``records_per_patient`` > 1, else None. ``epsilon_rdp``: per record, Opacus' RDP accountant. ``mia``: None
    when not asked for. ``schedule``: every phase of the run; for a schedule of several phases
    ``noise_multiplier`` and ``sampling_probability`` are those of the last phase and ``steps`` the total.
    """

    noise_multiplier: float
    sampling_probability: float
    steps: int
    target_delta: float
    records_per_patient: int
    epsilon: EpsilonBound
    epsilon_patient: EpsilonBound | None
    epsilon_rdp: float
    worst_case: ReRoBound
    relaxed: ReRoBound
    mia: MiaCurve | None
    schedule: Schedule | None = None

    @property
    def epsilon_of_unit(self) -> EpsilonBound:
        """epsilon of the privacy unit: per patient when a patient holds several records, else per record."""
        return self.epsilon if self.epsilon_patient is None else self.epsilon_patient

    @property
    def notes(self) -> tuple[str, ...]:
        mia_notes = self.mia.notes if self.mia is not None else ()
        extra = ()
        if self.epsilon_of_unit.accountant == "rdp":
            k = self.epsilon_of_unit.records_per_patient
            from dpaudit.config import MIN_NOISE_MULTIPLIER

            sched = self.schedule or resolve(self.noise_multiplier, self.sampling_probability, self.steps, None)
            floor = any(p.noise_multiplier / k < MIN_NOISE_MULTIPLIER for p in sched.phases)
            of = ("" if k == 1 else f" of a mechanism that dominates the {k}-record one (noise multiplier sigma / {k}, "
                  + (f"sampling probability 1: sigma / {k} is below {MIN_NOISE_MULTIPLIER:g}, the Gaussian mechanism "
                     f"of sensitivity {k})" if floor else f"sampling probability 1 - (1 - q)^{k})"))
            why = "; ".join(rdp_fallback_causes(sched, self.target_delta, k))
            extra = (f"epsilon: the PLD is looser than RDP here ({why}); the epsilon shown is the RDP value{of}, "
                     "a sound upper bound",)
        return tuple(dict.fromkeys(self.worst_case.notes + self.relaxed.notes + mia_notes + extra))

    @property
    def assumptions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.worst_case.assumptions + self.relaxed.assumptions))


@computing_block()  # one block for all its refinements (see dpaudit.heap)
def bounds_summary(noise_multiplier: float | None = None, sampling_probability: float | None = None,
                   steps: int | None = None, kappas: Sequence[float] | None = None, *, target_delta: float = 1e-5,
                   records_per_patient: int = 1, method: str = "tight", membership: bool = True,
                   schedule: Schedule | None = None, mc_samples: int = MC_SAMPLES,
                   progress: Callable[[int, int, str], None] | None = None) -> BoundsSummary:
    """Bound one DP-SGD configuration: epsilon, ReRo (both threat models) at ``kappas`` and, with
    ``membership``, the worst-case membership-inference curve. See :class:`BoundsSummary`. ``schedule``: a
    :class:`dpaudit.bounds.Schedule` of phases in place of (noise_multiplier, sampling_probability, steps).
    ``mc_samples``: the Monte Carlo draws of ``method="mc"`` (:func:`dpaudit.bounds.rero_bound`). ``progress``:
    called as progress(done, total, what) before each part (what: the part about to start) and once at the end."""
    sched = resolve(noise_multiplier, sampling_probability, steps, schedule)
    k = records_per_patient
    if kappas is None:
        raise invalid("kappas", None, "given", "pass the priors, e.g. [1e-3] or [1 / n_train]")
    run = {"schedule": sched}
    parts = ["epsilon per record", *(["epsilon per patient"] if k != 1 else []), "worst-case ReRo",
             *(["membership inference"] if membership else []), "RDP epsilon", "relaxed ReRo"]
    done = iter(range(len(parts) + 1))

    def step() -> None:
        i = next(done)
        if progress is not None:
            progress(i, len(parts), parts[i] if i < len(parts) else "done")

    step()
    eps = epsilon_bound(target_delta=target_delta, **run)
    if k != 1:
        step()
    eps_patient = epsilon_bound(target_delta=target_delta, records_per_patient=k, **run) if k != 1 else None
    last = sched.last
    step()
    worst = rero_bound(kappa=kappas, threat_model="worst_case", method=method, records_per_patient=k,
                       mc_samples=mc_samples, **run)
    # The MIA curve reads the worst-case ReRo curve of the same pair (gamma at kappa = FPR): its refinement starts at
    # the grid step the ReRo bound ended at (for method tight), where the composed PLDs are cached, and usually
    # ends there too (only the reads are new). Sound either way; tests/test_bounds_summary.py checks it against
    # mia_curve refined from its own start, within the brackets.
    if membership:
        step()
    mia = mia_curve(records_per_patient=k, grid_step=worst.discretisation, **run) if membership else None
    step()
    rdp = float(epsilon_rdp(target_delta=target_delta, **run))
    step()
    relaxed = rero_bound(kappa=kappas, threat_model="relaxed", method=method, records_per_patient=k,
                         mc_samples=mc_samples, **run)
    step()
    return BoundsSummary(
        noise_multiplier=float(last.noise_multiplier), sampling_probability=float(last.sampling_probability),
        steps=int(sched.steps), target_delta=float(target_delta), records_per_patient=int(k), epsilon=eps,
        epsilon_patient=eps_patient, epsilon_rdp=rdp, worst_case=worst, relaxed=relaxed, mia=mia, schedule=sched)


__all__ = ["BoundsSummary", "bounds_summary"]
