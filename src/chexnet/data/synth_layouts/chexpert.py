"""CheXpert v1.0 small (``--layout chexpert``; ``chexnet prepare --dataset chexpert``)::

    OUT/CheXpert-v1.0-small/train.csv, valid.csv      Path, Sex, Age, Frontal/Lateral, AP/PA, the 14 observations
    OUT/CheXpert-v1.0-small/{train,valid}/patientNNNNN/studyK/view1_frontal.jpg

Labels, from each image's NIH findings: Atelectasis, Cardiomegaly, Pneumonia, Pneumothorax, Consolidation and
Edema as themselves, Effusion as ``Pleural Effusion``, Infiltration as ``Lung Opacity``, Mass or Nodule as
``Lung Lesion``, ``No Finding`` when there is none; Enlarged Cardiomediastinum, Pleural Other, Fracture and
Support Devices are never mentioned (blank). As in CheXpert's files, a positive is ``1.0`` or, for a share
``uncertain`` of them, ``-1.0``; a negative is blank (not mentioned) or, for a share ``explicit_negative`` of
them, ``0.0``. The NIH test-list patients are ``valid.csv`` (the test split of the chexpert source); a patient's
images are their studies, in order. The images are JPEG (quality 90), as CheXpert's are. (One generator draws
the shift's noise and the label cells, in turn, image by image: the demo's numbers depend on that order.)
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from chexnet.data.synth_layouts.common import site_shift
from chexnet.labels import PATHOLOGIES

CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
                    "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
                    "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices")
# CheXpert observation <- the NIH findings that make it positive
FROM_NIH = {
    "Cardiomegaly": ("Cardiomegaly",), "Lung Opacity": ("Infiltration",), "Lung Lesion": ("Mass", "Nodule"),
    "Edema": ("Edema",), "Consolidation": ("Consolidation",), "Pneumonia": ("Pneumonia",),
    "Atelectasis": ("Atelectasis",), "Pneumothorax": ("Pneumothorax",), "Pleural Effusion": ("Effusion",),
}
NEVER_MENTIONED = ("Enlarged Cardiomediastinum", "Pleural Other", "Fracture", "Support Devices")


def chexpert_values(findings: np.ndarray, rng: np.random.Generator, uncertain: float,
                    explicit_negative: float) -> dict[str, str]:
    """One image's CheXpert label cells from its NIH findings vector (0/1, :data:`PATHOLOGIES` order)."""
    positive = {name for name, v in zip(PATHOLOGIES, findings) if v}
    cells = {"No Finding": "1.0" if not positive else ""}
    for obs, sources in FROM_NIH.items():
        if positive & set(sources):
            cells[obs] = "-1.0" if rng.uniform() < uncertain else "1.0"
        else:
            cells[obs] = "0.0" if rng.uniform() < explicit_negative else ""
    for obs in NEVER_MENTIONED:
        cells[obs] = ""
    return cells


def to_chexpert(nih_dir: str | Path, out_dir: str | Path, seed: int = 0, shift: float = 0.0,
                uncertain: float = 0.1, explicit_negative: float = 0.3) -> dict:
    """Write the CheXpert layout of the synthetic NIH folder ``nih_dir`` into ``out_dir``; returns a summary
    (images, patients, per split, the encodings' counts)."""
    from chexnet.data.sources.nih import find_images, read_metadata

    if not 0 <= shift <= 1:
        raise ValueError(f"shift must be within [0, 1], got {shift}")
    nih_dir, out_dir = Path(nih_dir), Path(out_dir)
    meta = read_metadata(nih_dir / "Data_Entry_2017.csv")
    test = set((nih_dir / "test_list.txt").read_text().split()) if (nih_dir / "test_list.txt").is_file() else set()
    files = find_images(nih_dir)
    findings = dict(zip(meta["image"], meta[list(PATHOLOGIES)].to_numpy()))
    rng = np.random.default_rng(seed)
    root = out_dir / "CheXpert-v1.0-small"
    rows = {"train": [], "valid": []}
    studies: dict[int, int] = {}
    counts = {"1.0": 0, "-1.0": 0, "0.0": 0, "": 0}
    for r in meta.itertuples(index=False):
        part = "valid" if r.image in test else "train"
        k = studies[r.patient_id] = studies.get(r.patient_id, 0) + 1
        rel = f"CheXpert-v1.0-small/{part}/patient{int(r.patient_id):05d}/study{k}/view1_frontal.jpg"
        img = np.asarray(Image.open(files[r.image]).convert("L"))
        dest = out_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(site_shift(img, shift, rng)).save(dest, quality=90)
        cells = chexpert_values(findings[r.image], rng, uncertain, explicit_negative)
        for v in cells.values():
            counts[v] += 1
        age = "" if r.age != r.age else str(int(r.age))
        rows[part].append({"Path": rel, "Sex": {"M": "Male", "F": "Female"}.get(r.sex, "Unknown"), "Age": age,
                           "Frontal/Lateral": "Frontal", "AP/PA": r.view, **cells})
    root.mkdir(parents=True, exist_ok=True)
    for part, items in rows.items():
        with open(root / f"{part}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CHEXPERT_COLUMNS)
            writer.writeheader()
            writer.writerows(items)
    return {"out_dir": str(out_dir), "layout": "chexpert", "images": int(len(meta)),
            "train_images": len(rows["train"]), "valid_images": len(rows["valid"]),
            "patients": len(studies), "shift": shift, "cells": {k or "blank": v for k, v in counts.items()}}
