"""Labels, the real NIH metadata, and patient-wise splits."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chexnet.data.cache import INDEX_COLUMNS
from chexnet.data.sources.nih import assign_splits, find_images, read_metadata
from chexnet.data.splits import MetadataError, check_patient_disjoint
from chexnet.labels import PATHOLOGIES, LabelError, format_findings, parse_findings

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih"
REAL_CSV = SHARED / "Data_Entry_2017_v2020.csv.gz"
needs_real = pytest.mark.skipif(not REAL_CSV.is_file(), reason=f"{REAL_CSV} not present")

EXPECTED_COUNTS = {"Infiltration": 19894, "Effusion": 13317, "Atelectasis": 11559, "Nodule": 6331, "Mass": 5782,
                   "Pneumothorax": 5302, "Consolidation": 4667, "Pleural_Thickening": 3385, "Cardiomegaly": 2776,
                   "Emphysema": 2516, "Edema": 2303, "Fibrosis": 1686, "Pneumonia": 1431, "Hernia": 227}


def test_pathology_order_is_nih():
    assert PATHOLOGIES == ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                           "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
                           "Hernia")


def test_parse_findings_exact_tokens():
    v = parse_findings("Cardiomegaly|Emphysema")
    assert v.tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    assert parse_findings("No Finding").sum() == 0
    assert format_findings(v) == "Cardiomegaly|Emphysema"
    with pytest.raises(LabelError, match="'Mas'"):  # a substring of Mass is not Mass
        parse_findings("Mas", where="row 7")
    with pytest.raises(LabelError, match="row 7"):
        parse_findings("Thickening", where="row 7")


@pytest.fixture(scope="module")
def real():
    return read_metadata(REAL_CSV)


@needs_real
def test_real_metadata_counts(real):
    assert len(real) == 112_120
    assert real["patient_id"].nunique() == 30_805
    counts = {p: int(real[p].sum()) for p in PATHOLOGIES}
    assert counts == EXPECTED_COUNTS
    assert int((real[list(PATHOLOGIES)].sum(axis=1) == 0).sum()) == 60_361  # No Finding
    assert set(real["view"]) == {"PA", "AP"}
    assert real["age"].between(0, 120).mean() > 0.99


@needs_real
def test_random_split_patient_disjoint(real):
    split, mode = assign_splits(real, data_dir=None, seed=0)
    assert mode == "random" and len(split) == len(real)
    check_patient_disjoint(real["patient_id"], split)
    pats = real.groupby(split)["patient_id"].nunique()
    assert abs(pats["train"] / pats.sum() - 0.7) < 0.01 and abs(pats["test"] / pats.sum() - 0.2) < 0.01
    again, _ = assign_splits(real, data_dir=None, seed=0)
    assert (again == split).all()
    other, _ = assign_splits(real, data_dir=None, seed=1)
    assert (other != split).any()


@needs_real
def test_official_lists_give_list_sizes(real, tmp_path):
    # NIH's official lists (86,524 / 25,596) are not shipped here; build a patient-disjoint pair of about that size
    # from the real metadata (NIH's test patients mostly have the highest ids) and check the lists are obeyed.
    order = real.sort_values(["patient_id", "image"])
    counts = order.groupby("patient_id").size().cumsum()
    test_start = counts[counts <= len(real) - 25_596].index.max()
    test = order[order["patient_id"] > test_start]["image"]
    train_val = order[order["patient_id"] <= test_start]["image"]
    assert abs(len(test) - 25_596) < 50
    (tmp_path / "test_list.txt").write_text("\n".join(test) + "\n")
    (tmp_path / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    split, mode = assign_splits(real, data_dir=tmp_path, seed=0, val_fraction=0.1)
    assert mode == "official"
    assert (split == "test").sum() == len(test)
    assert ((split == "train") | (split == "val")).sum() == len(train_val)
    check_patient_disjoint(real.loc[split.index, "patient_id"], split)
    tv_patients = real.loc[split.index[split != "test"], "patient_id"].nunique()
    val_patients = real.loc[split.index[split == "val"], "patient_id"].nunique()
    assert abs(val_patients / tv_patients - 0.1) < 0.005


def test_patient_leak_is_an_error():
    pid = pd.Series([1, 1, 2])
    with pytest.raises(MetadataError, match="patient 1"):
        check_patient_disjoint(pid, pd.Series(["train", "test", "test"]))


def _write(tmp_path, header, rows):
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


V2017 = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
         "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")


def test_2017_header_with_trailing_column_and_age_suffix(tmp_path):
    path = _write(tmp_path, V2017, ["00000001_000.png,Cardiomegaly,0,1,058Y,M,PA,2682,2749,0.143,0.143,",
                                    "00000002_000.png,No Finding,0,2,81,F,AP,2500,2048,0.171,0.171,"])
    df = read_metadata(path)
    assert df["age"].tolist() == [58, 81]
    assert df["Cardiomegaly"].tolist() == [1, 0]
    assert list(df.columns[:6]) == ["image", "patient_id", "view", "age", "sex", "follow_up"]


def test_unknown_token_names_row_and_token(tmp_path):
    path = _write(tmp_path, V2017, ["a.png,No Finding,0,1,50,M,PA,1,1,1,1,", "b.png,Effusion|Pneumonitis,0,2,50,M,PA,1,1,1,1,"])
    with pytest.raises(MetadataError, match=r"row 3.*'Pneumonitis'"):
        read_metadata(path)


def test_missing_columns_are_named(tmp_path):
    path = _write(tmp_path, "Image Index,Labels", ["a.png,x"])
    with pytest.raises(MetadataError, match="Finding Labels.*Patient ID"):
        read_metadata(path)


def test_find_images_nih_and_flat_layout(tmp_path):
    for sub in ("images_001/images", "images_002/images", "images"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "images_001/images/a.png").write_bytes(b"x")
    (tmp_path / "images_002/images/b.png").write_bytes(b"x")
    (tmp_path / "images/c.png").write_bytes(b"x")
    assert sorted(find_images(tmp_path)) == ["a.png", "b.png", "c.png"]


@needs_real
def test_gz_and_plain_csv_agree(tmp_path):
    plain = tmp_path / "Data_Entry_2017_v2020.csv"
    with gzip.open(REAL_CSV, "rb") as src, plain.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    a = read_metadata(plain)
    assert len(a) == 112_120 and np.array_equal(a[list(PATHOLOGIES)].to_numpy().sum(0),
                                                np.array([EXPECTED_COUNTS[p] for p in PATHOLOGIES]))


def test_nih_source_keeps_the_registry_contract(tiny_nih):
    from chexnet.data import sources
    from chexnet.data.sources.nih import read_source

    assert sources.SOURCES["nih"] is read_source and sources.DEFAULT_SOURCE == "nih"
    table = sources.read_source("nih", tiny_nih, view="PA", seed=0, val_fraction=0.1)
    assert list(table.columns) == [*INDEX_COLUMNS, "path"] and set(table["view"]) == {"PA"}
    assert all(table["path"].map(lambda p: Path(p).is_file()))
    summary = table.attrs["source"]
    assert summary["split_mode"] == "official" and summary["metadata_rows"] == 24
    assert summary["excluded_by_view"] == 24 - len(table)
    with pytest.raises(ValueError, match="unknown dataset 'nope'; known: .*nih"):
        sources.get_source("nope")


def test_a_source_table_that_breaks_the_contract_is_refused(tiny_nih, monkeypatch):
    """Labels are the columns between view and age; their values 1, 0 or NaN (missing), nothing else."""
    from chexnet.data import sources
    from chexnet.data.sources.nih import read_source

    def with_labels(change):
        def read(data_dir, **options):
            table = read_source(data_dir, **options)
            change(table)
            return table
        return read

    def bad_value(t):
        t["Hernia"] = t["Hernia"].astype(float)
        t.loc[0, "Hernia"] = 0.5

    def missing_ok(t):
        t["Hernia"] = t["Hernia"].astype(float)
        t.loc[0, "Hernia"] = np.nan

    def no_labels(t):
        for label in PATHOLOGIES:
            del t[label]

    for name, change, error in [("half", bad_value, "label 'Hernia' has values other than 1, 0 and NaN"),
                                ("nolabels", no_labels, "columns")]:
        monkeypatch.setitem(sources.SOURCES, name, with_labels(change))
        with pytest.raises(TypeError, match=error):
            sources.read_source(name, tiny_nih)
    monkeypatch.setitem(sources.SOURCES, "missing", with_labels(missing_ok))
    assert np.isnan(sources.read_source("missing", tiny_nih)["Hernia"].iat[0])
