"""Derived labels: a cache's labels that no single model output stands for, scored by a rule over the outputs.

A cache's source may record such rules in meta.json's source block, ``derived_scores``::

    {"Nodule or mass": {"rule": "max", "of": ["Nodule", "Mass"]}, ...}

(``nih-google`` records ``Nodule or mass`` = max(Nodule, Mass) and ``Airspace opacity`` = max(Consolidation,
Pneumonia, Infiltration): :data:`chexnet.data.sources.nih_google.DERIVED_SCORES`). ``chexnet evaluate`` scores
a recorded label when the cache has its column, the run has no output of that name, and the run has every label
its rule names: the label's score for an image is the rule applied to the run's probabilities for it (``max``:
the highest), ranked against the cache's column as every label is (AUROC with its patient-bootstrap CI, AUPRC).

A derived label gets no operating point, so no sensitivity, specificity or F1: the run's thresholds
(thresholds.json) belong to its own outputs, each chosen on that output's validation predictions, and none was
chosen for a maximum of several of them. The reports name the rule wherever a derived label appears, so that
it is not mistaken for a model output, and leave it out of the model's means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = {"max": lambda p: p.max(axis=1)}  # rule name -> (n, k) probabilities of the labels it names -> (n,) score


@dataclass(frozen=True)
class DerivedLabel:
    """A cache label scored by ``rule`` over the model outputs ``of``."""

    name: str
    rule: str
    of: tuple[str, ...]

    @property
    def text(self) -> str:
        """The rule as the reports write it, e.g. ``max(Nodule, Mass)``."""
        return f"{self.rule}({', '.join(self.of)})"

    def score(self, p, labels) -> np.ndarray:
        """(n,) scores from ``p`` (n, k), the model's probabilities for ``labels`` (its k outputs, in order)."""
        columns = [list(labels).index(name) for name in self.of]
        return RULES[self.rule](np.asarray(p, dtype=np.float64)[:, columns])


def recorded(meta: dict) -> list[DerivedLabel]:
    """The derived labels a cache's meta.json records (``source.derived_scores``), in its order; [] when none.
    ValueError for an entry that is not ``{"rule": NAME, "of": [LABEL, ...]}``."""
    block = (meta.get("source") or {}).get("derived_scores") or {}
    out = []
    for name, entry in block.items():
        of = entry.get("of") if isinstance(entry, dict) else None
        if not isinstance(of, list) or not of or not all(isinstance(n, str) and n for n in of) \
                or not isinstance(entry.get("rule"), str):
            raise ValueError(f"meta.json: source.derived_scores[{name!r}] must be {{'rule': NAME, 'of': "
                             f"[LABEL, ...]}}; got {entry!r}")
        out.append(DerivedLabel(str(name), entry["rule"], tuple(of)))
    return out


def applicable(meta: dict, cache_labels, model_labels) -> tuple[list[DerivedLabel], list[str]]:
    """(the recorded derived labels this run can be scored on, why each other one is not). One is scored when
    the cache has its column, the model has no output of its name (that output is scored directly), its rule is
    one of :data:`RULES` and the model has every label the rule names."""
    usable, skipped = [], []
    for d in recorded(meta):
        missing = [n for n in d.of if n not in model_labels]
        why = ("the cache has no such column" if d.name not in cache_labels else
               "the model has an output of that name" if d.name in model_labels else
               f"unknown rule {d.rule!r} (known: {', '.join(RULES)})" if d.rule not in RULES else
               f"the run has no {', '.join(missing)}" if missing else "")
        if why:
            skipped.append(f"{d.name} = {d.text}: {why}")
        else:
            usable.append(d)
    return usable, skipped


__all__ = ["DerivedLabel", "RULES", "applicable", "recorded"]
