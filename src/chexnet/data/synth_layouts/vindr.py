"""VinDr-CXR 1.0.0, PhysioNet's layout (``--layout vindr``; ``chexnet prepare --dataset vindr``)::

    OUT/annotations/annotations_train.csv   image_id, rad_id, class_name, x_min, y_min, x_max, y_max: one row per
                                            box per reader, 3 readers (of R1 .. R17) per image; a reader who
                                            marked nothing writes one ``No finding`` row with empty coordinates
    OUT/annotations/annotations_test.csv    the same without rad_id: one consensus read per image
    OUT/train/IMAGE_ID.dicom, OUT/test/IMAGE_ID.dicom   DICOM, 12 bits stored in 16, a share ``monochrome1``
                                            MONOCHROME1 (inverted values), a full-range window, PatientSex and
                                            PatientAge in the header

Image ids are 32 hexadecimal characters; VinDr has no patient ids, so each image is its own patient. NIH's
test-list images are the test annotations (the source's test split), the others train. Classes, from the NIH
findings (:data:`CLASS_OF`): Atelectasis, Cardiomegaly, Consolidation, Infiltration and Pneumothorax as
themselves, Mass and Nodule as ``Nodule/Mass``, Effusion as ``Pleural effusion``, Pleural_Thickening as
``Pleural thickening``, Fibrosis as ``Pulmonary fibrosis``, Pneumonia and Edema as ``Lung Opacity``
(VinDr's annotation classes have neither), Emphysema and Hernia as ``Other lesion`` (an abnormality the
source drops). A finding's box is the draft's box, moved a little by each reader; a train reader marks each
of the image's findings with probability ``sensitivity`` and, with probability ``false_positive``, one of
:data:`INCIDENTAL` somewhere in the image, so the readers disagree as VinDr's do and ``--readers any`` /
``majority`` differ. The consensus marks every finding, at the draft's box. The ``image_labels_*.csv``
files (not read by the source) are not written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chexnet.data.synth_layouts.common import (
    check_shift,
    dicom_age,
    hex_id,
    jitter_box,
    note,
    read_draft,
    site_shift,
    to_bits,
    write_csv,
    write_dicom,
)

CLASS_OF = {  # NIH finding -> VinDr-CXR class_name
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Consolidation": "Consolidation",
    "Infiltration": "Infiltration", "Pneumothorax": "Pneumothorax", "Mass": "Nodule/Mass", "Nodule": "Nodule/Mass",
    "Effusion": "Pleural effusion", "Pleural_Thickening": "Pleural thickening", "Fibrosis": "Pulmonary fibrosis",
    "Pneumonia": "Lung Opacity", "Edema": "Lung Opacity", "Emphysema": "Other lesion", "Hernia": "Other lesion",
}
INCIDENTAL = ("Aortic enlargement", "Calcification", "ILD", "Other lesion")  # a reader's marks beyond the draft
NO_FINDING = "No finding"
COLUMNS = ("image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max")
READERS, READERS_PER_IMAGE, BITS = 17, 3, 12
__all__ = ["CLASS_OF", "INCIDENTAL", "to_vindr"]


def _cell(v: float) -> str:
    return f"{v:.1f}"


def _marks(d, side, rng, sensitivity: float, false_positive: float, sd: float) -> list[tuple]:
    """One reader's rows for draft image ``d``: (class_name, x_min, y_min, x_max, y_max) ('' without a box)."""
    rows = []
    for finding in d.findings:
        if rng.uniform() >= sensitivity:
            continue
        boxes = d.boxes_of(finding) or [None]
        for box in boxes:
            edges = ("",) * 4 if box is None else tuple(map(_cell, jitter_box(box, side, rng, sd)))
            rows.append((CLASS_OF[finding], *edges))
    if rng.uniform() < false_positive:
        h, w = side
        x, y = rng.uniform(0, 0.7) * w, rng.uniform(0, 0.7) * h
        box = (x, y, rng.uniform(0.1, 0.3) * w, rng.uniform(0.1, 0.3) * h)
        rows.append((str(rng.choice(INCIDENTAL)), *map(_cell, jitter_box(box, side, rng, 0.0))))
    return rows or [(NO_FINDING, "", "", "", "")]


def to_vindr(nih_dir: str | Path, out_dir: str | Path, seed: int = 0, shift: float = 0.0, sensitivity: float = 0.85,
             false_positive: float = 0.05, box_jitter: float = 0.02, monochrome1: float = 0.3,
             record: list | None = None) -> dict:
    """Write VinDr-CXR's PhysioNet layout of the synthetic NIH folder ``nih_dir`` into ``out_dir`` (the module);
    returns a summary: images per part, rows, boxes and marks per class. ``record``: a list to append each
    image's entry to (:func:`~chexnet.data.synth_layouts.common.note`)."""
    shift = check_shift(shift)
    draft, out_dir = read_draft(nih_dir), Path(out_dir)
    rng, pixel_rng = np.random.default_rng([seed, 41]), np.random.default_rng([seed, 42])
    rows = {"train": [], "test": []}
    images = {"train": 0, "test": 0}
    classes: dict[str, int] = {}
    inverted = 0
    for d in draft:
        part = "test" if d.test else "train"
        image_id = hex_id(rng)
        img = site_shift(d.pixels(), shift, pixel_rng)
        values = to_bits(img, BITS)
        photometric = "MONOCHROME1" if rng.uniform() < monochrome1 else "MONOCHROME2"
        if photometric == "MONOCHROME1":
            values, inverted = (1 << BITS) - 1 - values, inverted + 1
        write_dicom(out_dir / part / f"{image_id}.dicom", values, uid_seed=f"vindr-{seed}-{image_id}",
                    photometric=photometric, bits_stored=BITS, WindowCenter=1 << (BITS - 1), WindowWidth=1 << BITS,
                    PatientSex=d.sex, PatientAge=dicom_age(d.age), PatientID=image_id)
        images[part] += 1
        note(record, f"{part}/{image_id}.dicom", d, split="test" if d.test else None)
        if part == "test":
            rows["test"] += [(image_id, *r) for r in _marks(d, img.shape, rng, 1.0, 0.0, 0.0)]
        else:
            for reader in sorted(rng.choice(READERS, size=READERS_PER_IMAGE, replace=False)):
                rows["train"] += [(image_id, f"R{reader + 1}", *r)
                                  for r in _marks(d, img.shape, rng, sensitivity, false_positive, box_jitter)]
    train = [rows["train"][i] for i in rng.permutation(len(rows["train"]))]  # the release's rows are not grouped
    write_csv(out_dir / "annotations" / "annotations_train.csv", COLUMNS, train)
    write_csv(out_dir / "annotations" / "annotations_test.csv", tuple(c for c in COLUMNS if c != "rad_id"),
              rows["test"])
    for r in rows["train"] + [(r[0], "", *r[1:]) for r in rows["test"]]:
        classes[r[2]] = classes.get(r[2], 0) + 1
    boxes = sum(1 for r in rows["train"] if r[3] != "") + sum(1 for r in rows["test"] if r[2] != "")
    return {"out_dir": str(out_dir), "layout": "vindr", "images": len(draft), "train_images": images["train"],
            "test_images": images["test"], "monochrome1": inverted, "rows": {k: len(v) for k, v in rows.items()},
            "boxes": boxes, "marks": dict(sorted(classes.items())), "shift": shift}
