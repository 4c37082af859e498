"""Federated training: FedAvg against centralised training, per-client accounting, partitions, secure aggregation."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from dpaudit.audit.federated import (
    FederatedConfig,
    client_level_accounting,
    parse_partition,
    partition_indices,
    run_federated,
    sample_level_accounting,
    secure_sum,
)
from dpaudit.codec import encode
from dpaudit.errors import ConfigError


@pytest.fixture(scope="module")
def splits():
    from dpaudit.data import load_splits

    return load_splits("demo", image_size=16, max_images=80, seed=0)


@pytest.mark.parametrize("private", [False, True])
def test_fedavg_with_one_client_equals_centralised_training(splits, private) -> None:
    """One client, one round, server_lr 1: the global model is the centralised model of the same seed."""
    from dpaudit.audit.train import TrainConfig, _run_one
    from dpaudit.config import steps_for

    seed, epochs, batch = 3, 2, 8
    fed = run_federated(FederatedConfig(
        image_size=16, arch="smallcnn", clients=1, rounds=1, local_epochs=epochs, batch_size=batch, seed=seed,
        dp_level="sample" if private else "none", noise_multiplier=0.8 if private else None, target_delta=1e-5,
        threads=1, device="cpu"), splits=splits)  # as the centralised run (auto picks a GPU where one is visible)
    config = TrainConfig(image_size=16, arch="smallcnn", epochs=epochs, batch_size=batch, seed=seed,
                         noise_multiplier=0.8 if private else None, non_private=not private, target_delta=1e-5,
                         device="cpu", threads=1)
    n = len(splits.train)
    steps = steps_for(epochs, n, batch)
    torch.set_num_threads(1)
    central, _, _ = _run_one(config, splits, seed, 0.8 if private else 0.0, batch / n, steps, 1e-5, None, 0, steps)
    for k, v in central.state_dict().items():
        torch.testing.assert_close(fed.state[k], v, rtol=0, atol=0, msg=k)
    if private:  # the one client's accountant is centralised DP-SGD's
        from dpaudit.bounds import epsilon_pld

        assert fed.clients[0].epsilon == pytest.approx(epsilon_pld(0.8, batch / n, steps, 1e-5), rel=1e-12)


def test_sample_level_accounting_matches_the_bounds_directly() -> None:
    from dpaudit.bounds import epsilon_pld
    from dpaudit.config import steps_for

    n_train, rounds_in, delta = [40, 200, 7, 90], [3, 5, 5, 0], 1e-5
    sigma, accounts = sample_level_accounting(n_train, 16, 2, rounds_in, delta, noise_multiplier=1.1)
    assert sigma == 1.1
    for a, n, r in zip(accounts, n_train, rounds_in, strict=True):
        b = min(16, n)
        assert a.sampling_probability == b / n and a.steps == steps_for(2, n, b) * r
        expected = epsilon_pld(1.1, b / n, a.steps, delta) if r else 0.0
        assert a.epsilon == pytest.approx(expected, rel=1e-12)


def test_sample_level_calibration_meets_the_target_for_the_worst_client_only_just() -> None:
    from dpaudit.bounds import epsilon_pld

    n_train, rounds_in, delta, target = [40, 200, 7], [3, 5, 5], 1e-5, 4.0
    sigma, accounts = sample_level_accounting(n_train, 16, 1, rounds_in, delta, target_epsilon=target)
    eps = [a.epsilon for a in accounts]
    assert max(eps) <= target
    worst = accounts[int(np.argmax(eps))]
    # Not wasteful: 1% less noise would overshoot for the worst client (direction of the calibration bracket).
    assert epsilon_pld(0.99 * sigma, worst.sampling_probability, worst.steps, delta) > target
    # Every other client is below the worst (monotone in q and T).
    assert sorted(eps)[-1] == max(eps)


def test_client_level_accounting_is_the_subsampled_gaussian_over_rounds() -> None:
    from dpaudit.bounds import epsilon_pld

    z, q, eps = client_level_accounting(10, 3, 20, 1e-5, noise_multiplier=1.3)
    assert (z, q) == (1.3, 0.3)
    assert eps == pytest.approx(epsilon_pld(1.3, 0.3, 20, 1e-5), rel=1e-12)
    z2, _, eps2 = client_level_accounting(10, 3, 20, 1e-5, target_epsilon=2.0)
    assert eps2 <= 2.0 and epsilon_pld(0.99 * z2, 0.3, 20, 1e-5) > 2.0


def _synthetic_labels(rng: np.random.Generator, classes: int, per_class: int) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(classes), per_class))


def test_dirichlet_shares_have_the_dirichlet_mean_and_variance(rng) -> None:
    """Per-class client shares: mean 1/N and variance (1/N)(1 - 1/N)/(N alpha + 1) (Dirichlet moments), plus the
    multinomial assignment noise p(1 - p)/n_c; checked over 60 classes of 3000 records."""
    clients, alpha, classes, per_class = 4, 0.7, 60, 3000
    labels = _synthetic_labels(rng, classes, per_class)
    idx = partition_indices([labels], [None], [None], parse_partition(f"dirichlet:{alpha}"), clients,
                            num_classes=classes, seed=int(rng.integers(1 << 30)))[0]
    owner = np.empty(len(labels), dtype=int)
    for k, ix in enumerate(idx):
        owner[ix] = k
    shares = np.array([[np.mean(owner[labels == c] == k) for k in range(clients)] for c in range(classes)])
    mean = 1 / clients
    var = mean * (1 - mean) / (clients * alpha + 1) + mean * (1 - mean) / per_class
    assert shares.mean() == pytest.approx(mean, abs=1e-12)  # shares of one class sum to 1
    # The sample variance of 60 x 4 (dependent) shares: a 35% tolerance is about 3 standard errors.
    assert shares.var() == pytest.approx(var, rel=0.35)


def test_dirichlet_alpha_controls_heterogeneity_and_patients_stay_at_one_site(rng) -> None:
    labels = rng.integers(0, 2, 4000)
    patients = np.arange(4000) // 2  # two images per patient, same label
    labels = labels[patients * 2]

    def max_share(alpha: float) -> float:
        idx = partition_indices([labels], [patients], [None], parse_partition(f"dirichlet:{alpha}"), 5,
                                num_classes=2, seed=int(rng.integers(1 << 30)))[0]
        for ix in idx:
            assert len(np.intersect1d(patients[ix], np.setdiff1d(patients, patients[ix]))) == 0
        return float(np.mean([np.bincount(labels[ix], minlength=2).max() / len(ix) for ix in idx]))

    assert max_share(1000.0) < max_share(0.05)
    assert max_share(1000.0) == pytest.approx(max(np.bincount(labels)) / len(labels), abs=0.05)


def test_partition_column_and_errors(splits) -> None:
    cols = [s.groups["sex"] for s in (splits.train, splits.val, splits.test)]
    idx = partition_indices([s.labels.numpy() for s in (splits.train, splits.val, splits.test)], [None] * 3, cols,
                            parse_partition("column:sex"), 2, num_classes=2, seed=0)
    assert sorted(np.concatenate(idx[0]).tolist()) == list(range(len(splits.train)))
    assert {str(v) for v in cols[0][idx[0][0]]} == {sorted({str(v) for v in cols[0]})[0]}
    with pytest.raises(ConfigError, match="clients must be the number of distinct values"):
        partition_indices([splits.train.labels.numpy()], [None], [cols[0]], parse_partition("column:sex"), 3,
                          num_classes=2, seed=0)
    for bad in ("dirichlet:0", "dirichlet:x", "shards"):
        with pytest.raises(ConfigError, match="partition must be"):
            parse_partition(bad)


def test_secure_sum_reveals_only_the_sum() -> None:
    a = {"w": torch.tensor([1.0, 2.0])}
    b = {"w": torch.tensor([0.5, -1.0])}
    assert torch.equal(secure_sum([a, b])["w"], torch.tensor([1.5, 1.0]))


def test_secure_aggregation_rounds_abort_below_the_threshold_and_runs_are_deterministic(splits) -> None:
    config = FederatedConfig(image_size=16, arch="smallcnn", clients=3, rounds=2, batch_size=8, dp_level="client",
                             noise_multiplier=0.5, secure_aggregation=True, dropout=0.5, secagg_threshold=3,
                             seed=1, threads=1)
    first = run_federated(config, splits=splits)
    for r in first.rounds:
        assert r.aborted == (len(r.survivors) < 3)
    second = run_federated(config, splits=splits)
    for k, v in first.state.items():
        assert torch.equal(v, second.state[k]), k
    assert encode(first)["clients"] == encode(second)["clients"]
    assert math.isfinite(first.epsilon)


def test_client_tasks_go_through_the_executor(splits) -> None:
    from dpaudit.audit.profile.executor import InProcessExecutor

    seen = []

    class Recording(InProcessExecutor):
        def map(self, tasks, on_done):
            seen.extend(t.key() for t in tasks)
            super().map(tasks, on_done)

    run_federated(FederatedConfig(image_size=16, arch="smallcnn", clients=2, rounds=2, batch_size=8,
                                  dp_level="none", threads=1), splits=splits, executor=Recording())
    assert seen == ["federated-r0-c0", "federated-r0-c1", "federated-r1-c0", "federated-r1-c1"]


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="exactly one of --epsilon and --sigma"):
        FederatedConfig(dp_level="sample")
    with pytest.raises(ConfigError, match="clients_per_round must be at most"):
        FederatedConfig(clients=3, clients_per_round=4, epsilon=8)
    with pytest.raises(ConfigError, match="secagg_threshold must be given only with"):
        FederatedConfig(epsilon=8, secagg_threshold=2)


def test_baselines_and_client_level_dp_without_secure_aggregation(splits) -> None:
    result = run_federated(FederatedConfig(image_size=16, arch="smallcnn", clients=2, rounds=1, batch_size=8,
                                           dp_level="client", epsilon=8.0, baselines=True, threads=1),
                           splits=splits)
    b = result.baselines
    assert b is not None and len(b.nonprivate_fedavg_per_client_mcc) == 2
    assert b.centralised_epsilon is not None and b.centralised_epsilon <= 8.0  # sound upper bound, at the target
    assert result.epsilon <= 8.0 and result.client_sampling_probability == 1.0
    assert all(s.epsilon is None for s in result.clients)  # client level: one epsilon per site, not per record


_CLIENT_LEVEL_RUN = """
import hashlib
from dpaudit.audit.federated import FederatedConfig, run_federated
from dpaudit.data import load_splits
splits = load_splits("demo", image_size=16, max_images=60, seed=0)
for secagg in (False, True):
    r = run_federated(FederatedConfig(image_size=16, arch="smallcnn", clients=2, rounds=1, batch_size=8,
                                      dp_level="client", noise_multiplier=1.0, secure_aggregation=secagg, seed=3,
                                      threads=1), splits=splits)
    h = hashlib.sha256()
    for k, v in r.state.items():
        h.update(k.encode()); h.update(v.double().numpy().tobytes())
    print(h.hexdigest())
