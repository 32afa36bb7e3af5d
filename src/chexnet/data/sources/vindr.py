"""VinDr-CXR (Vingroup Big Data Institute): per-reader finding boxes -> one row per image, labels 0 / 1.

:func:`read_source` is the ``vindr`` entry of :data:`chexnet.data.sources.SOURCES`. :func:`read_annotations`
reads one annotation file, :func:`parse_annotations_frame` does the same on a table already read,
:func:`image_labels` (the core, a pure function) turns readers' marks into image labels and
:func:`boxes_table` lists the boxes.

The layouts
===========
``data_dir`` is the folder of one of the two releases; which one is recognised by its annotation file, and
a folder holding both (or neither) is refused (:class:`~chexnet.data.splits.MetadataError` naming the paths
looked for):

``physionet``  PhysioNet's VinDr-CXR 1.0.0 (``physionet.org/files/vindr-cxr/1.0.0/``):
               ``annotations/annotations_train.csv`` and ``annotations/annotations_test.csv`` (the boxes),
               ``annotations/image_labels_train.csv`` and ``image_labels_test.csv`` (not read: see below),
               images ``train/IMAGE_ID.dicom`` and ``test/IMAGE_ID.dicom``.
``kaggle``     The Kaggle competition's (VinBigData Chest X-ray Abnormalities Detection): ``train.csv``,
               ``train/IMAGE_ID.dicom`` and ``test/`` without labels (not read). A ``test.csv`` with
               ``train.csv``'s columns, where one exists, is read as the test split.

Each annotation file may be gzip-compressed (``.csv.gz``). Where the release has test annotations
(``annotations_test.csv``; a Kaggle folder's ``test.csv``) their images are the test split and train's images
are split into train and ``val_fraction`` val; otherwise train's images are split at random 70/10/20
(:data:`RANDOM_FRACTIONS`), seeded. A PhysioNet folder with ``image_labels_test.csv`` but no
``annotations_test.csv`` is refused rather than silently split at random.

``image_labels_*.csv`` are not read: their 22 local labels are the boxes' classes again (one row per reader,
already in the annotation files) and their 6 global labels (COPD, Lung tumor, Pneumonia, Tuberculosis,
Other disease(s), No finding) have no entry in :data:`chexnet.labels.SOURCE_NAMES` ``["vindr"]``.

The file
========
Columns ``image_id, class_name, rad_id, x_min, y_min, x_max, y_max`` (Kaggle's adds ``class_id``, which is
not read; other extra columns are ignored): one row per finding box per reader (``rad_id``, ``R1`` ..
``R17``); a reader who saw nothing writes one ``No finding`` row with empty coordinates. Coordinates are
pixels of the DICOM image as stored. ``class_name`` must be a name of :data:`chexnet.labels.SOURCE_NAMES`
``["vindr"]`` (the 14 Kaggle classes and ``No finding``) in Kaggle's layout, or of ``["vindr-physionet"]`` in
PhysioNet's (those and its 8 further local labels: ``Clavicle fracture`` and ``Rib fracture`` -> ``Fracture``,
``Edema``, ``Emphysema``, and ``Enlarged PA``, ``Lung cavity``, ``Lung cyst``, ``Mediastinal shift`` under
their own names); another name is refused, naming the line. A finding row's box is four numbers >= 0 with ``x_max >= x_min`` and ``y_max >= y_min``,
or four empty cells (a mark without a box: it counts for the labels, and is not in the boxes). A test file
may lack ``rad_id`` (PhysioNet's test labels are the consensus of 5 radiologists): every image then has one
reader, ``consensus``. Malformed input raises :class:`~chexnet.data.splits.MetadataError` naming the file,
the line (as numbered in the file, the header being line 1) and the column.

The labels
==========
One uint8 column per label of the layout's class table (:data:`KAGGLE` or :data:`PHYSIONET`; :data:`LABELS`
is Kaggle's): the vocabulary labels VinDr-CXR's classes map to
(:func:`chexnet.labels.map_source_labels`; ``Nodule/Mass`` sets both ``Nodule`` and ``Mass``,
``Pleural effusion`` -> ``Effusion``, ...), in :data:`chexnet.labels.VOCABULARY` order, then the classes kept
under VinDr's own name (``Aortic enlargement``, ``Calcification``, ``ILD``). ``Other lesion`` (a catch-all)
has no column. The readers of an image are the ``rad_id`` values of its rows; option ``readers`` says when
a finding is positive:

``any``       (default) at least one reader of the image marked it (with one box or more);
``majority``  more than half of the image's readers marked it (2 of 3 in train; 1 of 1 for a consensus).

A label is 0 otherwise: every image was read by all its readers, so there is no missing value. A label fed
by several classes is 1 when any of them is positive under the rule. ``No Finding`` is not read from the
``No finding`` rows but is the complement of "abnormal" under the same rule, where a reader's read is
abnormal when it marked any finding, ``Other lesion`` included: ``any`` -> 1 when no reader marked anything
(all said No finding); ``majority`` -> 1 unless more than half of the readers marked something. So
``No Finding`` = 1 never comes with another label = 1. (A reader with a ``No finding`` row and findings for
one image counts as abnormal; the train file has none.)

Patients, view, age, sex
========================
VinDr-CXR gives no patient ids (its image ids are hashes): each image is its own patient (``patient_id`` =
``image_id``), so the "patient-wise" split is image-wise, and two images of one patient could land in
different splits; the release gives no way to tell.
``view`` is '' (the annotation files do not record it; the release describes its images as PA), so
``view="PA"`` / ``"AP"`` is refused rather than leaving nothing. ``age`` is NaN and ``sex`` '': the DICOM
headers have PatientAge / PatientSex for many images, but reading 18,000 headers while planning is out of
scope here.

Boxes
=====
``attrs["boxes"]`` of :func:`read_source`'s table is :func:`boxes_table`: one row per box the source read
(``Other lesion`` included): ``image`` (the table's image name), ``finding`` (VinDr's class name),
``reader`` (rad_id), ``x, y, w, h`` (float64 pixels: x_min, y_min, x_max - x_min, y_max - y_min);
``attrs["source"]["boxes"]`` counts them. ``chexnet prepare`` keeps those of the cached images in the cache's
``boxes.csv`` for ``chexnet localize``, the class names mapped to label names as the label columns are
(:func:`chexnet.data.sources.box_findings`: ``Pleural effusion`` -> ``Effusion``, ``Nodule/Mass`` -> a Nodule
and a Mass row, ``Aortic enlargement`` kept, ``Other lesion`` left out), with each image's size (Rows, Columns).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from chexnet.data.sources.tables import bad_cell, find_table, header_columns, read_csv_strict
from chexnet.data.splits import MetadataError
from chexnet.labels import NO_FINDING, SOURCE_NAMES, LabelMapping, map_source_labels

SOURCE = "vindr"
NO_FINDING_CLASS = "No finding"
COORDINATES = ("x_min", "y_min", "x_max", "y_max")
REQUIRED_COLUMNS = ("image_id", "class_name", "rad_id", *COORDINATES)
CONSENSUS_READER = "consensus"  # the one reader of a test file without rad_id
READER_RULES = ("any", "majority")
RANDOM_FRACTIONS = (0.7, 0.1, 0.2)  # train/val/test by image when the release has no test annotations
IMAGE_SUFFIX = ".dicom"
BOX_COLUMNS = ("image", "finding", "reader", "x", "y", "w", "h")

class ClassTable(NamedTuple):
    """One release's class names and what they become (a table of :data:`chexnet.labels.SOURCE_NAMES`)."""

    source: str  # its key in SOURCE_NAMES
    names: tuple[str, ...]  # the class_name values a file may use
    label_map: LabelMapping
    labels: tuple[str, ...]  # the output's label columns, in order
    sources_of: dict[str, list[str]]  # label -> the classes that set it


