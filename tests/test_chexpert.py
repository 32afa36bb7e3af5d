"""CheXpert's label files (chexnet.data.sources.chexpert) and the label vocabulary / source tables (chexnet.labels)."""

from __future__ import annotations

import gzip
import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chexnet.data.sources.chexpert import (CHEXPERT_LABELS, LABELS, parse_chexpert_frame, parse_uncertain_policy,
                                           policy_summary, read_chexpert_csv)
from chexnet.data.splits import MetadataError
from chexnet.labels import (DROP, KEEP_OWN, NO_FINDING, PATHOLOGIES, SOURCE_NAMES, VOCABULARY, LabelError,
                            map_source_labels)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_CSV = SHARED / "chexpert" / "train.csv.gz"
VINDR_CSV = SHARED / "vindr" / "train.csv.gz"
needs_real = pytest.mark.skipif(not REAL_CSV.is_file(), reason=f"{REAL_CSV} not present")
nan = np.nan

# The names as the data sets publish them (CheXpert's 14 observations; VinDr-CXR's 14 classes and No finding).
CHEXPERT_NAMES = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                  "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                  "Fracture", "Support Devices"]
VINDR_NAMES = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
               "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening",
               "Pneumothorax", "Pulmonary fibrosis", "No finding"]
HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_NAMES)

# A tiny train.csv: both path prefixes, a valid/ path, laterals (one with AP/PA "LL"), a frontal without AP/PA,
# 1.0 / 0.0 / -1.0 / blank and the plain 1 / 0 / -1 spellings, Unknown and blank sex, age 0 and blank.
#            NF    EC    Ca    LO    LL    Ed    Co    Pn    At    Px    PE    PO    Fr    SD
ROWS = [
    ("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP",
     ["1.0", "", "", "", "", "", "", "", "", "0.0", "", "", "", "1.0"]),
    ("CheXpert-v1.0/train/patient00002/study2/view1_frontal.jpg,Male,0,Frontal,PA",
     ["", "0.0", "-1.0", "1.0", "", "-1.0", "-1.0", "-1.0", "-1.0", "", "-1.0", "", "1.0", ""]),
    ("CheXpert-v1.0/train/patient00002/study2/view2_lateral.jpg,Unknown,,Lateral,",
     ["", "", "1", "", "-1", "1.0", "0", "", "-1", "", "0.0", "1.0", "", "-1.0"]),
    ("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,,90,Frontal,",
     ["", "", "0.0", "-1.0", "", "0.0", "", "1.0", "", "1.0", "1.0", "", "0.0", ""]),
    ("CheXpert-v1.0-small/train/patient00003/study10/view2_lateral.jpg,Male,45,Lateral,LL",
     ["", "", "", "", "", "", "", "0.0", "", "", "", "-1.0", "", ""]),
]
TINY_CSV = HEADER + "\n" + "\n".join(meta + "," + ",".join(vals) for meta, vals in ROWS) + "\n"

