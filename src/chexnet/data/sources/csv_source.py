"""A hospital's own data: a CSV of image paths, patient ids and label columns, described by a small YAML file.

:func:`read_source` is the ``csv`` entry of :data:`chexnet.data.sources.SOURCES`; its one option, ``mapping``
(``chexnet prepare --dataset csv --mapping FILE``), is the YAML file's path (as given: relative to the working
folder, or absolute). :func:`read_mapping` reads and checks that file, :func:`parse_rows` turns the CSV's
rows into the table (pure: no file access), :func:`read_table` reads a CSV keeping each row's line number
(PadChest's reader uses it too).

The mapping file
================
::

    csv: export.csv            # the CSV, relative to --data (or absolute); plain or gzip-compressed
    image: path                # column with the image path, relative to --data (or absolute)
    patient: patient_id        # column with the patient id (text): patients never straddle splits
    split: split               # optional: values train / val / test; else a seeded 70/10/20 split by patient
    view: view                 # optional: e.g. PA, AP, LATERAL (kept upper case); needed for --view
    sex: sex                   # optional: M / F (also male / female; blank, U, O, unknown, other -> unknown)
    age: age                   # optional, years (a number, or a DICOM age such as 058Y); blank -> unknown
    labels:                    # column -> vocabulary name (chexnet.labels.VOCABULARY; any case)
      effusion: Effusion
      cardiomegaly: Cardiomegaly
    values:                    # cell text -> 1 / 0 / missing; added to the defaults "1": 1, "0": 0, "": missing
      "1": 1
      "0": 0
      "-1": missing
      "": missing
      YES: 1
      NO: 0
    sex_values:                # optional: cell text -> M / F / "" (unknown), replacing the sex defaults above
      "1": M
      "2": F
    delimiter: ","             # optional: the CSV's field separator (default ",")

``csv``, ``image``, ``patient`` and ``labels`` (at least one column) are required; any other key is refused,
naming its line (a misspelt ``split`` would otherwise silently give a random split). Keys are read as the
text written, so ``YES`` and ``NO`` are the words, not YAML 1.1's true / false. Cell texts are compared after
stripping spaces and ignoring case (``yes`` is ``YES``); two ``values`` keys that differ only by case must
agree. Several columns may feed one vocabulary label: it is 1 if any of them is 1, else 0 if any is 0, else
missing.

The table
=========
One row per CSV row (in the file's order), the contract's columns: ``image`` the path cell as written
(``\\`` read as ``/``), ``patient_id`` text, ``split``, ``view`` ('' without a view column), one column per
vocabulary label the mapping names, in :data:`chexnet.labels.VOCABULARY` order (uint8 where every value is
known, else float32 1.0 / 0.0 / NaN), ``age``, ``sex``, ``path`` ('' where the file is not there: the cache
writer records it as failed). ``view=None`` keeps every row (the export is what the hospital chose);
``"PA"`` / ``"AP"`` keeps that view's rows before splits are assigned.

Splits: with a ``split`` column, its values (train / val / test, any case); when it names no val row, a
seeded ``val_fraction`` of train's patients becomes val (the contract's "no validation split of its own").
Without one: a seeded 70/10/20 split of the patients.

Errors
======
A wrong mapping raises :class:`chexnet.data.splits.MetadataError` naming the file, the line and the column
or key: in the YAML file (``line N, key 'labels': unknown vocabulary label 'Efusion'``, an unknown key, a
value not 1 / 0 / missing), or in the CSV (the header, line 1, lacking a column the mapping names; a cell not
in ``values``; a split not train / val / test; a patient in two splits, naming both lines; an empty image or
patient cell; an image listed twice; a malformed age or sex). Lines are as numbered in the file, the header
being line 1 (a quoted cell may span lines: the row's first line is named). An empty ``mapping`` option is
refused: ``csv needs --mapping FILE``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet.data.splits import SPLITS, MetadataError
from chexnet.labels import VOCABULARY

SOURCE = "csv"
RANDOM_FRACTIONS = (0.7, 0.1, 0.2)  # train/val/test by patient without a split column
COLUMN_KEYS = ("image", "patient", "split", "view", "sex", "age")  # mapping keys that name one column
REQUIRED_KEYS = ("csv", "image", "patient", "labels")
KNOWN_KEYS = ("csv", *COLUMN_KEYS, "labels", "values", "sex_values", "delimiter")
MISSING = "missing"
DEFAULT_VALUES = {"1": 1.0, "0": 0.0, "": np.nan}  # cell text (lower case) -> value; `values` adds to these
DEFAULT_SEX = {"m": "M", "male": "M", "f": "F", "female": "F", "": "", "u": "", "o": "", "unknown": "", "other": ""}
_TARGETS = {"1": 1.0, "0": 0.0, MISSING: np.nan}
_VOCABULARY = {name.lower(): name for name in VOCABULARY}
_DICOM_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([YyMmWwDd]?)$")
_AGE_UNIT = {"": 1.0, "y": 1.0, "m": 1 / 12, "w": 7 / 365.25, "d": 1 / 365.25}

__all__ = ["Mapping", "MetadataError", "parse_rows", "read_mapping", "read_source", "read_table"]


# ------------------------------------------------------------------------------------------------- reading CSVs

@dataclass
class Table:
    """A CSV as read by :func:`read_table`: its header, each column's cells and each row's first line."""

    path: str
    header: list[str]
    columns: dict[str, list[str]]
    lines: np.ndarray  # int64, the line (1-based, header = 1) each row starts on

    def __len__(self) -> int:
        return len(self.lines)


def read_table(path: str | os.PathLike, delimiter: str = ",", columns=None) -> Table:
    """Read a CSV (plain or gzip-compressed, UTF-8, any quoting) keeping each row's first line number.

    Header names are stripped (a byte-order mark too); only ``columns`` are kept (all when None; names not in
    the header are the caller's to report). Blank lines are skipped; a row with another field count than the
    header raises :class:`MetadataError` naming its line. Cells are text, '' for empty.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise MetadataError(f"{path}: cannot read: {exc}") from exc
    text = data.decode("utf-8-sig", errors="replace")
    del data
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        header = next(reader, None)
    except csv.Error as exc:
        raise MetadataError(f"{path} line 1 (header): {exc}") from exc
    if not header:
        raise MetadataError(f"{path}: empty file (no header line)")
    header = [h.strip().lstrip("\ufeff").strip() for h in header]
    wanted = [(i, h) for i, h in enumerate(header) if columns is None or h in columns]
    out: dict[str, list[str]] = {h: [] for _, h in wanted}
    lines: list[int] = []
    last = reader.line_num
    try:
        for row in reader:
            start, last = last + 1, reader.line_num
            if not row:  # a blank line
                continue
            if len(row) != len(header):
                raise MetadataError(f"{path} line {start}: {len(row)} field(s), the header has {len(header)}")
            for i, h in wanted:
                out[h].append(row[i])
            lines.append(start)
    except csv.Error as exc:
        raise MetadataError(f"{path} line {reader.line_num}: {exc}") from exc
    return Table(str(path), header, out, np.asarray(lines, dtype=np.int64))


# --------------------------------------------------------------------------------------------- the mapping file

@dataclass
class Mapping:
    """A checked mapping file (see the module docstring)."""

    path: str
    csv: str
    columns: dict[str, str]  # key of COLUMN_KEYS -> CSV column (only the keys given)
    labels: dict[str, str]  # CSV column -> vocabulary label, in the file's order
    values: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_VALUES))  # lower-case text -> 1/0/NaN
    sex_values: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SEX))  # lower-case text -> M/F/''
    delimiter: str = ","
    key_lines: dict[str, int] = field(default_factory=dict)  # "image", "labels.effusion", ... -> YAML line
    sha256: str = ""

    def line_of(self, key: str) -> str:
        line = self.key_lines.get(key)
        return f"{self.path} line {line}" if line else self.path

    def summary(self) -> dict:
        """JSON-serializable (meta.json's source block)."""
        return {"columns": dict(self.columns), "labels": dict(self.labels),
                "values": {k: (None if np.isnan(v) else int(v)) for k, v in self.values.items()},
                "sex_values": dict(self.sex_values)}


