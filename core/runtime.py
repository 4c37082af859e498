"""Process-level settings shared by the commands that run torch: how many threads to use."""

from __future__ import annotations

import os


def idle_cores() -> int:
    """The cores this process may run on that are idle now (at least 1).

    Oversubscribed cores make torch's OpenMP threads wait on each other: measured here, a 2-thread training step
    was 6x slower than a 1-thread step while other processes kept both cores busy, and ``dpaudit attack`` took
    77 s instead of 5 s. So torch gets the cores that are free now, not every core.
    """
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        cores = max(1, os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, round(cores - busy + 0.5)))
