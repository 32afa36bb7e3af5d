"""NIH ChestX-ray14: metadata (``Data_Entry_2017*.csv``), image discovery, patient-wise splits, the source.

:func:`read_source` is the ``nih`` entry of :data:`chexnet.data.sources.SOURCES`: the folder in NIH's layout
(``images_*/images/`` or a flat ``images/``, the metadata CSV, optionally ``train_val_list.txt`` and
``test_list.txt``) -> the common metadata table the cache writer plans from.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet.data.cache import INDEX_COLUMNS, CacheError
from chexnet.data.splits import SPLITS, MetadataError, check_patient_disjoint, split_patients
from chexnet.labels import PATHOLOGIES, LabelError, parse_findings

METADATA_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
OPTIONAL_COLUMNS = {"View Position": "view", "Patient Age": "age", "Patient Gender": "sex", "Follow-up #": "follow_up"}

__all__ = ["METADATA_NAMES", "MetadataError", "assign_splits", "check_patient_disjoint", "find_images",
           "find_metadata", "read_metadata", "read_source"]


def find_metadata(data_dir: str | os.PathLike) -> Path:
    """Return the metadata CSV in ``data_dir`` (plain or .gz; v2020 preferred)."""
    data_dir = Path(data_dir)
    for name in METADATA_NAMES:
        for candidate in (data_dir / name, data_dir / (name + ".gz")):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"{data_dir}: no metadata file; expected one of {', '.join(METADATA_NAMES)} (optionally .gz)")


def _parse_age(value) -> float:
    if pd.isna(value):
        return float("nan")
    m = re.match(r"^\s*(\d+)\s*([YMD]?)\s*$", str(value))  # 58 or "058Y" in some redistributions
    if not m:
        return float("nan")
    n = float(m.group(1))
    return {"": n, "Y": n, "M": n / 12.0, "D": n / 365.0}[m.group(2)]


def read_metadata(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``Data_Entry_2017.csv`` or ``Data_Entry_2017_v2020.csv`` (either header variant).

    Returns one row per image with columns ``image, patient_id, view, age, sex, follow_up`` and
    the 14 pathology columns (uint8, NIH order). ``No Finding`` is all zeros.
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many kinds
        raise MetadataError(f"{path}: cannot read as CSV: {exc}") from exc
    raw.columns = [c.strip() for c in raw.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise MetadataError(f"{path}: missing required column(s) {missing}; found {list(raw.columns)}")

    labels = np.zeros((len(raw), len(PATHOLOGIES)), dtype=np.uint8)
    cache: dict[str, np.ndarray] = {}
    for i, text in enumerate(raw["Finding Labels"].to_numpy()):
        vec = cache.get(text)
        if vec is None:
            try:
                vec = parse_findings(text, where=f"{path} row {i + 2} (image {raw['Image Index'].iat[i]})")
            except LabelError as exc:
                raise MetadataError(str(exc)) from None
            cache[text] = vec
        labels[i] = vec

    df = pd.DataFrame({"image": raw["Image Index"].str.strip()})
    pid = pd.to_numeric(raw["Patient ID"], errors="coerce")
    if pid.isna().any():
        row = int(np.flatnonzero(pid.isna().to_numpy())[0])
        raise MetadataError(f"{path} row {row + 2}: column 'Patient ID' is not an integer: {raw['Patient ID'].iat[row]!r}")
    df["patient_id"] = pid.astype(np.int64)
    for col, name in OPTIONAL_COLUMNS.items():
        if col not in raw.columns:
            df[name] = np.nan if name in ("age", "follow_up") else ""
        elif name == "age":
            df[name] = raw[col].map(_parse_age)
        elif name == "follow_up":
            df[name] = pd.to_numeric(raw[col], errors="coerce")
        else:
            df[name] = raw[col].str.strip()
    for j, name in enumerate(PATHOLOGIES):
        df[name] = labels[:, j]
    if df["image"].duplicated().any():
        dup = df["image"][df["image"].duplicated()].iat[0]
        raise MetadataError(f"{path}: image {dup!r} is listed more than once")
    return df


def find_images(data_dir: str | os.PathLike) -> dict[str, Path]:
    """Map image file name -> path, in NIH's ``images_*/images/`` layout or a flat ``images/`` folder."""
    data_dir = Path(data_dir)
    found: dict[str, Path] = {}
    folders = sorted(data_dir.glob("images_*/images")) + [data_dir / "images"]
    for folder in folders:
        if folder.is_dir():
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.is_file():
                        found.setdefault(entry.name, Path(entry.path))
    return found


