"""The profile's federated stage (``dpaudit profile --federated``): one :class:`FederatedTask`.

It trains FedAvg with sample-level DP across the sites (:func:`dpaudit.audit.federated.run_federated`), bounds each
site's reconstruction risk at its own prior kappa = 1/N_k (:func:`dpaudit.bounds.rero_bound`, worst case, tight:
a sound upper bound) for the profile's privacy unit (per patient of the site's k images when the unit is the
patient, as the site's epsilon_patient), and runs the malicious server's bin attack (:func:`dpaudit.attacks.federated.
run_federated_attack`) with and without secure aggregation. Nothing here imports torch at module level.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from dpaudit.audit.profile.schema import FederatedOutcome, FederatedSite
from dpaudit.audit.profile.tasks import DataSpec, _TaskBase

#: The attacked setting of the profile (spec federated.md, section 3): batch 2 per client, K = 32 bins, the noise
#: levels 0 and 1e-3 (to show what the block can do) beside the federation's own sigma; 4 rounds of fresh images.
ATTACK_BATCH_SIZE = 2
ATTACK_BINS = 32
ATTACK_SIGMAS = (0.0, 1e-3)
ATTACK_ROUNDS = 4


@dataclass(frozen=True)
class FederatedTask(_TaskBase):
    """FedAvg with sample-level DP at one target epsilon, the per-site bounds, and the bin attack."""

    stage: ClassVar[str] = "federated"
    result_type: ClassVar[type] = FederatedOutcome

    data: DataSpec
    arch: str
    epsilon_target: float
    clients: int
    partition: str
    rounds: int
    batch_size: int
    max_grad_norm: float
    lr: float
    target_delta: float | None
    seed: int
    threads: int | None = None
    privacy_unit: str | None = None
    #: The architecture's arguments (canonical JSON) and the BatchNorm replacement, as the training tasks take them;
    #: left out of the key at their defaults so that earlier profiles resume.
    arch_args: str = "{}"
    fix_batchnorm: bool = False
    #: Where the sites' local training and the clients' attack steps run (the profile's --device); like
    #: ``threads``, not part of the key.
    device: str = "auto"
    _location_fields: ClassVar[tuple[str, ...]] = ("threads", "device")

    def identity(self) -> dict[str, Any]:
        out = super().identity()
        for name, default in (("arch_args", "{}"), ("fix_batchnorm", False)):
            if out.get(name) == default:
                out.pop(name, None)
        return out

    def tag(self) -> str:
        return f"{self.clients}sites-eps{self.epsilon_target:g}"

    def describe(self) -> str:
        return f"federated: {self.clients} sites ({self.partition}), epsilon {self.epsilon_target:g}"

    def run(self) -> FederatedOutcome:
        import numpy as np

        from dpaudit.attacks.federated import FederatedAttackConfig, run_federated_attack
        from dpaudit.audit.federated import FederatedConfig, run_federated
        from dpaudit.bounds import rero_bound

        t0 = time.perf_counter()
        splits = self.data.load()
        result = run_federated(FederatedConfig(
            dataset=self.data.dataset, data_dir=self.data.data_dir, image_size=self.data.image_size,
            max_images=self.data.max_images, labels=self.data.labels, window=self.data.window,
            slice_axis=self.data.slice_axis, arch=self.arch, arch_args=json.loads(self.arch_args),
            fix_batchnorm=self.fix_batchnorm, clients=self.clients, partition=self.partition,
            rounds=self.rounds, local_epochs=1, batch_size=self.batch_size, lr=self.lr, dp_level="sample",
            epsilon=self.epsilon_target, target_delta=self.target_delta, max_grad_norm=self.max_grad_norm, seed=self.seed,
            threads=self.threads, privacy_unit=self.privacy_unit, device=self.device), splits=splits)
        sites = []
        for s in result.clients:
            kappa = 1.0 / s.n_train
            k = s.records_per_patient if s.epsilon_patient is not None else 1  # the unit's records at this site
            gamma = (float(np.asarray(rero_bound(result.noise_multiplier, s.sampling_probability, s.steps,
                                                 [kappa], records_per_patient=k).gamma)[0])
                     if s.steps else kappa)  # a site that never trained released nothing: the blind guess
            sites.append(FederatedSite(s.client, s.n_train, s.n_test, s.label_histogram, s.sampling_probability,
                                       s.steps, s.epsilon, kappa, gamma, s.test_mcc, records_per_patient=k,
                                       epsilon_patient=s.epsilon_patient if k > 1 else None,
                                       withheld=s.withheld, reason=s.reason,
                                       label_histogram_withheld=s.label_histogram_withheld,
                                       n_test_withheld=s.n_test_withheld))
        attack_clients = min(self.clients, max(1, len(splits.train) // (ATTACK_BATCH_SIZE * ATTACK_ROUNDS)))
        rows, success_ssim = [], None
        for secure in (False, True):
            att = run_federated_attack(FederatedAttackConfig(
                dataset=self.data.dataset, data_dir=self.data.data_dir, image_size=self.data.image_size,
                max_images=self.data.max_images, labels=self.data.labels, window=self.data.window,
                slice_axis=self.data.slice_axis, arch=self.arch, arch_args=json.loads(self.arch_args),
                fix_batchnorm=self.fix_batchnorm, clients=attack_clients,
                batch_size=ATTACK_BATCH_SIZE, bins=ATTACK_BINS,
                noise_multipliers=(*ATTACK_SIGMAS, result.noise_multiplier), secure_aggregation=secure,
                rounds=ATTACK_ROUNDS, max_grad_norm=self.max_grad_norm, seed=self.seed, threads=self.threads,
                device=self.device),
                splits=splits)
            rows.extend(att.rows)
            success_ssim = att.success_ssim
        return FederatedOutcome(
            self.epsilon_target, result.dp_level, result.unit, self.partition, self.clients, self.rounds,
            result.noise_multiplier, result.target_delta, result.epsilon, tuple(sites),
            float(result.global_metrics.mcc), result.mcc_spread, tuple(rows), time.perf_counter() - t0,
            success_ssim=success_ssim)
