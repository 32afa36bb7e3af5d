"""RSNA Pneumonia Detection Challenge, stage 2 (``--layout rsna``; ``chexnet prepare --dataset rsna``)::

    OUT/stage_2_train_labels.csv          patientId, x, y, width, height, Target: one row per box; a Target 0
                                          image has one row with the four box cells empty
    OUT/stage_2_detailed_class_info.csv   patientId, class (repeated on each of an image's rows)
    OUT/stage_2_train_images/ID.dcm       DICOM, 8-bit MONOCHROME2, PatientSex, PatientAge (``58``, as RSNA
                                          writes it), ViewPosition (PA / AP) and PatientID (the image id)

``patientId`` is a UUID per image (RSNA's is an image id: each image is its own patient). ``Target`` is 1
when the NIH findings include Pneumonia, Consolidation or Infiltration (:data:`OPACITY_FINDINGS`: a lung
opacity suggestive of pneumonia; about a quarter of the images, near the challenge's 23%), with one box per
such finding's draft box (a lung-sized box where the draft has none); the class is ``Lung Opacity`` then,
``Normal`` without findings, ``No Lung Opacity / Not Normal`` otherwise. The challenge's test images (labels
never released) are not written: every NIH image is a training image (the source draws a 70/10/20 split).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from chexnet.data.synth_layouts.common import check_shift, note, read_draft, site_shift, write_csv, write_dicom

OPACITY_FINDINGS = ("Pneumonia", "Consolidation", "Infiltration")
LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
__all__ = ["OPACITY_FINDINGS", "to_rsna"]


def _cell(v: float) -> str:
    return f"{v:.1f}"


def to_rsna(nih_dir: str | Path, out_dir: str | Path, seed: int = 0, shift: float = 0.0,
            record: list | None = None) -> dict:
    """Write the RSNA challenge's layout of the synthetic NIH folder ``nih_dir`` into ``out_dir`` (the module);
    returns a summary: images, positives, boxes, images per class and view. ``record``: a list to append each
    image's entry to (:func:`~chexnet.data.synth_layouts.common.note`)."""
    shift = check_shift(shift)
    draft, out_dir = read_draft(nih_dir), Path(out_dir)
    rng, pixel_rng = np.random.default_rng([seed, 51]), np.random.default_rng([seed, 52])
    labels, classes = [], []
    per_class: dict[str, int] = {}
    views: dict[str, int] = {}
    for d in draft:
        image_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        img = site_shift(d.pixels(), shift, pixel_rng)
        write_dicom(out_dir / "stage_2_train_images" / f"{image_id}.dcm", img, uid_seed=f"rsna-{seed}-{image_id}",
                    modality="CR", PatientID=image_id, PatientSex=d.sex,
                    PatientAge="" if d.age != d.age else str(int(d.age)), ViewPosition=d.view,
                    SeriesDescription=f"view: {d.view}", ConversionType="WSD", PatientOrientation="")
        note(record, f"stage_2_train_images/{image_id}.dcm", d, view=d.view, age=float(int(d.age)) if d.age == d.age
             else float("nan"), sex=d.sex)
        positive = set(d.findings) & set(OPACITY_FINDINGS)
        if positive:
            h, w = img.shape
            boxes = d.boxes_of(*OPACITY_FINDINGS) or [(0.15 * w, 0.2 * h, 0.3 * w, 0.5 * h)]
            rows = [(image_id, *map(_cell, (max(x, 0.0), max(y, 0.0), max(bw, 1.0), max(bh, 1.0))), 1)
                    for x, y, bw, bh in boxes]
            klass = "Lung Opacity"
        else:
            rows = [(image_id, "", "", "", "", 0)]
            klass = "Normal" if not d.findings else "No Lung Opacity / Not Normal"
        labels += rows
        classes += [(image_id, klass)] * len(rows)
        per_class[klass] = per_class.get(klass, 0) + 1
        views[d.view] = views.get(d.view, 0) + 1
    write_csv(out_dir / "stage_2_train_labels.csv", LABEL_COLUMNS, labels)
    write_csv(out_dir / "stage_2_detailed_class_info.csv", ("patientId", "class"), classes)
    return {"out_dir": str(out_dir), "layout": "rsna", "images": len(draft),
            "positive": per_class.get("Lung Opacity", 0), "boxes": sum(1 for r in labels if r[-1] == 1),
            "classes": per_class, "views": views, "shift": shift}
