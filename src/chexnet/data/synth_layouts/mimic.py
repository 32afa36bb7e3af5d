"""MIMIC-CXR-JPG 2.0.0 (``--layout mimic``; ``chexnet prepare --dataset mimic``), written as the release folder::

    OUT/mimic-cxr-2.0.0-metadata.csv.gz   one row per image: dicom_id, subject_id, study_id,
                                          PerformedProcedureStepDescription, ViewPosition, Rows, Columns,
                                          StudyDate, StudyTime, the three *CodeSequence_CodeMeaning columns
    OUT/mimic-cxr-2.0.0-split.csv.gz      one row per image: dicom_id, study_id, subject_id, split
    OUT/mimic-cxr-2.0.0-chexpert.csv.gz   one row per study: subject_id, study_id, the 14 observations
    OUT/mimic-cxr-2.0.0-negbio.csv.gz     the same, another labeler's cells
    OUT/files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg   JPEG, quality 95

Each NIH image is one study (its report's labels are the image's), of an 8-digit subject id starting 10 .. 19
(one per NIH patient) and a unique 8-digit study id starting 5; dates are shifted into 2100 .. 2200 as
MIMIC's are. A share ``lateral`` of the PA studies also have a ``LATERAL`` image (the frontal one mirrored, a
stand-in), which ``prepare`` leaves out by default. The split: NIH's test-list patients ``test``, a seeded
share ``validate`` of the other patients ``validate``, the rest ``train``. The label cells are CheXpert's
encoding from the NIH findings, as ``--layout chexpert`` writes them (:data:`FROM_NIH`: Effusion -> Pleural
Effusion, Infiltration -> Lung Opacity, Mass / Nodule -> Lung Lesion, ...; ``1.0``, ``-1.0`` for a share
``uncertain`` of the positives, blank or ``0.0`` for a share ``explicit_negative`` of the negatives), drawn
independently for the two labelers' files. There is no age or sex (the release has none).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chexnet.data.synth_layouts.chexpert import FROM_NIH, chexpert_values
from chexnet.data.synth_layouts.common import check_shift, note, read_draft, site_shift, write_csv, write_image
from chexnet.labels import PATHOLOGIES

OBSERVATIONS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
                "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                "Pneumothorax", "Support Devices")  # the label files' order (alphabetical)
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning")
PROCEDURES = {"PA": "CHEST (PA AND LAT)", "AP": "CHEST (PORTABLE AP)"}
VIEW_MEANING = {"PA": ("postero-anterior", "Erect"), "AP": ("antero-posterior", "Recumbent"),
                "LATERAL": ("lateral", "Erect")}
__all__ = ["FROM_NIH", "OBSERVATIONS", "to_mimic"]


def subject_id(patient: int) -> str:
    """NIH patient -> an 8-digit MIMIC subject id, ``10`` .. ``19`` first."""
    return f"{10 + patient % 10}{patient % 1_000_000:06d}"


def to_mimic(nih_dir: str | Path, out_dir: str | Path, seed: int = 0, shift: float = 0.0, uncertain: float = 0.1,
             explicit_negative: float = 0.3, lateral: float = 0.25, validate: float = 0.1,
             record: list | None = None) -> dict:
    """Write the MIMIC-CXR-JPG layout of the synthetic NIH folder ``nih_dir`` into ``out_dir`` (the module);
    returns a summary: images (frontal, lateral) and studies per split, the label cells' counts. ``record``: a
    list to append each image's entry to (:func:`~chexnet.data.synth_layouts.common.note`)."""
    shift = check_shift(shift)
    draft, out_dir = read_draft(nih_dir), Path(out_dir)
    rng, pixel_rng = np.random.default_rng([seed, 21]), np.random.default_rng([seed, 22])
    patients = sorted({d.patient_id for d in draft if not d.test})
    n_val = int(round(validate * len(patients)))
    val = set(rng.choice(patients, size=n_val, replace=False).tolist()) if n_val else set()
    studies = 50_000_000 + rng.choice(10_000_000, size=len(draft), replace=False)
    first_day = {p: int(rng.integers(0, 80 * 365)) for p in sorted({d.patient_id for d in draft})}
    meta, split, labels = [], [], {"chexpert": [], "negbio": []}
    counts = {"1.0": 0, "-1.0": 0, "0.0": 0, "": 0}
    per_split = {s: {"frontal": 0, "lateral": 0} for s in ("train", "validate", "test")}
    for d, study in zip(draft, studies):
        subject, study = subject_id(d.patient_id), str(study)
        part = "test" if d.test else "validate" if d.patient_id in val else "train"
        day = np.datetime64("2110-01-01") + first_day[d.patient_id] + 90 * d.follow_up
        date, time = str(day).replace("-", ""), f"{rng.integers(0, 24):02d}{rng.integers(0, 60):02d}" \
                                                 f"{rng.integers(0, 60):02d}.{rng.integers(0, 1000):03d}"
        img = site_shift(d.pixels(), shift, pixel_rng)
        views = [(d.view, img)] + ([("LATERAL", img[:, ::-1])] if d.view == "PA" and rng.uniform() < lateral else [])
        for view, pixels in views:
            dicom = "-".join(rng.bytes(4).hex() for _ in range(5))
            name = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
            write_image(out_dir / name, np.ascontiguousarray(pixels), quality=95)
            note(record, name, d, split={"validate": "val"}.get(part, part), view=view, excluded=view == "LATERAL")
            meaning, orientation = VIEW_MEANING[view]
            meta.append((dicom, subject, study, PROCEDURES[d.view], view, *pixels.shape, date, time,
                         PROCEDURES[d.view], meaning, orientation))
            split.append((dicom, study, subject, part))
            per_split[part]["lateral" if view == "LATERAL" else "frontal"] += 1
        findings = np.array([p in d.findings for p in PATHOLOGIES], dtype=np.uint8)
        for labeler, rows in labels.items():
            cells = chexpert_values(findings, rng, uncertain, explicit_negative)
            if labeler == "chexpert":
                for v in cells.values():
                    counts[v] += 1
            rows.append((subject, study, *(cells[o] for o in OBSERVATIONS)))
    write_csv(out_dir / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_COLUMNS, meta)
    write_csv(out_dir / "mimic-cxr-2.0.0-split.csv.gz", ("dicom_id", "study_id", "subject_id", "split"), split)
    for labeler, rows in labels.items():
        write_csv(out_dir / f"mimic-cxr-2.0.0-{labeler}.csv.gz", ("subject_id", "study_id", *OBSERVATIONS), rows)
    return {"out_dir": str(out_dir), "layout": "mimic", "images": len(meta), "studies": len(draft),
            "frontal_images": sum(s["frontal"] for s in per_split.values()),
            "lateral_images": sum(s["lateral"] for s in per_split.values()), "per_split": per_split,
            "patients": len(first_day), "shift": shift, "cells": {k or "blank": v for k, v in counts.items()}}