EXPECTED_META = pd.DataFrame({
    "image": ["train/patient00001/study1/view1_frontal.jpg", "train/patient00002/study2/view1_frontal.jpg",
              "train/patient00002/study2/view2_lateral.jpg", "valid/patient64541/study1/view1_frontal.jpg",
              "train/patient00003/study10/view2_lateral.jpg"],
    "patient_id": ["patient00001", "patient00002", "patient00002", "patient64541", "patient00003"],
    "study": ["study1", "study2", "study2", "study1", "study10"],
    "view": ["AP", "PA", "LATERAL", "", "LL"],
    "frontal": [True, True, False, True, False],
    "age": [68.0, nan, nan, 90.0, 45.0],
    "sex": ["F", "M", "", "", "M"],
})
# The same labels by vocabulary name; U = uncertain, B = blank (resolved per policy below).
SYMBOLS = {
    "No Finding":                 ["1", "B", "B", "B", "B"],
    "Enlarged Cardiomediastinum": ["B", "0", "B", "B", "B"],
    "Cardiomegaly":               ["B", "U", "1", "0", "B"],
    "Lung Opacity":               ["B", "1", "B", "U", "B"],
    "Lung Lesion":                ["B", "B", "U", "B", "B"],
    "Edema":                      ["B", "U", "1", "0", "B"],
    "Consolidation":              ["B", "U", "0", "B", "B"],
    "Pneumonia":                  ["B", "U", "B", "1", "0"],
    "Atelectasis":                ["B", "U", "U", "B", "B"],
    "Pneumothorax":               ["0", "B", "B", "1", "B"],
    "Effusion":                   ["B", "U", "0", "1", "B"],
    "Pleural Other":              ["B", "B", "1", "B", "U"],
    "Fracture":                   ["B", "1", "B", "0", "B"],
    "Support Devices":            ["1", "B", "U", "B", "B"],
}
MIXED_BY_HAND = {"Atelectasis": 1.0, "Edema": 1.0, "Cardiomegaly": 0.0, "Consolidation": 0.0, "Effusion": 0.0}
CHEXPERT_COLUMNS = ["Atelectasis", "Cardiomegaly", "Effusion", "Pneumonia", "Pneumothorax", "Consolidation", "Edema",
                    "Lung Opacity", "Lung Lesion", "Enlarged Cardiomediastinum", "Fracture", "Support Devices",
                    "Pleural Other", "No Finding"]  # vocabulary order


def expected_frame(uncertain_value, blank_value) -> pd.DataFrame:
    """EXPECTED_META plus the labels, U -> uncertain_value(label), B -> blank_value."""
    df = EXPECTED_META.copy()
    for label in CHEXPERT_COLUMNS:
        df[label] = np.array([{"1": 1.0, "0": 0.0, "U": uncertain_value(label), "B": blank_value}[s]
                              for s in SYMBOLS[label]], dtype=np.float32)
    return df


def assert_frames_equal(got: pd.DataFrame, want: pd.DataFrame):
    assert list(got.columns) == list(want.columns)
    for c in want.columns:
        if want[c].dtype == np.float32 or c == "age":
            assert got[c].dtype == want[c].dtype, c
            np.testing.assert_array_equal(got[c].to_numpy(), want[c].to_numpy(), err_msg=c)  # NaN == NaN here
        else:
            assert got[c].tolist() == want[c].tolist(), c


@pytest.fixture
def tiny_csv(tmp_path) -> Path:
    path = tmp_path / "train.csv"
    path.write_text(TINY_CSV)
    return path


POLICY_VALUES = {"ignore": lambda label: nan, "zeros": lambda label: 0.0, "ones": lambda label: 1.0,
                 "mixed": lambda label: MIXED_BY_HAND.get(label, nan)}


@pytest.mark.parametrize("blank", ["negative", "missing"])
@pytest.mark.parametrize("uncertain", ["ignore", "zeros", "ones", "mixed"])
def test_tiny_csv_each_policy(tiny_csv, uncertain, blank):
    got = read_chexpert_csv(tiny_csv, uncertain=uncertain, blank=blank)
    assert_frames_equal(got, expected_frame(POLICY_VALUES[uncertain], 0.0 if blank == "negative" else nan))
    src = got.attrs["source"]
    assert src["metadata"] == str(tiny_csv) and src["metadata_rows"] == 5 and src["patients"] == 4
    assert src["uncertain"] == uncertain and src["blank"] == blank
    json.dumps(src)


