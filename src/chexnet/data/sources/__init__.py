"""Data sources: one module per public data set, each turning its folder into the common metadata table.

:data:`SOURCES` maps a source name (``prepare(..., dataset=NAME)``) to its reader. Adding a data set means
adding one module here and one entry in :data:`SOURCES`; the cache writer (:mod:`chexnet.data.prepare`)
calls the reader through :func:`read_source` and needs nothing else from it.

The contract
============
A reader is ``read_source(data_dir, *, view=None, seed=0, val_fraction=0.1, **own) -> pandas.DataFrame``
(``own``: the source's options, :data:`OPTIONS`):

``data_dir``      the data set's folder (an existing directory, absolute).
``view``          None (all images), ``"PA"`` or ``"AP"`` (upper case): keep only images of that view,
                  *before* splits are assigned (so a random split is a split of the kept patients).
``seed``          seeds every random choice (the patient-wise split): same inputs + seed -> same table.
``val_fraction``  the share of patients to hold out for validation where the data set has no
                  validation split of its own.

It returns one row per planned image, in a deterministic order (the order of the cache's rows), with
exactly these columns, in this order:

``image``         str, unique: the image's name (relative to ``data_dir`` where names would repeat)
``patient_id``    int64 or str: patients never straddle splits (:func:`chexnet.data.splits.check_patient_disjoint`)
``split``         ``train``, ``val`` or ``test`` (:data:`chexnet.data.splits.SPLITS`)
``view``          str, e.g. ``PA``, ``AP``; '' when unknown
the labels        one column per label the data set has (names of :data:`chexnet.labels.VOCABULARY` where one
                  fits, else the source's own), in the source's order: uint8 0/1 where every value is
                  known, float 1.0 / 0.0 / NaN (missing: not read, uncertain under the chosen policy)
                  otherwise. NIH: the 14 :data:`chexnet.labels.PATHOLOGIES`, all known
``age``           float64 years; NaN when unknown
``sex``           str (``M``, ``F``); '' when unknown
``path``          str: the image file (PNG, JPEG or DICOM, see :mod:`chexnet.data.imageio`); '' when it is
                  not on disk (the writer records it as failed instead of stopping)

(That is the cache's ``index.csv`` columns, :func:`chexnet.data.cache.index_columns`, plus ``path``.)
``attrs["source"]`` is a JSON-serializable dict describing what was read and left out (the metadata file,
the split mode, rows excluded and why); the writer stores it as meta.json's ``source`` block, adding
``planned`` (the row count). Malformed metadata raises :class:`chexnet.data.splits.MetadataError`; a
selection that leaves nothing raises :class:`chexnet.data.cache.CacheError`.

A source with finding boxes (``vindr``, ``rsna``) also sets ``attrs["boxes"]``: a table with columns ``image``
(names of the table's ``image`` column), ``finding`` (the source's own finding name), optionally ``reader``,
and ``x, y, w, h`` (original image pixels: the top-left corner, width and height). The writer keeps the boxes
of the images it cached, as the cache's ``boxes.csv`` (:mod:`chexnet.data.cache`), with the findings renamed
to label names by :func:`box_findings`.
"""

from __future__ import annotations

import os
from typing import Callable

import pandas as pd

import numpy as np

from chexnet.data.cache import index_columns, label_columns
from chexnet.data.sources import chexpert, csv_source, mimic, nih, nih_google, padchest, rsna, vindr
from chexnet.data.splits import SPLITS

SOURCES: dict[str, Callable[..., pd.DataFrame]] = {
    "nih": nih.read_source,  # NIH ChestX-ray14 (Data_Entry_2017*.csv, images_*/images/, official split lists)
    "chexpert": chexpert.read_source,  # CheXpert v1.0 (train.csv, valid.csv; uncertain / blank label policies)
    "vindr": vindr.read_source,  # VinDr-CXR (PhysioNet or Kaggle layout; per-reader boxes -> readers rule)
    "mimic": mimic.read_source,  # MIMIC-CXR-JPG 2.0/2.1 (metadata, official split, CheXpert or NegBio study labels)
    "rsna": rsna.read_source,  # RSNA Pneumonia Detection Challenge (stage_2_train_labels.csv, DICOM headers, boxes)
    "padchest": padchest.read_source,  # PadChest (its 160K labels CSV, 16-bit PNGs; report terms matched whole)
    "csv": csv_source.read_source,  # a hospital's own CSV, described by a YAML mapping file (--mapping)
    "nih-google": nih_google.read_source,  # NIH images with Google's expert labels (4 findings; --expert-labels)
}
# each source's own options (prepare(..., options=...), chexnet prepare's flags)
# each source's own options and their defaults (prepare(..., options=...); chexnet prepare's "data set options")
OPTIONS: dict[str, dict[str, str]] = {
    "nih": {},
    "chexpert": {"uncertain": "ignore", "blank": "negative"},
    "vindr": {"readers": "any"},
    "mimic": {"labeler": "chexpert", "uncertain": "ignore", "blank": "negative"},
    "rsna": {},
    "padchest": {},
    "csv": {"mapping": ""},  # the YAML file; empty: refused ("csv needs --mapping FILE")
    "nih-google": {"expert_labels": ""},  # the expert-label CSVs; empty: refused ("nih-google needs --expert-labels")
}
DEFAULT_SOURCE = "nih"


