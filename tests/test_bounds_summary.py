"""``bounds_summary`` and the labelled ``epsilon_bound``: one use case behind ``dpaudit bounds`` and the profile."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpaudit.bounds import bounds_summary, epsilon_bound, epsilon_pld, epsilon_rdp, rero_bound


def test_epsilon_bound_names_the_accountant_that_gave_the_value() -> None:
    moderate = epsilon_bound(1.0, 0.01, 1000, 1e-5)
    assert moderate.value == epsilon_pld(1.0, 0.01, 1000, 1e-5)
    assert moderate.accountant == "pld" and moderate.value < epsilon_rdp(1.0, 0.01, 1000, 1e-5)
    # Tiny noise (the seed paper's epsilon = 1e9 regime): the loss cap makes the PLD loose and RDP wins.
    tiny = epsilon_bound(0.01, 0.01, 100, 1e-5)
    assert tiny.accountant == "rdp" and tiny.value == epsilon_rdp(0.01, 0.01, 100, 1e-5)


def test_summary_holds_the_same_numbers_as_the_functions() -> None:
    s = bounds_summary(1.0, 0.01, 300, [1e-3, 0.01], target_delta=1e-5)
    assert s.epsilon.value == epsilon_pld(1.0, 0.01, 300, 1e-5)
    assert s.epsilon_patient is None and s.epsilon_of_unit is s.epsilon
    assert list(s.worst_case.gamma) == list(rero_bound(1.0, 0.01, 300, [1e-3, 0.01]).gamma)
    assert s.mia is not None and 0 < s.mia.advantage < 1


def test_patient_level_epsilon_is_larger_than_the_record_level_one() -> None:
    s = bounds_summary(1.0, 0.01, 300, [0.01], target_delta=1e-5, records_per_patient=3, membership=False)
    assert s.mia is None
    assert s.epsilon_patient is not None and s.epsilon_patient.records_per_patient == 3
    assert math.isfinite(s.epsilon_patient.value) and s.epsilon_patient.value > s.epsilon.value


def test_summary_mia_started_at_the_rero_grid_step_agrees_with_mia_alone_within_the_brackets() -> None:
    # The summary refines the MIA curve from the grid step the worst-case ReRo bound ended at (its compositions are
    # cached). Both curves are sound upper bounds with proven lower ends: each must lie above the other's lower end.
    from dpaudit.bounds import mia_curve

    point = (0.44783, 3328 / 1077000, 16150)  # the seed paper's RadImageNet run
    s = bounds_summary(*point, [1 / 1077000], target_delta=8e-7)
    alone = mia_curve(*point)
    assert s.mia is not None and s.worst_case.discretisation is not None
    assert np.all(s.mia.tpr >= alone.tpr_lower) and np.all(alone.tpr >= s.mia.tpr_lower)
    assert np.all(s.mia.numerical_error <= 5e-4 * s.mia.tpr + 1e-12)
    assert s.mia.advantage == pytest.approx(alone.advantage, rel=1e-3)
    # Started at the step the ReRo bound ended at, the shared curve is computed there: the same grid step's reads.
    started = mia_curve(*point, grid_step=s.worst_case.discretisation)
    assert np.array_equal(started.tpr, s.mia.tpr) and np.array_equal(started.tpr_lower, s.mia.tpr_lower)