"""


def test_client_level_runs_are_deterministic_across_processes() -> None:
    # The server's noise is drawn parameter by parameter; the order must not follow the per-process string hash.
    import os
    import subprocess
    import sys

    outs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", _CLIENT_LEVEL_RUN], env=env, capture_output=True, text=True,
                              check=True)
        outs.append(done.stdout.split())
    assert len(outs[0]) == 2 and outs[0] == outs[1]


def _owner(idx: list[np.ndarray], n: int) -> np.ndarray:
    owner = np.full(n, -1)
    for k, ix in enumerate(idx):
        owner[ix] = k
    return owner


def test_a_column_that_puts_a_patient_at_two_sites_is_refused_without_naming_anyone() -> None:
    """Such a patient's images go through two sites' mechanisms: neither the worst site's per-patient epsilon nor,
    at client level, the site's epsilon bounds their risk, so the partition is refused before training."""
    patients = np.repeat([f"SMITH^JOHN{i}" for i in range(10)], 4)
    site = np.array(["A", "A", "B", "B"] * 3 + ["A"] * 28)  # patients 0-2 at both sites, the rest at A
    site[-8:] = "B"  # patients 8 and 9 entirely at B
    labels = np.zeros(len(patients), dtype=int)
    for prefix in ("--", "--federated-"):
        with pytest.raises(ConfigError) as err:
            partition_indices([labels], [patients], [site], parse_partition("column:site"), 2, num_classes=2,
                              seed=0, option_prefix=prefix)
        text = str(err.value)
        assert f"{prefix}partition column:site puts the images of 3 patient(s) at more than one site" in text
        assert f"Fix: pass {prefix}partition iid or {prefix}partition dirichlet:ALPHA" in text
        assert "SMITH" not in text and "JOHN" not in text
    # One patient per site: accepted, and every site is one value.
    site = np.where(np.arange(len(patients)) < 20, "A", "B")
    idx = partition_indices([labels], [patients], [site], parse_partition("column:site"), 2, num_classes=2,
                            seed=0)[0]
    assert [set(site[ix]) for ix in idx] == [{"A"}, {"B"}]