def test_tiny_csv_defaults_and_one_literal_frame(tiny_csv):
    default = read_chexpert_csv(tiny_csv)
    assert_frames_equal(default, expected_frame(POLICY_VALUES["ignore"], 0.0))  # ignore, negative
    got = read_chexpert_csv(tiny_csv, uncertain="mixed", blank="missing")
    literal = {  # written out: mixed (Atelectasis, Edema -> 1; Cardiomegaly, Consolidation, Effusion -> 0), blank NaN
        "Atelectasis": [nan, 1, 1, nan, nan], "Cardiomegaly": [nan, 0, 1, 0, nan], "Effusion": [nan, 0, 0, 1, nan],
        "Pneumonia": [nan, nan, nan, 1, 0], "Pneumothorax": [0, nan, nan, 1, nan],
        "Consolidation": [nan, 0, 0, nan, nan], "Edema": [nan, 1, 1, 0, nan], "Lung Opacity": [nan, 1, nan, nan, nan],
        "Lung Lesion": [nan, nan, nan, nan, nan], "Enlarged Cardiomediastinum": [nan, 0, nan, nan, nan],
        "Fracture": [nan, 1, nan, 0, nan], "Support Devices": [1, nan, nan, nan, nan],
        "Pleural Other": [nan, nan, 1, nan, nan], "No Finding": [1, nan, nan, nan, nan],
    }
    want = EXPECTED_META.copy()
    for label, values in literal.items():
        want[label] = np.array(values, dtype=np.float32)
    assert_frames_equal(got, want)


def test_gzip_and_frame_entry_point(tiny_csv, tmp_path):
    gz = tmp_path / "train.csv.gz"
    gz.write_bytes(gzip.compress(tiny_csv.read_bytes()))
    assert_frames_equal(read_chexpert_csv(gz, uncertain="ones"), expected_frame(POLICY_VALUES["ones"], 0.0))
    raw = pd.read_csv(tiny_csv, dtype=str, keep_default_na=False)
    before = raw.copy()
    got = parse_chexpert_frame(raw, "tiny", uncertain="zeros", blank="missing")
    assert_frames_equal(got, expected_frame(POLICY_VALUES["zeros"], nan))
    pd.testing.assert_frame_equal(raw, before)  # not modified


def test_extra_columns_ignored_and_reordered_columns(tmp_path):
    raw = pd.read_csv(io.StringIO(TINY_CSV), dtype=str, keep_default_na=False)
    raw = raw[list(reversed(raw.columns))].assign(Extra="x")
    path = tmp_path / "train.csv"
    raw.to_csv(path, index=False)
    got = read_chexpert_csv(path)
    assert_frames_equal(got, expected_frame(POLICY_VALUES["ignore"], 0.0))
    assert got.attrs["source"]["unused_columns"] == ["Extra"]


# ------------------------------------------------------------------------------------------------- policy text

def test_parse_uncertain_policy_overrides():
    assert parse_uncertain_policy("ignore") == {label: "ignore" for label in LABELS}
    assert list(parse_uncertain_policy("ones")) == list(LABELS) == CHEXPERT_COLUMNS
    p = parse_uncertain_policy("ignore,Edema=ones")
    assert p["Edema"] == "ones" and all(v == "ignore" for k, v in p.items() if k != "Edema")
    p = parse_uncertain_policy("Edema=ones")  # no default: ignore
    assert p == parse_uncertain_policy("ignore,Edema=ones")
    p = parse_uncertain_policy(" zeros , pleural effusion = ones,Atelectasis=mixed, Lung Opacity=ignore ")
    assert p["Effusion"] == "ones" and p["Atelectasis"] == "ones" and p["Lung Opacity"] == "ignore"
    assert all(v == "zeros" for k, v in p.items() if k not in ("Effusion", "Atelectasis", "Lung Opacity"))
    mixed = parse_uncertain_policy("mixed")
    assert {k: v for k, v in mixed.items() if v != "ignore"} == {
        "Atelectasis": "ones", "Edema": "ones", "Cardiomegaly": "zeros", "Consolidation": "zeros", "Effusion": "zeros"}
    assert parse_uncertain_policy("mixed,Pneumonia=zeros,Edema=ignore") == {
        **mixed, "Pneumonia": "zeros", "Edema": "ignore"}


