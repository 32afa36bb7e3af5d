"""PadChest (BIMCV, Hospital San Juan de Alicante): report findings -> one row per frontal image, labels 0 / 1.

:func:`read_source` is the ``padchest`` entry of :data:`chexnet.data.sources.SOURCES` (no options).
:func:`parse_labels` reads one ``Labels`` cell, :func:`image_labels` (pure) turns findings into vocabulary
labels, :func:`parse_padchest_table` reads the whole file's rows.

The layout
==========
``data_dir`` holds ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (or ``.csv.gz``) and the images,
16-bit grayscale PNGs named by ``ImageID``, either in the release's numbered folders (``ImageDir``: ``0/`` ..
``54/``, as the zip files unpack) or all in ``data_dir`` itself (a flat folder); both may be mixed, the
numbered folder being looked in first. An image in neither gets path '' (recorded as failed by the writer).

The file
========
Columns read: ``ImageID`` (unique), ``PatientID`` (text), ``Projection``, ``Labels``; where present also
``ImageDir``, ``StudyDate_DICOM`` (``YYYYMMDD``), ``PatientBirth`` (a year, e.g. ``1948.0``),
``PatientSex_DICOM`` and ``MethodLabel`` (``Physician`` / ``RNN_model``: counted). Other columns (the report,
localizations, DICOM fields) are ignored. ``Labels`` is a Python-list-like text: ``['pleural effusion',
'cardiomegaly']``, ``['normal']``; terms are stripped of stray spaces and empty terms ignored.

Rows left out, not fatal, counted in ``attrs["source"]`` with the first few lines named:
``labels_unreadable`` a ``Labels`` cell that is blank or not a list of texts (e.g. ``['pleural effusion'``);
``labels_empty`` a list with no term, or only ``unchanged`` (a comparison with an earlier study) or
``exclude`` (an image the readers marked unusable): not a reading of this image, which would otherwise be
negative for everything.
Malformed structure (a missing required column, a blank ImageID or PatientID, an ImageID listed twice, a
row with the wrong field count) raises :class:`~chexnet.data.splits.MetadataError` naming the file, the line
(the header being line 1) and the column.

The labels
==========
PadChest's ~190 terms are matched **whole** (after stripping spaces, ignoring case), never by substring:
:data:`chexnet.labels.SOURCE_NAMES` ``["padchest"]`` lists the terms that name a vocabulary label or a kind of
it (PadChest's own term tree: ``laminar atelectasis`` -> Atelectasis, ``loculated pleural effusion`` ->
Effusion, ``hydropneumothorax`` -> Effusion and Pneumothorax, ``normal`` -> No Finding, tubes, lines,
catheters and cardiac devices -> Support Devices, ...). torchxrayvision's ``PC_Dataset`` instead tests
``Labels.str.contains(name)``, so ``soft tissue mass``, ``breast mass`` and ``mediastinal mass`` become Mass,
``pericardial effusion`` Effusion and ``subcutaneous emphysema`` Emphysema; here those terms are listed as
dropped (:data:`chexnet.labels.DROP`), and the rest of PadChest's terms (aortic elongation, scoliosis,
granuloma, ...; :data:`PADCHEST_TERMS`) are dropped as a group: no cache column, each counted (images
mentioning it) in ``attrs["source"]["labels"]["dropped_terms"]``; a term PadChest's list lacks is dropped
too and counted under ``unknown_terms``.

The reading: a ``Labels`` list is the findings of the image's report, so a vocabulary label is **1 when a
term mapped to it is in the list and 0 otherwise** (a finding the report does not mention is absent; there
is no missing value, as in NIH's and CheXpert's ``blank=negative`` reading). ``No Finding`` is 1 exactly when
``normal`` is in the list; so an image labelled ``['normal']`` is a negative for every finding, while an image
whose only terms are dropped ones (``['scoliosis']``) is 0 for every label, No Finding included: it has a
finding the vocabulary lacks. ``normal`` beside a vocabulary finding other than Support Devices is kept as
given and counted (``normal_with_findings``).

Patients, view, age, sex
========================
``patient_id`` is ``PatientID`` (text). ``view`` from ``Projection``: ``PA``; ``AP`` and ``AP_horizontal``
(supine, horizontal beam) are both ``AP``; ``L`` is ``LATERAL``; others (``COSTAL``, ``EXCLUDE``, ``UNK``) upper
case as given. Frontal images (PA, AP) only by default; ``view="PA"`` / ``"AP"`` keeps one (``AP``:
AP_horizontal too). ``age`` is the study's year minus ``PatientBirth``, in years (so within a year of the
true age); NaN where either is blank or unreadable, or the difference is outside 0..120. ``sex`` is ``M`` /
``F`` from ``PatientSex_DICOM``, '' otherwise. The split is a seeded random 70/10/20 by patient (PadChest has
none; ``val_fraction`` is not used).

Pixels
======
The PNGs are 16-bit, but most hold 12-bit values (0..4095). :func:`chexnet.data.imageio.read_xray` scales
every deeper-than-8-bit image by its own minimum and maximum, so such an image fills 0..255 in the cache
(dividing by 65535, as torchxrayvision's ``normalize(img, 65535)`` does, would leave it in 0..16).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet.data.sources.csv_source import read_table
from chexnet.data.splits import MetadataError
from chexnet.labels import NO_FINDING, SOURCE_NAMES, map_source_labels

SOURCE = "padchest"
METADATA_NAMES = ("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
                  "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")
REQUIRED_COLUMNS = ("ImageID", "PatientID", "Projection", "Labels")
OPTIONAL_COLUMNS = ("ImageDir", "StudyDate_DICOM", "PatientBirth", "PatientSex_DICOM", "MethodLabel")
RANDOM_FRACTIONS = (0.7, 0.1, 0.2)
FIRST_NAMED = 5  # rows left out: how many are named in attrs["source"]
VIEWS = {"PA": "PA", "AP": "AP", "AP_HORIZONTAL": "AP", "L": "LATERAL", "LATERAL": "LATERAL"}
FRONTAL = ("PA", "AP")
NOT_A_READING = ("unchanged", "exclude")  # only these: nothing about the image itself (exclude: unusable image)
NORMAL = "normal"

# PadChest's terms as released (the Labels values of the 160K file, 01.02.19), for telling its own dropped
# terms from spellings it does not have
PADCHEST_TERMS: tuple[str, ...] = (
    "COPD signs", "Chilaiditi sign", "NSG tube", "abnormal foreign body", "abscess", "adenopathy", "air bronchogram",
    "air fluid level", "air trapping", "alveolar pattern", "aortic aneurysm", "aortic atheromatosis",
    "aortic button enlargement", "aortic elongation", "aortic endoprosthesis", "apical pleural thickening",
    "artificial aortic heart valve", "artificial heart valve", "artificial mitral heart valve", "asbestosis signs",
    "ascendent aortic elongation", "atelectasis", "atelectasis basal", "atypical pneumonia", "axial hyperostosis",
    "azygoesophageal recess shift", "azygos lobe", "blastic bone lesion", "bone cement", "bone metastasis",
    "breast mass", "bronchiectasis", "bronchovascular markings", "bullas", "calcified adenopathy",
    "calcified densities", "calcified fibroadenoma", "calcified granuloma", "calcified mediastinal adenopathy",
    "calcified pleural plaques", "calcified pleural thickening", "callus rib fracture", "cardiomegaly", "catheter",
    "cavitation", "central vascular redistribution", "central venous catheter",
    "central venous catheter via jugular vein", "central venous catheter via subclavian vein",
    "central venous catheter via umbilical vein", "cervical rib", "chest drain tube", "chronic changes",
    "clavicle fracture", "consolidation", "costochondral junction hypertrophy", "costophrenic angle blunting", "cyst",
    "dai", "descendent aortic elongation", "dextrocardia", "diaphragmatic eventration", "double J stent",
    "dual chamber device", "electrical device", "emphysema", "empyema", "end on vessel", "endoprosthesis",
    "endotracheal tube", "esophagic dilatation", "exclude", "external foreign body", "fibrotic band",
    "fissure thickening", "flattened diaphragm", "fracture", "gastrostomy tube", "goiter", "granuloma",
    "ground glass pattern", "gynecomastia", "heart insufficiency", "heart valve calcified", "hemidiaphragm elevation",
    "hiatal hernia", "hilar congestion", "hilar enlargement", "humeral fracture", "humeral prosthesis",
    "hydropneumothorax", "hyperinflated lung", "hypoexpansion", "hypoexpansion basal", "increased density",
    "infiltrates", "interstitial pattern", "kerley lines", "kyphosis", "laminar atelectasis", "lepidic adenocarcinoma",
    "lipomatosis", "lobar atelectasis", "loculated fissural effusion", "loculated pleural effusion",
    "lung metastasis", "lung vascular paucity", "lymphangitis carcinomatosa", "lytic bone lesion",
    "major fissure thickening", "mammary prosthesis", "mass", "mastectomy", "mediastinal enlargement",
    "mediastinal mass", "mediastinal shift", "mediastinic lipomatosis", "metal", "miliary opacities",
    "minor fissure thickening", "multiple nodules", "nephrostomy tube", "nipple shadow", "nodule",
    "non axial articular degenerative changes", "normal", "obesity", "osteopenia", "osteoporosis",
    "osteosynthesis material", "pacemaker", "pectum carinatum", "pectum excavatum", "pericardial effusion",
    "pleural effusion", "pleural mass", "pleural plaques", "pleural thickening", "pneumomediastinum", "pneumonia",
    "pneumoperitoneo", "pneumothorax", "post radiotherapy changes", "prosthesis", "pseudonodule",
    "pulmonary artery enlargement", "pulmonary artery hypertension", "pulmonary edema", "pulmonary fibrosis",
    "pulmonary hypertension", "pulmonary mass", "pulmonary venous hypertension", "reservoir central venous catheter",
    "respiratory distress", "reticular interstitial pattern", "reticulonodular interstitial pattern", "rib fracture",
    "right sided aortic arch", "round atelectasis", "sclerotic bone lesion", "scoliosis", "segmental atelectasis",
    "single chamber device", "soft tissue mass", "sternoclavicular junction hypertrophy", "sternotomy",
    "subacromial space narrowing", "subcutaneous emphysema", "suboptimal study", "superior mediastinal enlargement",
    "supra aortic elongation", "surgery", "surgery breast", "surgery heart", "surgery humeral", "surgery lung",
    "surgery neck", "suture material", "thoracic cage deformation", "total atelectasis", "tracheal shift",
    "tracheostomy tube", "tuberculosis", "tuberculosis sequelae", "unchanged", "vascular hilar enlargement",
    "vascular redistribution", "ventriculoperitoneal drain tube", "vertebral anterior compression",
    "vertebral compression", "vertebral degenerative changes", "vertebral fracture", "volume loss",
)

_TABLE = SOURCE_NAMES[SOURCE]
_LABEL_MAP = map_source_labels(SOURCE, _TABLE)
_MAPPING = _LABEL_MAP.mapping  # PadChest term -> (vocabulary label, ...)
LABELS: tuple[str, ...] = tuple(_LABEL_MAP.labels())  # the output's label columns, in vocabulary order
_BY_LOWER = {term.lower(): term for term in _TABLE}
_KNOWN = {term.lower(): term for term in PADCHEST_TERMS}
if _MAPPING.get(NORMAL) != (NO_FINDING,) or _LABEL_MAP.kept_own:  # pragma: no cover - a labels.py table change
    raise ImportError(f"SOURCE_NAMES[{SOURCE!r}] must map {NORMAL!r} to {NO_FINDING!r} and keep no own names")

__all__ = ["LABELS", "MetadataError", "PADCHEST_TERMS", "find_metadata", "image_labels", "label_rule_summary",
           "parse_labels", "parse_padchest_table", "read_source"]


# ------------------------------------------------------------------------------------------------------ labels

def parse_labels(text) -> tuple[str, ...] | None:
    """One ``Labels`` cell -> its terms (stripped, inner spaces collapsed, empty ones dropped, repeats once, in
    order), or None when it is blank or not a list / tuple of texts. ``"['normal']"`` -> ``("normal",)``."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        return None
    terms = (" ".join(t.split()) for t in value)
    return tuple(dict.fromkeys(t for t in terms if t))


