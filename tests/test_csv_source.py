"""The ``csv`` source: a hospital's export (image paths, patient ids, label columns) described by a YAML mapping
file; ``prepare(..., dataset="csv", options={"mapping": FILE})`` and ``chexnet prepare --dataset csv --mapping FILE``
must cache exactly the labels, splits and views the CSV holds, and every kind of wrong mapping must be an error
naming the file, the line and the column (or key)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chexnet.data.cache import CacheError, load_cache
from chexnet.data.prepare import prepare
from chexnet.data.sources import csv_source
from chexnet.data.sources.csv_source import MetadataError, read_mapping

MAPPING = """\
csv: export.csv            # relative to --data
image: path
patient: patient_id
split: split
view: view
sex: sex
age: age
labels:
  effusion: Effusion
  cardio: cardiomegaly     # any case
  ptx: Pneumothorax
  ptx_2nd_read: Pneumothorax
values:
  "1": 1
  "0": 0
  "-1": missing
  "": missing
  YES: 1
  NO: 0
"""
HEADER = ["path", "patient_id", "split", "view", "sex", "age", "effusion", "cardio", "ptx", "ptx_2nd_read", "notes"]
ROWS = [  # path, patient, split, view, sex, age, effusion, cardio, ptx, ptx_2nd_read, notes
    ["images/p1/a.png", "p1", "train", "PA", "M", "61", "YES", "0", "NO", "", "a, quoted note"],
    ["images/p1/b.png", "p1", "train", "ap", "M", "62", "no", "1", "", "", ""],
    ["images/p2/a.png", "p2", "Train", "PA", "F", "", "-1", "1", "YES", "NO", ""],
    ["images/p3/a.png", "p3", "val", "PA", "female", "45.5", "", "0", "-1", "-1", ""],
    ["images/p3/b.png", "p3", "val", "LATERAL", "F", "46", "1", "0", "NO", "YES", ""],
    ["images/p4/a.png", "p4", "test", "AP", "", "070Y", "0", "0", "0", "0", ""],
    ["images\\p5\\a.png", "p5", "test", "PA", "male", "30", "YES", "1", "1", "", ""],  # a Windows path
    ["images/p6/a.png", "p6", "test", "PA", "U", "80", "NO", "-1", "NO", "", ""],  # not on disk
]
NOT_ON_DISK = "images/p6/a.png"
VALUE = {"yes": 1.0, "no": 0.0, "1": 1.0, "0": 0.0, "-1": np.nan, "": np.nan}


def _expected(rows=ROWS) -> pd.DataFrame:
    def combined(a: str, b: str) -> float:
        return float(np.fmax(VALUE[a.lower()], VALUE[b.lower()]))

    return pd.DataFrame({
        "image": [r[0].replace("\\", "/") for r in rows],
        "Cardiomegaly": [VALUE[r[7].lower()] for r in rows],
        "Effusion": [VALUE[r[6].lower()] for r in rows],
        "Pneumothorax": [combined(r[8], r[9]) for r in rows],
    }).set_index("image")


def _csv(rows=ROWS, header=HEADER, delimiter=",") -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n", delimiter=delimiter)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def make_export(root: Path, rows=ROWS, mapping: str = MAPPING, text: str | None = None) -> tuple[Path, Path]:
    """A data folder with export.csv and 8-bit PNGs, and the mapping file beside it: (data folder, mapping)."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "export.csv").write_text(_csv(rows) if text is None else text)
    rng = np.random.default_rng(0)
    for r in rows:
        name = r[0].replace("\\", "/")
        if name == NOT_ON_DISK or not name.strip():
            continue
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(data / name)
    path = root / "mapping.yaml"
    path.write_text(mapping)
    return data, path


def _line_of(text: str, needle: str) -> int:
    return next(i + 1 for i, line in enumerate(text.splitlines()) if needle in line)


# ----------------------------------------------------------------------------------------------------- prepare

