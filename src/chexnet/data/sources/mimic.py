"""MIMIC-CXR-JPG 2.0.0 / 2.1.0 (PhysioNet; Beth Israel Deaconess): per-study report labels -> one row per image.

:func:`read_source` is the ``mimic`` entry of :data:`chexnet.data.sources.SOURCES`. :func:`read_metadata`,
:func:`read_split` and :func:`read_labels` read the three files (:func:`parse_metadata_frame`,
:func:`parse_split_frame` and :func:`parse_labels_frame` do the same on tables already read); the label
policies are CheXpert's (:mod:`chexnet.data.sources.chexpert`), imported from there.

The layout
==========
``data_dir`` is PhysioNet's release folder (``physionet.org/files/mimic-cxr-jpg/2.0.0/`` or ``2.1.0/``), or a
folder holding it as ``2.1.0/``, ``2.0.0/``, ``mimic-cxr-jpg/2.1.0/`` or ``mimic-cxr-jpg/2.0.0/``
(:data:`CSV_FOLDERS`, looked at in that order; the first with a metadata file is used). That folder holds, at
its top, each file plain or gzip-compressed (``.csv`` or ``.csv.gz``; PhysioNet ships ``.csv.gz``):

``mimic-cxr-2.0.0-metadata.csv.gz``  one row per image: ``dicom_id, subject_id, study_id,
                                     PerformedProcedureStepDescription, ViewPosition, Rows, Columns, StudyDate,
                                     ...``; only ``dicom_id, subject_id, study_id, ViewPosition`` are read
``mimic-cxr-2.0.0-split.csv.gz``     one row per image: ``dicom_id, study_id, subject_id, split``, ``split``
                                     ``train`` / ``validate`` / ``test`` (the release's official split, by patient)
``mimic-cxr-2.0.0-chexpert.csv.gz``  one row per study: ``subject_id, study_id`` and CheXpert's 14 observations
``mimic-cxr-2.0.0-negbio.csv.gz``    the same, from the NegBio labeler (option ``labeler``)
``files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg``  the images; ``pNN`` is ``p`` and the subject id's first two digits
                                     (``p10`` .. ``p19``), e.g. ``files/p10/p10000032/s50414267/02aa804e-....jpg``

Version 2.1.0 keeps these four files' names (``mimic-cxr-2.0.0-*``); its ``mimic-cxr-2.1.0-test-set-labeled.csv``
(radiologists' labels of test studies) and ``IMAGE_FILENAMES`` are not read. The ids are digits (subject ids
of 8, starting 10 .. 19); a ``dicom_id`` is a non-empty name without ``/``. Malformed input raises
:class:`~chexnet.data.splits.MetadataError` naming the file, the line (as numbered in the file, the header
being line 1) and the column.

The labels
==========
The label file has one row per study (a report), keyed by ``subject_id, study_id``; its 14 columns are CheXpert's
names (:data:`chexnet.labels.SOURCE_NAMES` ``["chexpert"]``: ``Pleural Effusion`` -> ``Effusion``), any order,
with CheXpert's encoding: ``1.0`` positive, ``0.0`` negative, ``-1.0`` uncertain, blank (not mentioned). The
options ``uncertain`` (``ignore`` default | ``zeros`` | ``ones`` | ``mixed``, with ``LABEL=POLICY`` overrides)
and ``blank`` (``negative`` default | ``missing``) are CheXpert's policies
(:func:`chexnet.data.sources.chexpert.parse_uncertain_policy`); ``labeler`` (``chexpert`` default | ``negbio``)
picks the file. A study's labels go to every image of the study. The output's label columns are
:data:`LABELS` (CheXpert's, in :data:`chexnet.labels.VOCABULARY` order), float32 1.0 / 0.0 / NaN (missing).

Images of a study the label file does not list get every label missing (NaN, whatever ``blank`` says: no
report was labelled, which is not "not mentioned"); label rows whose study has no image in the metadata are
left out. Both are counted in ``attrs["source"]`` (``images_without_labels``, ``studies_without_labels``,
``labeled_studies_without_images``). A label row whose study is in the metadata under another subject is refused.

Patients, views, splits, age, sex
=================================
``patient_id`` is the ``subject_id`` as text (``10000032``). ``view`` is ``ViewPosition`` (upper case, stripped;
``PA``, ``AP``, ``LATERAL``, ``LL``, ``AP AXIAL``, ...; '' when blank). Only frontal images (``PA`` and ``AP``)
are kept by default; ``view`` keeps that one; the others are counted (``excluded_by_view``, and per view
position in ``views_left_out``). The split is the release's (``validate`` -> ``val``): ``seed`` and
``val_fraction`` are not used. Images the split file does not list are left out and counted.
This release has no age or sex (they are in MIMIC-IV's ``patients`` table, linked by ``subject_id``, which is not
read): ``age`` is NaN and ``sex`` '' for every image, as ``attrs["source"]["age_sex"]`` says.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet.data.sources.chexpert import (
    BLANK_POLICIES,
    CHEXPERT_LABELS,
    LABELS,
    UNCERTAIN_PRESETS,
    _check_blank,
    _uncertain_per_label,
    policy_labels,
    policy_summary,
)
from chexnet.data.sources.tables import bad_cell, find_table, header_columns, read_table
from chexnet.data.splits import MetadataError
from chexnet.labels import map_source_labels

SOURCE = "mimic"
LABELERS = ("chexpert", "negbio")
FILE_STEMS = {
    "metadata": "mimic-cxr-2.0.0-metadata",
    "split": "mimic-cxr-2.0.0-split",
    "chexpert": "mimic-cxr-2.0.0-chexpert",
    "negbio": "mimic-cxr-2.0.0-negbio",
}
CSV_FOLDERS = ("", "2.1.0", "2.0.0", "mimic-cxr-jpg/2.1.0", "mimic-cxr-jpg/2.0.0")  # below data_dir, in order
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
KEY_COLUMNS = ("subject_id", "study_id")
LABEL_FILE_COLUMNS = (*KEY_COLUMNS, *CHEXPERT_LABELS)
SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}  # the file's name -> ours
FRONTAL_VIEWS = ("PA", "AP")
IMAGE_SUFFIX = ".jpg"

_MAPPING = map_source_labels("chexpert", CHEXPERT_LABELS).mapping  # MIMIC-CXR uses CheXpert's 14 names
_ID = re.compile(r"^\d{2,}$")
_DICOM_ID = re.compile(r"^[^/\\\s]+$")

__all__ = ["BLANK_POLICIES", "LABELERS", "LABELS", "MetadataError", "UNCERTAIN_PRESETS", "find_folder",
           "image_name", "parse_labels_frame", "parse_metadata_frame", "parse_split_frame", "read_labels",
           "read_metadata", "read_source", "read_split"]


def _check_labeler(labeler: str) -> str:
    if labeler not in LABELERS:
        raise ValueError(f"unknown labeler {labeler!r}; known: {', '.join(LABELERS)}")
    return labeler


def image_name(subject_id: str, study_id: str, dicom_id: str) -> str:
    """``files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg`` (relative to the release folder)."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}{IMAGE_SUFFIX}"