def test_overrides_reach_the_frame(tiny_csv):
    got = read_chexpert_csv(tiny_csv, uncertain="zeros,Edema=ones,Pleural Effusion=ignore", blank="missing")
    per_label = {"Edema": lambda label: 1.0, "Effusion": lambda label: nan}
    want = expected_frame(lambda label: per_label.get(label, POLICY_VALUES["zeros"])(label), nan)
    assert_frames_equal(got, want)
    by_mapping = read_chexpert_csv(tiny_csv, uncertain={"Edema": "ones", "Atelectasis": "zeros"})
    mapped = {"Edema": 1.0, "Atelectasis": 0.0}
    assert_frames_equal(by_mapping, expected_frame(lambda label: mapped.get(label, nan), 0.0))


@pytest.mark.parametrize("text, message", [
    ("sometimes", r"part 'sometimes': unknown policy 'sometimes'; known: ignore, zeros, ones, mixed"),
    ("ignore,Edema=one", r"part 'Edema=one': unknown policy 'one'"),
    ("ignore,Edma=ones", r"part 'Edma=ones': unknown label 'Edma'; known: Atelectasis, "),
    ("ignore,Pleural=ones", r"unknown label 'Pleural'"),  # no prefix / substring matching
    ("ignore,Mass=ones", r"unknown label 'Mass'"),  # a vocabulary label CheXpert does not provide
    ("ignore,zeros", r"part 'zeros': a second default policy \(the first was 'ignore'\)"),
    ("Edema=ones,edema=zeros", r"part 'edema=zeros': label 'Edema' is given more than once"),
    ("ignore,,Edema=ones", r"empty part"),
    ("", r"empty part"),
])
def test_bad_policy_text(text, message):
    with pytest.raises(ValueError, match=message):
        parse_uncertain_policy(text)


def test_bad_policies_in_reader_fail_before_reading(tmp_path):
    missing_file = tmp_path / "absent.csv"
    with pytest.raises(ValueError, match="unknown policy 'U-Ones'"):
        read_chexpert_csv(missing_file, uncertain="U-Ones")
    with pytest.raises(ValueError, match="unknown blank policy 'zero'; known: negative, missing"):
        read_chexpert_csv(missing_file, blank="zero")
    with pytest.raises(MetadataError, match="absent.csv: cannot read"):
        read_chexpert_csv(missing_file)


def test_policy_summary():
    s = policy_summary("mixed,Pneumonia=ones", "missing")
    json.dumps(s)
    assert s["uncertain"] == "mixed,Pneumonia=ones" and s["blank"] == "missing"
    assert s["uncertain_per_label"]["Pneumonia"] == "ones" and s["uncertain_per_label"]["Edema"] == "ones"
    assert s["uncertain_per_label"]["Lung Opacity"] == "ignore"
    assert s["values"]["blank"] is None and policy_summary()["values"]["blank"] == 0.0
    assert s["labels"]["Pleural Effusion"] == ["Effusion"] and len(s["labels"]) == 14


# ------------------------------------------------------------------------------------------- malformed input

def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "train.csv"
    path.write_text(text)
    return path


def _replace_cell(line_no: int, column: str, value: str) -> str:
    lines = TINY_CSV.splitlines()
    header = lines[0].split(",")
    fields = lines[line_no - 1].split(",")
    fields[header.index(column)] = value
    lines[line_no - 1] = ",".join(fields)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("line_no, column, value", [
    (4, "Edema", "2.0"), (2, "No Finding", "yes"), (6, "Support Devices", "nan"), (3, "Pleural Effusion", "0.5"),
    (5, "Fracture", "-"),
])
def test_bad_label_value_names_file_line_column(tmp_path, line_no, column, value):
    path = _write(tmp_path, _replace_cell(line_no, column, value))
    with pytest.raises(MetadataError) as info:
        read_chexpert_csv(path)
    msg = str(info.value)
    assert msg.startswith(f"{path} line {line_no}, column {column!r}: not 1.0, 0.0, -1.0 or blank"), msg
    assert repr(value) in msg