def _class_table(source: str) -> ClassTable:
    names = tuple(SOURCE_NAMES[source])
    label_map = map_source_labels(source, names)
    if label_map.mapping.get(NO_FINDING_CLASS) != (NO_FINDING,):  # pragma: no cover - a labels.py table change
        raise ImportError(f"SOURCE_NAMES[{source!r}] must map {NO_FINDING_CLASS!r} to {NO_FINDING!r}")
    labels = (*label_map.labels(), *label_map.kept_own)
    findings = [n for n in names if n != NO_FINDING_CLASS]  # the classes a reader marks
    sources_of = {label: [c for c in findings if label in label_map.mapping.get(c, ()) or c == label]
                  for label in labels if label != NO_FINDING}
    return ClassTable(source, names, label_map, labels, sources_of)


KAGGLE = _class_table(SOURCE)  # Kaggle's train.csv: 14 classes and No finding
PHYSIONET = _class_table("vindr-physionet")  # PhysioNet's annotation files: 22 local labels and No finding
TABLES = {"kaggle": KAGGLE, "physionet": PHYSIONET}  # by Layout.name
CLASS_NAMES, LABELS = KAGGLE.names, KAGGLE.labels

__all__ = ["CLASS_NAMES", "KAGGLE", "LABELS", "PHYSIONET", "READER_RULES", "MetadataError", "boxes_table",
           "find_layout",
           "image_labels", "label_rule_summary", "parse_annotations_frame", "read_annotations", "read_source"]


