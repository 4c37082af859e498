"""Shared test fixtures."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import numpy as np
import pytest
import torch

# The suite runs with pytest-xdist, one worker per core: one torch thread per worker avoids oversubscription
# (measured here: two threads per worker made a forward+backward pass many times slower under load).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_idle_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the load, code that sizes its work by the idle cores sees one: ``dpaudit profile`` runs its tasks in
    the test's process (worker processes only where a test asks for them) and the attack takes one thread."""
    import dpaudit.runtime

    monkeypatch.setattr(dpaudit.runtime, "idle_cores", lambda: 1)


@pytest.fixture
def library_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[pytest.LogCaptureFixture]:
    """``caplog`` holding each warning of the ``dpaudit`` loggers (a loader's skip lines) exactly once, whatever ran
    before in this process. Importing ``dpaudit.cli`` stops the ``dpaudit`` logger propagating to the root, where
    caplog listens (its own handler writes the stderr lines, each once per command); so the handler is put on the
    ``dpaudit`` logger itself, with propagation off for the test (else a record would reach it twice)."""
    import logging

    log = logging.getLogger("dpaudit")
    monkeypatch.setattr(log, "propagate", False)
    caplog.set_level(logging.WARNING, logger="dpaudit")  # restored after the test
    log.addHandler(caplog.handler)
    yield caplog
    log.removeHandler(caplog.handler)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A fresh generator per test, seeded from the test's name (no hand-picked seeds)."""
    import zlib

    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def stripes_splits():  # type: ignore[no-untyped-def]
    """Synthetic data unlike the demo, to pretrain an initialisation on: vertical against horizontal stripes
    (16 x 16, 3 channels, 96 images split 48/24/24), from a fixed generator (the task, not a statistic)."""
    from dpaudit.data import DatasetSplits, ImageDataset

    n = 96
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (n,), generator=g)
    ramp = (torch.arange(16) % 4 < 2).float()
    stripes = torch.where(labels[:, None, None].bool(), ramp[None, :, None].expand(n, 16, 16),
                          ramp[None, None, :].expand(n, 16, 16))
    images = (0.6 * stripes + 0.4 * torch.rand(n, 16, 16, generator=g)).clamp(0, 1)
    images = images[:, None].expand(n, 3, 16, 16).contiguous()

    def part(a: int, b: int) -> ImageDataset:
        return ImageDataset(images[a:b], labels[a:b], ("vertical", "horizontal"), name="stripes")

    return DatasetSplits(part(0, n // 2), part(n // 2, 3 * n // 4), part(3 * n // 4, n), name="stripes")


# Decoded-image cache (dpaudit.cache): never the user's ~/.cache during tests; one throw-away folder per worker.
os.environ["DPAUDIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="dpaudit-test-cache-")
