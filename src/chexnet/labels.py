"""The 14 ChestX-ray14 pathologies in NIH's canonical order, and parsing of "Finding Labels"."""

from __future__ import annotations

import numpy as np

PATHOLOGIES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
NUM_CLASSES = len(PATHOLOGIES)
_INDEX = {name: i for i, name in enumerate(PATHOLOGIES)}


class LabelError(ValueError):
    """A "Finding Labels" value that cannot be parsed."""


def parse_findings(text: str, where: str = "") -> np.ndarray:
    """Parse one NIH "Finding Labels" value ("A|B", "No Finding") into a 0/1 uint8 vector.

    Tokens are matched exactly (never by substring). ``where`` names the row for errors.
    """
    vec = np.zeros(NUM_CLASSES, dtype=np.uint8)
    tokens = [t.strip() for t in str(text).split("|")]
    for tok in tokens:
        if tok == NO_FINDING:
            if len(tokens) > 1:
                raise LabelError(f"{where}: 'No Finding' combined with other labels in {text!r}")
            continue
        idx = _INDEX.get(tok)
        if idx is None:
            raise LabelError(f"{where}: unknown finding label {tok!r} in {text!r}; known: {', '.join(PATHOLOGIES)}, {NO_FINDING}")
        vec[idx] = 1
    return vec


def format_findings(vec) -> str:
    """Inverse of :func:`parse_findings`."""
    names = [PATHOLOGIES[i] for i, v in enumerate(vec) if v]
    return "|".join(names) if names else NO_FINDING