# ------------------------------------------------------------------------------------------------------ parsing

def _text(raw: pd.DataFrame, columns: dict, name: str) -> np.ndarray:
    column = raw[columns[name]]
    return column.fillna("").astype(str).str.strip().to_numpy(dtype=object)


def _in(values, collection) -> np.ndarray:
    """``values`` (an array or Series of str) that are in ``collection``, as a bool array (a set lookup: pandas's
    isin on its Arrow strings is slow)."""
    known = collection if isinstance(collection, (set, frozenset)) else set(collection)
    return np.fromiter((v in known for v in values), dtype=bool, count=len(values))


def _checked(raw: pd.DataFrame, columns: dict, name: str, pattern: re.Pattern, where: str, why: str) -> np.ndarray:
    """The stripped column, each distinct value matching ``pattern``; else raises naming the first bad line."""
    values = _text(raw, columns, name)
    codes, uniques = pd.factorize(values)
    ok = np.array([bool(pattern.match(u)) for u in uniques], dtype=bool)
    if len(values) and not ok[codes].all():
        i = int(np.flatnonzero(~ok[codes])[0])
        raise bad_cell(where, i, name, raw[columns[name]].iat[i], why)
    return values


def _unique(values: np.ndarray, raw: pd.DataFrame, columns: dict, name: str, where: str, what: str) -> None:
    dup = pd.Series(values).duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise bad_cell(where, i, name, raw[columns[name]].iat[i], f"{what} is listed more than once")


