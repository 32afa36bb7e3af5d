"""Synthetic data sets in other sources' exact file layouts, with an optional site shift (``chexnet synth --layout``).

Each writer turns a synthetic NIH-layout folder (:func:`chexnet.data.synthetic.generate`, "the draft") into
another source's download, with that source's file names, metadata format and label encodings, taking each
image's pixels, findings, boxes, patient, age, sex and view from the draft, so that ``chexnet prepare
--dataset NAME --data OUT`` and external validation can be tried without the real data. One module per
layout; its docstring says what it writes and how NIH's findings become the source's labels:

``chexpert``  :mod:`.chexpert`  CheXpert v1.0 small: train.csv / valid.csv (1.0, -1.0, 0.0, blank), JPEGs
``mimic``     :mod:`.mimic`     MIMIC-CXR-JPG 2.0.0: gzipped metadata / split / chexpert / negbio CSVs,
                                files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg, lateral images beside some PA ones
``padchest``  :mod:`.padchest`  PadChest: the 160K label CSV with its Labels list text, 16-bit PNGs holding
                                12 bits in numbered folders
``vindr``     :mod:`.vindr`     VinDr-CXR (PhysioNet): per-reader box rows (3 readers, No finding rows),
                                a consensus test file, 12-bit DICOMs, some MONOCHROME1
``rsna``      :mod:`.rsna`      RSNA Pneumonia: stage_2_train_labels.csv (one row per box, Target), the class
                                file, .dcm files with sex, age and view in the header
``csv``       :mod:`.hospital`  a hospital's ';'-separated export (YES / NO / UNCERTAIN / blank) and the
                                mapping YAML the csv source needs (``--mapping``, its path in the summary)

The site shift (``shift`` in [0, 1]; 0: none; :func:`site_shift`) models another hospital's acquisition: a
contrast change (gamma ``1 + 0.6 shift``), sensor noise (sigma ``10 shift`` grey levels) and collimation
(black borders of ``8 shift`` % of the side), all seeded, applied to every image of every layout before it is
encoded. Except in ``chexpert`` (kept as it was, for the demo's numbers), the shift's noise has its own
generator, so a layout's files other than the pixels are the same whatever the shift.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from chexnet.data.synth_layouts.chexpert import (
    CHEXPERT_COLUMNS,
    FROM_NIH,
    NEVER_MENTIONED,
    chexpert_values,
    to_chexpert,
)
from chexnet.data.synth_layouts.common import site_shift

LAYOUTS = ("nih", "chexpert", "mimic", "padchest", "vindr", "rsna", "csv")
LAYOUT_HELP = {
    "nih": "NIH ChestX-ray14: 8-bit PNGs in images_001/images/, Data_Entry_2017.csv, the split lists, "
           "BBox_List_2017.csv",
    "chexpert": "CheXpert v1.0 small: train.csv / valid.csv with 1.0, -1.0, 0.0 and blanks, JPEGs",
    "mimic": "MIMIC-CXR-JPG 2.0.0: gzipped metadata / split / chexpert / negbio CSVs, files/pNN/pSUBJECT/sSTUDY/*.jpg "
             "(laterals beside some PA images)",
    "padchest": "PadChest: the 160K labels CSV (Labels list text), 16-bit PNGs holding 12 bits in numbered folders",
    "vindr": "VinDr-CXR (PhysioNet): per-reader box rows (3 readers, No finding), a consensus test file, 12-bit "
             "DICOMs, some MONOCHROME1",
    "rsna": "RSNA Pneumonia: stage_2_train_labels.csv (one row per box, Target), the class file, .dcm files with "
            "sex, age and view in the header",
    "csv": "a hospital's ';'-separated export (YES / NO / UNCERTAIN / blank) and its mapping.yaml for "
           "prepare --dataset csv --mapping",
}
WRITERS = {"chexpert": ("chexpert", "to_chexpert"), "mimic": ("mimic", "to_mimic"),
           "padchest": ("padchest", "to_padchest"), "vindr": ("vindr", "to_vindr"), "rsna": ("rsna", "to_rsna"),
           "csv": ("hospital", "to_csv")}  # layout -> (module, function), imported when used
__all__ = ["CHEXPERT_COLUMNS", "FROM_NIH", "LAYOUTS", "LAYOUT_HELP", "NEVER_MENTIONED", "WRITERS", "chexpert_values",
           "site_shift", "to_chexpert", "to_layout", "writer"]


def writer(layout: str):
    """The function writing ``layout`` (``to_NAME(nih_dir, out_dir, seed=0, shift=0.0, ...) -> summary``)."""
    if layout not in WRITERS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(WRITERS)} (and nih, the draft itself)")
    module, name = WRITERS[layout]
    return getattr(import_module(f"{__name__}.{module}"), name)


def to_layout(layout: str, nih_dir: str | Path, out_dir: str | Path, seed: int = 0, shift: float = 0.0) -> dict:
    """Write ``layout`` of the synthetic NIH folder ``nih_dir`` into ``out_dir``; returns the writer's summary."""
    return writer(layout)(nih_dir, out_dir, seed=seed, shift=shift)
