"""CheXpert (Stanford): its label files ``train.csv`` / ``valid.csv`` -> one row per image, labels 1 / 0 / NaN.

Not yet a registered source (:data:`chexnet.data.sources.SOURCES`): it becomes one once the cache takes
variable label sets. :func:`read_chexpert_csv` is the reader; :func:`parse_chexpert_frame` does the same on a
table already read; :func:`parse_uncertain_policy` and :func:`policy_summary` handle the label policies.

The file
========
Columns ``Path, Sex, Age, Frontal/Lateral, AP/PA`` and CheXpert's 14 observations (``No Finding`` ...
``Support Devices``); extra columns are ignored. ``Path`` is
``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg`` (or ``CheXpert-v1.0/...``). A label is
``1.0`` (positive), ``0.0`` (negative), ``-1.0`` (uncertain) or blank (not mentioned in the report); plain
``1``, ``0``, ``-1`` are read the same. Plain or gzip-compressed (``.csv.gz``).

The table
=========
``image``       the Path without its ``CheXpert-v1.0-small/`` or ``CheXpert-v1.0/`` prefix
                (``train/patient00001/study1/view1_frontal.jpg``), unique
``patient_id``  str, ``patient00001`` (from the path)
``study``       str, ``study1`` (from the path; a study is one patient's visit)
``view``        the ``AP/PA`` value (upper case) where it has one (``AP``, ``PA``; train.csv also has 16
                ``LL`` and 1 ``RL`` marked Frontal, kept as given); else ``LATERAL`` for a lateral image
                (MIMIC-CXR's spelling; which side is not recorded) and '' for a frontal one
``frontal``     bool: ``Frontal/Lateral`` is ``Frontal``
``age``         float64 years; blank and 0 are NaN (CheXpert writes 0 for unknown; ages are capped at 90)
``sex``         ``M`` / ``F`` from ``Male`` / ``Female``; '' for ``Unknown`` or blank
the labels      one float32 column per vocabulary label CheXpert provides
                (:data:`chexnet.labels.SOURCE_NAMES` ``["chexpert"]``: ``Pleural Effusion`` -> ``Effusion``),
                in :data:`chexnet.labels.VOCABULARY` order, 1.0 / 0.0 / NaN (missing)

Policies
========
``uncertain`` (what ``-1.0`` becomes):

``ignore``  NaN: the label is left out of the loss and metrics for that image (default; the paper's U-Ignore)
``zeros``   0.0 (U-Zeros)
``ones``    1.0 (U-Ones)
``mixed``   per label, the CheXpert paper's choice as jfhealthcare's published code
            (github.com/jfhealthcare/Chexpert, ``data/dataset.py``) applies it: ``ones`` for Atelectasis and
            Edema, ``zeros`` for Cardiomegaly, Consolidation and Effusion, ``ignore`` for every other label

A policy text is a comma-separated list: at most one of the above as the default (``ignore`` when none),
then ``LABEL=POLICY`` overrides, e.g. ``ignore,Edema=ones`` or ``mixed,Pneumonia=zeros``. A label is named
by its vocabulary name or its CheXpert name (``Effusion`` or ``Pleural Effusion``), matched exactly but for
case. See :func:`parse_uncertain_policy`.

``blank`` (what a blank, i.e. not mentioned, becomes): ``negative`` -> 0.0 (default; the CheXpert
authors' reading: the labeler reports what the report mentions) or ``missing`` -> NaN (torchxrayvision's).

No other rule changes labels (``No Finding`` = 1 does not rewrite the other labels): each label column is
its file column under the two policies, so its counts of 1, 0 and NaN follow from the file's counts.

Malformed input raises :class:`chexnet.data.splits.MetadataError` naming the file, the line (as numbered in
the file, the header being line 1) and the column.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet.data.sources.tables import bad_cell, find_table, header_columns, read_csv_strict
from chexnet.data.splits import MetadataError
from chexnet.labels import SOURCE_NAMES, VOCABULARY, map_source_labels

SOURCE = "chexpert"
CHEXPERT_LABELS: tuple[str, ...] = tuple(SOURCE_NAMES[SOURCE])  # the 14 observations, in the file's order
META_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
REQUIRED_COLUMNS = (*META_COLUMNS, *CHEXPERT_LABELS)
# [prefix] (image = [folder/...]patientNNNNN/studyN/FILE): the prefix is dropped, patient and study kept
PATH_PATTERN = re.compile(r"^(?:CheXpert-v1\.0(?:-small)?/)?((?:.*/)?(patient\d+)/(study\d+)/[^/]+)$")

UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")  # what each label's -1.0 can become
UNCERTAIN_PRESETS = (*UNCERTAIN_POLICIES, "mixed")  # what a policy text may name
MIXED = {"Atelectasis": "ones", "Edema": "ones", "Cardiomegaly": "zeros", "Consolidation": "zeros",
         "Effusion": "zeros"}  # jfhealthcare/Chexpert data/dataset.py; every other label: ignore
BLANK_POLICIES = ("negative", "missing")
_UNCERTAIN_VALUE = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}
_BLANK_VALUE = {"negative": 0.0, "missing": np.nan}
_SEX = {"male": "M", "female": "F", "unknown": "", "": ""}
_FRONTAL = {"frontal": True, "lateral": False}

_MAPPING = map_source_labels(SOURCE, CHEXPERT_LABELS).mapping  # CheXpert name -> (vocabulary label, ...)
LABELS: tuple[str, ...] = tuple(name for name in VOCABULARY
                                if any(name in targets for targets in _MAPPING.values()))  # output columns
_BY_NAME = {**{label.lower(): label for label in LABELS},
            **{src.lower(): targets[0] for src, targets in _MAPPING.items() if len(targets) == 1}}

__all__ = ["BLANK_POLICIES", "CHEXPERT_LABELS", "LABELS", "MIXED", "MetadataError", "UNCERTAIN_PRESETS",
           "parse_chexpert_frame", "parse_uncertain_policy", "policy_summary", "read_chexpert_csv"]


# ---------------------------------------------------------------------------------------------------- policies

def _resolve_label(name: str) -> str | None:
    return _BY_NAME.get(name.strip().lower())


def _preset(preset: str, label: str) -> str:
    return MIXED.get(label, "ignore") if preset == "mixed" else preset


def parse_uncertain_policy(text: str) -> dict[str, str]:
    """``"ignore,Edema=ones"`` -> ``{label: "ignore" | "zeros" | "ones"}`` for every label in :data:`LABELS`.

    Parts are separated by commas: at most one bare policy (``ignore``, ``zeros``, ``ones``, ``mixed``) sets
    the default (``ignore`` when none is given), each ``LABEL=POLICY`` overrides one label (its vocabulary
    or CheXpert name, any case); ``LABEL=mixed`` gives that label its ``mixed`` choice. ValueError names the
    bad part: an unknown policy, an unknown label, an empty part, a second default or a label given twice.
    """
    if not isinstance(text, str):
        raise ValueError(f"uncertain policy must be a string like 'ignore,Edema=ones', not {text!r}")
    default: str | None = None
    overrides: dict[str, str] = {}
    for part in text.split(","):
        item = part.strip()
        where = f"uncertain policy {text!r}: part {part.strip()!r}"
        if not item:
            raise ValueError(f"uncertain policy {text!r}: empty part (two commas, or a comma at an end)")
        if "=" in item:
            name, _, policy = (s.strip() for s in item.partition("="))
            label = _resolve_label(name)
            if label is None:
                raise ValueError(f"{where}: unknown label {name!r}; known: {', '.join(LABELS)} "
                                 f"(or CheXpert's {', '.join(n for n in CHEXPERT_LABELS if n not in LABELS)})")
            if policy.lower() not in UNCERTAIN_PRESETS:
                raise ValueError(f"{where}: unknown policy {policy!r}; known: {', '.join(UNCERTAIN_PRESETS)}")
            if label in overrides:
                raise ValueError(f"{where}: label {label!r} is given more than once")
            overrides[label] = _preset(policy.lower(), label)
        else:
            if item.lower() not in UNCERTAIN_PRESETS:
                raise ValueError(f"{where}: unknown policy {item!r}; known: {', '.join(UNCERTAIN_PRESETS)} "
                                 "(or LABEL=POLICY)")
            if default is not None:
                raise ValueError(f"{where}: a second default policy (the first was {default!r})")
            default = item.lower()
    default = default or "ignore"
    return {label: overrides.get(label, _preset(default, label)) for label in LABELS}


def _uncertain_per_label(uncertain: str | Mapping[str, str]) -> dict[str, str]:
    if isinstance(uncertain, Mapping):  # {label: policy}, e.g. parse_uncertain_policy's; others: ignore
        text = ",".join(f"{k}={v}" for k, v in uncertain.items())
        return parse_uncertain_policy(text) if text else parse_uncertain_policy("ignore")
    return parse_uncertain_policy(uncertain)


def _check_blank(blank: str) -> str:
    if blank not in BLANK_POLICIES:
        raise ValueError(f"unknown blank policy {blank!r}; known: {', '.join(BLANK_POLICIES)}")
    return blank


def policy_summary(uncertain: str | Mapping[str, str] = "ignore", blank: str = "negative") -> dict:
    """The label choices, JSON-serializable (meta.json's source block, and printing).

    ``uncertain`` and ``blank`` are as for :func:`read_chexpert_csv`; ValueError when they are malformed.
    """
    per_label = _uncertain_per_label(uncertain)
    return {
        "uncertain": uncertain if isinstance(uncertain, str) else dict(uncertain),
        "uncertain_per_label": per_label,  # label -> ignore (NaN) / zeros (0) / ones (1), every label
        "blank": _check_blank(blank),  # negative (0) or missing (NaN)
        "values": {"1.0": 1.0, "0.0": 0.0, "-1.0": "per uncertain_per_label",
                   "blank": 0.0 if blank == "negative" else None},
        "labels": {src: list(t) for src, t in _MAPPING.items()},  # CheXpert name -> vocabulary label(s)
    }


# ------------------------------------------------------------------------------------------------------ reading

def read_chexpert_csv(path: str | os.PathLike, *, uncertain: str | Mapping[str, str] = "ignore",
                      blank: str = "negative") -> pd.DataFrame:
    """Read CheXpert's ``train.csv`` or ``valid.csv`` (also ``.csv.gz``) -> one row per image (see the module).

    ``uncertain`` is a policy text (:func:`parse_uncertain_policy`: ``ignore``, ``zeros``, ``ones``,
    ``mixed``, with ``LABEL=POLICY`` overrides) or a ``{label: policy}`` mapping (labels not named: ignore);
    ``blank`` is ``negative`` or ``missing``. Rows keep the file's order. ``attrs["source"]`` holds the file,
    its row count and :func:`policy_summary`. Malformed input raises
    :class:`~chexnet.data.splits.MetadataError` naming the file, line and column; bad policies ValueError.
    """
    path = Path(path)
    _uncertain_per_label(uncertain), _check_blank(blank)  # policy errors before reading
    raw = read_csv_strict(path)
    return parse_chexpert_frame(raw, str(path), uncertain=uncertain, blank=blank)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _label_codes(values: pd.Series, where: str, column: str) -> np.ndarray:
    """Raw strings -> float64 codes 1, 0, -1, NaN (blank); anything else raises naming the first bad line."""
    codes, uniques = values.factorize(use_na_sentinel=False)
    table = np.empty(len(uniques), dtype=np.float64)
    for k, text in enumerate(uniques):
        s = str(text).strip()
        if not s:
            table[k] = np.nan
            continue
        try:
            v = float(s)
        except ValueError:
            v = None
        if v not in (1.0, 0.0, -1.0):
            i = _first(codes == k)
            raise bad_cell(where, i, column, text, "not 1.0, 0.0, -1.0 or blank")
        table[k] = v
    return table[codes]


def _map_values(values: pd.Series, fn, where: str, column: str, why: str) -> np.ndarray:
    """``fn`` on each distinct stripped value (None = malformed: raises naming the first such line)."""
    codes, uniques = values.factorize(use_na_sentinel=False)
    mapped = []
    for k, text in enumerate(uniques):
        v = fn(str(text).strip()) if isinstance(text, str) else None
        if v is None:
            raise bad_cell(where, _first(codes == k), column, text, why)
        mapped.append(v)
    table = np.empty(len(mapped), dtype=object)
    table[:] = mapped
    return table[codes]


def _parse_age(text: str) -> float | None:
    if not text:
        return np.nan
    try:
        years = float(text)
    except ValueError:
        return None
    if not years >= 0 or years == float("inf"):
        return None
    return np.nan if years == 0 else years  # CheXpert's 0: unknown


def policy_labels(raw: pd.DataFrame, columns: dict, where: str, per_label: dict, blank: str) -> dict:
    """{label: float64 1.0 / 0.0 / NaN} from the 14 observation columns of ``raw`` (``columns``: name -> raw
    column) under the uncertain (``per_label``) and ``blank`` policies; shared with MIMIC-CXR's label files."""
    labels = {label: np.full(len(raw), np.nan, dtype=np.float64) for label in LABELS}
    for src, targets in _MAPPING.items():
        codes = _label_codes(raw[columns[src]], where, src)
        is_unc, is_blank = codes == -1.0, np.isnan(codes)
        for label in targets:
            v = codes.copy()
            v[is_unc] = _UNCERTAIN_VALUE[per_label[label]]
            v[is_blank] = _BLANK_VALUE[blank]
            labels[label] = np.fmax(labels[label], v)  # several source names -> one label: 1 > 0 > NaN
    return labels


def parse_chexpert_frame(raw: pd.DataFrame, where: str = "<table>", *,
                         uncertain: str | Mapping[str, str] = "ignore", blank: str = "negative") -> pd.DataFrame:
    """The table of :func:`read_chexpert_csv` from ``raw``: the file as read with ``dtype=str,
    keep_default_na=False, skip_blank_lines=False`` (so blanks are '', not NaN, and row ``i`` is line ``i + 2``;
    unlike :func:`read_chexpert_csv` it cannot tell a short line from blanks). ``where`` names it in errors.
    ``raw`` is not modified."""
    per_label, blank = _uncertain_per_label(uncertain), _check_blank(blank)
    columns = header_columns(raw, REQUIRED_COLUMNS, where)
    n = len(raw)
    col = {name: raw[columns[name]] for name in META_COLUMNS}

    paths = col["Path"].to_numpy(dtype=object)
    matches = [PATH_PATTERN.match(p.strip()) if isinstance(p, str) else None for p in paths]
    bad = np.fromiter((m is None for m in matches), dtype=bool, count=n)
    if bad.any():
        i = _first(bad)
        raise bad_cell(where, i, "Path", paths[i], "not .../patientNNNNN/studyN/IMAGE")
    image = np.array([m.group(1) for m in matches], dtype=object)
    patient = np.array([m.group(2) for m in matches], dtype=object)
    study = np.array([m.group(3) for m in matches], dtype=object)
    del matches
    dup = pd.Series(image).duplicated().to_numpy()
    if dup.any():
        i = _first(dup)
        raise bad_cell(where, i, "Path", paths[i], "the image is listed more than once")

    frontal = _map_values(col["Frontal/Lateral"], lambda s: _FRONTAL.get(s.lower()), where, "Frontal/Lateral",
                          "not Frontal or Lateral").astype(bool)
    sex = _map_values(col["Sex"], lambda s: _SEX.get(s.lower()), where, "Sex", "not Male, Female, Unknown or blank")
    age = _map_values(col["Age"], _parse_age, where, "Age", "not a number of years >= 0 or blank").astype(np.float64)
    view = _map_values(col["AP/PA"], str.upper, where, "AP/PA", "")
    view[(view == "") & ~frontal] = "LATERAL"

    out = pd.DataFrame({
        "image": image,
        "patient_id": patient,
        "study": study,
        "view": view,
        "frontal": frontal,
        "age": age,
        "sex": sex,
    })

    labels = policy_labels(raw, columns, where, per_label, blank)
    for label in LABELS:
        out[label] = labels[label].astype(np.float32)

    out.attrs["source"] = {
        "metadata": where,
        "metadata_rows": n,
        "patients": int(out["patient_id"].nunique()),
        **policy_summary(uncertain, blank),
        "unused_columns": [c for c in columns if c not in REQUIRED_COLUMNS],
    }
    return out


# =========================================================================== the registered source

CSV_FOLDERS = ("", "CheXpert-v1.0-small", "CheXpert-v1.0")  # where train.csv may be, below --data
RANDOM_FRACTIONS = (0.7, 0.1, 0.2)  # train/val/test by patient when there is no valid.csv


def find_csv_dir(data_dir: Path) -> Path:
    """The folder holding ``train.csv`` (or ``train.csv.gz``): ``data_dir`` itself, or its ``CheXpert-v1.0-small/``
    or ``CheXpert-v1.0/``; image paths in the CSVs are relative to it (after their prefix)."""
    for sub in CSV_FOLDERS:
        folder = data_dir / sub if sub else data_dir
        if (folder / "train.csv").is_file() or (folder / "train.csv.gz").is_file():
            return folder
    looked = ", ".join(str((data_dir / s) if s else data_dir) for s in CSV_FOLDERS)
    raise MetadataError(f"{data_dir}: no CheXpert train.csv (looked in {looked})")


def read_source(data_dir: str | os.PathLike, *, view: str | None = None, seed: int = 0, val_fraction: float = 0.1,
                uncertain: str = "ignore", blank: str = "negative") -> pd.DataFrame:
    """The ``chexpert`` source (see :mod:`chexnet.data.sources`): ``train.csv`` (and ``valid.csv``) of CheXpert
    v1.0, small or full, in ``data_dir`` or its ``CheXpert-v1.0-small/`` / ``CheXpert-v1.0/`` folder.

    Frontal images only (``view`` None), or one view position (``PA`` / ``AP``); the laterals left out are
    counted in ``attrs["source"]``. ``valid.csv`` (radiologists' consensus) is the test split; ``train.csv`` is
    split by patient into train and ``val_fraction`` val (without ``valid.csv``: a seeded 70/10/20 split of
    train.csv's patients). ``uncertain`` and ``blank`` are the label policies of the module docstring.
    """
    from chexnet.data.cache import CacheError, index_columns
    from chexnet.data.splits import check_patient_disjoint, split_patients

    data_dir = Path(data_dir)
    folder = find_csv_dir(data_dir)
    train_csv, valid_csv = find_table(folder, "train"), find_table(folder, "valid")
    parts = [read_chexpert_csv(train_csv, uncertain=uncertain, blank=blank)]
    if valid_csv is not None:
        parts.append(read_chexpert_csv(valid_csv, uncertain=uncertain, blank=blank))
    rows = sum(len(p) for p in parts)
    df = pd.concat(parts, ignore_index=True)
    if df["image"].duplicated().any():
        raise MetadataError(f"{folder}: image {df['image'][df['image'].duplicated()].iat[0]} is in both "
                            f"train.csv and valid.csv")
    in_valid = np.zeros(len(df), dtype=bool)
    in_valid[len(parts[0]):] = True
    keep = df["frontal"].to_numpy() if view is None else (df["view"] == view).to_numpy()
    if not keep.any():
        raise CacheError(f"{train_csv}: no {'frontal' if view is None else view} image")
    left_out = int((~keep).sum())
    df, in_valid = df[keep].reset_index(drop=True), in_valid[keep]

    split = np.empty(len(df), dtype=object)
    patients = df["patient_id"].to_numpy()
    if valid_csv is not None:
        split[in_valid] = "test"
        _, val_p = split_patients(patients[~in_valid], (1 - val_fraction, val_fraction), seed)
        split[~in_valid] = np.where(pd.Series(patients[~in_valid]).isin(val_p).to_numpy(), "val", "train")
        mode = "official test (valid.csv) + random val"
    else:
        for name, pats in zip(("train", "val", "test"), split_patients(patients, RANDOM_FRACTIONS, seed)):
            split[pd.Series(patients).isin(pats).to_numpy()] = name
        mode = "random"
    df["split"] = split
    check_patient_disjoint(df["patient_id"], df["split"])
    df["path"] = [str(folder / image) if (folder / image).is_file() else "" for image in df["image"]]
    out = df[[*index_columns(LABELS), "path"]].reset_index(drop=True)
    out.attrs["source"] = {
        "data_dir": str(data_dir),
        "metadata": [str(p) for p in (train_csv, valid_csv) if p is not None],
        "metadata_rows": rows,
        "split_mode": mode,
        "excluded_by_view": left_out,
        "view_rule": "frontal images only" if view is None else f"View Position {view} only",
        "labels": policy_summary(uncertain, blank),
    }
    return out