def parse_metadata_frame(raw: pd.DataFrame, where: str = "<metadata>") -> pd.DataFrame:
    """The metadata file as read (``dtype=str, keep_default_na=False, skip_blank_lines=False``; row ``i`` is line
    ``i + 2``) -> columns ``dicom_id, subject_id, study_id, view`` (str), the file's order. ``dicom_id`` unique."""
    columns = header_columns(raw, METADATA_COLUMNS, where)
    dicom = _checked(raw, columns, "dicom_id", _DICOM_ID, where, "not an image id (empty, or with / or spaces)")
    subject = _checked(raw, columns, "subject_id", _ID, where, "not a subject id (digits)")
    study = _checked(raw, columns, "study_id", _ID, where, "not a study id (digits)")
    _unique(dicom, raw, columns, "dicom_id", where, "the image")
    view = np.array([v.upper() for v in _text(raw, columns, "ViewPosition")], dtype=object)
    out = pd.DataFrame({"dicom_id": dicom, "subject_id": subject, "study_id": study, "view": view})
    # a study belongs to one subject (study ids are unique in MIMIC-CXR)
    first = out.groupby("study_id", sort=False)["subject_id"].transform("first").to_numpy(dtype=object)
    other = first != subject
    if other.any():
        i = int(np.flatnonzero(other)[0])
        raise bad_cell(where, i, "subject_id", raw[columns["subject_id"]].iat[i],
                   f"study {study[i]} is listed under subject {first[i]} on an earlier line")
    out.attrs["source"] = {"metadata": where, "metadata_rows": len(raw),
                           "unused_columns": [c for c in columns if c not in METADATA_COLUMNS]}
    return out


def parse_split_frame(raw: pd.DataFrame, where: str = "<split>") -> pd.DataFrame:
    """The split file as read -> columns ``dicom_id, subject_id, study_id`` (str) and ``split`` (``train``,
    ``val`` for the file's ``validate``, ``test``), the file's order. ``dicom_id`` unique."""
    columns = header_columns(raw, SPLIT_COLUMNS, where)
    dicom = _checked(raw, columns, "dicom_id", _DICOM_ID, where, "not an image id (empty, or with / or spaces)")
    subject = _checked(raw, columns, "subject_id", _ID, where, "not a subject id (digits)")
    study = _checked(raw, columns, "study_id", _ID, where, "not a study id (digits)")
    _unique(dicom, raw, columns, "dicom_id", where, "the image")
    given = _text(raw, columns, "split")
    split = pd.Series(given).map(SPLIT_NAMES).to_numpy(dtype=object)
    bad = pd.isna(split)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise bad_cell(where, i, "split", raw[columns["split"]].iat[i], f"not {', '.join(SPLIT_NAMES)}")
    return pd.DataFrame({"dicom_id": dicom, "subject_id": subject, "study_id": study, "split": split})


def parse_labels_frame(raw: pd.DataFrame, where: str = "<labels>", *, uncertain: str | Mapping[str, str] = "ignore",
                       blank: str = "negative") -> pd.DataFrame:
    """A label file (CheXpert's or NegBio's) as read -> one row per study, the file's order: ``subject_id``,
    ``study_id`` (str, ``study_id`` unique) and one float32 column per label of :data:`LABELS` under the
    policies (1.0 / 0.0 / NaN). Extra columns are ignored. ``raw`` is not modified."""
    per_label, blank = _uncertain_per_label(uncertain), _check_blank(blank)
    columns = header_columns(raw, LABEL_FILE_COLUMNS, where)
    subject = _checked(raw, columns, "subject_id", _ID, where, "not a subject id (digits)")
    study = _checked(raw, columns, "study_id", _ID, where, "not a study id (digits)")
    _unique(study, raw, columns, "study_id", where, "the study")
    n = len(raw)
    labels = policy_labels(raw, columns, where, per_label, blank)
    out = pd.DataFrame({"subject_id": subject, "study_id": study})
    for label in LABELS:
        out[label] = labels[label].astype(np.float32)
    out.attrs["source"] = {"metadata": where, "metadata_rows": n,
                           "unused_columns": [c for c in columns if c not in LABEL_FILE_COLUMNS]}
    return out


