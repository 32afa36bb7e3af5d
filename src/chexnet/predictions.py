"""The predictions file: the contract between ``chexnet evaluate`` (which writes it) and the tables, reports,
calibration and comparisons that read it::

    image, patient_id, prob_<label>, ..., label_<label>, ...

one row per image, one ``prob_`` and one ``label_`` column per label of the run, in the run's order (its
``cfg.labels``; a run on NIH's 14 pathologies, :data:`chexnet.labels.PATHOLOGIES`, writes ``prob_Atelectasis``
... ``prob_Hernia``, ``label_Atelectasis`` ... ``label_Hernia`` as it always did). A table's labels are read from
its columns (:func:`predicted_labels`), so every file written so far reads back. Use :func:`predictions_frame` /
:func:`write_predictions` / :func:`read_predictions`.

A label cell is 1, 0 or empty: missing (the dataset lacks the label, or its value is uncertain); in arrays a
missing label is NaN. Probabilities are written at full precision (``%.17g``): re-reading is lossless.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from chexnet.fileio import atomic_write
from chexnet.labels import PATHOLOGIES

PROB_PREFIX, LABEL_PREFIX = "prob_", "label_"


def prob_columns(labels=PATHOLOGIES) -> tuple[str, ...]:
    """The probability columns of a predictions table for ``labels``: ``prob_<label>`` each, in order."""
    return tuple(f"{PROB_PREFIX}{name}" for name in labels)


def label_columns(labels=PATHOLOGIES) -> tuple[str, ...]:
    """The label columns of a predictions table for ``labels``: ``label_<label>`` each, in order."""
    return tuple(f"{LABEL_PREFIX}{name}" for name in labels)


def prediction_columns(labels=PATHOLOGIES) -> tuple[str, ...]:
    """Every column of a predictions table for ``labels``, in the file's order."""
    return ("image", "patient_id", *prob_columns(labels), *label_columns(labels))


PROB_COLUMNS = prob_columns()  # a run on NIH's 14 pathologies (the default labels)
LABEL_COLUMNS = label_columns()
PREDICTION_COLUMNS = prediction_columns()


def predictions_frame(images, patient_ids, probs, labels, names=PATHOLOGIES) -> pd.DataFrame:
    """Build the predictions table (see module doc) from arrays: probs/labels are (n, k), one column per label
    of ``names`` (the run's labels, in its order; default NIH's 14).

    Labels are 0/1 (int8 columns); when any is NaN (missing) the label columns are nullable ``Int8``,
    missing cells ``<NA>`` (written as empty CSV cells).
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    n, k = len(images), len(names)
    if probs.shape != (n, k) or labels.shape != (n, k) or len(patient_ids) != n:
        raise ValueError(
            f"expected {n} images with patient ids, probs and labels of shape ({n}, {k}) (labels "
            f"{', '.join(names)}); got {len(patient_ids)} patient ids, probs {probs.shape}, labels {labels.shape}"
        )
    df = pd.DataFrame({"image": list(images), "patient_id": list(patient_ids)})
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        label_frame = pd.DataFrame(labels, columns=label_columns(names)).astype("Int8")
    else:
        label_frame = pd.DataFrame(labels.astype(np.int8), columns=label_columns(names))
    df = pd.concat([df, pd.DataFrame(probs, columns=prob_columns(names)), label_frame], axis=1)
    return df


def predicted_labels(df: pd.DataFrame) -> tuple[str, ...]:
    """The labels of a predictions table, in its order: those of its ``prob_`` columns, then those that only
    have a ``label_`` column (a table missing a column, which :func:`read_predictions` names)."""
    names = [str(c)[len(prefix):] for prefix in (PROB_PREFIX, LABEL_PREFIX) for c in df.columns
             if str(c).startswith(prefix) and len(str(c)) > len(prefix)]
    return tuple(dict.fromkeys(names))


def write_predictions(df: pd.DataFrame, path) -> None:
    """Write a predictions table as CSV, its labels in its order (floats at full precision, so re-reading is
    lossless)."""
    columns = list(prediction_columns(predicted_labels(df)))
    atomic_write(path, df.loc[:, columns].to_csv(index=False, float_format="%.17g"))


def validate_predictions(df: pd.DataFrame, where: str) -> pd.DataFrame:
    names = predicted_labels(df)
    if not names:
        raise ValueError(f"{where}: not a predictions table; no prob_<label> or label_<label> columns")
    missing = [c for c in prediction_columns(names) if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: not a predictions table; missing columns {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    dup = df["image"].duplicated(keep=False)
    if dup.any():
        raise ValueError(f"{where}: duplicate image rows: {sorted(set(df.loc[dup, 'image']))[:10]}")
    labels = df.loc[:, list(label_columns(names))].to_numpy()
    missing = pd.isna(labels)
    if missing.any():  # missing labels (NaN / <NA>, an empty CSV cell) are allowed
        labels = np.where(missing, 0, labels.astype(object))
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        names = ", ".join(f"{df['image'].iloc[i]} (row {i})" for i in rows[:10])
        raise ValueError(f"{where}: labels must be 0/1 (or empty: missing); {rows.size} rows are not: {names}")
    return df


def read_predictions(path) -> pd.DataFrame:
    """Read and validate a predictions CSV (columns, unique images, 0/1 labels; an empty label cell is NaN)."""
    df = pd.read_csv(path, dtype={"image": str})
    return validate_predictions(df, str(path))


def prediction_arrays(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images, patient_ids, probs (n, k) float64, labels (n, k)) from a predictions table, one column per
    label of :func:`predicted_labels`, in its order.

    Labels are uint8 0/1, or float64 with NaN where missing when any label is missing.
    """
    names = predicted_labels(df)
    label_block = df.loc[:, list(label_columns(names))]
    if label_block.isna().to_numpy().any():
        labels = label_block.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        labels = label_block.to_numpy(dtype=np.uint8)
    return (
        df["image"].to_numpy(),
        df["patient_id"].to_numpy(),
        df.loc[:, list(prob_columns(names))].to_numpy(dtype=np.float64),
        labels,
    )
