"""dpaudit.runtime: the idle cores are read from what the CPUs did just now, with the load average as fallback; a
--device name is described as the device it resolves to."""

from __future__ import annotations

import os

import pytest

import dpaudit.runtime as runtime

#: The real function: the suite's conftest replaces runtime.idle_cores with one idle core in every test.
idle_cores = runtime.idle_cores


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(runtime.time, "sleep", lambda s: None)


def _snapshots(monkeypatch, *pairs):
    it = iter(pairs)
    monkeypatch.setattr(runtime, "_cpu_times", lambda: next(it))


@pytest.mark.parametrize(("busy_jiffies", "expected"), [(0, 2), (10, 2), (100, 1), (190, 1), (200, 1)])
def test_idle_cores_follow_the_cpus_now_not_the_load_average(two_cores, monkeypatch, busy_jiffies, expected):
    # 200 jiffies pass on 2 cores; the load average says both are busy (work that ended a minute ago).
    _snapshots(monkeypatch, (1000.0, 5000.0), (1000.0 + busy_jiffies, 5200.0))
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    assert idle_cores() == expected


def test_idle_cores_fall_back_to_the_load_average_without_proc_stat(two_cores, monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_times", lambda: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert idle_cores() == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (1.6, 1.0, 1.0))
    assert idle_cores() == 1


def test_cpu_times_reads_this_machine():
    times = runtime._cpu_times()
    if times is None:
        pytest.skip("no /proc/stat here")
    busy, total = times
    assert 0 <= busy <= total


def test_describe_device_names_the_resolved_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """cpu as it is; auto and cuda resolved to the GPU torch uses, with its name; a missing GPU is the usual error."""
    import torch

    from dpaudit.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.describe_device("cpu") == "cpu" and runtime.describe_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="device must be a CUDA device visible"):
        runtime.describe_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Test GPU {i}")
    assert runtime.describe_device("auto") == "cuda:1 (Test GPU 1)"
    assert runtime.describe_device("cuda:0") == "cuda:0 (Test GPU 0)"
    assert runtime.describe_device("cpu") == "cpu"