@pytest.mark.parametrize("kind", ["iid", "dirichlet:0.3", "dirichlet:5"])
def test_iid_and_dirichlet_keep_every_patient_at_one_site_in_every_split(rng, kind) -> None:
    """Checked by counting, per patient, the distinct sites its images went to (plain Python sets)."""
    for _ in range(5):
        split_patients, split_labels = [], []
        for n_patients in (60, 15, 15):
            per = rng.integers(1, 7, n_patients)  # 1 to 6 images per patient
            ids = np.repeat(np.array([f"P{rng.integers(1 << 40)}" for _ in range(n_patients)]), per)
            labels = np.repeat(rng.integers(0, 3, n_patients), per)
            order = rng.permutation(len(ids))  # a patient's images are not adjacent
            split_patients.append(ids[order])
            split_labels.append(labels[order])
        result = partition_indices(split_labels, split_patients, [None] * 3, parse_partition(kind), 3,
                                   num_classes=3, seed=int(rng.integers(1 << 30)), min_train=1)
        for ids, idx in zip(split_patients, result, strict=True):
            owner = _owner(idx, len(ids))
            assert (owner >= 0).all()  # every image is at some site
            sites: dict[str, set[int]] = {}
            for p, k in zip(ids.tolist(), owner.tolist(), strict=True):
                sites.setdefault(p, set()).add(k)
            assert all(len(s) == 1 for s in sites.values())