@pytest.mark.parametrize("line_no, column, value, why", [
    (3, "Sex", "Other", "not Male, Female, Unknown or blank"),
    (4, "Frontal/Lateral", "Oblique", "not Frontal or Lateral"),
    (5, "Age", "old", "not a number of years"),
    (2, "Age", "-3", "not a number of years"),
    (6, "Path", "CheXpert-v1.0-small/train/view1_frontal.jpg", "not .../patientNNNNN/studyN/IMAGE"),
    (4, "Path", "CheXpert-v1.0/train/patient00002/study2/view1_frontal.jpg", "listed more than once"),
])
def test_bad_meta_value_names_file_line_column(tmp_path, line_no, column, value, why):
    path = _write(tmp_path, _replace_cell(line_no, column, value))
    with pytest.raises(MetadataError, match=why) as info:
        read_chexpert_csv(path)
    assert str(info.value).startswith(f"{path} line {line_no}, column {column!r}: "), str(info.value)


@pytest.mark.parametrize("column", ["Fracture", "Path", "AP/PA", "Pleural Effusion"])
def test_missing_column_names_file_and_column(tmp_path, column):
    raw = pd.read_csv(io.StringIO(TINY_CSV), dtype=str, keep_default_na=False).drop(columns=[column])
    path = tmp_path / "train.csv"
    raw.to_csv(path, index=False)
    with pytest.raises(MetadataError) as info:
        read_chexpert_csv(path)
    msg = str(info.value)
    assert msg.startswith(f"{path} line 1 (header): missing column(s) {column!r}"), msg


def test_short_or_blank_line_is_an_error_not_blanks(tmp_path):
    lines = TINY_CSV.splitlines()
    short = lines[:3] + [lines[3].rsplit(",", 2)[0]] + lines[4:]  # line 4 cut short: not 2 blank labels
    with pytest.raises(MetadataError, match=r"line 4: 17 field\(s\), the header has 19"):
        read_chexpert_csv(_write(tmp_path, "\n".join(short) + "\n"))
    blank = lines[:2] + [""] + lines[2:]
    with pytest.raises(MetadataError, match=r"line 3: 1 field\(s\), the header has 19"):
        read_chexpert_csv(_write(tmp_path, "\n".join(blank) + "\n"))
    quoted = [lines[0], '"' + lines[1].replace(",", '","') + '"', lines[2].rsplit(",", 1)[0]]  # the csv-module path
    with pytest.raises(MetadataError, match=r"line 3: 18 field\(s\), the header has 19"):
        read_chexpert_csv(_write(tmp_path, "\n".join(quoted) + "\n"))
    ok = read_chexpert_csv(_write(tmp_path, "\r\n".join([lines[0], '"' + lines[1].replace(",", '","') + '"']) + "\r\n"))
    assert ok["image"].tolist() == [EXPECTED_META["image"][0]] and ok["No Finding"].tolist() == [1.0]


# ---------------------------------------------------------------------------------------------- the real file

@pytest.fixture(scope="module")
def real_raw() -> pd.DataFrame:
    if not REAL_CSV.is_file():
        pytest.skip(f"{REAL_CSV} not present")
    return pd.read_csv(REAL_CSV, dtype=str, keep_default_na=False, skip_blank_lines=False)


@pytest.fixture(scope="module")
def real_counts(real_raw) -> dict[str, dict[str, int]]:
    """Per CheXpert column, the raw counts of '1.0', '0.0', '-1.0' and '' (plain value_counts)."""
    out = {}
    for name in CHEXPERT_NAMES:
        vc = real_raw[name].value_counts()
        assert set(vc.index) <= {"1.0", "0.0", "-1.0", ""}, (name, set(vc.index))
        out[name] = {k: int(vc.get(k, 0)) for k in ("1.0", "0.0", "-1.0", "")}
    return out