# ------------------------------------------------------------------------------------------------------ reading

def read_metadata(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``mimic-cxr-2.0.0-metadata.csv(.gz)`` -> :func:`parse_metadata_frame`'s table."""
    return parse_metadata_frame(*read_table(path))


def read_split(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``mimic-cxr-2.0.0-split.csv(.gz)`` -> :func:`parse_split_frame`'s table."""
    return parse_split_frame(*read_table(path))


def read_labels(path: str | os.PathLike, *, uncertain: str | Mapping[str, str] = "ignore",
                blank: str = "negative") -> pd.DataFrame:
    """Read ``mimic-cxr-2.0.0-chexpert.csv(.gz)`` or ``-negbio`` -> :func:`parse_labels_frame`'s table."""
    _uncertain_per_label(uncertain), _check_blank(blank)  # policy errors before reading
    raw, where = read_table(path)
    return parse_labels_frame(raw, where, uncertain=uncertain, blank=blank)


def find_folder(data_dir: str | os.PathLike) -> Path:
    """The release folder: the first of :data:`CSV_FOLDERS` below ``data_dir`` holding the metadata file."""
    data_dir = Path(data_dir)
    for sub in CSV_FOLDERS:
        folder = data_dir / sub if sub else data_dir
        if find_table(folder, FILE_STEMS["metadata"]) is not None:
            return folder
    looked = ", ".join(str((data_dir / s) if s else data_dir) for s in CSV_FOLDERS)
    raise MetadataError(f"{data_dir}: no MIMIC-CXR-JPG {FILE_STEMS['metadata']}.csv(.gz) (looked in {looked})")


def _need(folder: Path, stem: str, why: str) -> Path:
    path = find_table(folder, stem)
    if path is None:
        raise MetadataError(f"{folder}: no {stem}.csv or {stem}.csv.gz ({why})")
    return path


# =========================================================================== the registered source

def read_source(data_dir: str | os.PathLike, *, view: str | None = None, seed: int = 0, val_fraction: float = 0.1,
                labeler: str = "chexpert", uncertain: str = "ignore", blank: str = "negative") -> pd.DataFrame:
    """The ``mimic`` source (see :mod:`chexnet.data.sources`): MIMIC-CXR-JPG 2.0.0 / 2.1.0 (the module docstring).

    One row per image of the metadata file (its order) that the split file lists and whose view is kept (PA and
    AP; ``view``: that one), with its study's labels from the ``labeler``'s file under the ``uncertain`` and
    ``blank`` policies. The split is the release's; ``seed`` and ``val_fraction`` are not used.
    """
    from chexnet.data.cache import CacheError, index_columns
    from chexnet.data.splits import check_patient_disjoint

    _check_labeler(labeler)
    _uncertain_per_label(uncertain), _check_blank(blank)
    data_dir = Path(data_dir)
    folder = find_folder(data_dir)
    meta_csv = find_table(folder, FILE_STEMS["metadata"])
    split_csv = _need(folder, FILE_STEMS["split"], "the official split")
    labels_csv = _need(folder, FILE_STEMS[labeler], f"the {labeler} labels")
    meta = read_metadata(meta_csv)
    splits = read_split(split_csv)
    labels = read_labels(labels_csv, uncertain=uncertain, blank=blank)
    if meta.empty:
        raise CacheError(f"{meta_csv}: no image")

    # the split file: same subject and study as the metadata for each image it shares with it
    split_of = pd.Series(splits["split"].to_numpy(), index=splits["dicom_id"].to_numpy())
    at = pd.Index(meta["dicom_id"]).get_indexer(splits["dicom_id"])
    shared = at >= 0
    for column in ("subject_id", "study_id"):
        differs = shared & (splits[column].to_numpy(dtype=object)
                            != meta[column].to_numpy(dtype=object)[np.where(shared, at, 0)])
        if differs.any():
            i = int(np.flatnonzero(differs)[0])
            raise MetadataError(f"{split_csv} line {i + 2}, column {column!r}: image {splits['dicom_id'].iat[i]} is "
                                f"{meta[column].iat[at[i]]} in {meta_csv.name} (value {splits[column].iat[i]!r})")
    split = meta["dicom_id"].map(split_of).to_numpy(dtype=object)
    listed = ~pd.isna(split)

    # the label file: a study it shares with the metadata has the same subject there
    subject_of_study = meta.drop_duplicates("study_id").set_index("study_id")["subject_id"]
    known = _in(labels["study_id"], subject_of_study.index)
    there = subject_of_study.reindex(labels["study_id"]).to_numpy(dtype=object)
    differs = known & (there != labels["subject_id"].to_numpy(dtype=object))
    if differs.any():
        i = int(np.flatnonzero(differs)[0])
        raise MetadataError(f"{labels_csv} line {i + 2}, column 'subject_id': study {labels['study_id'].iat[i]} is "
                            f"subject {there[i]}'s in {meta_csv.name} (value {labels['subject_id'].iat[i]!r})")

    views = meta["view"].to_numpy(dtype=object)
    wanted = np.isin(views, FRONTAL_VIEWS) if view is None else views == view
    keep = listed & wanted
    left_out = meta.loc[listed & ~wanted, "view"].value_counts()
    if not keep.any():
        raise CacheError(f"{meta_csv}: no {'frontal (PA or AP)' if view is None else view} image listed in "
                         f"{split_csv.name}")
    df = meta[keep].reset_index(drop=True)
    df["split"] = split[keep]

    by_study = labels.set_index("study_id")
    row = by_study.index.get_indexer(df["study_id"])
    has_labels = row >= 0
    for label in LABELS:
        values = by_study[label].to_numpy(np.float32)
        df[label] = np.where(has_labels, values[np.where(has_labels, row, 0)], np.float32(np.nan)).astype(np.float32)

    df["image"] = [image_name(s, t, d) for s, t, d in zip(df["subject_id"], df["study_id"], df["dicom_id"])]
    df["patient_id"] = df["subject_id"]
    df["age"] = np.full(len(df), np.nan)
    df["sex"] = ""
    base = str(folder) + os.sep
    df["path"] = [base + image if os.path.isfile(base + image) else "" for image in df["image"]]
    check_patient_disjoint(df["patient_id"], df["split"])
    out = df[[*index_columns(LABELS), "path"]].reset_index(drop=True)

    kept_studies = set(df["study_id"])
    meta_studies = set(meta["study_id"])
    out.attrs["source"] = {
        "data_dir": str(data_dir),
        "folder": str(folder),
        "metadata": [str(meta_csv), str(split_csv), str(labels_csv)],
        "metadata_rows": {"metadata": len(meta), "split": len(splits), "labels": len(labels)},
        "labeler": labeler,
        "split_mode": f"official ({split_csv.name}: train, validate -> val, test)",
        "seed_and_val_fraction": "not used (the official split has its own validation images)",
        "images_without_split": int((~listed).sum()),
        "split_rows_without_metadata": int((~shared).sum()),
        "excluded_by_view": int((listed & ~wanted).sum()),
        "views_left_out": {str(k): int(v) for k, v in left_out.items()},
        "view_rule": "frontal images only (ViewPosition PA or AP)" if view is None else f"ViewPosition {view} only",
        "studies": int(len(kept_studies)),
        "images_without_labels": int((~has_labels).sum()),
        "studies_without_labels": int(len(set(df.loc[~has_labels, "study_id"]))),
        "labeled_studies_without_images": int((~_in(labels["study_id"], meta_studies)).sum()),
        "labeled_studies_without_kept_images": int((~_in(labels["study_id"], kept_studies)).sum()),
        "images_missing_on_disk": int((out["path"] == "").sum()),
        "age_sex": "not in this release (MIMIC-CXR-JPG has no demographics; MIMIC-IV's patients table has them, "
                   "not read): age NaN, sex ''",
        "labels": policy_summary(uncertain, blank),
        "unused_columns": meta.attrs["source"]["unused_columns"],
    }
    return out