def test_prepare_caches_the_labels_splits_and_views_the_csv_holds(tmp_path):
    data, mapping = make_export(tmp_path)
    meta = prepare(data, tmp_path / "c", size=16, workers=1, progress=False, dataset="csv",
                   options={"mapping": str(mapping)})
    _, index, loaded = load_cache(tmp_path / "c")
    assert loaded["labels"] == ["Cardiomegaly", "Effusion", "Pneumothorax"]  # vocabulary order
    assert meta["arguments"]["options"] == {"mapping": str(mapping)}
    assert [f["image"] for f in meta["failed"]] == [NOT_ON_DISK]
    want = _expected()
    kept = [r for r in ROWS if r[0] != NOT_ON_DISK]
    assert index["image"].tolist() == [r[0].replace("\\", "/") for r in kept]
    got = index.set_index("image")
    np.testing.assert_array_equal(got[list(want.columns)].to_numpy(np.float64), want.loc[got.index].to_numpy())
    assert got["split"].tolist() == [r[2].lower() for r in kept]  # the column's splits, as given
    assert got["view"].tolist() == ["PA", "AP", "PA", "PA", "LATERAL", "AP", "PA"]  # every view (no --view)
    assert got["sex"].tolist() == ["M", "M", "F", "F", "F", "", "M"]
    np.testing.assert_allclose(got["age"].to_numpy(), [61, 62, np.nan, 45.5, 46, 70, 30])
    assert got["patient_id"].tolist() == [r[1] for r in kept]
    for split, counts in meta["label_counts"].items():
        part = want.loc[got.index[got["split"] == split]]
        for label, c in counts.items():
            assert c == {"positive": int((part[label] == 1).sum()), "negative": int((part[label] == 0).sum()),
                         "missing": int(part[label].isna().sum())}, (split, label)
    assert sum(c["Effusion"]["missing"] for c in meta["label_counts"].values()) == 2  # "-1" and blank
    assert meta["label_counts"]["test"]["Pneumothorax"] == {"positive": 1, "negative": 1, "missing": 0}

    source = meta["source"]
    assert source["split_mode"] == "column 'split'" and source["metadata_rows"] == len(ROWS)
    assert source["mapping"] == str(mapping.resolve()) and len(source["mapping_sha256"]) == 64
    assert source["labels"]["labels"] == {"effusion": "Effusion", "cardio": "Cardiomegaly", "ptx": "Pneumothorax",
                                          "ptx_2nd_read": "Pneumothorax"}
    assert source["labels"]["values"]["yes"] == 1 and source["labels"]["values"]["-1"] is None
    assert source["unused_columns"] == ["notes"] and source["missing_on_disk"] == 1


def test_the_cli_prepares_a_csv_with_its_mapping(tmp_path, capsys):
    from chexnet import cli

    data, mapping = make_export(tmp_path)
    assert cli.main(["prepare", "--dataset", "csv", "--mapping", str(mapping), "--data", str(data),
                     "--out", str(tmp_path / "c"), "--size", "16", "--workers", "1", "--view", "PA"]) == 0
    out = capsys.readouterr().out
    assert f"csv options: --mapping {mapping}" in out and "Effusion" in out
    _, index, meta = load_cache(tmp_path / "c")
    assert set(index["view"]) == {"PA"} and len(index) == 4  # the PA rows, less the one not on disk
    assert meta["source"]["excluded_by_view"] == 3 and meta["arguments"]["view"] == "PA"

    assert cli.main(["prepare", "--dataset", "csv", "--data", str(data), "--out", str(tmp_path / "n")]) == 2
    assert "csv needs --mapping FILE" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(MAPPING.replace("ptx: Pneumothorax", "ptx: Pnemothorax"))
    assert cli.main(["prepare", "--dataset", "csv", "--mapping", str(bad), "--data", str(data),
                     "--out", str(tmp_path / "b")]) == 2
    assert f"{bad} line 11, key 'labels', column 'ptx': unknown vocabulary label 'Pnemothorax'" in capsys.readouterr().err