def _canonical(term: str) -> str:
    """PadChest's spelling of ``term`` where it has one (case aside), else the term as given."""
    low = term.lower()
    return _BY_LOWER.get(low) or _KNOWN.get(low) or term


def image_labels(term_lists) -> tuple[np.ndarray, dict]:
    """Each image's terms (:func:`parse_labels`' tuples) -> (uint8 array ``(n, len(LABELS))``, counts).

    A label is 1 when one of the image's terms maps to it (:data:`chexnet.labels.SOURCE_NAMES` ``["padchest"]``,
    whole terms, any case), else 0. ``counts``: ``mapped`` / ``dropped_terms`` / ``unknown_terms`` (term ->
    images mentioning it, most frequent first) and ``normal_with_findings`` (images).
    """
    index = {label: j for j, label in enumerate(LABELS)}
    codes, uniques = pd.factorize(pd.Series(list(term_lists), dtype=object), use_na_sentinel=False)
    per_unique = np.zeros((len(uniques), len(LABELS)), dtype=np.uint8)
    mentions: dict[str, np.ndarray] = {}
    for k, terms in enumerate(uniques):
        for term in terms:
            name = _canonical(term)
            for label in _MAPPING.get(name, ()):
                per_unique[k, index[label]] = 1
            mentions.setdefault(name, np.zeros(len(uniques), dtype=bool))[k] = True
    labels = per_unique[codes] if len(codes) else np.zeros((0, len(LABELS)), dtype=np.uint8)
    per_code = np.bincount(codes, minlength=len(uniques)) if len(codes) else np.zeros(len(uniques), dtype=np.int64)
    count = {name: int(per_code[m].sum()) for name, m in mentions.items()}
    findings = [j for label, j in index.items() if label not in (NO_FINDING, "Support Devices")]
    conflict = (labels[:, index[NO_FINDING]] == 1) & labels[:, findings].any(axis=1)

    def ranked(names) -> dict[str, int]:
        return dict(sorted(((n, count[n]) for n in names), key=lambda item: (-item[1], item[0])))

    return labels, {
        "mapped": ranked(n for n in count if n in _MAPPING),
        "dropped_terms": ranked(n for n in count if n not in _MAPPING and n.lower() in _KNOWN),
        "unknown_terms": ranked(n for n in count if n not in _MAPPING and n.lower() not in _KNOWN),
        "normal_with_findings": int(conflict.sum()),
    }