def _read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def assign_splits(
    df: pd.DataFrame,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
) -> tuple[pd.Series, str]:
    """Assign every row to train/val/test, patient-wise. Returns (split Series, mode).

    With NIH's ``train_val_list.txt`` and ``test_list.txt`` in ``data_dir`` the official split is
    used and validation is carved out of train_val by patient (``val_fraction`` of its patients).
    Otherwise a seeded random patient-wise split with ``fractions`` (CheXNet: 70/10/20).
    """
    split = pd.Series("", index=df.index, dtype=object)
    lists = None
    if data_dir is not None:
        tv, te = Path(data_dir) / "train_val_list.txt", Path(data_dir) / "test_list.txt"
        if tv.is_file() and te.is_file():
            lists = (set(_read_list(tv)), set(_read_list(te)))
    if lists is not None:
        train_val, test = lists
        both = train_val & test
        if both:
            raise MetadataError(f"{data_dir}: {len(both)} image(s) in both train_val_list.txt and test_list.txt, e.g. {sorted(both)[0]}")
        in_test = df["image"].isin(test).to_numpy()
        in_tv = df["image"].isin(train_val).to_numpy()
        split[in_test] = "test"
        tv_patients = df.loc[in_tv, "patient_id"].to_numpy()
        _, val_p = split_patients(tv_patients, (1 - val_fraction, val_fraction), seed)
        is_val = df["patient_id"].isin(val_p).to_numpy() & in_tv
        split[in_tv] = "train"
        split[is_val] = "val"
        split = split[split != ""]
        mode = "official"
    else:
        parts = split_patients(df["patient_id"].to_numpy(), fractions, seed)
        for name, pats in zip(SPLITS, parts):
            split[df["patient_id"].isin(pats).to_numpy()] = name
        mode = "random"
    check_patient_disjoint(df.loc[split.index, "patient_id"], split)
    return split, mode


def read_source(data_dir: str | os.PathLike, *, view: str | None = None, seed: int = 0,
                val_fraction: float = 0.1) -> pd.DataFrame:
    """The ``nih`` source: ``data_dir`` -> one row per image with the common columns (see :mod:`chexnet.data.sources`).

    ``view`` (``"PA"``, ``"AP"`` or None) keeps only that View Position, before the split is assigned.
    ``seed`` and ``val_fraction`` go to :func:`assign_splits`. Rows come in the metadata file's order; images
    outside the official split lists are left out; ``path`` is '' for an image not found on disk.
    ``attrs["source"]`` says what was read and left out (meta.json's ``source`` block).
    """
    data_dir = Path(data_dir)
    metadata = find_metadata(data_dir)
    df = read_metadata(metadata)
    total = len(df)
    if view is not None:
        df = df[df["view"].str.upper() == view]
        if df.empty:
            raise CacheError(f"{metadata}: no image has View Position {view}")
    after_view = len(df)
    split, mode = assign_splits(df, data_dir, seed=seed, val_fraction=val_fraction)
    df = df.loc[split.index].copy()
    df["split"] = split
    if df.empty:
        raise CacheError(f"{data_dir}: no image of {metadata.name} is in train_val_list.txt or test_list.txt")
    files = find_images(data_dir)
    df["path"] = [str(files[name]) if name in files else "" for name in df["image"]]
    out = df[INDEX_COLUMNS + ["path"]].reset_index(drop=True)
    out.attrs["source"] = {
        "data_dir": str(data_dir),
        "metadata": str(metadata),
        "metadata_rows": total,
        "split_mode": mode,
        "excluded_by_view": total - after_view,
        "excluded_not_in_split_lists": after_view - len(out),
    }
    return out
