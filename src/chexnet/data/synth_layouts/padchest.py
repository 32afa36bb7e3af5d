"""PadChest (``--layout padchest``; ``chexnet prepare --dataset padchest``)::

    OUT/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz   one row per image: ImageID, ImageDir,
        StudyDate_DICOM, StudyID, PatientID, PatientBirth, PatientSex_DICOM, ViewPosition_DICOM, Projection,
        MethodProjection, Pediatric, Modality_DICOM, BitsStored_DICOM, Rows_DICOM, Columns_DICOM, ReportID,
        Report, MethodLabel, Labels
    OUT/N/IMAGEID.png      16-bit grayscale PNGs holding 12-bit values (0 .. 4095), in numbered folders
                           (``ImageDir``) of :data:`IMAGES_PER_DIR` images, as the release's zips unpack

``Labels`` is PadChest's list text (``['pleural effusion', ' cardiomegaly']``, a stray space before some
terms as in the release): for each NIH finding one term of :data:`TERMS` (a seeded pick among PadChest's
kinds of it: ``laminar atelectasis``, ``loculated pleural effusion``, ``interstitial pattern``, ...; all
map back to the finding, ``chexnet.labels.SOURCE_NAMES["padchest"]``), and for a share ``other_terms`` of
the abnormal images one term PadChest has and the vocabulary lacks (:data:`OTHER_TERMS`, dropped by the
source); ``['normal']`` when there is no finding. So the cache's 14 labels are the NIH findings, No Finding
their absence, Fracture and Support Devices 0. A share ``lateral`` of the PA images also have a lateral
image (``Projection`` ``L``, the frontal one mirrored: left out by the source) and a share
``ap_horizontal`` of the AP ones are ``AP_horizontal`` (supine). ``PatientBirth`` (``1948.0``) is the study
year minus the NIH age, so the source's age is the NIH age; sex is ``PatientSex_DICOM``. ``MethodLabel`` is
``Physician`` for a share ``physician`` of the images, ``RNN_model`` otherwise. PadChest has no split (the
source draws one by patient).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chexnet.data.synth_layouts.common import (
    check_shift,
    hex_id,
    note,
    read_draft,
    site_shift,
    to_bits,
    write_csv,
    write_png16,
)

CSV_NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
COLUMNS = ("ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
           "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM", "BitsStored_DICOM",
           "Rows_DICOM", "Columns_DICOM", "ReportID", "Report", "MethodLabel", "Labels")
IMAGES_PER_DIR = 2_900  # ~160K images in folders 0 .. 54
BITS = 12
TERMS = {  # NIH finding -> PadChest terms for it (the first is its plain name)
    "Atelectasis": ("atelectasis", "laminar atelectasis", "atelectasis basal", "lobar atelectasis"),
    "Cardiomegaly": ("cardiomegaly",),
    "Effusion": ("pleural effusion", "loculated pleural effusion"),
    "Infiltration": ("infiltrates", "interstitial pattern", "alveolar pattern", "reticular interstitial pattern"),
    "Mass": ("mass", "pulmonary mass"),
    "Nodule": ("nodule", "multiple nodules"),
    "Pneumonia": ("pneumonia", "atypical pneumonia"),
    "Pneumothorax": ("pneumothorax",),
    "Consolidation": ("consolidation", "air bronchogram"),
    "Edema": ("pulmonary edema",),
    "Emphysema": ("emphysema",),
    "Fibrosis": ("pulmonary fibrosis",),
    "Pleural_Thickening": ("pleural thickening", "apical pleural thickening"),
    "Hernia": ("hiatal hernia",),
}
OTHER_TERMS = ("aortic elongation", "scoliosis", "COPD signs", "granuloma", "vertebral degenerative changes",
               "chronic changes")  # PadChest's terms without a vocabulary label (dropped by the source)
PROJECTIONS = {"PA": "POSTEROANTERIOR", "AP": "ANTEROPOSTERIOR", "AP_horizontal": "ANTEROPOSTERIOR", "L": "LATERAL"}
__all__ = ["OTHER_TERMS", "TERMS", "to_padchest"]


def to_padchest(nih_dir: str | Path, out_dir: str | Path, seed: int = 0, shift: float = 0.0, other_terms: float = 0.3,
                lateral: float = 0.25, ap_horizontal: float = 0.5, physician: float = 0.27,
                record: list | None = None) -> dict:
    """Write PadChest's layout of the synthetic NIH folder ``nih_dir`` into ``out_dir`` (the module); returns a
    summary: images (frontal, lateral), patients, the images mentioning each term (frontal ones). ``record``: a
    list to append each image's entry to (:func:`~chexnet.data.synth_layouts.common.note`)."""
    shift = check_shift(shift)
    draft, out_dir = read_draft(nih_dir), Path(out_dir)
    rng, pixel_rng = np.random.default_rng([seed, 31]), np.random.default_rng([seed, 32])
    patient_ids = {p: hex_id(rng) for p in sorted({d.patient_id for d in draft})}
    first_year = {p: int(rng.integers(2009, 2015)) for p in patient_ids}
    rows, mentions, frontal = [], {}, 0
    for d in draft:
        terms = [str(rng.choice(TERMS[f])) for f in d.findings] or ["normal"]
        if d.findings and rng.uniform() < other_terms:
            terms.append(str(rng.choice(OTHER_TERMS)))
        labels = repr([t if k == 0 or rng.uniform() < 0.7 else " " + t for k, t in enumerate(terms)])
        year = first_year[d.patient_id] + d.follow_up // 3
        date = f"{year}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
        birth = "" if d.age != d.age else f"{year - int(d.age):.1f}"
        projection = "AP_horizontal" if d.view == "AP" and rng.uniform() < ap_horizontal else d.view
        study, method = hex_id(rng), "Physician" if rng.uniform() < physician else "RNN_model"
        report = "sin hallazgos significativos." if terms == ["normal"] else "se observa " + ", ".join(terms) + "."
        img = site_shift(d.pixels(), shift, pixel_rng)
        views = [(projection, img)] + ([("L", img[:, ::-1])] if d.view == "PA" and rng.uniform() < lateral else [])
        for proj, pixels in views:
            name = f"216840111366964{''.join(map(str, rng.integers(0, 10, 30)))}_" \
                   f"{rng.integers(0, 100):02d}-{rng.integers(0, 1000):03d}-{rng.integers(0, 1000):03d}.png"
            folder = str(len(rows) // IMAGES_PER_DIR)
            write_png16(out_dir / folder / name, to_bits(np.ascontiguousarray(pixels), BITS))
            rows.append((name, folder, date, study, patient_ids[d.patient_id], birth, d.sex, PROJECTIONS[proj],
                         proj, "Manual review of DICOM fields", "No", "CR", BITS, *pixels.shape, hex_id(rng, 8),
                         report, method, labels))
            frontal += proj != "L"
            note(record, name, d, view="LATERAL" if proj == "L" else d.view, excluded=proj == "L",
                 age=float(year - int(birth[:4])) if birth else float("nan"), sex=d.sex)
        for t in terms:
            mentions[t] = mentions.get(t, 0) + 1
    write_csv(out_dir / CSV_NAME, COLUMNS, rows)
    return {"out_dir": str(out_dir), "layout": "padchest", "images": len(rows), "frontal_images": frontal,
            "lateral_images": len(rows) - frontal, "patients": len(patient_ids), "shift": shift,
            "bits": BITS, "terms": dict(sorted(mentions.items(), key=lambda kv: (-kv[1], kv[0])))}