def label_rule_summary() -> dict:
    """The label rule, JSON-serializable (meta.json's source block)."""
    return {
        "match": "whole terms of the Labels list (stripped, any case), never substrings",
        "positive": "a term mapped to the label is in the image's Labels list",
        "negative": "otherwise: the list is the report's findings, a finding it does not mention is absent "
                    "(no missing values)",
        "no_finding": "1 exactly when 'normal' is in the list",
        "other_terms": "dropped: no cache column (counted in dropped_terms / unknown_terms)",
        **_LABEL_MAP.summary(),  # mapped / kept_own (none) / dropped (the substring traps, listed)
    }


# ------------------------------------------------------------------------------------------------------ reading

def find_metadata(data_dir: str | os.PathLike) -> Path:
    """PadChest's label file in ``data_dir`` (plain or .gz); MetadataError naming what was looked for."""
    data_dir = Path(data_dir)
    for name in METADATA_NAMES:
        if (data_dir / name).is_file():
            return data_dir / name
    raise MetadataError(f"{data_dir}: no PadChest label file (looked for {' and '.join(METADATA_NAMES)})")


def _bad(where: str, line: int, column: str, value, why: str) -> MetadataError:
    return MetadataError(f"{where} line {line}, column {column!r}: {why} (value {value!r})")


