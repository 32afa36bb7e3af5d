"""chexnet.derived: the rules a cache's meta.json records for labels that no model output stands for."""

from __future__ import annotations

import numpy as np
import pytest

from chexnet import derived
from chexnet.labels import PATHOLOGIES

META = {"source": {"derived_scores": {"Nodule or mass": {"rule": "max", "of": ["Nodule", "Mass"]},
                                      "Airspace opacity": {"rule": "max",
                                                           "of": ["Consolidation", "Pneumonia", "Infiltration"]}}}}
CACHE_LABELS = ["Pneumothorax", "Fracture", "Airspace opacity", "Nodule or mass"]


def test_the_recorded_rules_apply_to_a_run_with_their_labels():
    usable, skipped = derived.applicable(META, CACHE_LABELS, list(PATHOLOGIES))
    assert [(d.name, d.rule, d.of) for d in usable] == [("Nodule or mass", "max", ("Nodule", "Mass")),
                                                        ("Airspace opacity", "max",
                                                         ("Consolidation", "Pneumonia", "Infiltration"))]
    assert skipped == [] and usable[0].text == "max(Nodule, Mass)"
    p = np.zeros((3, len(PATHOLOGIES)))
    p[:, PATHOLOGIES.index("Nodule")] = [0.9, 0.1, 0.3]
    p[:, PATHOLOGIES.index("Mass")] = [0.2, 0.7, 0.3]
    p[:, PATHOLOGIES.index("Hernia")] = 1.0  # not in the rule
    np.testing.assert_array_equal(usable[0].score(p, PATHOLOGIES), [0.9, 0.7, 0.3])


def test_a_rule_is_skipped_saying_why():
    labels = [n for n in PATHOLOGIES if n != "Mass"]
    usable, skipped = derived.applicable(META, CACHE_LABELS, labels)
    assert [d.name for d in usable] == ["Airspace opacity"]
    assert skipped == ["Nodule or mass = max(Nodule, Mass): the run has no Mass"]
    _, skipped = derived.applicable(META, ["Nodule or mass"], [*PATHOLOGIES, "Airspace opacity"])
    assert skipped == ["Airspace opacity = max(Consolidation, Pneumonia, Infiltration): the cache has no such column"]
    _, skipped = derived.applicable(META, CACHE_LABELS, [*PATHOLOGIES, "Nodule or mass"])
    assert skipped == ["Nodule or mass = max(Nodule, Mass): the model has an output of that name"]
    odd = {"source": {"derived_scores": {"Nodule or mass": {"rule": "mean", "of": ["Nodule", "Mass"]}}}}
    _, skipped = derived.applicable(odd, CACHE_LABELS, PATHOLOGIES)
    assert skipped == ["Nodule or mass = mean(Nodule, Mass): unknown rule 'mean' (known: max)"]


def test_no_rules_and_malformed_rules():
    assert derived.recorded({}) == [] and derived.recorded({"source": {"split_mode": "official"}}) == []
    with pytest.raises(ValueError, match=r"derived_scores\['Nodule or mass'\]"):
        derived.recorded({"source": {"derived_scores": {"Nodule or mass": {"rule": "max", "of": []}}}})
    with pytest.raises(ValueError, match=r"derived_scores\['X'\]"):
        derived.recorded({"source": {"derived_scores": {"X": ["max", "Nodule"]}}})
