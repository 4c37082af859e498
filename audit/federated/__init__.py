"""Federated learning with DP (sample or client level) and secure aggregation: training, accounting, partitions.

The attack of a federated round lives in :mod:`dpaudit.attacks.federated` (the attacks layer); this package
trains (:func:`run_federated`).
"""

from dpaudit.audit.federated.accounting import ClientAccount, client_level_accounting, sample_level_accounting
from dpaudit.audit.federated.fedavg import (
    DP_LEVELS,
    FederatedConfig,
    FederatedResult,
    run_federated,
    secure_sum,
)
from dpaudit.audit.federated.partition import Partition, parse_partition, partition_indices

__all__ = ["DP_LEVELS", "ClientAccount", "FederatedConfig", "FederatedResult", "Partition",
           "client_level_accounting", "parse_partition", "partition_indices", "run_federated",
           "sample_level_accounting", "secure_sum"]