def get_source(name: str) -> Callable[..., pd.DataFrame]:
    """The reader registered as ``name``; ValueError naming the known sources otherwise."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(SOURCES))}") from None


def check_options(name: str, options: dict) -> None:
    """ValueError for an unknown source or an option the source does not take."""
    get_source(name)
    extra = sorted(set(options) - set(OPTIONS.get(name, {})))
    if extra:
        takes = ", ".join(OPTIONS.get(name, {})) or "none"
        raise ValueError(f"dataset {name!r} takes no option {', '.join(extra)} (its options: {takes})")


def read_source(name: str, data_dir: str | os.PathLike, **options) -> pd.DataFrame:
    """Call source ``name`` on ``data_dir`` and check that its table keeps the contract above."""
    table = get_source(name)(data_dir, **options)
    columns = list(table.columns)
    labels = label_columns(columns) if "view" in columns and "age" in columns else []
    if not labels or columns != [*index_columns(labels), "path"] or len(set(labels)) != len(labels):
        raise TypeError(f"source {name!r} returned columns {columns}, expected image, patient_id, split, view, "
                        f"its (distinct) labels, age, sex, path")
    for label in labels:
        values = table[label].to_numpy(np.float64)
        if not (np.isnan(values) | (values == 0) | (values == 1)).all():
            raise TypeError(f"source {name!r}: label {label!r} has values other than 1, 0 and NaN (missing)")
    if not isinstance(table.attrs.get("source"), dict):
        raise TypeError(f"source {name!r} returned no attrs['source'] summary")
    bad = ~table["split"].isin(SPLITS)
    if bad.any():
        raise TypeError(f"source {name!r}: split {table['split'][bad].iat[0]!r} is not one of {SPLITS}")
    if table["image"].duplicated().any():
        raise TypeError(f"source {name!r}: image {table['image'][table['image'].duplicated()].iat[0]!r} repeats")
    return table


def box_findings(name: str, boxes: pd.DataFrame, labels) -> pd.DataFrame:
    """Source ``name``'s ``attrs["boxes"]`` with its findings as the cache's label names: columns ``image``,
    ``finding``, ``reader`` ('' where the source has none), ``x, y, w, h`` (float64), the source's row order.

    A source with a table in :data:`chexnet.labels.SOURCE_NAMES` (VinDr-CXR) has its finding names mapped through
    it (:func:`chexnet.labels.map_source_labels`): a name that maps to several labels (``Nodule/Mass``) gives one
    row per label, in that order; one kept under its own name (``Aortic enlargement``) keeps it, as the label
    columns do; one that is dropped (``Other lesion``) is left out. Other sources' findings are their label
    names already (RSNA: ``Pneumonia``). ``attrs["dropped"]`` counts the boxes left out. A finding that is not
    one of ``labels`` (the source's label columns) afterwards raises TypeError (a source's bug).
    """
    from chexnet.labels import SOURCE_NAMES, map_source_labels

    missing = [c for c in ("image", "finding", "x", "y", "w", "h") if c not in boxes.columns]
    if missing:
        raise TypeError(f"source {name!r}: attrs['boxes'] lacks column(s) {', '.join(missing)}")
    finding = boxes["finding"].astype(str).to_numpy(dtype=object)
    reader = (boxes["reader"].astype(str).to_numpy(dtype=object) if "reader" in boxes.columns
              else np.full(len(boxes), "", dtype=object))
    if name in SOURCE_NAMES:
        mapping = map_source_labels(name, list(dict.fromkeys(finding)))
        targets = {n: mapping.mapping.get(n, (n,) if n in mapping.kept_own else ()) for n in set(finding)}
    else:
        targets = {n: (n,) for n in set(finding)}
    repeat = np.array([len(targets[n]) for n in finding], dtype=np.int64)
    take = np.repeat(np.arange(len(boxes)), repeat)
    out = pd.DataFrame({
        "image": boxes["image"].astype(str).to_numpy(dtype=object)[take],
        "finding": np.array([t for n in finding for t in targets[n]], dtype=object),
        "reader": reader[take],
        **{c: boxes[c].to_numpy(np.float64)[take] for c in ("x", "y", "w", "h")},
    })
    unknown = sorted(set(out["finding"]) - set(labels))
    if unknown:
        raise TypeError(f"source {name!r}: box finding(s) {', '.join(map(repr, unknown))} are not labels of its table")
    out.attrs["dropped"] = int((repeat == 0).sum())
    return out


def source_labels() -> dict[str, tuple[str, ...]]:
    """The labels each source can give (its cache's label columns, at most), for the docs' source x label table."""
    from chexnet.data.sources import chexpert, mimic, nih_google, padchest, rsna, vindr
    from chexnet.labels import PATHOLOGIES

    return {"nih": PATHOLOGIES, "chexpert": chexpert.LABELS, "vindr": vindr.PHYSIONET.labels, "mimic": mimic.LABELS,
            "rsna": rsna.LABELS, "padchest": padchest.LABELS, "nih-google": nih_google.LABELS}


def label_table_markdown() -> str:
    """The README's table: one row per label (the vocabulary, then the sources' own names), one column per
    source; x where the source has the label. ``csv``: whatever its mapping names."""
    from chexnet.labels import VOCABULARY

    have = source_labels()
    names = [s for s in SOURCES if s in have]
    rows = list(VOCABULARY) + [n for s in names for n in have[s] if n not in VOCABULARY]
    lines = ["| label | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label in dict.fromkeys(rows):
        lines.append(f"| {label} | " + " | ".join("x" if label in have[s] else "" for s in names) + " |")
    return "\n".join(lines)
