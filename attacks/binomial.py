"""Exact Clopper-Pearson limits for a binomial proportion: the one implementation behind the attack's two-sided
success intervals (:func:`dpaudit.attacks.scoring.clopper_pearson`) and the one-sided limits of the empirical
epsilon lower bounds (:func:`dpaudit.attacks.lower_bounds.clopper_pearson`).

numpy and scipy.special only: importing scipy.stats would add about 1 s to every ``dpaudit attack``; scipy.special is
imported on first use (0.2 s that ``dpaudit --help`` need not pay).
"""

from __future__ import annotations

import numpy as np


def clopper_pearson_limits(successes: np.ndarray, trials: int, level: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided limits ``(low, high)``, each holding with probability ``level``, vectorised over ``successes``.

    ``low`` is the ``1 - level`` quantile of Beta(k, n - k + 1) (0 when k = 0), ``high`` the upper ``1 - level``
    quantile of Beta(k + 1, n - k) (1 when k = n); ``[low, high]`` is a two-sided interval at ``2 level - 1``.
    Inputs are not validated (callers do).

    References
    ----------
    Clopper, Pearson, "The use of confidence or fiducial limits illustrated in the case of the binomial",
    Biometrika 26 (1934). The beta-quantile form: Brown, Cai, DasGupta, Statistical Science 16 (2001), eq. (5).
    ``betaincinv``/``betainccinv`` are what ``scipy.stats.beta.ppf``/``isf`` call (scipy 1.17: equal bit for bit).
    """
    # scipy.special here, not at import: the results holding these limits load without scipy (the CLI's start-up)
    from scipy.special import betainccinv, betaincinv

    a = 1.0 - level
    k = np.asarray(successes, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(k == 0, 0.0, betaincinv(np.maximum(k, 1), trials - k + 1, a))
        high = np.where(k == trials, 1.0, betainccinv(k + 1, np.maximum(trials - k, 1), a))
    return low, high
