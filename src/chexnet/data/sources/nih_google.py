"""NIH ChestX-ray14 with Google's expert labels (Majkowska et al., Radiology 2020): the images those labels cover.

:func:`read_source` is the ``nih-google`` entry of :data:`chexnet.data.sources.SOURCES`. Google re-read 4,376
NIH ChestX-ray14 images (Majkowska et al., "Chest Radiograph Interpretation with Deep Learning Models:
Assessment with Radiologist-adjudicated Reference Standards and Population-adjusted Evaluation", Radiology
2020): three radiologists per image, adjudicated, for four findings. The labels come from Google's
nih-chest-xray release (``four_findings_expert_labels/``), not with NIH's images; this source reads them and
finds their images in an NIH folder (the ``nih`` source's layout, :func:`chexnet.data.sources.nih.find_images`).

The files
=========
Two CSVs, ``four_findings_expert_labels_test_labels.csv`` (1,962 images) and
``four_findings_expert_labels_validation_labels.csv`` (2,414; Google's page says 2,412), named in some copies
``test_labels.csv`` / ``validation_labels.csv`` or otherwise: so they are not looked for but given, as option
``expert_labels`` (``chexnet prepare --expert-labels FILE[,FILE]``, required): one or more paths separated by
commas, absolute or relative to the data folder, plain or ``.csv.gz``. Each is ``PATH`` or ``PATH:SPLIT``.

Each file holds NIH's metadata columns of the image (``Image Index``, ``Patient ID``, ``Patient Age``,
``Patient Gender``, ``View Position``, ...) and one column per expert finding, ``Fracture``,
``Pneumothorax``, ``Airspace opacity``, ``Nodule or mass``, valued ``YES`` or ``NO`` (any case; a blank cell
is a missing label: Google's release leaves it blank where an image was not adjudicated for that finding).
``Image Index``, ``Patient ID`` and the four findings are required; header names are matched ignoring case
and surrounding spaces, extra columns (``Finding Labels``, ``Follow-up #``, ...) are ignored. NIH's own 14
labels (``Finding Labels``) are *not* read: the cache's labels are the experts' only.

The table
=========
``image``       ``Image Index`` (``00000001_000.png``), unique over all files
``patient_id``  str: ``Patient ID`` as written (text, e.g. ``1``; a version-2 cache reads it back as text)
``view``        ``View Position`` upper-cased (``PA``, ``AP``), '' where the file has no such column
``split``       the file's: ``val`` for the validation file, ``test`` for the test file (see below)
the labels      ``Pneumothorax``, ``Fracture`` (vocabulary names), ``Airspace opacity``, ``Nodule or mass``
                (no vocabulary label: kept under their own names), per :data:`chexnet.labels.SOURCE_NAMES`
                ``["nih-google"]``: 1 (YES), 0 (NO), NaN (blank); uint8 for a column without blanks
``age``         ``Patient Age`` in years as :func:`chexnet.data.sources.nih.read_metadata` reads it
                (``58`` or ``058Y``; months and days converted), NaN when absent or unreadable
``sex``         ``Patient Gender`` (``M``, ``F``), '' when absent
``path``        the image in the NIH folder (``images_*/images/`` or ``images/``); '' when it is not there,
                which the writer records as a failed image (the count is ``attrs["source"]["not_found"]``)

Splits
======
The files' own: a file's split is named by ``PATH:SPLIT`` (``val``, ``test``, or ``train``; ``valid`` and
``validation`` mean ``val``), else by its file name: one containing ``test`` -> ``test``, one containing
``valid`` -> ``val``; a name with neither (or both) is refused, asking for ``PATH:SPLIT``. ``seed`` and
``val_fraction`` are not used: nothing is split at random. There is no train split (unless a file is named
``:train``): the cache is for evaluation (``chexnet evaluate --cache``), and ``chexnet train`` refuses it
(its check for an empty train split). Patients must not straddle the files' splits (they do not in Google's
release); ``view`` keeps one View Position, counted in ``attrs["source"]["excluded_by_view"]``.

Comparing a model with the expert labels
========================================
``Pneumothorax`` and ``Fracture`` are vocabulary labels: a model that has them is scored on them directly
(a model trained on NIH has ``Pneumothorax`` but no ``Fracture``). ``Airspace opacity`` and
``Nodule or mass`` have no single model output; :data:`DERIVED_SCORES` says how chexnet compares a model with
them: the score is the highest of the model's probabilities for the listed labels. ``Nodule or mass``: the
higher of ``Nodule`` and ``Mass``. ``Airspace opacity``: the highest of ``Consolidation``, ``Pneumonia`` and
``Infiltration`` (Majkowska et al. define airspace opacity broadly, as the lung opacities that consolidation,
pneumonia and similar processes produce; which NIH labels stand for it, and taking their maximum, is
chexnet's mapping, not the paper's). This module only records the rule (``attrs["source"]
["derived_scores"]``, meta.json's source block); ``chexnet evaluate`` applies it (:mod:`chexnet.derived`): a run
with those labels, e.g. one trained on NIH's 14, gets ``Nodule or mass`` and ``Airspace opacity`` scored as
derived labels (AUROC and AUPRC, no operating point), marked with their rule in every output.

Malformed input raises :class:`chexnet.data.splits.MetadataError` naming the file, the line (as numbered in
the file, the header being line 1) and the column; a missing file FileNotFoundError; a bad option ValueError.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet.data.sources.nih import _parse_age  # NIH's reading of Patient Age: 58, 058Y, 011M, 020D
from chexnet.data.sources.tables import read_csv_strict
from chexnet.data.splits import SPLITS, MetadataError
from chexnet.labels import SOURCE_NAMES, map_source_labels

SOURCE = "nih-google"
EXPERT_FINDINGS: tuple[str, ...] = tuple(SOURCE_NAMES[SOURCE])  # the files' four finding columns, in their order
REQUIRED_COLUMNS = ("Image Index", "Patient ID", *EXPERT_FINDINGS)
OPTIONAL_COLUMNS = {"View Position": "view", "Patient Age": "age", "Patient Gender": "sex"}
FILE_NAMES = ("four_findings_expert_labels_validation_labels.csv", "four_findings_expert_labels_test_labels.csv")

_LABEL_MAP = map_source_labels(SOURCE, EXPERT_FINDINGS)
LABELS: tuple[str, ...] = (*_LABEL_MAP.labels(), *_LABEL_MAP.kept_own)  # the output's label columns, in order
_COLUMN_OF = {label: src for src, targets in _LABEL_MAP.mapping.items() for label in targets}
_COLUMN_OF.update({name: name for name in _LABEL_MAP.kept_own})  # output label -> its file column

# expert finding -> (how, model labels): how a model's outputs are compared with it (chexnet's rule, see the
# module docstring; recorded here and in meta.json, applied by chexnet evaluate through chexnet.derived)
DERIVED_SCORES: dict[str, tuple[str, tuple[str, ...]]] = {
    "Nodule or mass": ("max", ("Nodule", "Mass")),
    "Airspace opacity": ("max", ("Consolidation", "Pneumonia", "Infiltration")),
}

_SPLIT_NAMES = {**{s: s for s in SPLITS}, "valid": "val", "validation": "val"}
_VALUES = {"yes": 1.0, "no": 0.0, "": np.nan}
NEEDS_OPTION = "nih-google needs --expert-labels FILE[,FILE] (Google's expert-label CSVs: validation and/or test)"

__all__ = ["DERIVED_SCORES", "EXPERT_FINDINGS", "LABELS", "MetadataError", "parse_expert_labels",
           "read_expert_labels", "read_source"]


# ------------------------------------------------------------------------------------------------ the option

def _split_of_name(path: Path) -> str | None:
    """``test`` or ``val`` from words of the file name (``..._test_labels.csv``, ``validation``, ``val.csv``)."""
    import re

    words = set(re.split(r"[^a-z]+", path.name.lower()))
    test, valid = "test" in words, bool(words & {"val", "valid", "validation"})
    return "test" if test and not valid else "val" if valid and not test else None


def parse_expert_labels(text: str, data_dir: str | os.PathLike) -> list[tuple[Path, str]]:
    """Option ``expert_labels`` -> ``[(file, split), ...]``: ``PATH[:SPLIT]`` parts separated by commas.

    A relative PATH is taken from ``data_dir``. SPLIT is ``val``, ``test`` or ``train`` (``valid``,
    ``validation``: ``val``), any case; without it the file's name decides (``test`` or ``valid`` in it).
    ValueError for an empty option, an unknown split, a name that does not say its split, or a file given
    twice; FileNotFoundError for a file that is not there.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(NEEDS_OPTION)
    data_dir = Path(data_dir)
    out: list[tuple[Path, str]] = []
    for part in text.split(","):
        item = part.strip()
        if not item:
            raise ValueError(f"--expert-labels {text!r}: empty part (two commas, or a comma at an end)")
        head, sep, tail = item.rpartition(":")
        split = _SPLIT_NAMES.get(tail.strip().lower()) if sep else None
        if split is not None:
            item = head.strip()
        elif sep and "/" not in tail and "\\" not in tail and not (data_dir / item).expanduser().exists():
            raise ValueError(f"--expert-labels {text!r}: unknown split {tail!r} in {part.strip()!r}; "
                             f"known: {', '.join(_SPLIT_NAMES)}")
        path = Path(item).expanduser()
        path = path if path.is_absolute() else data_dir / path
        if not path.is_file():
            raise FileNotFoundError(f"--expert-labels: {path} not found (a relative path is taken from the data "
                                    f"folder {data_dir})")
        if split is None:
            split = _split_of_name(path)
            if split is None:
                raise ValueError(f"--expert-labels: cannot tell the split of {path.name} from its name (it should "
                                 f"contain 'test' or 'valid'); name it: {item}:val or {item}:test")
        if any(path.resolve() == p.resolve() for p, _ in out):
            raise ValueError(f"--expert-labels {text!r}: {path} is given twice")
        out.append((path, split))
    return out