def _study_year(text: str) -> float:
    text = text.strip()
    return float(text[:4]) if len(text) >= 8 and text[:8].isdigit() else np.nan


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return np.nan
    return value if np.isfinite(value) else np.nan


def parse_padchest_table(columns: dict[str, list[str]], lines, where: str = "<table>") -> pd.DataFrame:
    """Every row of the file (``columns``: name -> cells, as :func:`~chexnet.data.sources.csv_source.read_table`
    gives them; ``lines``: each row's line) -> columns ``image, image_dir, patient_id, projection, view, frontal,
    terms`` (tuple, None when unreadable), ``age, sex, method``, in the file's order. Structure errors raise
    MetadataError naming ``where``, the line and the column."""
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise MetadataError(f"{where} line 1 (header): missing column(s) {', '.join(map(repr, missing))}; "
                            f"found {list(columns)}")
    lines = np.asarray(lines, dtype=np.int64)
    n = len(lines)

    def col(name: str) -> np.ndarray:
        cells = columns.get(name)
        if cells is None:
            return np.full(n, "", dtype=object)
        return np.array([c.strip() for c in cells], dtype=object) if n else np.empty(0, dtype=object)

    image, patient = col("ImageID"), col("PatientID")
    for name, values in (("ImageID", image), ("PatientID", patient)):
        blank = values == ""
        if blank.any():
            i = int(np.flatnonzero(blank)[0])
            raise _bad(where, int(lines[i]), name, columns[name][i], "empty")
    dup = pd.Series(image).duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(lines[int(np.flatnonzero(image == image[i])[0])])
        raise _bad(where, int(lines[i]), "ImageID", image[i], f"the image is also on line {first}")

    image_dir = np.array([d[:-2] if d.endswith(".0") else d for d in col("ImageDir")], dtype=object)
    projection = col("Projection")
    view = np.array([VIEWS.get(p.upper(), p.upper()) for p in projection], dtype=object)
    codes, uniques = pd.factorize(pd.Series(columns["Labels"], dtype=object), use_na_sentinel=False)
    parsed = [parse_labels(u) for u in uniques]
    terms = np.empty(n, dtype=object)
    terms[:] = [parsed[c] for c in codes]
    birth = np.array([_number(b) if b else np.nan for b in col("PatientBirth")], dtype=np.float64)
    year = np.array([_study_year(d) for d in col("StudyDate_DICOM")], dtype=np.float64)
    age = year - birth
    age[~((age >= 0) & (age <= 120))] = np.nan
    sex = np.array([s.upper() if s.upper() in ("M", "F") else "" for s in col("PatientSex_DICOM")], dtype=object)
    return pd.DataFrame({"image": image, "image_dir": image_dir, "patient_id": patient, "projection": projection,
                         "view": view, "frontal": np.isin(view, FRONTAL), "terms": terms, "age": age, "sex": sex,
                         "method": col("MethodLabel")})


