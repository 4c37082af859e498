"""Shared test fixtures."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A fresh generator per test, seeded from the test's name (no hand-picked seeds)."""
    import zlib

    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