# ---------------------------------------------------------------------------------------------------- reading

def _bad(where: str, i: int, column: str, value, why: str) -> MetadataError:
    return MetadataError(f"{where} line {i + 2}, column {column!r}: {why} (value {value!r})")


def read_expert_labels(path: str | os.PathLike) -> pd.DataFrame:
    """One expert-label CSV -> one row per image, in the file's order: ``image, patient_id, view, age, sex``
    and the :data:`LABELS` (float64 1.0 / 0.0 / NaN). ``attrs["source"]`` holds the file and its row count.
    Malformed input raises :class:`~chexnet.data.splits.MetadataError` naming file, line and column."""
    path = Path(path)
    where = str(path)
    raw = read_csv_strict(path)  # a short line is an error, not blanks read as missing
    columns: dict[str, str] = {}
    for c in raw.columns:
        columns.setdefault(re.sub(r"\s+", " ", str(c)).strip().lower(), c)
    col = {name: columns.get(name.lower()) for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)}
    missing = [name for name in REQUIRED_COLUMNS if col[name] is None]
    if missing:
        raise MetadataError(f"{where} line 1 (header): missing column(s) {', '.join(map(repr, missing))}; "
                            f"found {[str(c) for c in raw.columns]}")

    image = raw[col["Image Index"]].str.strip()
    blank = (image == "").to_numpy()
    if blank.any():
        i = int(np.flatnonzero(blank)[0])
        raise _bad(where, i, "Image Index", raw[col["Image Index"]].iat[i], "blank image name")
    dup = image.duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero((image == image.iat[i]).to_numpy())[0])
        raise _bad(where, i, "Image Index", image.iat[i], f"the image is listed more than once (also line {first + 2})")
    patient = raw[col["Patient ID"]].str.strip()
    blank = (patient == "").to_numpy()
    if blank.any():
        i = int(np.flatnonzero(blank)[0])
        raise _bad(where, i, "Patient ID", raw[col["Patient ID"]].iat[i], "blank patient id")

    out = pd.DataFrame({"image": image.to_numpy(dtype=object), "patient_id": patient.to_numpy(dtype=object)})
    view = col["View Position"]
    out["view"] = raw[view].str.strip().str.upper().to_numpy(dtype=object) if view else ""
    out["age"] = (raw[col["Patient Age"]].map(_parse_age).to_numpy(np.float64) if col["Patient Age"]
                  else np.full(len(raw), np.nan))
    out["sex"] = raw[col["Patient Gender"]].str.strip().to_numpy(dtype=object) if col["Patient Gender"] else ""
    for label in LABELS:
        name = _COLUMN_OF[label]
        values = raw[col[name]]
        codes, uniques = values.factorize()
        table = np.empty(len(uniques), dtype=np.float64)
        for k, text in enumerate(uniques):
            v = _VALUES.get(str(text).strip().lower())
            if v is None:
                i = int(np.flatnonzero(codes == k)[0])
                raise _bad(where, i, str(col[name]), text, "not YES, NO or blank")
            table[k] = v
        out[label] = table[codes]
    out.attrs["source"] = {"metadata": where, "metadata_rows": len(raw)}
    return out