def test_without_a_split_column_the_split_is_seeded_70_10_20_by_patient(tmp_path):
    rows = [[f"img/{k}.png", f"q{k // 2}", "", "PA", "F", "50", "1", "0", "0", "0", ""] for k in range(100)]
    data, mapping = make_export(tmp_path, rows, MAPPING.replace("split: split\n", ""))
    a = csv_source.read_source(data, mapping=str(mapping), seed=1)
    assert a["split"].tolist() == csv_source.read_source(data, mapping=str(mapping), seed=1)["split"].tolist()
    assert a.groupby("split")["patient_id"].nunique().to_dict() == {"test": 10, "train": 35, "val": 5}
    assert (a.groupby("patient_id")["split"].nunique() == 1).all() and a.attrs["source"]["split_mode"] == "random"
    assert a["Effusion"].dtype == np.uint8  # every value known: 0/1 (blank cells would make it float with NaN)


def test_a_split_column_without_val_gives_val_from_train_patients(tmp_path):
    rows = [[f"img/{k}.png", f"q{k}", "test" if k >= 40 else "train", "PA", "F", "50", "1", "0", "0", "0", ""]
            for k in range(50)]
    data, mapping = make_export(tmp_path, rows)
    table = csv_source.read_source(data, mapping=str(mapping), val_fraction=0.25)
    assert table.attrs["source"]["split_mode"] == "column 'split' + random val"
    assert table["split"].value_counts().to_dict() == {"train": 30, "val": 10, "test": 10}
    assert (table["split"].iloc[40:] == "test").all()


def test_a_semicolon_file_and_sex_values(tmp_path):
    rows = [["img/a.png", "p1", "train", "PA", "1", "50", "YES", "0", "0", "0", ""],
            ["img/b.png", "p2", "test", "PA", "2", "51", "NO", "1", "0", "0", ""]]
    mapping = MAPPING + 'sex_values:\n  "1": M\n  "2": F\ndelimiter: ";"\n'
    data, path = make_export(tmp_path, rows, mapping, text=_csv(rows, delimiter=";"))
    table = csv_source.read_source(data, mapping=str(path))
    assert table["sex"].tolist() == ["M", "F"] and table["Effusion"].tolist() == [1, 0]


# ------------------------------------------------------------------------------------------------------ errors

def _edit_row(k: int, column: str, value: str) -> list:
    rows = [list(r) for r in ROWS]
    rows[k][HEADER.index(column)] = value
    return rows


@pytest.mark.parametrize("rows,line,column,why", [
    (_edit_row(2, "effusion", "maybe"), "line 4", "'effusion'", "not a value the mapping knows"),
    (_edit_row(4, "split", "training"), "line 6", "'split'", "not train, val or test"),
    (_edit_row(1, "split", "test"), "line 3", "'split'", "patient 'p1' is in split 'test' here but in 'train' on line 2"),
    (_edit_row(3, "path", " "), "line 5", "'path'", "empty"),
    (_edit_row(3, "path", "images/p1/a.png"), "line 5", "'path'", "the image is also on line 2"),
    (_edit_row(5, "patient_id", ""), "line 7", "'patient_id'", "empty"),
    (_edit_row(5, "age", "old"), "line 7", "'age'", "not a number of years"),
    (_edit_row(5, "sex", "X"), "line 7", "'sex'", "not a sex the mapping knows"),
    (_edit_row(6, "ptx_2nd_read", "2"), "line 8", "'ptx_2nd_read'", "not a value the mapping knows"),
])
def test_a_wrong_cell_names_the_csv_line_and_column(tmp_path, rows, line, column, why):
    data, mapping = make_export(tmp_path, rows)
    with pytest.raises(MetadataError) as err:
        csv_source.read_source(data, mapping=str(mapping))
    message = str(err.value)
    assert f"{data / 'export.csv'} {line}, column {column}" in message and why in message, message


