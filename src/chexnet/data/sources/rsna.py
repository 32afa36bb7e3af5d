"""RSNA Pneumonia Detection Challenge (Kaggle, 2018): per-box rows -> one row per image, ``Pneumonia`` 0 / 1.

:func:`read_source` is the ``rsna`` entry of :data:`chexnet.data.sources.SOURCES`. :func:`read_train_labels` /
:func:`parse_train_labels_frame` read the label file, :func:`image_targets` turns its rows into one label per
image, :func:`read_class_info` / :func:`parse_class_info_frame` read the optional class file,
:func:`boxes_table` lists the boxes and :func:`read_header` reads the three DICOM header fields used.

The layout
==========
``data_dir`` is the competition's download, unpacked (``kaggle competitions download -c
rsna-pneumonia-detection-challenge``):

``stage_2_train_labels.csv``          ``patientId, x, y, width, height, Target``: one row per box, so several
                                      rows for an image with several boxes; a ``Target`` 0 image has one row
                                      with the four box cells empty
``stage_2_detailed_class_info.csv``   optional: ``patientId, class``, ``class`` one of ``Lung Opacity``,
                                      ``Normal``, ``No Lung Opacity / Not Normal`` (repeated on each of an
                                      image's rows); when there, it also gives the label ``Lung Opacity``
``stage_2_train_images/ID.dcm``       the images (DICOM, 1024 x 1024, MONOCHROME2)
``stage_2_test_images/``              not read: the challenge's test labels were never released

The stage 1 release's ``stage_1_train_labels.csv`` / ``stage_1_detailed_class_info.csv`` /
``stage_1_train_images/`` (same format) are read where stage 2's label file is not there. Each CSV may be
gzip-compressed (``.csv.gz``). Malformed input raises :class:`~chexnet.data.splits.MetadataError` naming the
file, the line (as numbered in the file, the header being line 1) and the column.

The file
========
``patientId`` is an image id (a UUID) despite its name. ``Target`` is ``1`` or ``0``; a ``1`` row's box is
``x, y`` (its top-left corner, pixels of the image as stored) and ``width, height``: four numbers, ``x, y >= 0``
and ``width, height > 0``; a ``0`` row has four empty cells. All rows of one image have the same ``Target``.

The labels
==========
``Pneumonia`` (uint8 0 / 1): the image's ``Target``. The challenge's positive class is "lung opacity suggestive
of pneumonia" as the annotating radiologists read the image (no clinical or laboratory confirmation): it is
that reading, which is close to, but not the same as, the other sources' report-derived "Pneumonia".
``Lung Opacity`` (only with the class file): 1 where the image's ``class`` is ``Lung Opacity``, 0 for the two
others, missing (NaN; the column is then float) for an image the class file does not list. The release makes
``class`` = ``Lung Opacity`` exactly when ``Target`` = 1; disagreements are counted
(``attrs["source"]["class_target_disagreements"]``), not refused. The two other classes are not labels here
(``No Lung Opacity / Not Normal`` is some other abnormality, unnamed). Every image in the label file was read,
so ``Pneumonia`` has no missing value.

Patients, split, view, age, sex
===============================
RSNA gives no patient ids (``patientId`` is per image): each image is its own patient (``patient_id`` = the
image id), as for VinDr-CXR, so the "patient-wise" split is image-wise and two images of one person may land in
different splits. The split is a seeded random 70/10/20 of the images (:data:`RANDOM_FRACTIONS`; the challenge's
test labels were never released); ``val_fraction`` is not used.
``sex`` (``M`` / ``F``), ``age`` (years) and ``view`` (``PA`` / ``AP``) come from each DICOM's header
(``PatientSex``, ``PatientAge``, ``ViewPosition``), read with ``stop_before_pixels`` and ``specific_tags``: only
those three fields are read, and no other header value (names, ids, dates) is read, kept or printed.
``PatientAge`` is ``51`` or DICOM's ``051Y`` (also ``M``, ``W``, ``D``); the release has a few impossible ages (over
120, as in NIH's metadata), kept as given and counted. An image whose file is missing gets ``path`` '' (recorded as
failed by the writer), ``view`` '', ``sex`` '' and ``age`` NaN; an unreadable header gives the same values but
keeps its path. Reading one header per image takes a while on the full release (26,684 files).
``view`` None keeps every image (they are all frontal); ``PA`` / ``AP`` keeps that view position (images whose
view is unknown are then left out, counted).

Overlap with NIH ChestX-ray14
=============================
These images are a subset of NIH ChestX-ray14, re-annotated and renamed (their ids are not NIH's image names,
and this source does not map them). A model trained on an NIH cache has likely seen these pictures, under
other labels: do not use RSNA as an independent test set for it, nor mix the two caches without deduplication.

Boxes
=====
``attrs["boxes"]`` of :func:`read_source`'s table is :func:`boxes_table`: one row per box, columns ``image`` (the
table's image name), ``finding`` (``Pneumonia``: the label the box sets), ``x, y, w, h`` (float64 pixels);
``attrs["source"]["boxes"]`` counts them. ``chexnet prepare`` keeps those of the cached images in the cache's
``boxes.csv`` (reader empty; each image's size from its header's Rows, Columns) for ``chexnet localize``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from chexnet.data.sources.tables import bad_cell, find_table, header_columns, read_table
from chexnet.data.splits import MetadataError

SOURCE = "rsna"
STAGES = ("stage_2", "stage_1")  # the label files looked for, in this order
LABEL_FILE_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
BOX = ("x", "y", "width", "height")
CLASS_FILE_COLUMNS = ("patientId", "class")
CLASSES = ("Lung Opacity", "Normal", "No Lung Opacity / Not Normal")
OPACITY_CLASS = "Lung Opacity"
BOX_FINDING = "Pneumonia"
LABELS: tuple[str, ...] = ("Pneumonia", "Lung Opacity")  # Lung Opacity only with stage_2_detailed_class_info.csv
BOX_COLUMNS = ("image", "finding", "x", "y", "w", "h")
HEADER_TAGS = ("PatientSex", "PatientAge", "ViewPosition")  # the only DICOM fields read
RANDOM_FRACTIONS = (0.7, 0.1, 0.2)  # train/val/test by image
IMAGE_SUFFIX = ".dcm"
MAX_PLAUSIBLE_AGE = 120

_IMAGE_ID = re.compile(r"^[^/\\\s]+$")
_AGE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([YMWD]?)\s*$", re.IGNORECASE)
_AGE_UNIT = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
_SEX = {"M": "M", "F": "F"}

__all__ = ["BOX_COLUMNS", "CLASSES", "MetadataError", "boxes_table", "find_layout", "image_targets",
           "parse_age", "parse_class_info_frame", "parse_train_labels_frame", "read_class_info", "read_header",
           "read_source", "read_train_labels"]


# ------------------------------------------------------------------------------------------------------ parsing

def _text(raw: pd.DataFrame, columns: dict, name: str) -> np.ndarray:
    values = raw[columns[name]].to_numpy(dtype=object)
    return np.array([v.strip() if isinstance(v, str) else "" for v in values], dtype=object)


def _image_ids(raw: pd.DataFrame, columns: dict, where: str) -> np.ndarray:
    ids = _text(raw, columns, "patientId")
    codes, uniques = pd.factorize(ids)
    ok = np.array([bool(_IMAGE_ID.match(u)) for u in uniques], dtype=bool)
    if len(ids) and not ok[codes].all():
        i = int(np.flatnonzero(~ok[codes])[0])
        raise bad_cell(where, i, "patientId", raw[columns["patientId"]].iat[i], "not an image id (empty, or with / or spaces)")
    return ids


def parse_train_labels_frame(raw: pd.DataFrame, where: str = "<labels>") -> pd.DataFrame:
    """The label file as read (``dtype=str, keep_default_na=False, skip_blank_lines=False``; row ``i`` is line
    ``i + 2``) -> columns ``patientId`` (str), ``Target`` (int64 0 / 1) and ``x, y, width, height`` (float64, NaN
    on a Target 0 row), the file's order. ``raw`` is not modified."""
    columns = header_columns(raw, LABEL_FILE_COLUMNS, where)
    ids = _image_ids(raw, columns, where)
    target_text = _text(raw, columns, "Target")
    target = pd.to_numeric(pd.Series(target_text), errors="coerce").to_numpy(np.float64)
    bad = ~np.isin(target, (0.0, 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise bad_cell(where, i, "Target", raw[columns["Target"]].iat[i], "not 0 or 1")
    positive = target == 1.0
    coords, empty = {}, {}
    for name in BOX:
        s = _text(raw, columns, name)
        empty[name] = s == ""
        coords[name] = pd.to_numeric(pd.Series(np.where(empty[name], "nan", s)), errors="coerce").to_numpy(np.float64)
    for name in BOX:  # a Target 0 row has no box
        boxed = ~positive & ~empty[name]
        if boxed.any():
            i = int(np.flatnonzero(boxed)[0])
            raise bad_cell(where, i, name, raw[columns[name]].iat[i], "a Target 0 row has no box (its cell is empty)")
    for name in BOX:  # a Target 1 row has all four
        blank = positive & empty[name]
        if blank.any():
            i = int(np.flatnonzero(blank)[0])
            raise bad_cell(where, i, name, "", "empty on a Target 1 row (its box needs x, y, width and height)")
    for name in BOX:
        v = coords[name]
        low = 0.0 if name in ("x", "y") else None
        ok = np.isfinite(v) & ((v >= 0) if low is not None else (v > 0))
        bad = positive & ~ok
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            why = "not a number of pixels >= 0" if low is not None else "not a number of pixels > 0"
            raise bad_cell(where, i, name, raw[columns[name]].iat[i], why)
    out = pd.DataFrame({"patientId": ids, "Target": target.astype(np.int64), **coords})
    out.attrs["source"] = {"metadata": where, "metadata_rows": len(raw),
                           "unused_columns": [c for c in columns if c not in LABEL_FILE_COLUMNS]}
    return out


def image_targets(rows: pd.DataFrame, where: str = "<labels>") -> pd.Series:
    """The label file's rows (:func:`parse_train_labels_frame`) -> ``Target`` per image (uint8, index the image
    ids in order of first appearance). A row whose Target differs from its image's first row raises
    :class:`~chexnet.data.splits.MetadataError` naming it (row ``i`` is line ``i + 2``)."""
    ids = rows["patientId"].to_numpy(dtype=object)
    target = rows["Target"].to_numpy()
    first = pd.Series(target).groupby(ids, sort=False).transform("first").to_numpy()
    differs = first != target
    if differs.any():
        i = int(np.flatnonzero(differs)[0])
        raise bad_cell(where, i, "Target", str(target[i]),
                   f"image {ids[i]} has Target {first[i]} on an earlier line (an image's rows agree)")
    codes, uniques = pd.factorize(ids)
    per_image = np.zeros(len(uniques), dtype=np.uint8)
    per_image[codes] = target.astype(np.uint8)
    return pd.Series(per_image, index=pd.Index(np.asarray(uniques, dtype=object), name="patientId"), name="Target")


def parse_class_info_frame(raw: pd.DataFrame, where: str = "<class info>") -> pd.Series:
    """The class file as read -> ``class`` per image (index the image ids, order of first appearance). An
    unknown class, or an image given two classes, raises naming the line and column."""
    columns = header_columns(raw, CLASS_FILE_COLUMNS, where)
    ids = _image_ids(raw, columns, where)
    klass = _text(raw, columns, "class")
    unknown = ~np.isin(klass, CLASSES)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise bad_cell(where, i, "class", raw[columns["class"]].iat[i], f"not one of {', '.join(map(repr, CLASSES))}")
    first = pd.Series(klass).groupby(ids, sort=False).transform("first").to_numpy(dtype=object)
    differs = first != klass
    if differs.any():
        i = int(np.flatnonzero(differs)[0])
        raise bad_cell(where, i, "class", raw[columns["class"]].iat[i],
                   f"image {ids[i]} has class {first[i]!r} on an earlier line")
    table = pd.Series(klass, index=pd.Index(ids, name="patientId"), name="class")
    return table[~table.index.duplicated()]


def boxes_table(rows: pd.DataFrame, image_names: dict | None = None) -> pd.DataFrame:
    """The boxes of the label file's rows: columns :data:`BOX_COLUMNS` (``image`` is ``image_names[id]``, or the
    id without ``image_names``; ``finding`` :data:`BOX_FINDING`), one row per Target 1 row, in order."""
    a = rows[rows["Target"].to_numpy() == 1]
    ids = a["patientId"].to_numpy(dtype=object)
    image = ids if image_names is None else np.array([image_names[i] for i in ids], dtype=object)
    return pd.DataFrame({"image": image, "finding": np.full(len(a), BOX_FINDING, dtype=object),
                         "x": a["x"].to_numpy(np.float64), "y": a["y"].to_numpy(np.float64),
                         "w": a["width"].to_numpy(np.float64), "h": a["height"].to_numpy(np.float64)})


def read_train_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``stage_2_train_labels.csv`` (also ``.csv.gz``) -> :func:`parse_train_labels_frame`'s table."""
    return parse_train_labels_frame(*read_table(path))


def read_class_info(path: str | os.PathLike) -> pd.Series:
    """Read ``stage_2_detailed_class_info.csv`` (also ``.csv.gz``) -> :func:`parse_class_info_frame`'s table."""
    return parse_class_info_frame(*read_table(path))


# ------------------------------------------------------------------------------------------------ DICOM header

def parse_age(text) -> float:
    """``51``, ``051Y``, ``6M``, ``3W``, ``10D`` -> years (float); NaN for blank or anything else."""
    m = _AGE.match(str(text)) if text is not None else None
    if not m:
        return float("nan")
    return float(m.group(1)) * _AGE_UNIT[m.group(2).upper()]


def read_header(path: str | os.PathLike) -> tuple[str, float, str] | None:
    """``(sex, age, view)`` from the DICOM header of ``path``: ``PatientSex`` (``M`` / ``F``, else ''),
    ``PatientAge`` (years, NaN when absent or malformed), ``ViewPosition`` (upper case; '' when absent). Only
    those three fields are read (``specific_tags``, ``stop_before_pixels``). None when the file cannot be read
    as DICOM, e.g. it lacks DICOM's preamble and ``DICM`` prefix (nothing of it is kept or said)."""
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():  # e.g. RSNA's "51" is not DICOM's AS spelling: no warning quoting the value
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
            sex = str(getattr(ds, "PatientSex", "") or "").strip().upper()
            age = parse_age(getattr(ds, "PatientAge", "") or "")
            view = str(getattr(ds, "ViewPosition", "") or "").strip().upper()
    except Exception:  # pydicom raises many kinds; the header's content is never put in a message
        return None
    return _SEX.get(sex, ""), age, view


# =========================================================================== the registered source

class Layout(NamedTuple):
    """The files of one release stage in ``data_dir``."""

    stage: str  # "stage_2" or "stage_1"
    labels_csv: Path
    class_csv: Path | None  # None: no class file (no Lung Opacity label)
    image_dir: str  # relative to data_dir


def find_layout(data_dir: str | os.PathLike) -> Layout:
    """The first stage of :data:`STAGES` whose ``STAGE_train_labels.csv`` is in ``data_dir``; MetadataError
    naming what was looked for otherwise."""
    data_dir = Path(data_dir)
    for stage in STAGES:
        labels = find_table(data_dir, f"{stage}_train_labels")
        if labels is not None:
            return Layout(stage, labels, find_table(data_dir, f"{stage}_detailed_class_info"), f"{stage}_train_images")
    looked = ", ".join(str(data_dir / f"{stage}_train_labels.csv") for stage in STAGES)
    raise MetadataError(f"{data_dir}: no RSNA Pneumonia label file (looked for {looked}, each also .csv.gz)")


def _images_on_disk(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as it:
        return {e.name for e in it if e.name.endswith(IMAGE_SUFFIX) and e.is_file()}


def read_source(data_dir: str | os.PathLike, *, view: str | None = None, seed: int = 0,
                val_fraction: float = 0.1) -> pd.DataFrame:
    """The ``rsna`` source (see :mod:`chexnet.data.sources`): the RSNA Pneumonia Detection Challenge's training
    images, one row per image of the label file (order of first appearance), ``Pneumonia`` from ``Target``
    (and ``Lung Opacity`` from the class file when there), sex / age / view from the DICOM headers, a seeded
    70/10/20 split by image (``val_fraction`` is not used). ``attrs["boxes"]`` holds the boxes."""
    from chexnet.data.cache import CacheError, index_columns
    from chexnet.data.splits import check_patient_disjoint, split_patients

    data_dir = Path(data_dir)
    layout = find_layout(data_dir)
    rows = read_train_labels(layout.labels_csv)
    where = rows.attrs["source"]["metadata"]
    targets = image_targets(rows, where)
    ids = targets.index.to_numpy(dtype=object)
    if not len(ids):
        raise CacheError(f"{layout.labels_csv}: no image")
    image = np.array([f"{layout.image_dir}/{i}{IMAGE_SUFFIX}" for i in ids], dtype=object)

    labels = {"Pneumonia": targets.to_numpy(np.uint8)}
    class_summary = None
    if layout.class_csv is not None:
        classes = read_class_info(layout.class_csv)
        given = classes.reindex(ids).to_numpy(dtype=object)
        listed = ~pd.isna(given)
        opacity = np.where(listed, (given == OPACITY_CLASS).astype(np.float32), np.float32(np.nan))
        labels["Lung Opacity"] = opacity.astype(np.uint8) if listed.all() else opacity.astype(np.float32)
        disagree = listed & ((given == OPACITY_CLASS) != (labels["Pneumonia"] == 1))
        class_summary = {
            "class_info": str(layout.class_csv),
            "classes": {c: int((given == c).sum()) for c in CLASSES},
            "images_without_class": int((~listed).sum()),
            "class_rows_without_labels": int((~classes.index.isin(set(ids))).sum()),
            "class_target_disagreements": int(disagree.sum()),
        }

    on_disk = _images_on_disk(data_dir / layout.image_dir)
    present = np.array([f"{i}{IMAGE_SUFFIX}" in on_disk for i in ids], dtype=bool)
    sex = np.full(len(ids), "", dtype=object)
    age = np.full(len(ids), np.nan)
    views = np.full(len(ids), "", dtype=object)
    unreadable = 0
    for k in np.flatnonzero(present):
        header = read_header(data_dir / image[k])
        if header is None:
            unreadable += 1
            continue
        sex[k], age[k], views[k] = header

    keep = np.ones(len(ids), dtype=bool) if view is None else views == view
    left_out = pd.Series(views[~keep]).value_counts()
    if not keep.any():
        raise CacheError(f"{layout.labels_csv}: no image with ViewPosition {view} in its DICOM header")
    label_names = [name for name in ("Pneumonia", "Lung Opacity") if name in labels]
    df = pd.DataFrame({"image": image[keep], "patient_id": ids[keep], "split": "", "view": views[keep]})
    for name in label_names:
        df[name] = labels[name][keep]
    df["age"], df["sex"] = age[keep], sex[keep]
    df["path"] = [str(data_dir / name) if ok else "" for name, ok in zip(image[keep], present[keep])]

    kept_ids = df["patient_id"].to_numpy(dtype=object)
    groups = split_patients(kept_ids, RANDOM_FRACTIONS, seed)
    df["split"] = pd.Series(kept_ids).map({i: name for name, part in zip(("train", "val", "test"), groups)
                                           for i in part}).to_numpy(dtype=object)
    check_patient_disjoint(df["patient_id"], df["split"])
    out = df[[*index_columns(label_names), "path"]].reset_index(drop=True)
    names = dict(zip(ids[keep], image[keep]))
    kept_rows = rows[rows["patientId"].isin(names)]
    box_table = boxes_table(kept_rows, names).reset_index(drop=True)

    out.attrs["source"] = {
        "data_dir": str(data_dir),
        "stage": layout.stage,
        "metadata": [str(p) for p in (layout.labels_csv, layout.class_csv) if p is not None],
        "metadata_rows": rows.attrs["source"]["metadata_rows"],
        "images": len(out),
        "split_mode": "random",
        "split_unit": "image: RSNA's patientId is an image id (no patient ids), each image is its own patient",
        "val_fraction": "not used (a seeded 70/10/20 split of the images)",
        "excluded_by_view": int((~keep).sum()),
        "views_left_out": {str(k): int(v) for k, v in left_out.items()},
        "view_rule": "all images (all frontal)" if view is None else f"DICOM ViewPosition {view} only",
        "labels": {
            "Pneumonia": "Target (lung opacity suggestive of pneumonia, as the challenge's radiologists read it)",
            **({"Lung Opacity": f"class {OPACITY_CLASS!r} of {layout.class_csv.name}"} if class_summary else {}),
        },
        **(class_summary or {"class_info": None}),
        "boxes": len(box_table),
        "images_missing_on_disk": int((~present[keep]).sum()),
        "images_on_disk_without_labels": len(on_disk - {f"{i}{IMAGE_SUFFIX}" for i in ids}),
        "unreadable_headers": unreadable,
        "age_sex": "from the DICOM headers (PatientSex, PatientAge, ViewPosition only; no other field read)",
        "ages_over_120": int((out["age"] > MAX_PLAUSIBLE_AGE).sum()),
        "overlap": "these images are a subset of NIH ChestX-ray14 (renamed; not mapped to NIH's names)",
        "unused_columns": rows.attrs["source"]["unused_columns"],
    }
    out.attrs["boxes"] = box_table
    return out
