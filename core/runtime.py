"""Process-level settings shared by the commands that run torch: how many threads to use, and on which device."""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING

from dpaudit.errors import invalid

if TYPE_CHECKING:
    import torch

#: How long :func:`idle_cores` watches the CPUs (seconds): long enough to see a core that another process keeps
#: busy, short enough not to be felt at a command's start.
SAMPLE_SECONDS = 0.15


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``; None where it cannot be read (not Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [float(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return total - idle, total


def busy_cores_now(seconds: float = SAMPLE_SECONDS) -> float | None:
    """How many of the machine's cores were busy over the last ``seconds`` (from ``/proc/stat``); None off Linux."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(seconds)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * (os.cpu_count() or 1)


def idle_cores() -> int:
    """The cores this process may run on that are idle now (at least 1).

    Oversubscribed cores make torch's OpenMP threads wait on each other: measured here, a 2-thread training step
    was 6x slower than a 1-thread step while other processes kept both cores busy, and ``dpaudit attack`` took
    77 s instead of 5 s. So torch gets the cores that are free now, not every core. "Now" is a short look at
    ``/proc/stat`` (:data:`SAMPLE_SECONDS`): the 1-minute load average, used where that cannot be read, still
    counts work that ended up to a minute ago (right after a test run it reported one core busy on an idle
    2-core machine, so the demo profile ran in one process at half the speed it could have).
    """
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        cores = max(1, os.cpu_count() or 1)
    busy = busy_cores_now()
    if busy is not None:  # a core counts as idle when at most a quarter of it was in use
        return max(1, min(cores, int(cores - busy + 0.25)))
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, round(cores - busy + 0.5)))


#: The device names training and the attack take (``--device``): ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
DEVICE_NAMES = r"auto|cpu|cuda(:\d+)?"


def check_device(name: object) -> str:
    """``name`` if it is one of :data:`DEVICE_NAMES`, else the one-line error (no torch loaded: configurations
    check it before any work)."""
    if not isinstance(name, str) or not re.fullmatch(DEVICE_NAMES, name):
        raise invalid("device", name, "auto, cpu, cuda or cuda:N", "pass e.g. --device cpu")
    return name


def resolve_device(name: str) -> torch.device:
    """The torch device for a ``--device`` name (training and the attack): ``auto`` is the first CUDA GPU when
    one is visible, else the CPU; a CUDA device that is not there is a clear error."""
    import torch

    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise invalid("device", name, "a CUDA device visible to this process (none is)",
                          "pass --device cpu, or install a CUDA build of torch on a machine with a GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise invalid("device", name, f"cuda:0 to cuda:{torch.cuda.device_count() - 1}",
                          "pass an index of a visible GPU (see CUDA_VISIBLE_DEVICES)")
    return device


def describe_device(name: str) -> str:
    """Where a ``--device`` name puts the model's passes in this process, in words: ``"cpu"`` or
    ``"cuda:0 (NVIDIA H200)"`` (``auto`` and ``cuda`` resolved to the GPU torch uses). Results on a GPU differ from
    the CPU's in the last bits, so every record of a run names it."""
    device = resolve_device(name)
    if device.type != "cuda":
        return device.type
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