def expected_counts(raw_counts: dict[str, int], policy: str, blank: str) -> dict[str, int]:
    n1, n0, nu, nb = (raw_counts[k] for k in ("1.0", "0.0", "-1.0", ""))
    return {"1": n1 + (nu if policy == "ones" else 0),
            "0": n0 + (nu if policy == "zeros" else 0) + (nb if blank == "negative" else 0),
            "nan": (nu if policy == "ignore" else 0) + (nb if blank == "missing" else 0)}


def label_counts(col: pd.Series) -> dict[str, int]:
    v = col.to_numpy()
    return {"1": int((v == 1).sum()), "0": int((v == 0).sum()), "nan": int(np.isnan(v).sum())}


MIXED_BY_NAME = {"Atelectasis": "ones", "Edema": "ones", "Cardiomegaly": "zeros", "Consolidation": "zeros",
                 "Pleural Effusion": "zeros"}  # the CheXpert names; every other: ignore
VOCAB_OF = {name: ("Effusion" if name == "Pleural Effusion" else name) for name in CHEXPERT_NAMES}


@needs_real
def test_real_file_parses_whole(real_raw, real_counts):
    t0 = time.perf_counter()
    df = read_chexpert_csv(REAL_CSV)
    elapsed = time.perf_counter() - t0
    assert len(df) == 223_414 == len(real_raw)
    assert df["patient_id"].nunique() == 64_540
    assert df["image"].is_unique and not df["image"].str.startswith("CheXpert").any()
    assert df["image"].str.startswith("train/patient").all()
    assert df["patient_id"].str.fullmatch(r"patient\d{5}").all() and df["study"].str.fullmatch(r"study\d+").all()
    assert list(df.columns[:7]) == ["image", "patient_id", "study", "view", "frontal", "age", "sex"]
    assert list(df.columns[7:]) == CHEXPERT_COLUMNS
    assert int(df["frontal"].sum()) == int((real_raw["Frontal/Lateral"] == "Frontal").sum())
    assert df["view"].value_counts().to_dict() == {"AP": 161_590, "LATERAL": 32_387, "PA": 29_420, "LL": 16, "RL": 1}
    assert df["sex"].value_counts().to_dict() == {"M": 132_636, "F": 90_777, "": 1}
    assert int(df["age"].isna().sum()) == int(real_raw["Age"].isin(["", "0"]).sum())
    assert df["age"].min() >= 18 and df["age"].max() <= 90
    for name in CHEXPERT_NAMES:  # the defaults: ignore, negative
        assert label_counts(df[VOCAB_OF[name]]) == expected_counts(real_counts[name], "ignore", "negative"), name
    assert df.attrs["source"]["patients"] == 64_540
    print(f"read_chexpert_csv(real train.csv.gz): {elapsed:.2f} s")


@needs_real
@pytest.mark.parametrize("blank", ["negative", "missing"])
@pytest.mark.parametrize("uncertain", ["ignore", "zeros", "ones", "mixed"])
def test_real_file_counts_per_policy(real_raw, real_counts, uncertain, blank):
    df = parse_chexpert_frame(real_raw, str(REAL_CSV), uncertain=uncertain, blank=blank)
    assert len(df) == 223_414
    for name in CHEXPERT_NAMES:
        policy = MIXED_BY_NAME.get(name, "ignore") if uncertain == "mixed" else uncertain
        got = label_counts(df[VOCAB_OF[name]])
        assert got == expected_counts(real_counts[name], policy, blank), (name, uncertain, blank)
        assert sum(got.values()) == len(df)


@needs_real
def test_real_header_is_the_table(real_raw):
    assert list(real_raw.columns[5:]) == CHEXPERT_NAMES == list(CHEXPERT_LABELS)


# ------------------------------------------------------------------------------ vocabulary and source tables

def test_vocabulary():
    assert VOCABULARY[:14] == PATHOLOGIES
    assert VOCABULARY[:14][12] == "Pleural_Thickening"
    assert len(set(VOCABULARY)) == len(VOCABULARY)
    for name in ("Lung Opacity", "Lung Lesion", "Enlarged Cardiomediastinum", "Fracture", "Support Devices",
                 "Pleural Other", "No Finding"):
        assert name in VOCABULARY[14:]
    assert VOCABULARY[-1] == NO_FINDING