# =========================================================================== the registered source

def read_source(data_dir: str | os.PathLike, *, view: str | None = None, seed: int = 0, val_fraction: float = 0.1,
                expert_labels: str = "") -> pd.DataFrame:
    """The ``nih-google`` source (see :mod:`chexnet.data.sources` and this module): the images Google's
    expert-label files (option ``expert_labels``, :func:`parse_expert_labels`) cover, found in the NIH folder
    ``data_dir``, with the four expert labels and the files' splits. ``seed`` and ``val_fraction`` are unused."""
    from chexnet.data.cache import CacheError, index_columns
    from chexnet.data.sources.nih import find_images
    from chexnet.data.splits import check_patient_disjoint

    data_dir = Path(data_dir)
    files = parse_expert_labels(expert_labels, data_dir)
    parts = []
    for path, split in files:
        part = read_expert_labels(path)
        part.insert(2, "split", split)
        parts.append(part)
    df = pd.concat(parts, ignore_index=True)
    rows = len(df)
    dup = df["image"].duplicated().to_numpy()
    if dup.any():
        image = df["image"].iat[int(np.flatnonzero(dup)[0])]
        holders = [str(p) for (p, _), part in zip(files, parts) if image in set(part["image"])]
        raise MetadataError(f"image {image} is in more than one expert-label file: {', '.join(holders)}")
    if view is not None:
        df = df[df["view"].str.upper() == view].reset_index(drop=True)
        if df.empty:
            raise CacheError(f"{', '.join(str(p) for p, _ in files)}: no image has View Position {view}")
    check_patient_disjoint(df["patient_id"], df["split"])
    for label in LABELS:
        if not np.isnan(df[label].to_numpy()).any():
            df[label] = df[label].astype(np.uint8)
    on_disk = find_images(data_dir)
    df["path"] = [str(on_disk[name]) if name in on_disk else "" for name in df["image"]]
    out = df[[*index_columns(LABELS), "path"]].reset_index(drop=True)
    not_found = out["image"][out["path"] == ""]
    out.attrs["source"] = {
        "data_dir": str(data_dir),
        "metadata": [str(p) for p, _ in files],
        "metadata_rows": rows,
        "files": [{"file": str(p), "split": s, "rows": len(part)} for (p, s), part in zip(files, parts)],
        "split_mode": "the expert-label files' own (" + ", ".join(f"{p.name} -> {s}" for p, s in files) + ")",
        "excluded_by_view": rows - len(out),
        "view_rule": "all images" if view is None else f"View Position {view} only",
        "not_found": int(len(not_found)),  # images of the files not in images_*/images/ or images/
        "not_found_examples": not_found.head(5).tolist(),
        "labels": _LABEL_MAP.summary(),  # mapped / kept_own / dropped
        "values": {"YES": 1, "NO": 0, "blank": None},
        "derived_scores": {k: {"rule": how, "of": list(of)} for k, (how, of) in DERIVED_SCORES.items()},
        "derived_scores_note": "how a model's outputs are compared with the expert findings that are not "
                               "model labels (chexnet's rule, not applied when preparing)",
        "nih_labels": "not read (Finding Labels): the labels are the experts' four findings only",
    }
    return out
