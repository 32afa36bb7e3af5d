"""A hospital's own export (``--layout csv``; ``chexnet prepare --dataset csv --mapping OUT/mapping.yaml``)::

    OUT/radiology_export.csv      ';'-separated, one row per image: AccessionNumber, MRN, StudyDate, Modality,
                                  ViewPosition, PatientSex (Male / Female), PatientAge (``058Y``), ImagePath,
                                  Cohort (train / test), then one column per finding of :data:`FINDINGS`
    OUT/images/MRN/ACCESSION.png  8-bit PNGs
    OUT/mapping.yaml              the csv source's mapping file for this export (its path: the summary's
                                  ``mapping``)

The MRN is a 7-digit text (leading zeros) per NIH patient, the accession number unique per image. The
finding columns are the hospital's own names for 9 of NIH's findings (:data:`FINDINGS`: ``pleural_effusion``
-> Effusion, ``lung_nodule`` -> Nodule, ...; Infiltration, Emphysema, Fibrosis, Pleural_Thickening and Hernia
are not coded), each cell ``YES`` (positive; ``UNCERTAIN`` for a share ``uncertain`` of them), ``NO``
(negative) or blank (not coded: a share ``blank`` of the negatives); the mapping reads ``YES`` 1, ``NO`` 0,
``UNCERTAIN`` and blank missing. ``Cohort`` is ``test`` for NIH's test-list patients (a holdout), ``train``
for the others (the source draws val from train).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chexnet.data.synth_layouts.common import (
    check_shift,
    dicom_age,
    note,
    read_draft,
    site_shift,
    write_csv,
    write_image,
)

CSV_NAME, MAPPING_NAME, DELIMITER = "radiology_export.csv", "mapping.yaml", ";"
FINDINGS = {  # the export's column -> the NIH finding (a vocabulary label)
    "atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly", "pleural_effusion": "Effusion",
    "pneumothorax": "Pneumothorax", "consolidation": "Consolidation", "pulmonary_edema": "Edema",
    "pneumonia": "Pneumonia", "lung_nodule": "Nodule", "lung_mass": "Mass",
}
COLUMNS = ("AccessionNumber", "MRN", "StudyDate", "Modality", "ViewPosition", "PatientSex", "PatientAge", "ImagePath",
           "Cohort", *FINDINGS)
SEX = {"M": "Male", "F": "Female"}
MAPPING = f"""\
# chexnet prepare --dataset csv --data THIS_FOLDER --mapping THIS_FILE
csv: {CSV_NAME}
delimiter: "{DELIMITER}"
image: ImagePath
patient: MRN
split: Cohort
view: ViewPosition
sex: PatientSex
age: PatientAge
labels:
""" + "".join(f"  {column}: {label}\n" for column, label in FINDINGS.items()) + """\
values:
  "YES": 1
  "NO": 0
  "UNCERTAIN": missing
  "": missing
"""
__all__ = ["FINDINGS", "MAPPING", "to_csv"]


def to_csv(nih_dir: str | Path, out_dir: str | Path, seed: int = 0, shift: float = 0.0, uncertain: float = 0.1,
           blank: float = 0.2, record: list | None = None) -> dict:
    """Write a hospital-like CSV export of the synthetic NIH folder ``nih_dir``, its images and the mapping
    file into ``out_dir`` (the module); returns a summary with the mapping file's path and the cells' counts.
    ``record``: a list to append each image's entry to (:func:`~chexnet.data.synth_layouts.common.note`)."""
    shift = check_shift(shift)
    draft, out_dir = read_draft(nih_dir), Path(out_dir)
    rng, pixel_rng = np.random.default_rng([seed, 61]), np.random.default_rng([seed, 62])
    patients = sorted({d.patient_id for d in draft})
    mrn = dict(zip(patients, (f"{v:07d}" for v in rng.choice(10_000_000, size=len(patients), replace=False))))
    accessions = 10_000_000 + rng.choice(90_000_000, size=len(draft), replace=False)
    first_day = {p: int(rng.integers(0, 10 * 365)) for p in patients}
    rows, counts = [], {"YES": 0, "UNCERTAIN": 0, "NO": 0, "": 0}
    for d, accession in zip(draft, accessions):
        rel = f"images/{mrn[d.patient_id]}/{accession}.png"
        write_image(out_dir / rel, site_shift(d.pixels(), shift, pixel_rng))
        note(record, rel, d, split="test" if d.test else None, view=d.view, age=d.age, sex=d.sex)
        cells = []
        for finding in FINDINGS.values():
            if finding in d.findings:
                cells.append("UNCERTAIN" if rng.uniform() < uncertain else "YES")
            else:
                cells.append("" if rng.uniform() < blank else "NO")
            counts[cells[-1]] += 1
        day = np.datetime64("2014-01-01") + first_day[d.patient_id] + 60 * d.follow_up
        rows.append((str(accession), mrn[d.patient_id], str(day).replace("-", ""), "DX" if d.view == "PA" else "CR",
                     d.view, SEX.get(d.sex, ""), dicom_age(d.age), rel, "test" if d.test else "train", *cells))
    write_csv(out_dir / CSV_NAME, COLUMNS, rows, delimiter=DELIMITER)
    mapping = out_dir / MAPPING_NAME
    mapping.write_text(MAPPING)
    return {"out_dir": str(out_dir), "layout": "csv", "images": len(draft), "patients": len(patients),
            "test_images": sum(d.test for d in draft), "mapping": str(mapping.resolve()),
            "prepare": f"chexnet prepare --dataset csv --data {out_dir} --mapping {mapping.resolve()} --out CACHE",
            "shift": shift, "cells": {k or "blank": v for k, v in counts.items()}}
