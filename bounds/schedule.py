"""DP-SGD schedules: runs whose noise multiplier or sampling probability change between phases.

A phase is (noise_multiplier, sampling_probability, steps); a schedule is the sequence of phases of one training run,
as Opacus' accountants record it (``accountant.history``: a list of ``(noise_multiplier, sample_rate, num_steps)``
tuples, one per change). Steps are independent given the model, so the run's privacy loss distribution is the
convolution of every step's PLD whatever the order (Koskela, Jalko, Honkela, AISTATS 2020, Section 3;
dp_accounting's ``PLDAccountant`` composes ``SelfComposedDpEvent`` phases the same way). Every bound in
:mod:`dpaudit.bounds` accepts ``schedule=`` in place of (noise_multiplier, sampling_probability, steps).

Nothing here does I/O: the CLI reads the JSON file and passes the parsed list to :meth:`Schedule.from_history`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dpaudit.bounds._mechanism import StepPair, check_noise_multiplier, check_q, check_steps
from dpaudit.errors import ConfigError, invalid


@dataclass(frozen=True)
class Phase:
    """``steps`` DP-SGD steps with one noise multiplier and one Poisson sampling probability."""

    noise_multiplier: float
    sampling_probability: float
    steps: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", check_noise_multiplier(self.noise_multiplier))
        object.__setattr__(self, "sampling_probability", check_q(self.sampling_probability))
        object.__setattr__(self, "steps", check_steps(self.steps))


@dataclass(frozen=True)
class Schedule:
    """The phases of one DP-SGD run, in training order (at least one).

    Examples
    --------
    >>> s = Schedule.from_history([[1.0, 0.01, 500], [0.8, 0.02, 250]])
    >>> s.steps, s.last.noise_multiplier
    (750, 0.8)
    >>> Schedule.single(1.0, 0.01, 1000).to_history()
    [[1.0, 0.01, 1000]]
    """

    phases: tuple[Phase, ...]

    def __post_init__(self) -> None:
        phases = tuple(self.phases)
        if not phases or not all(isinstance(p, Phase) for p in phases):
            raise invalid("schedule", self.phases, "a non-empty sequence of Phase(noise_multiplier, "
                          "sampling_probability, steps)", "pass at least one phase, e.g. --phase 1.0,0.01,1000")
        object.__setattr__(self, "phases", phases)

    @classmethod
    def single(cls, noise_multiplier: float, sampling_probability: float, steps: int) -> Schedule:
        return cls((Phase(noise_multiplier, sampling_probability, steps),))

    @classmethod
    def from_history(cls, history: Iterable[Any]) -> Schedule:
        """From Opacus' accountant history: ``[[noise_multiplier, sample_rate, steps], ...]`` (lists or tuples).

        Errors name the entry: a phase with zero steps (Opacus never records one) or a malformed entry is refused.
        """
        if isinstance(history, dict | str | bytes) or not isinstance(history, Iterable):
            raise invalid("history", history, "a list of [noise_multiplier, sampling_probability, steps] "
                          "entries (Opacus' accountant.history, whose sample_rate is the sampling_probability)", "save json.dumps(accountant.history) and pass that file")
        phases = []
        for i, entry in enumerate(history):
            if isinstance(entry, str | bytes | dict) or not isinstance(entry, Sequence) or len(entry) != 3:
                raise invalid(f"history[{i}]", entry, "[noise_multiplier, sampling_probability, steps]",
                              "each entry of Opacus' accountant.history is one such triple")
            try:
                phases.append(Phase(*entry))
            except ConfigError as exc:
                if exc.field is None or exc.allowed is None:
                    raise ConfigError(f"history[{i}]: {exc}") from None
                # The fix of a history entry is the history's, not a flag's (--sigma, --q cannot go with a history).
                raise invalid(f"history[{i}] {exc.field}", exc.value, exc.allowed,
                              "the history must be that of a DP-SGD run (every phase with noise_multiplier > 0, "
                              "sampling_probability in (0, 1], steps >= 1); without a history file, pass the run "
                              "as --sigma, --q and --steps") from None
        return cls(tuple(phases))

    def to_history(self) -> list[list[float | int]]:
        """The Opacus-style list (JSON-able): what a checkpoint stores."""
        return [[p.noise_multiplier, p.sampling_probability, p.steps] for p in self.phases]

    @property
    def steps(self) -> int:
        """Total number of steps."""
        return sum(p.steps for p in self.phases)

    @property
    def last(self) -> Phase:
        return self.phases[-1]

    def merged(self) -> Schedule:
        """Equal (noise_multiplier, sampling_probability) phases joined into one (composition is commutative), in
        order of first appearance: the same run, composed with fewer FFTs."""
        steps: dict[tuple[float, float], int] = {}
        for p in self.phases:
            key = (p.noise_multiplier, p.sampling_probability)
            steps[key] = steps.get(key, 0) + p.steps
        return Schedule(tuple(Phase(s, q, t) for (s, q), t in steps.items()))

    def with_last_noise(self, noise_multiplier: float) -> Schedule:
        """The same schedule with the last phase's noise multiplier replaced (calibration)."""
        last = self.last
        return Schedule((*self.phases[:-1], Phase(noise_multiplier, last.sampling_probability, last.steps)))

    def run(self, records_per_patient: int = 1, threat_model: str = "worst_case") -> tuple[tuple[StepPair, int], ...]:
        """The per-step pairs with their step counts (merged phases), as the PLD code composes them."""
        return tuple((StepPair(p.noise_multiplier, p.sampling_probability, records_per_patient, threat_model),
                      p.steps) for p in self.merged().phases)


def resolve(noise_multiplier: float | None, sampling_probability: float | None, steps: int | None,
            schedule: Schedule | Sequence[Phase] | None) -> Schedule:
    """The schedule a public function was called with: (sigma, q, T) or ``schedule=``, never both."""
    scalars = (noise_multiplier, sampling_probability, steps)
    if schedule is not None:
        if any(v is not None for v in scalars):
            raise invalid("schedule", "given with noise_multiplier/sampling_probability/steps",
                          "given alone", "pass either (noise_multiplier, sampling_probability, steps) or "
                          "schedule=, not both")
        return schedule if isinstance(schedule, Schedule) else Schedule(tuple(schedule))
    if any(v is None for v in scalars):
        missing = [n for n, v in zip(("noise_multiplier", "sampling_probability", "steps"), scalars, strict=True)
                   if v is None]
        raise invalid(missing[0], None, "given", "pass noise_multiplier, sampling_probability and steps, or "
                      "schedule=Schedule(...)")
    return Schedule.single(noise_multiplier, sampling_probability, steps)  # type: ignore[arg-type]


def schedule_of_checkpoint(checkpoint: Any) -> Schedule | None:
    """The schedule a dpaudit checkpoint was trained with: its stored ``phases`` (Opacus-style list) when it
    has them, else the single phase of its DP configuration; None for a non-private model."""
    phases = getattr(checkpoint, "phases", None)
    if phases:
        return Schedule.from_history(phases)
    dp = getattr(checkpoint, "dp", None)
    if dp is None or not dp.noise_multiplier:
        return None
    return Schedule.single(dp.noise_multiplier, dp.sampling_probability, dp.steps)


def phases_of_config(dp: Any) -> list[list[float | int]] | None:
    """What a checkpoint stores as ``phases`` for a single-phase DP-SGD configuration (None without DP)."""
    if dp is None or not dp.noise_multiplier:
        return None
    return Schedule.single(dp.noise_multiplier, dp.sampling_probability, dp.steps).to_history()
