"""Federated learning with DP (sample or client level) and secure aggregation: training, accounting, partitions.

The attack of a federated round lives in :mod:`dpaudit.attacks.federated` (the attacks layer); this package
trains (:func:`run_federated`). Names load lazily: the profile's configuration validates a partition without
loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "ClientAccount": "accounting", "client_level_accounting": "accounting", "sample_level_accounting": "accounting",
    "DP_LEVELS": "fedavg", "FederatedConfig": "fedavg", "FederatedResult": "fedavg", "run_federated": "fedavg",
    "secure_sum": "fedavg",
    "Partition": "partition", "parse_partition": "partition", "partition_indices": "partition",
    "partition_splits": "partition", "check_patients_at_one_site": "partition",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"dpaudit.audit.federated.{_HOME[name]}"), name)
    raise AttributeError(f"module 'dpaudit.audit.federated' has no attribute {name!r}")