def test_a_column_value_without_training_images_is_named_with_the_fix() -> None:
    site = np.array(["A"] * 10 + ["B"] * 10)
    val_site = np.array(["C"] * 3)
    labels = np.zeros(20, dtype=int)
    with pytest.raises(ConfigError) as err:
        partition_indices([labels, np.zeros(3, dtype=int)], [None, None], [site, val_site],
                          parse_partition("column:site"), 3, num_classes=2, seed=0)
    text = str(err.value)
    assert "--partition column:site: 1 of the 3 sites (holding 0 training images) hold fewer than 4 training " \
           "images" in text and "'C'" not in text  # counted, never named: a site's value is the user's data
    assert "Fix: pass --partition iid" in text and "n_train" not in text


def test_a_column_the_dataset_lacks_is_refused_listing_the_columns_it_has(splits) -> None:
    from types import SimpleNamespace

    from dpaudit.audit.federated.partition import partition_splits

    with pytest.raises(ConfigError) as err:
        partition_splits(splits, "column:nosuch", 2, seed=0)
    assert "with a column the dataset has (sex, age_band)" in str(err.value)

    # another dataset's own columns, not the demo's
    def part(n: int, groups: dict) -> SimpleNamespace:
        return SimpleNamespace(labels=torch.zeros(n, dtype=torch.long), patient_ids=None, groups=groups)

    site = {"site": np.array(["A", "B"] * 4)}
    own = SimpleNamespace(train=part(8, site), val=part(8, site), test=part(8, site), num_classes=2)
    with pytest.raises(ConfigError) as err:
        partition_splits(own, "column:nosuch", 2, seed=0, option_prefix="--federated-")
    text = str(err.value)
    assert "--federated-partition column:NAME with a column the dataset has (site)." in text and "sex" not in text
    bare = SimpleNamespace(train=part(8, {}), val=part(8, {}), test=part(8, {}), num_classes=2)
    with pytest.raises(ConfigError, match=r"dirichlet:ALPHA \(the dataset has no metadata columns\)"):
        partition_splits(bare, "column:site", 2, seed=0)


def test_too_many_clients_names_the_most_that_fit_not_more_images() -> None:
    """All images in use and a client left with too few: the fix is fewer clients, and the most that fit is the
    number the seed's own iid deal gives (checked by partitioning with it)."""
    from dpaudit.audit.federated.partition import parse_partition, partition_indices

    rng = np.random.default_rng([21, 6])
    labels = rng.integers(0, 2, 72)
    patients = np.repeat(np.arange(6), 12)
    with pytest.raises(ConfigError) as info:
        partition_indices([labels], [patients], [None], parse_partition("iid"), 50, num_classes=2, seed=0)
    text = str(info.value)
    assert "tried" not in text and "--max-images" not in text
    assert "72 images of 6 patients" in text
    most = int(re.search(r"Fix: pass --clients (\d+) or fewer\.", text).group(1))
    assert most == 6
    partition_indices([labels], [patients], [None], parse_partition("iid"), most, num_classes=2, seed=0)
    with pytest.raises(ConfigError, match=r"\(at most 6: .*--partition dirichlet:5"):
        partition_indices([labels], [patients], [None], parse_partition("dirichlet:0.5"), 50, num_classes=2, seed=0)
