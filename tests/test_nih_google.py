"""``chexnet prepare --dataset nih-google``: a tiny NIH folder and two expert-label CSVs in Google's format.

The validation file covers patients 1-2, the test file patient 3 and an image that is not in the folder; values
mix YES, NO, lower-case yes and blanks (missing). The cache must hold just those images, with the four expert
labels, the files' splits, blanks as missing, and the absent image recorded as failed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chexnet.data import sources
from chexnet.data.cache import load_cache
from chexnet.data.prepare import prepare
from chexnet.data.sources import nih_google
from chexnet.data.splits import MetadataError
from tests.conftest import make_nih_folder

HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],Fracture,Pneumothorax,Airspace opacity,"
          "Nodule or mass")
VAL_NAME, TEST_NAME = nih_google.FILE_NAMES
LABELS = ["Pneumothorax", "Fracture", "Airspace opacity", "Nodule or mass"]
# image -> (patient, age text, sex, view, Fracture, Pneumothorax, Airspace opacity, Nodule or mass)
VAL_ROWS = {
    "00000001_000.png": ("1", "31", "M", "PA", "NO", "YES", "NO", "NO"),
    "00000001_001.png": ("1", "031Y", "M", "AP", "NO", "no", "yes", ""),
    "00000002_000.png": ("2", "32", "F", "PA", "YES", "NO", "NO", "YES"),
}
TEST_ROWS = {
    "00000003_000.png": ("3", "33", "M", "AP", "NO", "NO", " YES ", "NO"),
    "00000003_001.png": ("3", "33", "M", "PA", "", "NO", "NO", "NO"),
    "00000099_000.png": ("99", "50", "F", "PA", "NO", "YES", "NO", "NO"),  # not in the NIH folder
}
WANT = {  # image -> the cache's labels in LABELS order (NaN: missing)
    "00000001_000.png": [1, 0, 0, 0],
    "00000001_001.png": [0, 0, 1, np.nan],
    "00000002_000.png": [0, 1, 0, 1],
    "00000003_000.png": [0, 0, 1, 0],
    "00000003_001.png": [0, np.nan, 0, 0],
}


def write_expert_csv(path: Path, rows: dict) -> Path:
    lines = [HEADER]
    for image, (patient, age, sex, view, *findings) in rows.items():
        lines.append(f"{image},No Finding,0,{patient},{age},{sex},{view},64,64,0.143,0.143,{','.join(findings)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """An NIH folder (4 patients x 2 images of 32 px) with both expert files in it."""
    root = make_nih_folder(tmp_path_factory.mktemp("nih_google") / "nih", patients=4, per_patient=2, size=32)
    write_expert_csv(root / VAL_NAME, VAL_ROWS)
    write_expert_csv(root / TEST_NAME, TEST_ROWS)
    return root


def both() -> str:
    return f"{VAL_NAME},{TEST_NAME}"


def test_prepare_caches_the_expert_images_with_their_labels_and_splits(folder, tmp_path):
    meta = prepare(folder, tmp_path / "c", size=32, workers=1, progress=False, dataset="nih-google",
                   options={"expert_labels": both()})
    _, index, loaded = load_cache(tmp_path / "c")
    assert loaded["labels"] == LABELS == list(nih_google.LABELS)
    assert list(index["image"]) == list(WANT)  # the files' images in their order; patient 4's are not cached
    np.testing.assert_array_equal(index[LABELS].to_numpy(np.float64), np.array(list(WANT.values()), dtype=float))
    assert index["split"].tolist() == ["val", "val", "val", "test", "test"]
    assert [str(p) for p in index["patient_id"]] == ["1", "1", "2", "3", "3"]
    assert index["view"].tolist() == ["PA", "AP", "PA", "AP", "PA"] and index["sex"].tolist()[:3] == ["M", "M", "F"]
    assert index["age"].tolist() == [31.0, 31.0, 32.0, 33.0, 33.0]  # 031Y read as NIH's reader reads it
    assert meta["splits"]["train"]["images"] == 0 and meta["splits"]["val"]["images"] == 3
    counts = meta["label_counts"]
    assert counts["val"]["Nodule or mass"] == {"positive": 1, "negative": 1, "missing": 1}
    assert counts["test"]["Fracture"] == {"positive": 0, "negative": 1, "missing": 1}
    assert counts["test"]["Airspace opacity"]["positive"] == 1  # " YES " stripped
    assert [f["image"] for f in meta["failed"]] == ["00000099_000.png"] and meta["failed"][0]["path"] == ""
    source = meta["source"]
    assert source["not_found"] == 1 and source["not_found_examples"] == ["00000099_000.png"]
    assert source["planned"] == 6 and source["metadata_rows"] == 6
    assert [(Path(f["file"]).name, f["split"], f["rows"]) for f in source["files"]] == [(VAL_NAME, "val", 3),
                                                                                       (TEST_NAME, "test", 3)]
    assert source["derived_scores"]["Nodule or mass"] == {"rule": "max", "of": ["Nodule", "Mass"]}
    from chexnet.derived import applicable  # what chexnet evaluate reads of it
    from chexnet.labels import PATHOLOGIES

    usable, skipped = applicable(loaded, loaded["labels"], PATHOLOGIES)
    assert [d.text for d in usable] == ["max(Nodule, Mass)", "max(Consolidation, Pneumonia, Infiltration)"]
    assert [d.name for d in usable] == ["Nodule or mass", "Airspace opacity"] and skipped == []
    assert source["labels"]["kept_own"] == ["Airspace opacity", "Nodule or mass"]
    assert ",," in (tmp_path / "c" / "index.csv").read_text()  # missing -> an empty cell


def test_the_table_keeps_the_source_contract_and_the_view_filter(folder):
    table = sources.read_source("nih-google", folder, view="PA", expert_labels=both())
    assert list(table["image"]) == ["00000001_000.png", "00000002_000.png", "00000003_001.png", "00000099_000.png"]
    assert table.attrs["source"]["excluded_by_view"] == 2
    assert table["Pneumothorax"].dtype == np.uint8 and table["Fracture"].dtype.kind == "f"  # a blank: float
    assert (table["path"] == "").tolist() == [False, False, False, True]


def test_a_split_is_named_by_the_file_name_or_after_a_colon(folder, tmp_path):
    other = write_expert_csv(tmp_path / "expert_a.csv", TEST_ROWS)
    with pytest.raises(ValueError, match=r"cannot tell the split of expert_a.csv.*expert_a.csv:val or"):
        sources.read_source("nih-google", folder, expert_labels=str(other))
    table = sources.read_source("nih-google", folder, expert_labels=f"{other}:test")
    assert set(table["split"]) == {"test"} and len(table) == 3
    table = sources.read_source("nih-google", folder, expert_labels=f"{TEST_NAME}: Validation ")
    assert set(table["split"]) == {"val"}  # the colon overrides the name; any case
    assert set(sources.read_source("nih-google", folder, expert_labels=VAL_NAME)["split"]) == {"val"}
    with pytest.raises(ValueError, match="unknown split 'bogus'"):
        sources.read_source("nih-google", folder, expert_labels=f"{other}:bogus")
    with pytest.raises(FileNotFoundError, match="relative path is taken from the data folder"):
        sources.read_source("nih-google", folder, expert_labels="nope_test.csv")


def test_malformed_files_are_refused_naming_file_line_and_column(folder, tmp_path):
    bad = write_expert_csv(tmp_path / "bad_test.csv", {**TEST_ROWS, "00000004_000.png": ("4", "34", "F", "PA", "NO",
                                                                                          "HEDGE", "NO", "NO")})
    with pytest.raises(MetadataError, match=r"bad_test.csv line 5, column 'Pneumothorax': not YES, NO or blank "
                                            r"\(value 'HEDGE'\)"):
        sources.read_source("nih-google", folder, expert_labels=str(bad))
    short = tmp_path / "short_valid.csv"
    short.write_text("Image Index,Patient ID,Fracture,Pneumothorax\n00000001_000.png,1,NO,NO\n")
    with pytest.raises(MetadataError, match=r"short_valid.csv line 1 \(header\): missing column\(s\) "
                                            r"'Airspace opacity', 'Nodule or mass'"):
        sources.read_source("nih-google", folder, expert_labels=str(short))
    again = write_expert_csv(tmp_path / "again_test.csv", {"00000001_000.png": VAL_ROWS["00000001_000.png"]})
    with pytest.raises(MetadataError, match="image 00000001_000.png is in more than one expert-label file"):
        sources.read_source("nih-google", folder, expert_labels=f"{VAL_NAME},{again}")
    leak = write_expert_csv(tmp_path / "leak_test.csv", {"00000002_001.png": VAL_ROWS["00000002_000.png"]})
    with pytest.raises(MetadataError, match="more than one split"):  # patient 2 in val and test
        sources.read_source("nih-google", folder, expert_labels=f"{VAL_NAME},{leak}")
    with pytest.raises(ValueError, match=r"nih-google needs --expert-labels FILE\[,FILE\]"):
        prepare(folder, tmp_path / "n", size=32, workers=1, progress=False, dataset="nih-google")
    assert not (tmp_path / "n" / "meta.json").exists()


def test_the_cli_prepares_with_expert_labels_and_refuses_without(folder, tmp_path, capsys):
    from chexnet import cli

    test_file = folder / TEST_NAME  # absolute; the other relative to --data
    assert cli.main(["prepare", "--dataset", "nih-google", "--data", str(folder), "--out", str(tmp_path / "c"),
                     "--size", "32", "--workers", "1", "--expert-labels", f"{VAL_NAME},{test_file}"]) == 0
    out = capsys.readouterr().out
    assert f"nih-google options: --expert_labels {VAL_NAME},{test_file}" in out
    _, index, meta = load_cache(tmp_path / "c")
    assert len(index) == 5 and meta["arguments"]["options"] == {"expert_labels": f"{VAL_NAME},{test_file}"}
    assert cli.main(["prepare", "--dataset", "nih-google", "--data", str(folder), "--out", str(tmp_path / "n")]) == 2
    assert "nih-google needs --expert-labels FILE[,FILE]" in capsys.readouterr().err
    assert cli.main(["prepare", "--data", str(folder), "--out", str(tmp_path / "m"), "--expert-labels", VAL_NAME]) == 2
    assert "dataset 'nih' takes no option expert_labels" in capsys.readouterr().err


def test_the_label_table_and_derived_scores_name_real_labels():
    from chexnet.labels import PATHOLOGIES, SOURCE_NAMES, VOCABULARY

    assert list(SOURCE_NAMES["nih-google"]) == ["Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass"]
    assert set(nih_google.DERIVED_SCORES) == {"Airspace opacity", "Nodule or mass"}
    for how, of in nih_google.DERIVED_SCORES.values():
        assert how == "max" and set(of) <= set(PATHOLOGIES) <= set(VOCABULARY)