def test_a_missing_column_names_the_header_and_the_mapping_line(tmp_path):
    data, mapping = make_export(tmp_path, mapping=MAPPING.replace("age: age", "age: patient_age"))
    with pytest.raises(MetadataError) as err:
        csv_source.read_source(data, mapping=str(mapping))
    message = str(err.value)
    assert f"{data / 'export.csv'} line 1 (header): no column 'patient_age'" in message, message
    assert f"named by {mapping.resolve()} line 7, key 'age'" in message, message
    data, mapping = make_export(tmp_path / "l", mapping=MAPPING.replace("cardio: cardiomegaly", "cardiac: cardiomegaly"))
    with pytest.raises(MetadataError, match=r"line 1 \(header\): no column 'cardiac' \(named by .* line 10, key 'labels'"):
        csv_source.read_source(data, mapping=str(mapping))


@pytest.mark.parametrize("mapping,needle,why", [
    (MAPPING.replace("ptx: Pneumothorax", "ptx: Pnemothorax"), "ptx: Pnemothorax",
     "key 'labels', column 'ptx': unknown vocabulary label 'Pnemothorax'"),
    (MAPPING.replace("split: split", "splt: split"), "splt: split", "key 'splt': unknown key"),
    (MAPPING.replace("YES: 1", "YES: 2"), "YES: 2", "key 'values', cell text 'YES': '2' is not 1, 0 or missing"),
    (MAPPING + "  yes: 0\n", "  yes: 0", "cell text 'yes': means 0 here but 1 on line"),
    (MAPPING.replace("view: view", "view: sex"), "sex: sex", "key 'sex': column 'sex' is also the 'view' column"),
    (MAPPING.replace(MAPPING[MAPPING.index("labels:"):MAPPING.index("values:")], "labels: effusion\n"), "labels: effusion",
     "key 'labels': expected 'column: "),
    (MAPPING + "patient: other\n", "patient: other", "key 'patient': given twice (first on line 3)"),
])
def test_a_wrong_mapping_file_names_its_line_and_key(tmp_path, mapping, needle, why):
    path = tmp_path / "mapping.yaml"
    path.write_text(mapping)
    with pytest.raises(MetadataError) as err:
        read_mapping(path)
    message = str(err.value)
    assert f"{path} line {_line_of(mapping, needle)}" in message and why in message, message


def test_the_mapping_reads_keys_as_written_and_needs_its_required_keys(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MAPPING)
    spec = read_mapping(path)
    assert spec.values["yes"] == 1.0 and spec.values["no"] == 0.0 and np.isnan(spec.values["-1"])  # not true/false
    assert spec.columns == {"image": "path", "patient": "patient_id", "split": "split", "view": "view", "sex": "sex",
                            "age": "age"}
    path.write_text("csv: export.csv\nimage: path\nlabels:\n  a: Effusion\n")
    with pytest.raises(MetadataError, match=r"missing key\(s\) patient"):
        read_mapping(path)
    path.write_text("- csv\n")
    with pytest.raises(MetadataError, match="line 1: the mapping file must be 'key: value' lines"):
        read_mapping(path)
    with pytest.raises(MetadataError, match="cannot read the mapping file"):
        read_mapping(tmp_path / "absent.yaml")


def test_an_empty_mapping_option_a_missing_csv_and_a_view_without_a_view_column_are_refused(tmp_path):
    data, mapping = make_export(tmp_path)
    with pytest.raises(ValueError, match="csv needs --mapping FILE"):
        csv_source.read_source(data)
    with pytest.raises(ValueError, match="csv needs --mapping FILE"):
        prepare(data, tmp_path / "c", workers=1, progress=False, dataset="csv", options={})
    mapping.write_text(MAPPING.replace("csv: export.csv", "csv: exported.csv"))
    with pytest.raises(MetadataError, match=r"mapping.yaml line 1, key 'csv': .*exported.csv not found"):
        csv_source.read_source(data, mapping=str(mapping))
    mapping.write_text(MAPPING.replace("view: view\n", ""))
    with pytest.raises(CacheError, match="names no view column, so view PA would keep no image"):
        csv_source.read_source(data, mapping=str(mapping), view="PA")