@pytest.mark.parametrize("source, names", [("chexpert", CHEXPERT_NAMES), ("vindr", VINDR_NAMES)])
def test_every_source_name_is_accounted_for(source, names):
    assert list(SOURCE_NAMES[source]) == names  # the table covers exactly the published names
    mapping, kept_own, dropped = map_source_labels(source, names)
    assert sorted([*mapping, *kept_own, *dropped]) == sorted(names)
    assert len(mapping) + len(kept_own) + len(dropped) == len(names)  # each in exactly one
    for targets in mapping.values():
        assert isinstance(targets, tuple) and targets and all(t in VOCABULARY for t in targets)
    for name in [*kept_own, *dropped]:
        assert SOURCE_NAMES[source][name] in (KEEP_OWN, DROP)
        assert name not in VOCABULARY


def test_chexpert_and_vindr_tables():
    m = map_source_labels("chexpert", CHEXPERT_NAMES)
    assert m.kept_own == [] and m.dropped == []
    assert m.mapping["Pleural Effusion"] == ("Effusion",)
    assert all(m.mapping[n] == (n,) for n in CHEXPERT_NAMES if n != "Pleural Effusion")
    assert m.labels() == CHEXPERT_COLUMNS
    v = map_source_labels("vindr", VINDR_NAMES)
    assert v.mapping == {
        "Atelectasis": ("Atelectasis",), "Cardiomegaly": ("Cardiomegaly",), "Consolidation": ("Consolidation",),
        "Infiltration": ("Infiltration",), "Lung Opacity": ("Lung Opacity",), "Nodule/Mass": ("Nodule", "Mass"),
        "Pleural effusion": ("Effusion",), "Pleural thickening": ("Pleural_Thickening",),
        "Pneumothorax": ("Pneumothorax",), "Pulmonary fibrosis": ("Fibrosis",), "No finding": ("No Finding",)}
    assert v.kept_own == ["Aortic enlargement", "Calcification", "ILD"]
    assert v.dropped == ["Other lesion"]
    summary = v.summary()
    json.dumps(summary)
    assert summary["mapped"]["Nodule/Mass"] == ["Nodule", "Mass"]
    lines = v.describe()
    assert "Nodule/Mass -> Nodule + Mass" in lines and "Pleural effusion -> Effusion" in lines
    assert any(line.startswith("Other lesion -> (dropped") for line in lines)
    assert any(line.startswith("ILD -> (kept as 'ILD'") for line in lines)


def test_map_source_labels_is_exact_and_strict():
    m = map_source_labels("vindr", ["No finding", "Nodule/Mass", "No finding", "ILD"])  # repeats counted once
    assert list(m.mapping) == ["No finding", "Nodule/Mass"] and m.kept_own == ["ILD"] and m.dropped == []
    for bad in ("Nodule", "pleural effusion", "Pleural Effusion", "Lesion"):  # no substring / case matching
        with pytest.raises(LabelError, match=f"source 'vindr': unknown label name {bad!r}; known: Aortic"):
            map_source_labels("vindr", [bad])
    with pytest.raises(LabelError, match="unknown label name 'Effusion'"):
        map_source_labels("chexpert", ["Effusion"])
    with pytest.raises(ValueError, match="no label table for source 'openi'; known: chexpert, .*vindr"):
        map_source_labels("openi", ["Atelectasis"])


@pytest.mark.skipif(not VINDR_CSV.is_file(), reason=f"{VINDR_CSV} not present")
def test_real_vindr_class_names_are_in_the_table():
    names = pd.read_csv(VINDR_CSV, usecols=["class_name"])["class_name"].unique().tolist()
    mapping, kept_own, dropped = map_source_labels("vindr", names)
    assert sorted(names) == sorted(VINDR_NAMES)
    assert len(mapping) == 11 and len(kept_own) == 3 and len(dropped) == 1
