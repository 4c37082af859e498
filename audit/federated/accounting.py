"""Privacy accounting of federated training, for the two DP units (``--dp-level``).

* **Sample level** (each patient's record protected at its own site): client k runs DP-SGD on its N_k records
  with Poisson rate q_k = b_k / N_k (b_k = min(batch, N_k)), noise multiplier sigma and clip C, for
  L_k = local_epochs * ceil(N_k / b_k) steps in each round it takes part in. Its accountant is the ordinary DP-SGD
  one with T_k = L_k * (rounds client k took part in). Which clients take part in which round is drawn from the
  seed before training (it does not depend on the data), so conditioning on the schedule is sound; a client that
  drops out after training is still counted (conservative). Secure aggregation does not enter (it can only help).
  One sigma serves every client: the largest of the per-client calibrated values, so the worst client meets the
  target and every other one is below it.
* **Client level** (a whole site protected, DP-FedAvg, McMahan et al., "Learning Differentially Private Recurrent
  Language Models", ICLR 2018, arXiv 1710.06963, Algorithm 1): each sampled client's model update is clipped to
  norm C, Gaussian noise N(0, z^2 C^2) is added to the sum, clients are Poisson-sampled with q = m / N_clients
  per round, T = rounds. The same accountant (a subsampled Gaussian mechanism), another unit.

Every epsilon here is dpaudit's tight PLD value (:func:`dpaudit.bounds.epsilon_pld`): a sound upper bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dpaudit.config import check_noise_multiplier, steps_for
from dpaudit.errors import NumericalError, check_int, check_positive

__all__ = ["ClientAccount", "client_level_accounting", "sample_level_accounting"]


@dataclass(frozen=True)
class ClientAccount:
    """The DP-SGD mechanism one client ran (sample level) and its epsilon (a sound upper bound, tight PLD).

    ``epsilon`` is 0 for a client that never took part (it released nothing).
    """

    client: int
    n_train: int
    batch_size: int
    sampling_probability: float
    steps_per_round: int
    rounds_participated: int
    steps: int
    epsilon: float


def sample_level_accounting(n_train: Sequence[int], batch_size: int, local_epochs: int,
                            rounds_participated: Sequence[int], target_delta: float, *,
                            target_epsilon: float | None = None, noise_multiplier: float | None = None
                            ) -> tuple[float, tuple[ClientAccount, ...]]:
    """(sigma, per-client accounts). Exactly one of ``target_epsilon`` (calibrate) and ``noise_multiplier``.

    Calibration: for each client that takes part, :func:`dpaudit.bounds.noise_for_epsilon` gives the smallest sigma
    whose epsilon is at most the target (safe end of its bracket); epsilon is increasing in steps and q and
    decreasing in sigma, so the largest of these meets the target for every client.
    """
    from dpaudit.bounds import epsilon_pld, noise_for_epsilon

    batch_size = check_int("batch_size", batch_size)
    local_epochs = check_int("local_epochs", local_epochs)
    plans = []
    for k, (n, r) in enumerate(zip(n_train, rounds_participated, strict=True)):
        n = check_int(f"n_train[{k}]", n)
        b = min(batch_size, n)
        plans.append((k, n, b, b / n, steps_for(local_epochs, n, b), int(r)))
    if (target_epsilon is None) == (noise_multiplier is None):
        raise NumericalError("pass exactly one of target_epsilon and noise_multiplier to sample_level_accounting.")
    if target_epsilon is not None:
        target_epsilon = check_positive("epsilon", target_epsilon, fix="pass --epsilon 8")
        sigmas = [float(noise_for_epsilon(target_epsilon, q, per * r, target_delta, accountant="pld"))
                  for _, _, _, q, per, r in plans if r > 0]
        sigma = max(sigmas) if sigmas else 1.0
    else:
        sigma = check_noise_multiplier(noise_multiplier, fix="pass --sigma 1.0")
    accounts = tuple(
        ClientAccount(k, n, b, q, per, r, per * r,
                      float(epsilon_pld(sigma, q, per * r, target_delta)) if r > 0 else 0.0)
        for k, n, b, q, per, r in plans)
    if target_epsilon is not None and max(a.epsilon for a in accounts) > target_epsilon:
        raise NumericalError(f"the calibrated noise multiplier {sigma} gives a client epsilon "
                             f"{max(a.epsilon for a in accounts)} > target {target_epsilon}. Fix: report this as a "
                             "bug; meanwhile pass --sigma slightly larger.")
    return sigma, accounts


def client_level_accounting(clients: int, clients_per_round: int, rounds: int, target_delta: float, *,
                            target_epsilon: float | None = None, noise_multiplier: float | None = None
                            ) -> tuple[float, float, float]:
    """(z, q, epsilon) of DP-FedAvg: Poisson client sampling q = m / N_clients, T = rounds (epsilon: sound upper
    bound, tight PLD)."""
    from dpaudit.bounds import epsilon_pld, noise_for_epsilon

    q = check_int("clients_per_round", clients_per_round) / check_int("clients", clients)
    rounds = check_int("rounds", rounds)
    if (target_epsilon is None) == (noise_multiplier is None):
        raise NumericalError("pass exactly one of target_epsilon and noise_multiplier to client_level_accounting.")
    if target_epsilon is not None:
        z = float(noise_for_epsilon(check_positive("epsilon", target_epsilon), q, rounds, target_delta,
                                    accountant="pld"))
    else:
        z = check_noise_multiplier(noise_multiplier, fix="pass --sigma 1.0")
    eps = float(epsilon_pld(z, q, rounds, target_delta))
    if target_epsilon is not None and eps > target_epsilon:
        raise NumericalError(f"the calibrated noise multiplier {z} gives epsilon {eps} > target {target_epsilon}. "
                             "Fix: report this as a bug; meanwhile pass --sigma slightly larger.")
    return z, q, eps
