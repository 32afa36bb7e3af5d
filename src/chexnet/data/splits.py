"""Patient-wise splits, shared by every source: the split names, a seeded split of patients, the leak check.

A source's metadata errors (:class:`MetadataError`) live here too, so every source raises the same one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


class MetadataError(ValueError):
    """The metadata file is malformed; the message names the file, row or column."""


def split_patients(patients: np.ndarray, fractions, seed: int) -> list[np.ndarray]:
    """Shuffle the unique ``patients`` (seeded) and cut them into ``len(fractions)`` groups of those fractions."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(np.unique(patients))
    cuts = np.round(np.cumsum(fractions)[:-1] / np.sum(fractions) * len(perm)).astype(int)
    return np.split(perm, cuts)


def check_patient_disjoint(patient_id: pd.Series, split: pd.Series) -> None:
    """Raise if any patient appears in more than one split (a leak that inflates test AUROC)."""
    per_patient = pd.DataFrame({"p": patient_id.to_numpy(), "s": split.to_numpy()}).groupby("p")["s"].nunique()
    leaked = per_patient[per_patient > 1]
    if len(leaked):
        raise MetadataError(f"{len(leaked)} patient(s) appear in more than one split, e.g. patient {leaked.index[0]}")
