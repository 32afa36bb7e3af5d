"""Synthetic data sets in other sources' exact file layouts, with an optional site shift (``chexnet synth --layout``).

:func:`to_chexpert` turns a synthetic NIH-layout folder (:func:`chexnet.data.synthetic.generate`) into a
CheXpert v1.0 small download, with CheXpert's encodings, so that ``chexnet prepare --dataset chexpert`` and
external validation can be tried without the real data::

    OUT/CheXpert-v1.0-small/train.csv, valid.csv      Path, Sex, Age, Frontal/Lateral, AP/PA, the 14 observations
    OUT/CheXpert-v1.0-small/{train,valid}/patientNNNNN/studyK/view1_frontal.jpg

Labels, from each image's NIH findings: Atelectasis, Cardiomegaly, Pneumonia, Pneumothorax, Consolidation and
Edema as themselves, Effusion as ``Pleural Effusion``, Infiltration as ``Lung Opacity``, Mass or Nodule as
``Lung Lesion``, ``No Finding`` when there is none; Enlarged Cardiomediastinum, Pleural Other, Fracture and
Support Devices are never mentioned (blank). As in CheXpert's files, a positive is ``1.0`` or, for a share
``uncertain`` of them, ``-1.0``; a negative is blank (not mentioned) or, for a share ``explicit_negative`` of
them, ``0.0``. The NIH test-list patients are ``valid.csv`` (the test split of the chexpert source); a patient's
images are their studies, in order.

The site shift (``shift`` in [0, 1]; 0: none) models another hospital's acquisition: a contrast change
(gamma ``1 + 0.6 shift``), sensor noise (sigma ``10 shift`` grey levels) and collimation (black borders of
``8 shift`` % of the side), all seeded. The images are written as JPEG (quality 90), as CheXpert's are.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from chexnet.labels import PATHOLOGIES

LAYOUTS = ("nih", "chexpert")
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


def site_shift(img: np.ndarray, shift: float, rng: np.random.Generator) -> np.ndarray:
    """``img`` (uint8) as another site would acquire it: contrast, noise, collimation (see the module)."""
    if shift <= 0:
        return img
    x = (img.astype(np.float64) / 255.0) ** (1.0 + 0.6 * shift) * 255.0
    x += rng.normal(0.0, 10.0 * shift, x.shape)
    border = int(round(0.08 * shift * min(img.shape)))
    if border:
        x[:border], x[-border:], x[:, :border], x[:, -border:] = 0, 0, 0, 0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


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
