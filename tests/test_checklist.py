"""The reporting checklist is filled from the profile: every item present, every value traceable to a field."""

from __future__ import annotations

import dataclasses

from test_report import synthetic_profile

from dpaudit.audit.checklist import NOT_RECORDED, build_checklist
from dpaudit.audit.profile.schema import Profile

#: The items the scoping review (seed 001) asks every DP study to state, in the report's order.
KEYS = ("accountant", "epsilon_delta", "neighbouring", "privacy_unit", "sampler", "clip_norm", "noise_multiplier",
        "batch_size", "steps_epochs", "optimizer", "initialisation", "not_covered", "seeds", "subgroups")


def test_every_item_is_filled_from_the_run() -> None:
    prof = synthetic_profile()
    cl = build_checklist(prof)
    assert tuple(i.key for i in cl.items) == KEYS
    assert all(i.value and i.source for i in cl.items)
    assert NOT_RECORDED not in "".join(i.value for i in cl.items)
    v = {i.key: i.value for i in cl.items}
    assert "q = 0.04" in v["sampler"] and "Poisson" in v["sampler"]  # synthetic runs: q = 0.04
    assert "add/remove" in v["neighbouring"] and "one image" in v["privacy_unit"]
    assert "σ = 0.92" in v["noise_multiplier"] and "σ = 0.47" in v["noise_multiplier"]  # seed paper Table 3
    assert "T = 500" in v["steps_epochs"] and "20 epoch(s)" in v["steps_epochs"]
    assert v["batch_size"].startswith("320") and "NAdam" in v["optimizer"] and "0.002" in v["optimizer"]
    assert "δ = 8e-07" in v["epsilon_delta"] and "0.000999" not in v["epsilon_delta"]
    assert v["seeds"].startswith("2") and v["subgroups"] == "sex"
    for words in ("pretraining", "hyperparameter tuning", "preprocessing"):
        assert words in v["not_covered"]
    assert "PLD" in v["accountant"] and "0.1.0" in v["accountant"]


def test_items_follow_the_profile_not_hand_typed_text() -> None:
    prof = synthetic_profile(seeds=1, subgroups=False)
    prof = dataclasses.replace(
        prof, config=dataclasses.replace(prof.config, records_per_patient=3),
        train=tuple(dataclasses.replace(t, sampling_probability=0.05, optimizer=None) for t in prof.train))
    v = {i.key: i.value for i in build_checklist(prof).items}
    assert "q = 0.05" in v["sampler"] and "one patient (up to 3 images)" in v["privacy_unit"]
    assert v["optimizer"] == NOT_RECORDED and v["seeds"].startswith("1") and v["subgroups"].startswith("none")
    assert v["initialisation"].startswith("scratch: random") and "none used" in v["not_covered"]
    # Runs from a weights file: the checklist names the file, its trainable layers and its unaccounted data.
    prof = dataclasses.replace(prof, train=tuple(dataclasses.replace(t, init="pre.pt", trainable="head")
                                                 for t in prof.train))
    v = {i.key: i.value for i in build_checklist(prof).items}
    assert v["initialisation"] == "pre.pt: weights file, trainable layers head"
    assert "initial weights pre.pt were trained on" in v["not_covered"]


def test_checklist_round_trips_in_profile_json() -> None:
    prof = synthetic_profile(seeds=1)
    prof = dataclasses.replace(prof, checklist=build_checklist(prof))
    assert Profile.from_json(prof.to_json()) == prof
