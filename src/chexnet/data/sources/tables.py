"""Reading a source's metadata tables strictly, the same way for every source.

:func:`read_csv_strict` reads a CSV (plain or gzip, told by its first bytes) as text cells: blanks stay ''
(never NaN), and every line must have the header's number of fields (pandas would pad a short line with
blanks, which most sources read as negatives). :func:`bad_cell` is the error every source raises for a bad
value, naming the file, the line as numbered in the file (the header is line 1) and the column.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import pandas as pd

from chexnet.data.splits import MetadataError


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is gzip (whatever its name)."""
    try:
        data = Path(path).read_bytes()
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise MetadataError(f"{path}: cannot read: {exc}") from exc


def check_field_counts(data: bytes, where: str) -> None:
    """Every line has the header's number of fields; MetadataError naming the first that has not."""
    if b'"' not in data:  # no quoting: a field count is a comma count (fast path; the releases' files)
        lines = data.split(b"\n")
        if lines and lines[-1] in (b"", b"\r"):
            lines.pop()
        want = lines[0].count(b",") if lines else 0
        for i, line in enumerate(lines):
            if line.count(b",") != want:
                raise MetadataError(f"{where} line {i + 1}: {line.count(b',') + 1} field(s), "
                                    f"the header has {want + 1}")
        return
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="replace"), newline=""))
    want = None
    for row in reader:
        if want is None:
            want = len(row)
        elif len(row) != want:
            raise MetadataError(f"{where} line {reader.line_num}: {len(row)} field(s), the header has {want}")


def find_table(folder: Path, stem: str) -> Path | None:
    """``folder/STEM.csv`` or ``folder/STEM.csv.gz``, whichever exists (None: neither)."""
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def read_csv_strict(path: Path) -> pd.DataFrame:
    """``path`` as a table of text cells (row ``i`` is line ``i + 2``); MetadataError when it is not one."""
    data = read_bytes(path)
    check_field_counts(data, str(path))
    try:
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, skip_blank_lines=False,
                           encoding="utf-8-sig")
    except Exception as exc:  # pandas raises many kinds
        raise MetadataError(f"{path}: cannot read as CSV: {exc}") from exc


def read_table(path) -> tuple[pd.DataFrame, str]:
    """(:func:`read_csv_strict`'s table, the path as errors name it)."""
    return read_csv_strict(Path(path)), str(path)


def header_columns(raw: pd.DataFrame, required, where: str) -> dict[str, object]:
    """{column name as written, stripped of blanks and a byte-order mark: the frame's column} for ``raw``;
    MetadataError naming ``where``'s header line and the missing columns when any of ``required`` is absent."""
    columns = {str(c).strip().lstrip("\ufeff").strip(): c for c in raw.columns}
    missing = [c for c in required if c not in columns]
    if missing:
        raise MetadataError(f"{where} line 1 (header): missing column(s) {', '.join(map(repr, missing))}; "
                            f"found {list(columns)}")
    return columns


def bad_cell(where: str, i: int, column: str, value, why: str) -> MetadataError:
    """The error for row ``i`` (0-based, below the header) of ``where``'s ``column``."""
    return MetadataError(f"{where} line {i + 2}, column {column!r}: {why} (value {value!r})")