def _check_readers(readers: str) -> str:
    if readers not in READER_RULES:
        raise ValueError(f"unknown readers rule {readers!r}; known: {', '.join(READER_RULES)}")
    return readers


def label_rule_summary(readers: str = "any", table: ClassTable = KAGGLE) -> dict:
    """The label rule, JSON-serializable (meta.json's source block)."""
    _check_readers(readers)
    return {
        "readers": readers,
        "positive": ("at least one reader of the image marked the finding" if readers == "any" else
                     "more than half of the image's readers marked the finding"),
        "negative": "otherwise (every image was read by all its readers: no missing values)",
        "no_finding": ("1 when no reader marked any finding (Other lesion included)" if readers == "any" else
                       "1 unless more than half of the readers marked some finding (Other lesion included)"),
        "class_table": f"chexnet.labels.SOURCE_NAMES[{table.source!r}]",
        **table.label_map.summary(),  # mapped / kept_own / dropped
    }


# ------------------------------------------------------------------------------------------------------ labels

def image_labels(annotations: pd.DataFrame, readers: str = "any", where: str = "<annotations>",
                 table: ClassTable = KAGGLE) -> pd.DataFrame:
    """Readers' marks -> image labels: one row per ``image_id`` (index, in order of first appearance), one uint8
    column per label of ``table`` (default Kaggle's: :data:`LABELS`), by the rule ``readers`` (``any`` /
    ``majority``; see the module).

    ``annotations`` needs columns ``image_id``, ``rad_id`` and ``class_name`` (one row per mark; others are
    ignored), e.g. :func:`read_annotations`'s table. An unknown class name raises
    :class:`~chexnet.data.splits.MetadataError` (``where`` names the table; row ``i`` is called line ``i + 2``).
    ``attrs["readers"]`` is the number of readers of each image (a Series on the same index).
    """
    _check_readers(readers)
    missing = [c for c in ("image_id", "rad_id", "class_name") if c not in annotations.columns]
    if missing:
        raise MetadataError(f"{where}: missing column(s) {', '.join(map(repr, missing))}; "
                            f"found {list(annotations.columns)}")
    image, images = pd.factorize(annotations["image_id"].to_numpy(dtype=object))
    reader = pd.factorize(annotations["rad_id"].to_numpy(dtype=object))[0]
    names = table.names
    klass = pd.Index(names).get_indexer(annotations["class_name"].to_numpy(dtype=object))
    if (klass < 0).any():
        i = int(np.flatnonzero(klass < 0)[0])
        raise MetadataError(f"{where} line {i + 2}, column 'class_name': unknown class "
                            f"{annotations['class_name'].iat[i]!r}; known: {', '.join(names)}")
    n, n_readers_total, n_classes = len(images), int(reader.max(initial=-1)) + 1, len(names)

    def distinct(*codes_and_sizes) -> np.ndarray:  # the distinct combinations, as one int64 code each
        key = np.zeros(len(image), dtype=np.int64)
        for codes, size in codes_and_sizes:
            key = key * size + codes
        return np.unique(key)

    pairs = distinct((image, n), (reader, max(n_readers_total, 1)))
    n_readers = np.bincount(pairs // max(n_readers_total, 1), minlength=n)
    marks = distinct((image, n), (klass, n_classes), (reader, max(n_readers_total, 1)))  # (image, class, reader)
    marks //= max(n_readers_total, 1)
    count = np.bincount(marks, minlength=n * n_classes).reshape(n, n_classes)  # readers who marked each class
    finding = klass != names.index(NO_FINDING_CLASS)
    abnormal_pairs = np.unique(image[finding].astype(np.int64) * max(n_readers_total, 1) + reader[finding])
    abnormal = np.bincount(abnormal_pairs // max(n_readers_total, 1), minlength=n)  # readers who marked anything

    def positive(k: np.ndarray) -> np.ndarray:
        return k >= 1 if readers == "any" else 2 * k > n_readers

    out = {}
    for label in table.labels:
        if label == NO_FINDING:
            out[label] = ~positive(abnormal)
        else:
            cols = [names.index(c) for c in table.sources_of[label]]
            out[label] = np.logical_or.reduce([positive(count[:, j]) for j in cols])
    index = pd.Index(np.asarray(images, dtype=object), name="image_id")
    result = pd.DataFrame({label: v.astype(np.uint8) for label, v in out.items()}, index=index)[list(table.labels)]
    result.attrs["readers"] = pd.Series(n_readers.astype(np.int64), index=index, name="readers")
    return result


def boxes_table(annotations: pd.DataFrame, image_names: dict | None = None) -> pd.DataFrame:
    """The boxes of :func:`read_annotations`'s table: columns :data:`BOX_COLUMNS` (``image`` is
    ``image_names[image_id]``, or the image_id without ``image_names``), one row per row with a box, in order."""
    has_box = annotations["x_min"].notna().to_numpy()
    a = annotations[has_box]
    ids = a["image_id"].to_numpy(dtype=object)
    image = ids if image_names is None else np.array([image_names[i] for i in ids], dtype=object)
    x, y = a["x_min"].to_numpy(np.float64), a["y_min"].to_numpy(np.float64)
    return pd.DataFrame({"image": image, "finding": a["class_name"].to_numpy(dtype=object),
                         "reader": a["rad_id"].to_numpy(dtype=object), "x": x, "y": y,
                         "w": a["x_max"].to_numpy(np.float64) - x, "h": a["y_max"].to_numpy(np.float64) - y})


# ------------------------------------------------------------------------------------------------------ reading

def read_annotations(path: str | os.PathLike, *, rad_id_required: bool = True,
                     table: ClassTable = KAGGLE) -> pd.DataFrame:
    """Read one annotation file (``train.csv``, ``annotations_train.csv``, ``annotations_test.csv``, also
    ``.csv.gz``) -> :func:`parse_annotations_frame`'s table. ``rad_id_required=False`` (a test file) lets the
    file lack ``rad_id`` (one reader per image: ``consensus``)."""
    path = Path(path)
    raw = read_csv_strict(path)
    return parse_annotations_frame(raw, str(path), rad_id_required=rad_id_required, table=table)


def parse_annotations_frame(raw: pd.DataFrame, where: str = "<table>", *, rad_id_required: bool = True,
                            table: ClassTable = KAGGLE) -> pd.DataFrame:
    """The table of :func:`read_annotations` from ``raw``: the file as read with ``dtype=str,
    keep_default_na=False, skip_blank_lines=False`` (row ``i`` is line ``i + 2``). ``raw`` is not modified.

    Returns columns ``image_id, rad_id, class_name`` (str, stripped) and ``x_min, y_min, x_max, y_max``
    (float64, NaN where the row has no box), in the file's order; ``attrs["source"]`` counts rows, images,
    readers and boxes.
    """
    columns = header_columns(raw, [c for c in REQUIRED_COLUMNS if rad_id_required or c != "rad_id"], where)
    n = len(raw)

    def text(name: str) -> np.ndarray:
        values = raw[columns[name]].to_numpy(dtype=object)
        return np.array([v.strip() if isinstance(v, str) else "" for v in values], dtype=object)

    image_id = text("image_id")
    blank = image_id == ""
    if blank.any():
        i = int(np.flatnonzero(blank)[0])
        raise bad_cell(where, i, "image_id", raw[columns["image_id"]].iat[i], "empty")
    if "rad_id" in columns:
        rad_id = text("rad_id")
        blank = rad_id == ""
        if blank.any():
            i = int(np.flatnonzero(blank)[0])
            raise bad_cell(where, i, "rad_id", raw[columns["rad_id"]].iat[i], "empty")
    else:
        rad_id = np.full(n, CONSENSUS_READER, dtype=object)
    class_name = text("class_name")
    unknown = ~pd.Series(class_name).isin(table.names).to_numpy()
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise bad_cell(where, i, "class_name", class_name[i],
                   f"unknown class (chexnet.labels.SOURCE_NAMES[{table.source!r}] has {', '.join(table.names)})")

    coords = {}
    empty = {}
    for name in COORDINATES:
        s = text(name)
        empty[name] = s == ""
        values = pd.to_numeric(pd.Series(np.where(empty[name], "nan", s)), errors="coerce").to_numpy(np.float64)
        bad = ~empty[name] & ~(np.isfinite(values) & (values >= 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise bad_cell(where, i, name, raw[columns[name]].iat[i], "not a number of pixels >= 0 or empty")
        coords[name] = values
    none = np.logical_and.reduce([empty[c] for c in COORDINATES])
    partial = ~none & np.logical_or.reduce([empty[c] for c in COORDINATES])
    if partial.any():
        i = int(np.flatnonzero(partial)[0])
        col = next(c for c in COORDINATES if empty[c][i])
        raise bad_cell(where, i, col, "", "empty while the row's other coordinates are given (a box needs all four)")
    is_no_finding = class_name == NO_FINDING_CLASS
    boxed_nf = is_no_finding & ~none
    if boxed_nf.any():
        i = int(np.flatnonzero(boxed_nf)[0])
        col = next(c for c in COORDINATES if not empty[c][i])
        raise bad_cell(where, i, col, raw[columns[col]].iat[i], f"a {NO_FINDING_CLASS!r} row has no box")
    for lo, hi in (("x_min", "x_max"), ("y_min", "y_max")):
        bad = ~none & (coords[hi] < coords[lo])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise bad_cell(where, i, hi, raw[columns[hi]].iat[i], f"less than {lo} {coords[lo][i]:g}")

    out = pd.DataFrame({"image_id": image_id, "rad_id": rad_id, "class_name": class_name, **coords})
    out.attrs["source"] = {
        "metadata": where,
        "metadata_rows": n,
        "images": int(pd.Series(image_id).nunique()),
        "readers": int(pd.Series(rad_id).nunique()),
        "boxes": int((~none).sum()),
        "marks_without_box": int((none & ~is_no_finding).sum()),
        "unused_columns": [c for c in columns if c not in REQUIRED_COLUMNS],
    }
    return out


# =========================================================================== the registered source

class Layout(NamedTuple):
    """A recognised release folder: its name, annotation files and image folders."""

    name: str  # "physionet" or "kaggle"
    train_csv: Path
    test_csv: Path | None  # None: no test annotations (random 70/10/20 split)
    train_dir: str  # the image folders, relative to data_dir
    test_dir: str


def find_layout(data_dir: str | os.PathLike) -> Layout:
    """Recognise the release in ``data_dir`` (see the module): PhysioNet's ``annotations/annotations_train.csv``
    or Kaggle's ``train.csv``, exactly one of them; MetadataError naming what was looked for otherwise."""
    data_dir = Path(data_dir)
    annotations = data_dir / "annotations"
    physionet, kaggle = find_table(annotations, "annotations_train"), find_table(data_dir, "train")
    if physionet is not None and kaggle is not None:
        raise MetadataError(f"{data_dir}: both {physionet} (PhysioNet's layout) and {kaggle} (Kaggle's) are "
                            "there; point the data folder at one release")
    if physionet is not None:
        test = find_table(annotations, "annotations_test")
        labels_only = find_table(annotations, "image_labels_test")
        if test is None and labels_only is not None:
            raise MetadataError(f"{data_dir}: {labels_only} is there but not "
                                f"{annotations / 'annotations_test.csv'} (the test split is read from the latter)")
        return Layout("physionet", physionet, test, "train", "test")
    if kaggle is not None:
        return Layout("kaggle", kaggle, find_table(data_dir, "test"), "train", "test")
    looked = ", ".join(str(p) for p in (annotations / "annotations_train.csv", data_dir / "train.csv"))
    raise MetadataError(f"{data_dir}: no VinDr-CXR annotation file (looked for {looked}, each also .csv.gz)")


def _images_on_disk(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as it:
        return {e.name for e in it if e.name.endswith(IMAGE_SUFFIX) and e.is_file()}


def read_source(data_dir: str | os.PathLike, *, view: str | None = None, seed: int = 0, val_fraction: float = 0.1,
                readers: str = "any") -> pd.DataFrame:
    """The ``vindr`` source (see :mod:`chexnet.data.sources`): VinDr-CXR in PhysioNet's or Kaggle's layout.

    One row per annotated image: train's images (in order of first appearance), then the test annotations'
    images. Splits by image (no patient ids): the test annotations' images are the test split and train's are
    split into train and ``val_fraction`` val, or, without test annotations, a seeded 70/10/20 split of
    train's images. ``readers`` (``any`` / ``majority``) is the label rule of the module docstring. ``view``
    must be None (VinDr-CXR records none). ``attrs["boxes"]`` holds the boxes (:func:`boxes_table`).
    """
    from chexnet.data.cache import CacheError, index_columns
    from chexnet.data.splits import check_patient_disjoint, split_patients

    _check_readers(readers)
    data_dir = Path(data_dir)
    layout = find_layout(data_dir)
    if view is not None:
        raise CacheError(f"{layout.train_csv}: VinDr-CXR records no view position (view is ''), so view {view} "
                         "would keep no image; leave the view unset (the release describes its images as PA)")
    classes = TABLES[layout.name]
    parts = [(read_annotations(layout.train_csv, table=classes), layout.train_dir)]
    if layout.test_csv is not None:
        parts.append((read_annotations(layout.test_csv, rad_id_required=False, table=classes), layout.test_dir))
    if len(parts) == 2:
        both = set(parts[0][0]["image_id"]) & set(parts[1][0]["image_id"])
        if both:
            raise MetadataError(f"{layout.test_csv}: image {sorted(both)[0]} is also in {layout.train_csv} "
                                f"({len(both)} image(s) in both)")

    tables, names, boxes = [], {}, []
    for ann, folder in parts:
        labels = image_labels(ann, readers, where=ann.attrs["source"]["metadata"], table=classes)
        ids = labels.index.to_numpy(dtype=object)
        image = np.array([f"{folder}/{i}{IMAGE_SUFFIX}" for i in ids], dtype=object)
        names.update(zip(ids, image))
        on_disk = _images_on_disk(data_dir / folder)
        table = pd.DataFrame({"image": image, "patient_id": ids, "split": "", "view": ""})
        for label in classes.labels:
            table[label] = labels[label].to_numpy()
        table["age"] = np.full(len(ids), np.nan)
        table["sex"] = ""
        table["path"] = [str(data_dir / name) if f"{i}{IMAGE_SUFFIX}" in on_disk else ""
                         for i, name in zip(ids, image)]
        tables.append((table, labels.attrs["readers"], on_disk))
        boxes.append(boxes_table(ann, names))
    df = pd.concat([t for t, _, _ in tables], ignore_index=True)
    if df.empty:
        raise CacheError(f"{layout.train_csv}: no image")

    n_train = len(tables[0][0])
    split = np.empty(len(df), dtype=object)
    ids = df["patient_id"].to_numpy(dtype=object)
    if len(parts) == 2:
        split[n_train:] = "test"
        _, val_ids = split_patients(ids[:n_train], (1 - val_fraction, val_fraction), seed)
        split[:n_train] = np.where(pd.Series(ids[:n_train]).isin(val_ids).to_numpy(), "val", "train")
        mode = f"official test ({layout.test_csv.name}) + random val"
    else:
        groups = split_patients(ids, RANDOM_FRACTIONS, seed)
        split = pd.Series(ids).map({i: name for name, part in zip(("train", "val", "test"), groups)
                                    for i in part}).to_numpy(dtype=object)
        mode = "random"
    df["split"] = split
    check_patient_disjoint(df["patient_id"], df["split"])
    out = df[[*index_columns(classes.labels), "path"]].reset_index(drop=True)
    box_table = pd.concat(boxes, ignore_index=True)

    per_image = pd.concat([r for _, r, _ in tables])
    not_annotated = {folder: len(on_disk - {f"{i}{IMAGE_SUFFIX}" for i in t["patient_id"]})
                     for (t, _, on_disk), (_, folder) in zip(tables, parts)}
    files = [a.attrs["source"] for a, _ in parts]
    out.attrs["source"] = {
        "data_dir": str(data_dir),
        "layout": layout.name,
        "metadata": [f["metadata"] for f in files],
        "metadata_rows": sum(f["metadata_rows"] for f in files),
        "images": len(out),
        "readers": int(pd.concat([a["rad_id"] for a, _ in parts]).nunique()),
        "readers_per_image": {str(k): int(v) for k, v in per_image.value_counts().sort_index().items()},
        "split_mode": mode,
        "split_unit": "image: VinDr-CXR has no patient ids, each image is its own patient",
        "excluded_by_view": 0,
        "view_rule": "all images (VinDr-CXR records no view position)",
        "labels": label_rule_summary(readers, classes),
        "label_table": classes.source,  # the name table of chexnet.labels.SOURCE_NAMES (boxes are mapped by it)
        "boxes": len(box_table),
        "marks_without_box": sum(f["marks_without_box"] for f in files),
        "images_on_disk_without_annotations": not_annotated,
        "age_sex": "not read (in the DICOM headers only; not read while planning)",
        "unused_columns": sorted({c for f in files for c in f["unused_columns"]}),
    }
    out.attrs["boxes"] = box_table
    return out