def _named(rows: pd.DataFrame, lines: np.ndarray, where: str) -> dict:
    first = [f"{where} line {int(lines[i])}: {rows['image'].iat[k]}" for k, i in enumerate(rows.index[:FIRST_NAMED])]
    return {"count": len(rows), "first": first}


def _files(folder: Path) -> set[str]:
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


# =========================================================================== the registered source

def read_source(data_dir: str | os.PathLike, *, view: str | None = None, seed: int = 0,
                val_fraction: float = 0.1) -> pd.DataFrame:
    """The ``padchest`` source (see :mod:`chexnet.data.sources` and this module): frontal images (or one view)
    with readable findings, in the file's order; labels by whole terms; a seeded 70/10/20 split by patient."""
    from chexnet.data.cache import CacheError, index_columns
    from chexnet.data.splits import check_patient_disjoint, split_patients

    data_dir = Path(data_dir)
    path = find_metadata(data_dir)
    where = str(path)
    table = read_table(path, columns={*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS})
    df = parse_padchest_table(table.columns, table.lines, where)
    lines = table.lines
    rows = len(df)

    unreadable = df["terms"].isna().to_numpy()
    empty = np.array([t is not None and all(x.lower() in NOT_A_READING for x in t) for t in df["terms"]], dtype=bool)
    left_unreadable = _named(df[unreadable], lines, where)
    left_empty = _named(df[empty], lines, where)
    df = df[~unreadable & ~empty]
    keep = df["frontal"].to_numpy() if view is None else (df["view"] == view).to_numpy()
    projections = {str(k): int(v) for k, v in df["projection"].value_counts().items()}
    left_out = int((~keep).sum())
    df = df[keep].reset_index(drop=True)
    if df.empty:
        raise CacheError(f"{path}: no {'frontal' if view is None else view} image with readable labels "
                         f"({rows} rows; projections {projections})")

    labels, counts = image_labels(df["terms"])
    patients = df["patient_id"].to_numpy(dtype=object)
    groups = split_patients(patients, RANDOM_FRACTIONS, seed)
    df["split"] = pd.Series(patients).map({p: name for name, part in zip(("train", "val", "test"), groups)
                                           for p in part}).to_numpy(dtype=object)
    check_patient_disjoint(df["patient_id"], df["split"])
    for j, label in enumerate(LABELS):
        df[label] = labels[:, j]

    flat = _files(data_dir)
    numbered = {d: _files(data_dir / d) for d in sorted(set(df["image_dir"])) if d}
    where_found = {"numbered folder": 0, "flat": 0, "not found": 0}
    paths = []
    for image, folder in zip(df["image"], df["image_dir"]):
        if folder and image in numbered.get(folder, ()):
            paths.append(str(data_dir / folder / image))
            where_found["numbered folder"] += 1
        elif image in flat:
            paths.append(str(data_dir / image))
            where_found["flat"] += 1
        else:
            paths.append("")
            where_found["not found"] += 1
    df["path"] = paths

    out = df[[*index_columns(LABELS), "path"]].reset_index(drop=True)
    out.attrs["source"] = {
        "data_dir": str(data_dir),
        "metadata": where,
        "metadata_rows": rows,
        "patients": int(out["patient_id"].nunique()),
        "split_mode": "random",
        "split_rule": "seeded 70/10/20 by patient (PadChest has no split)",
        "labels_unreadable": left_unreadable,
        "labels_empty": left_empty,
        "excluded_by_view": left_out,
        "view_rule": ("frontal images only (Projection PA, AP, AP_horizontal)" if view is None else
                      f"Projection {'AP or AP_horizontal' if view == 'AP' else view} only"),
        "projections": projections,  # of the rows with readable labels, before the view rule
        "ap_horizontal": int((df["projection"].str.upper() == "AP_HORIZONTAL").sum()),
        "images_found": where_found,
        "label_method": {str(k): int(v) for k, v in df["method"].value_counts().items() if k},
        "labels": {**label_rule_summary(), **counts},
        "age_rule": "year of StudyDate_DICOM - PatientBirth; NaN when either is missing or outside 0..120",
    }
    return out
