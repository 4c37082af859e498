"""A small benchmark harness: run dpaudit and a reference side by side in one process, alternating.

Machines are noisy, so absolute times are not comparable across runs; the ratio measured in one run is.
Usage from a bench script::

    from harness import Comparison, report
    rows = [Comparison.run("point A", ours=lambda: f(...), reference=lambda: g(...), repeats=3)]
    report(rows)
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Comparison:
    name: str
    ours_s: list[float]
    reference_s: list[float]
    ours_value: Any = None
    reference_value: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours_s)

    @property
    def reference_median(self) -> float:
        return statistics.median(self.reference_s) if self.reference_s else float("nan")

    @property
    def speedup(self) -> float:
        """Reference time over our time: > 1 means dpaudit is faster."""
        return self.reference_median / self.ours_median

    @classmethod
    def run(cls, name: str, ours: Callable[[], Any], reference: Callable[[], Any] | None, repeats: int = 3,
            warmup: bool = False, **extra: Any) -> Comparison:
        """Time ``ours`` and ``reference`` alternately ``repeats`` times each (ours first, then reference)."""
        if warmup:
            ours()
            if reference is not None:
                reference()
        ours_s: list[float] = []
        ref_s: list[float] = []
        ours_value = ref_value = None
        for _ in range(repeats):
            t0 = time.perf_counter()
            ours_value = ours()
            ours_s.append(time.perf_counter() - t0)
            if reference is not None:
                t0 = time.perf_counter()
                ref_value = reference()
                ref_s.append(time.perf_counter() - t0)
            print(f"  .. {name}: ours {ours_s[-1]:.3f}s" + (f", reference {ref_s[-1]:.3f}s" if ref_s else ""),
                  file=sys.stderr, flush=True)
        return cls(name, ours_s, ref_s, ours_value, ref_value, dict(extra))


def report(rows: list[Comparison], *, value_label: str = "value", fmt: Callable[[Any], str] = str) -> None:
    """Print one line per comparison: medians, the speed ratio, and both results."""
    head = f"{'case':<34} {'ours (s)':>10} {'ref (s)':>10} {'speed-up':>9}  {value_label} (ours | ref)"
    print(head)
    print("-" * len(head))
    for r in rows:
        ref = f"{r.reference_median:10.3f}" if r.reference_s else f"{'-':>10}"
        sp = f"{r.speedup:8.1f}x" if r.reference_s else f"{'-':>9}"
        print(f"{r.name:<34} {r.ours_median:10.3f} {ref} {sp}  {fmt(r.ours_value)} | {fmt(r.reference_value)}")