def _line(node) -> int:
    return node.start_mark.line + 1


def read_mapping(path: str | os.PathLike) -> Mapping:
    """Read and check the mapping file (see the module docstring): :class:`Mapping`, or MetadataError naming
    the file, line and key. Keys and scalars are read as written (``YES`` stays ``YES``)."""
    import yaml

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MetadataError(f"{path}: cannot read the mapping file: {exc.strerror or exc}") from exc
    try:
        root = yaml.compose(raw.decode("utf-8-sig", errors="replace"), Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise MetadataError(f"{path}: not valid YAML: {exc}") from exc
    where = str(path)
    if root is None:
        raise MetadataError(f"{where}: empty mapping file; it needs at least {', '.join(REQUIRED_KEYS)}")
    if not isinstance(root, yaml.MappingNode):
        raise MetadataError(f"{where} line {_line(root)}: the mapping file must be 'key: value' lines, "
                            f"not a {root.tag.rsplit(':', 1)[-1]}")

    def items(node, what: str):
        seen: dict[str, int] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise MetadataError(f"{where} line {_line(k)}: {what}: a key must be plain text")
            key = k.value.strip()
            if key in seen and what != "values":  # values: compared ignoring case, below
                raise MetadataError(f"{where} line {_line(k)}, key {key!r}: given twice (first on line {seen[key]})")
            seen[key] = _line(k)
            yield key, k, v

    def scalar(v, key: str, allow_empty: bool = False) -> str:
        if not isinstance(v, yaml.ScalarNode):
            raise MetadataError(f"{where} line {_line(v)}, key {key!r}: expected one value (a column name or text), "
                                "not a list or mapping")
        text = v.value.strip() if v.value is not None else ""
        if not text and not allow_empty:
            raise MetadataError(f"{where} line {_line(v)}, key {key!r}: empty")
        return text

    found: dict[str, object] = {}
    lines: dict[str, int] = {}
    for key, k, v in items(root, "mapping file"):
        if key not in KNOWN_KEYS:
            raise MetadataError(f"{where} line {_line(k)}, key {key!r}: unknown key; known: {', '.join(KNOWN_KEYS)}")
        found[key], lines[key] = v, _line(k)
    missing = [k for k in REQUIRED_KEYS if k not in found]
    if missing:
        raise MetadataError(f"{where}: missing key(s) {', '.join(missing)} (required: {', '.join(REQUIRED_KEYS)})")

    columns = {key: scalar(found[key], key) for key in COLUMN_KEYS if key in found}
    named = {}
    for key, column in columns.items():
        if column in named:
            raise MetadataError(f"{where} line {lines[key]}, key {key!r}: column {column!r} is also the "
                                f"{named[column]!r} column")
        named[column] = key

    node = found["labels"]
    if not isinstance(node, yaml.MappingNode) or not node.value:
        raise MetadataError(f"{where} line {lines['labels']}, key 'labels': expected 'column: vocabulary label' "
                            "lines (at least one)")
    labels: dict[str, str] = {}
    for column, k, v in items(node, "labels"):
        target = scalar(v, f"labels: {column}")
        label = _VOCABULARY.get(target.lower())
        lines[f"labels.{column}"] = _line(k)
        if label is None:
            raise MetadataError(f"{where} line {_line(v)}, key 'labels', column {column!r}: unknown vocabulary label "
                                f"{target!r}; known: {', '.join(VOCABULARY)}")
        if column in named:
            raise MetadataError(f"{where} line {_line(k)}, key 'labels', column {column!r}: it is also the "
                                f"{named[column]!r} column")
        labels[column] = label

    values = dict(DEFAULT_VALUES)
    if "values" in found:
        node = found["values"]
        if not isinstance(node, yaml.MappingNode):
            raise MetadataError(f"{where} line {lines['values']}, key 'values': expected 'cell text: 1 | 0 | missing' "
                                "lines")
        given: dict[str, tuple[float, int]] = {}
        for text, k, v in items(node, "values"):
            target = scalar(v, f"values: {text}").lower()
            if target not in _TARGETS:
                raise MetadataError(f"{where} line {_line(v)}, key 'values', cell text {text!r}: {v.value!r} is not "
                                    f"1, 0 or {MISSING}")
            value = _TARGETS[target]
            low = text.lower()
            if low in given and not _same(given[low][0], value):
                raise MetadataError(f"{where} line {_line(k)}, key 'values', cell text {text!r}: means "
                                    f"{target} here but {_name(given[low][0])} on line {given[low][1]} "
                                    "(cell texts are compared ignoring case)")
            given[low] = (value, _line(k))
        values.update({text: value for text, (value, _) in given.items()})

    sex_values = dict(DEFAULT_SEX)
    if "sex_values" in found:
        node = found["sex_values"]
        if not isinstance(node, yaml.MappingNode):
            raise MetadataError(f"{where} line {lines['sex_values']}, key 'sex_values': expected 'cell text: M | F | "
                                "\"\"' lines")
        sex_values = {}
        for text, k, v in items(node, "sex_values"):
            target = scalar(v, f"sex_values: {text}", allow_empty=True).upper()
            if target not in ("M", "F", ""):
                raise MetadataError(f"{where} line {_line(v)}, key 'sex_values', cell text {text!r}: {v.value!r} is "
                                    "not M, F or \"\" (unknown)")
            sex_values[text.lower()] = target

    delimiter = ","
    if "delimiter" in found:
        node = found["delimiter"]
        delimiter = node.value if isinstance(node, yaml.ScalarNode) else ""
        if delimiter == "\\t":
            delimiter = "\t"
        if len(delimiter) != 1:
            raise MetadataError(f"{where} line {lines['delimiter']}, key 'delimiter': one character, such as \",\" "
                                f"or \";\", not {delimiter!r}")
    return Mapping(path=where, csv=scalar(found["csv"], "csv"), columns=columns, labels=labels, values=values,
                   sex_values=sex_values, delimiter=delimiter, key_lines=lines, sha256=hashlib.sha256(raw).hexdigest())


def _same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or a == b


def _name(value: float) -> str:
    return MISSING if np.isnan(value) else str(int(value))


# ------------------------------------------------------------------------------------------------------ parsing

def _bad(where: str, line: int, column: str, value, why: str) -> MetadataError:
    return MetadataError(f"{where} line {line}, column {column!r}: {why} (value {value!r})")


def _map_cells(cells: list[str], lines: np.ndarray, fn, where: str, column: str, why) -> np.ndarray:
    """``fn`` on each distinct stripped cell (None: malformed, raising naming the first such line)."""
    codes, uniques = pd.factorize(pd.Series(cells, dtype=object).str.strip(), use_na_sentinel=False)
    table = []
    for k, text in enumerate(uniques):
        v = fn(text)
        if v is None:
            i = int(np.flatnonzero(codes == k)[0])
            raise _bad(where, int(lines[i]), column, cells[i], why(text) if callable(why) else why)
        table.append(v)
    out = np.empty(len(table), dtype=object)
    out[:] = table
    return out[codes] if len(cells) else np.empty(0, dtype=object)


def _parse_age(text: str):
    if not text:
        return np.nan
    m = _DICOM_AGE.match(text)
    if not m:
        return None
    return float(m.group(1)) * _AGE_UNIT[m.group(2).lower()]


def parse_rows(table: Table, mapping: Mapping) -> pd.DataFrame:
    """The rows of ``table`` (:func:`read_table` of the mapping's CSV) under ``mapping``: columns ``image,
    patient_id, split`` ('' without a split column), ``view, <labels>, age, sex``, in the file's order, plus
    ``attrs["line"]`` (each row's line). MetadataError names the CSV, line and column of the first bad cell."""
    where = table.path
    missing = [(key, c) for key, c in mapping.columns.items() if c not in table.columns]
    missing += [(f"labels.{c}", c) for c in mapping.labels if c not in table.columns]
    if missing:
        key, column = missing[0]
        raise MetadataError(f"{where} line 1 (header): no column {column!r} (named by {mapping.line_of(key)}, key "
                            f"{key.split('.')[0]!r}); the header has {', '.join(map(repr, table.header))}")
    n, lines, cols = len(table), table.lines, mapping.columns

    def cells(key: str) -> list[str]:
        return table.columns[cols[key]]

    image = _map_cells(cells("image"), lines, lambda s: s.replace("\\", "/") or None, where, cols["image"], "empty")
    dup = pd.Series(image).duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(lines[int(np.flatnonzero(image == image[i])[0])])
        raise _bad(where, int(lines[i]), cols["image"], cells("image")[i], f"the image is also on line {first}")
    patient = _map_cells(cells("patient"), lines, lambda s: s or None, where, cols["patient"], "empty")
    if "split" in cols:
        split = _map_cells(cells("split"), lines, lambda s: s.lower() if s.lower() in SPLITS else None, where,
                           cols["split"], f"not {', '.join(SPLITS[:-1])} or {SPLITS[-1]}")
        _check_one_split(patient, split, lines, where, cols["split"])
    else:
        split = np.full(n, "", dtype=object)
    view = (_map_cells(cells("view"), lines, str.upper, where, cols["view"], "") if "view" in cols
            else np.full(n, "", dtype=object))
    if "sex" in cols:
        known = ", ".join(repr(k) for k in mapping.sex_values)
        sex = _map_cells(cells("sex"), lines, lambda s: mapping.sex_values.get(s.lower()), where, cols["sex"],
                         f"not a sex the mapping knows ({known}; add it under sex_values)")
    else:
        sex = np.full(n, "", dtype=object)
    age = (_map_cells(cells("age"), lines, _parse_age, where, cols["age"],
                      "not a number of years >= 0 (or a DICOM age such as 058Y), or blank").astype(np.float64)
           if "age" in cols else np.full(n, np.nan))

    known = ", ".join(repr(k) for k in mapping.values)
    values: dict[str, np.ndarray] = {}
    for column, label in mapping.labels.items():
        v = _map_cells(table.columns[column], lines, lambda s: mapping.values.get(s.lower()), where, column,
                       f"not a value the mapping knows ({known}; add it under values)").astype(np.float64)
        values[label] = v if label not in values else _combine(values[label], v)
    labels = [name for name in VOCABULARY if name in values]

    out = pd.DataFrame({"image": image, "patient_id": patient, "split": split, "view": view})
    for label in labels:
        v = values[label]
        out[label] = v.astype(np.float32) if np.isnan(v).any() else v.astype(np.uint8)
    out["age"] = age
    out["sex"] = sex
    out.attrs["line"] = lines
    return out


def _combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two columns of one label: 1 if either is 1, else 0 if either is 0, else missing."""
    return np.fmax(a, b)


def _check_one_split(patient: np.ndarray, split: np.ndarray, lines: np.ndarray, where: str, column: str) -> None:
    frame = pd.DataFrame({"p": patient, "s": split})
    first = frame.groupby("p", sort=False)["s"].transform("first").to_numpy(dtype=object)
    bad = first != split
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        j = int(np.flatnonzero((patient == patient[i]) & (split == first[i]))[0])
        raise _bad(where, int(lines[i]), column, split[i], f"patient {patient[i]!r} is in split {split[i]!r} here "
                   f"but in {first[i]!r} on line {int(lines[j])} (a patient's images must share one split)")


# =========================================================================== the registered source

def read_source(data_dir: str | os.PathLike, *, view: str | None = None, seed: int = 0, val_fraction: float = 0.1,
                mapping: str = "") -> pd.DataFrame:
    """The ``csv`` source (see :mod:`chexnet.data.sources`): the CSV and columns that the YAML file ``mapping``
    names (module docstring). ``view`` None keeps every row; ``"PA"`` / ``"AP"`` that view's (needs a view
    column). Splits from the split column (val carved from train where it names none), else seeded 70/10/20
    by patient."""
    from chexnet.data.cache import CacheError, index_columns
    from chexnet.data.splits import check_patient_disjoint, split_patients

    if not str(mapping or "").strip():
        raise ValueError("csv needs --mapping FILE (prepare(..., options={'mapping': FILE})): the YAML file naming "
                         "the CSV and its image, patient and label columns (see chexnet.data.sources.csv_source)")
    data_dir = Path(data_dir)
    spec = read_mapping(Path(mapping).expanduser().resolve())
    csv_path = Path(spec.csv) if os.path.isabs(spec.csv) else data_dir / spec.csv
    if not csv_path.is_file():
        raise MetadataError(f"{spec.line_of('csv')}, key 'csv': {csv_path} not found (the CSV is relative to the data "
                            f"folder {data_dir}, or absolute)")
    wanted = {*spec.columns.values(), *spec.labels}
    table = read_table(csv_path, spec.delimiter, wanted)
    df = parse_rows(table, spec)
    rows = len(df)
    if not rows:
        raise CacheError(f"{csv_path}: no rows")
    if view is not None:
        if "view" not in spec.columns:
            raise CacheError(f"{spec.path} names no view column, so view {view} would keep no image; add 'view: COLUMN' "
                             "or leave the view unset")
        keep = (df["view"] == view).to_numpy()
        if not keep.any():
            raise CacheError(f"{csv_path}: no image of view {view} in column {spec.columns['view']!r} (views: "
                             f"{', '.join(sorted(set(df['view'])))})")
        df = df[keep].reset_index(drop=True)
    left_out = rows - len(df)

    patients = df["patient_id"].to_numpy(dtype=object)
    if "split" in spec.columns:
        split = df["split"].to_numpy(dtype=object).copy()
        if not (split == "val").any() and val_fraction > 0:
            train = split == "train"
            _, val_p = split_patients(patients[train], (1 - val_fraction, val_fraction), seed)
            split[train & pd.Series(patients).isin(val_p).to_numpy()] = "val"
            mode = f"column {spec.columns['split']!r} + random val"
        else:
            mode = f"column {spec.columns['split']!r}"
    else:
        groups = split_patients(patients, RANDOM_FRACTIONS, seed)
        split = pd.Series(patients).map({p: name for name, part in zip(SPLITS, groups) for p in part}).to_numpy(object)
        mode = "random"
    df["split"] = split
    check_patient_disjoint(df["patient_id"], df["split"])

    folder = data_dir.resolve() if not data_dir.is_absolute() else data_dir
    paths = [image if os.path.isabs(image) else str(folder / image) for image in df["image"]]
    df["path"] = [p if os.path.isfile(p) else "" for p in paths]
    labels = [c for c in df.columns if c in VOCABULARY]
    out = df[[*index_columns(labels), "path"]].reset_index(drop=True)
    out.attrs["source"] = {
        "data_dir": str(data_dir),
        "mapping": spec.path,
        "mapping_sha256": spec.sha256,
        "metadata": str(csv_path),
        "metadata_rows": rows,
        "split_mode": mode,
        "excluded_by_view": left_out,
        "view_rule": "all images" if view is None else f"column {spec.columns['view']!r} = {view} only",
        "labels": spec.summary(),
        "missing_on_disk": int((out["path"] == "").sum()),
        "unused_columns": [c for c in table.header if c not in wanted],
    }
    return out
