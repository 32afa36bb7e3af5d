"""The ``vindr`` source: readers' boxes -> image labels (``any`` / ``majority``), malformed files named by file,
line and column, the two release layouts, the real train.csv's label counts against plain pandas, and
``prepare(..., dataset="vindr")`` on real rows with generated DICOM images (MONOCHROME1 among them)."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chexnet.data import sources
from chexnet.data.cache import CacheError, load_cache
from chexnet.data.prepare import prepare
from chexnet.data.sources import vindr
from chexnet.data.sources.vindr import LABELS, MetadataError, image_labels, read_annotations
from tests.dicom_files import write_dicom

VINDR_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "vindr" / "train.csv.gz"
needs_real = pytest.mark.skipif(not VINDR_CSV.is_file(), reason=f"{VINDR_CSV} not found (the project's shared data)")

HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"
# image A: R1 Nodule/Mass + Aortic enlargement, R2 Aortic enlargement + Other lesion, R3 No finding
# image B: R1 No finding, R2 two Cardiomegaly boxes (one reader: counted once), R3 No finding
# image C: all three No finding
HAND = f"""{HEADER}
A,Nodule/Mass,8,R1,10,20,30,60
A,Aortic enlargement,0,R1,100,100,150,130
A,Aortic enlargement,0,R2,101,99,149,131
A,Other lesion,9,R2,5,5,6,9
A,No finding,14,R3,,,,
B,No finding,14,R1,,,,
B,Cardiomegaly,3,R2,200,300,400,500
B,Cardiomegaly,3,R2,210,300,400,500
B,No finding,14,R3,,,,
C,No finding,14,R4,,,,
C,No finding,14,R5,,,,
C,No finding,14,R6,,,,
"""
EXPECTED = {  # the labels that are 1 (all others 0)
    "any": {"A": {"Nodule", "Mass", "Aortic enlargement"}, "B": {"Cardiomegaly"}, "C": {"No Finding"}},
    # A: Nodule/Mass by 1 of 3 (no), Aortic enlargement by 2 of 3 (yes); 2 of 3 readers abnormal (Other lesion
    # counts) -> not No Finding. B: Cardiomegaly by 1 reader of 3 -> No Finding.
    "majority": {"A": {"Aortic enlargement"}, "B": {"No Finding"}, "C": {"No Finding"}},
}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------ (a) hand-made file


def test_the_labels_are_the_vocabulary_then_vindrs_own_names():
    assert LABELS[:LABELS.index("No Finding") + 1] == (
        "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax", "Consolidation",
        "Fibrosis", "Pleural_Thickening", "Lung Opacity", "No Finding")
    assert LABELS[-3:] == ("Aortic enlargement", "Calcification", "ILD") and "Other lesion" not in LABELS


@pytest.mark.parametrize("readers", ["any", "majority"])
def test_hand_made_annotations_give_the_exact_labels(tmp_path, readers):
    ann = read_annotations(_write(tmp_path / "train.csv", HAND))
    table = image_labels(ann, readers)
    assert list(table.index) == ["A", "B", "C"] and list(table.columns) == list(LABELS)
    assert (table.dtypes == np.uint8).all()
    for image, positive in EXPECTED[readers].items():
        assert {label for label in LABELS if table.at[image, label] == 1} == positive, image
    assert table.attrs["readers"].to_dict() == {"A": 3, "B": 3, "C": 3}
    assert ann.attrs["source"]["boxes"] == 6 and ann.attrs["source"]["readers"] == 6


def test_the_boxes_keep_every_reader_and_their_size(tmp_path):
    ann = read_annotations(_write(tmp_path / "train.csv", HAND))
    boxes = vindr.boxes_table(ann)
    assert list(boxes.columns) == list(vindr.BOX_COLUMNS) and len(boxes) == 6
    first = boxes.iloc[0]
    assert (first["image"], first["finding"], first["reader"]) == ("A", "Nodule/Mass", "R1")
    assert (first["x"], first["y"], first["w"], first["h"]) == (10.0, 20.0, 20.0, 40.0)
    assert boxes["finding"].tolist().count("Other lesion") == 1  # kept among the boxes, though not a label


def _replace_line(number: int, text: str) -> str:  # line numbers as in the file (header = 1)
    lines = HAND.splitlines()
    lines[number - 1] = text
    return "\n".join(lines) + "\n"


def test_physionet_s_further_local_labels_are_mapped_in_its_layout_only(tmp_path):
    from chexnet.data.sources import box_findings

    text = _replace_line(4, "A,Rib fracture,0,R2,101,99,149,131").replace("B,No finding,14,R3,,,,",
                                                                          "B,Edema,0,R3,,,,")
    raw = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    with pytest.raises(MetadataError, match="line 4, column 'class_name': unknown class .*value 'Rib fracture'"):
        vindr.parse_annotations_frame(raw, "train.csv")  # Kaggle's table: not one of its 14 classes
    ann = vindr.parse_annotations_frame(raw, "annotations_train.csv", table=vindr.PHYSIONET)
    labels = image_labels(ann, "any", table=vindr.PHYSIONET)
    assert list(labels.columns) == list(vindr.PHYSIONET.labels) and set(LABELS) < set(labels.columns)
    positive = {i: {c for c in labels.columns if labels.at[i, c]} for i in labels.index}
    assert positive == {"A": {"Nodule", "Mass", "Aortic enlargement", "Fracture"}, "B": {"Cardiomegaly", "Edema"},
                        "C": {"No Finding"}}
    boxes = box_findings("vindr-physionet", vindr.boxes_table(ann), labels.columns)
    assert "Fracture" in set(boxes["finding"]) and "Rib fracture" not in set(boxes["finding"])


@pytest.mark.parametrize("text,line,column,why", [
    (HAND.replace(",y_max", ",y_top"), "line 1 (header)", "'y_max'", "missing column"),
    (_replace_line(4, "A,Edema,0,R2,101,99,149,131"), "line 4", "'class_name'", "unknown class"),
    (_replace_line(8, "B,Cardiomegaly,3,R2,200,300,150,500"), "line 8", "'x_max'", "less than x_min 200"),
    (_replace_line(8, "B,Cardiomegaly,3,R2,200,600,400,500"), "line 8", "'y_max'", "less than y_min 600"),
    (_replace_line(3, "A,Aortic enlargement,0,R1,100,abc,150,130"), "line 3", "'y_min'", "not a number"),
    (_replace_line(3, "A,Aortic enlargement,0,R1,-1,100,150,130"), "line 3", "'x_min'", "not a number of pixels >= 0"),
    (_replace_line(3, "A,Aortic enlargement,0,R1,100,100,,130"), "line 3", "'x_max'", "a box needs all four"),
    (_replace_line(6, "A,No finding,14,R3,1,2,3,4"), "line 6", "'x_min'", "has no box"),
    (_replace_line(7, "B,No finding,14,,,,,"), "line 7", "'rad_id'", "empty"),
    (_replace_line(7, ",No finding,14,R1,,,,"), "line 7", "'image_id'", "empty"),
])
def test_malformed_input_names_the_file_line_and_column(tmp_path, text, line, column, why):
    path = _write(tmp_path / "train.csv", text)
    with pytest.raises(MetadataError) as err:
        read_annotations(path)
    message = str(err.value)
    assert str(path) in message and line in message and column in message and why in message, message


def test_a_short_line_is_named_not_padded(tmp_path):
    path = _write(tmp_path / "train.csv", _replace_line(9, "B,Cardiomegaly,3,R2,210,300,400"))
    with pytest.raises(MetadataError, match=r"train\.csv line 9: 7 field\(s\), the header has 8"):
        read_annotations(path)
    gz = tmp_path / "gz" / "train.csv.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(HAND.encode()))
    assert len(read_annotations(gz)) == 12


def test_image_labels_refuses_an_unknown_class_and_rule():
    frame = pd.DataFrame({"image_id": ["A"], "rad_id": ["R1"], "class_name": ["Rib fracture"]})
    with pytest.raises(MetadataError, match=r"line 2, column 'class_name': unknown class 'Rib fracture'"):
        image_labels(frame)
    with pytest.raises(ValueError, match="unknown readers rule 'all'"):
        image_labels(frame, "all")


# -------------------------------------------------------------------------------------------- layouts


def test_the_layout_is_recognised_or_refused_naming_what_was_looked_for(tmp_path):
    with pytest.raises(MetadataError) as err:
        vindr.find_layout(tmp_path)
    assert "annotations/annotations_train.csv" in str(err.value) and str(tmp_path / "train.csv") in str(err.value)
    _write(tmp_path / "train.csv", HAND)
    assert vindr.find_layout(tmp_path).name == "kaggle" and vindr.find_layout(tmp_path).test_csv is None
    _write(tmp_path / "annotations" / "annotations_train.csv", HAND)
    with pytest.raises(MetadataError, match="both .* are there"):
        vindr.find_layout(tmp_path)
    (tmp_path / "train.csv").unlink()
    _write(tmp_path / "annotations" / "image_labels_test.csv", "image_id,No finding\nD,1\n")
    with pytest.raises(MetadataError, match="image_labels_test.csv is there but not .*annotations_test.csv"):
        vindr.find_layout(tmp_path)
    _write(tmp_path / "annotations" / "annotations_test.csv", "image_id,class_name,x_min,y_min,x_max,y_max\n")
    layout = vindr.find_layout(tmp_path)
    assert layout.name == "physionet" and layout.test_csv.name == "annotations_test.csv"


def test_physionet_layout_reads_the_test_annotations_as_the_test_split(tmp_path):
    physionet = pd.read_csv(io.StringIO(HAND), dtype=str, keep_default_na=False).drop(columns="class_id")
    physionet = physionet.to_csv(index=False)  # PhysioNet's columns: no class_id
    _write(tmp_path / "annotations" / "annotations_train.csv", physionet)
    _write(tmp_path / "annotations" / "annotations_test.csv",  # the consensus: no rad_id
           "image_id,class_name,x_min,y_min,x_max,y_max\nD,Pleural effusion,1,2,3,4\nD,ILD,1,2,3,4\nE,No finding,,,,\n")
    (tmp_path / "test").mkdir()
    write_dicom(tmp_path / "test" / "D.dicom", np.full((8, 8), 100, np.uint16))
    table = sources.read_source("vindr", tmp_path, val_fraction=0.34, readers="majority")
    assert table["image"].tolist() == ["train/A.dicom", "train/B.dicom", "train/C.dicom",
                                       "test/D.dicom", "test/E.dicom"]
    assert table["split"].tolist()[3:] == ["test", "test"] and set(table["split"][:3]) == {"train", "val"}
    assert table["patient_id"].tolist() == ["A", "B", "C", "D", "E"]
    assert table["path"].tolist() == ["", "", "", str(tmp_path / "test" / "D.dicom"), ""]
    d = table.set_index("image").loc["test/D.dicom"]
    assert {label for label in LABELS if d[label] == 1} == {"Effusion", "ILD"}  # one reader: the consensus
    assert table.set_index("image").at["test/E.dicom", "No Finding"] == 1
    assert table["view"].eq("").all() and table["sex"].eq("").all() and table["age"].isna().all()
    src = table.attrs["source"]
    assert src["layout"] == "physionet" and src["split_mode"].startswith("official test (annotations_test.csv)")
    assert src["boxes"] == len(table.attrs["boxes"]) == 8 and src["readers_per_image"] == {"1": 2, "3": 3}
    json.dumps(src)
    _write(tmp_path / "annotations" / "annotations_test.csv", "image_id,class_name,x_min,y_min,x_max,y_max\n"
                                                              "B,No finding,,,,\n")
    with pytest.raises(MetadataError, match="image B is also in"):
        sources.read_source("vindr", tmp_path)


def test_options_and_view_are_checked(tmp_path):
    _write(tmp_path / "train.csv", HAND)
    sources.check_options("vindr", {"readers": "majority"})
    with pytest.raises(ValueError, match="dataset 'vindr' takes no option uncertain"):
        sources.check_options("vindr", {"uncertain": "ones"})
    with pytest.raises(ValueError, match="unknown readers rule"):
        sources.read_source("vindr", tmp_path, readers="most")
    with pytest.raises(CacheError, match="records no view position"):
        sources.read_source("vindr", tmp_path, view="PA")


# ----------------------------------------------------------------------------------- (b) the real file


@pytest.fixture(scope="module")
def real_raw() -> pd.DataFrame:
    return pd.read_csv(VINDR_CSV)


@pytest.fixture(scope="module")
def real_annotations() -> pd.DataFrame:
    return read_annotations(VINDR_CSV)


# written out here, not taken from chexnet.labels: label -> the VinDr classes that set it
VINDR_CLASSES_OF = {
    "Atelectasis": ["Atelectasis"], "Cardiomegaly": ["Cardiomegaly"], "Effusion": ["Pleural effusion"],
    "Infiltration": ["Infiltration"], "Mass": ["Nodule/Mass"], "Nodule": ["Nodule/Mass"],
    "Pneumothorax": ["Pneumothorax"], "Consolidation": ["Consolidation"], "Fibrosis": ["Pulmonary fibrosis"],
    "Pleural_Thickening": ["Pleural thickening"], "Lung Opacity": ["Lung Opacity"],
    "Aortic enlargement": ["Aortic enlargement"], "Calcification": ["Calcification"], "ILD": ["ILD"],
}


@needs_real
def test_the_real_file_parses_whole(real_annotations):
    src = real_annotations.attrs["source"]
    assert (src["metadata_rows"], src["images"], src["readers"]) == (67914, 15000, 17)
    assert src["boxes"] == 36096 and src["marks_without_box"] == 0 and src["unused_columns"] == ["class_id"]


@needs_real
@pytest.mark.parametrize("readers", ["any", "majority"])
def test_real_label_counts_equal_plain_pandas_counts(real_raw, real_annotations, readers):
    table = image_labels(real_annotations, readers)
    assert len(table) == 15000 and set(table.columns) == set(VINDR_CLASSES_OF) | {"No Finding"}

    n_readers = real_raw.groupby("image_id")["rad_id"].nunique()
    findings = real_raw[real_raw["class_name"] != "No finding"]
    marked = findings.groupby(["image_id", "class_name"])["rad_id"].nunique().unstack(fill_value=0)
    marked = marked.reindex(n_readers.index, fill_value=0)
    abnormal = findings.groupby("image_id")["rad_id"].nunique().reindex(n_readers.index, fill_value=0)
    if readers == "any":
        positive, no_finding = marked.ge(1), abnormal.eq(0)
    else:
        positive, no_finding = marked.mul(2).gt(n_readers, axis=0), abnormal.mul(2).le(n_readers)
    want = {label: positive[classes].any(axis=1) for label, classes in VINDR_CLASSES_OF.items()}
    want["No Finding"] = no_finding
    got = table.sum().to_dict()
    assert got == {label: int(v.sum()) for label, v in want.items()}
    for label, v in want.items():  # and image by image
        assert (table[label].astype(bool) == v.reindex(table.index)).all(), label
    assert n_readers.eq(3).all()


@needs_real
def test_majority_is_stricter_than_any_on_the_real_file(real_annotations):
    any_, majority = image_labels(real_annotations, "any"), image_labels(real_annotations, "majority")
    findings = [label for label in LABELS if label != "No Finding"]
    assert (majority[findings] <= any_[findings]).all().all()
    assert (majority[findings].sum() < any_[findings].sum()).all()
    for table in (any_, majority):  # No Finding never comes with a finding
        assert not ((table["No Finding"] == 1) & (table[findings].sum(axis=1) > 0)).any()


@needs_real
def test_the_real_file_in_kaggles_layout_is_split_70_10_20_by_image(tmp_path):
    (tmp_path / "train.csv.gz").symlink_to(VINDR_CSV)
    table = sources.read_source("vindr", tmp_path, seed=3)
    assert table["split"].value_counts().to_dict() == {"train": 10500, "test": 3000, "val": 1500}
    assert table["patient_id"].is_unique and table["path"].eq("").all()
    assert table.attrs["source"]["boxes"] == len(table.attrs["boxes"]) == 36096
    json.dumps(table.attrs["source"])
    again = sources.read_source("vindr", tmp_path, seed=3)
    assert again["split"].tolist() == table["split"].tolist()


# ------------------------------------------------------------------- (c) prepare on real rows + DICOMs


def _real_rows(images: int) -> pd.DataFrame:
    """All rows (every reader's) of the first ``images`` images of the real file, read as text, as released."""
    raw = pd.read_csv(VINDR_CSV, dtype=str, keep_default_na=False)
    keep = raw["image_id"].unique()[:images]
    return raw[raw["image_id"].isin(keep)]


def _dicoms(folder: Path, ids, missing: str) -> None:
    """A 12-bit DICOM per image id (odd ones MONOCHROME1, inverted); ids[0] and ids[1] show the same picture."""
    from tests.conftest import xray_like

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pictures = [xray_like(rng, 48)[:, :40].astype(np.uint16) * 15 + 50 for _ in ids]  # 12-bit, bone bright
    pictures[1] = pictures[0]
    for k, (image_id, base) in enumerate(zip(ids, pictures)):
        if image_id == missing:
            continue
        if k % 2:
            write_dicom(folder / f"{image_id}.dicom", (4095 - base).astype(np.uint16), "MONOCHROME1")
        else:
            write_dicom(folder / f"{image_id}.dicom", base, "MONOCHROME2")


@needs_real
@pytest.mark.parametrize("layout", ["kaggle", "physionet"])
def test_prepare_caches_real_rows_with_the_labels_and_splits_of_image_labels(tmp_path, layout):
    rows = _real_rows(60)
    ids = list(rows["image_id"].unique())
    assert 200 <= len(rows) <= 600 and len(ids) == 60
    data = tmp_path / "vindr"
    missing = ids[5]  # not on disk: recorded as failed
    if layout == "kaggle":
        _write(data / "train.csv", rows.to_csv(index=False))
        _dicoms(data / "train", ids, missing)
        test_ids: set[str] = set()
    else:  # PhysioNet's columns (no class_id); the last 15 images as annotations_test.csv
        test_ids = set(ids[-15:])
        physionet = rows.drop(columns="class_id")
        is_test = physionet["image_id"].isin(test_ids)
        _write(data / "annotations" / "annotations_train.csv", physionet[~is_test].to_csv(index=False))
        _write(data / "annotations" / "annotations_test.csv", physionet[is_test].to_csv(index=False))
        _dicoms(data / "train", [i for i in ids if i not in test_ids], missing)
        _dicoms(data / "test", [i for i in ids if i in test_ids], missing)

    meta = prepare(data, tmp_path / "cache", size=32, workers=1, progress=False, dataset="vindr",
                   options={"readers": "majority"})
    images, index, loaded = load_cache(tmp_path / "cache")
    table = vindr.TABLES[layout]  # PhysioNet's has 8 more local labels (0 here: Kaggle's rows never use them)
    assert loaded["labels"] == list(table.labels) and set(LABELS) < set(vindr.PHYSIONET.labels) and meta["arguments"]["options"] == {"readers": "majority"}
    assert [f["image"] for f in meta["failed"]] == [f"train/{missing}.dicom"] and len(index) == 59

    want = image_labels(vindr.parse_annotations_frame(rows, "rows"), "majority", table=table)
    got = index.set_index("patient_id")
    assert list(got.index) == [i for i in ids if i not in test_ids and i != missing] + [i for i in ids if i in test_ids]
    np.testing.assert_array_equal(got[list(table.labels)].to_numpy(np.float64),
                                  want.loc[got.index, list(table.labels)].to_numpy(np.float64))
    assert got["image"].tolist() == [f"{'test' if i in test_ids else 'train'}/{i}.dicom" for i in got.index]

    plan = sources.read_source("vindr", data, readers="majority")  # the split the cache must hold, by image
    assert got["split"].tolist() == plan.set_index("patient_id").loc[got.index, "split"].tolist()
    if layout == "kaggle":
        assert meta["source"]["split_mode"] == "random"
        assert plan["split"].value_counts().to_dict() == {"train": 42, "val": 6, "test": 12}  # 70/10/20 of 60
    else:
        assert (got["split"] == "test").tolist() == [i in test_ids for i in got.index]
        assert set(got.loc[~got.index.isin(test_ids), "split"]) == {"train", "val"}
    for split, counts in meta["label_counts"].items():
        part = want.loc[got.index[got["split"] == split]]
        assert {label: c["positive"] for label, c in counts.items()} == part.sum().astype(int).to_dict(), split
        assert all(c["missing"] == 0 for c in counts.values())
    assert meta["splits"]["train"]["images"] + meta["splits"]["val"]["images"] + meta["splits"]["test"]["images"] == 59
    assert meta["source"]["planned"] == 60 and meta["source"]["boxes"] == int((rows["x_min"] != "").sum())
    assert meta["source"]["layout"] == layout

    # the MONOCHROME1 image (ids[1]) shows the MONOCHROME2 one's picture (ids[0]): same bright-bone cache row
    row = {i: k for k, i in enumerate(index["patient_id"])}
    assert images[row[ids[0]]].std() > 5
    np.testing.assert_array_equal(images[row[ids[0]]], images[row[ids[1]]])


def test_the_cli_prepares_vindr_with_the_default_rule(tmp_path, capsys):
    from chexnet import cli

    _write(tmp_path / "data" / "train.csv", HAND)
    (tmp_path / "data" / "train").mkdir()
    for k, name in enumerate("ABC"):
        write_dicom(tmp_path / "data" / "train" / f"{name}.dicom", np.full((16, 16), 100 + 50 * k, np.uint16))
    assert cli.main(["prepare", "--dataset", "vindr", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "c"),
                     "--size", "8", "--workers", "1"]) == 0
    _, index, meta = load_cache(tmp_path / "c")
    assert index["image"].tolist() == ["train/A.dicom", "train/B.dicom", "train/C.dicom"] and meta["failed"] == []
    assert meta["source"]["labels"]["readers"] == "any" and index["No Finding"].tolist() == [0, 0, 1]


# ------------------------------------------------------------------- (d) the boxes kept for localization

# Kaggle's layout. P: boxes of 3 readers (Nodule/Mass -> a Nodule and a Mass row; two readers' Pleural effusion;
# Other lesion: no label, left out; Aortic enlargement: kept under its own name); Q: one Cardiomegaly box;
# R: a box, but no file (failed); S: a box, but not a DICOM (failed); T: no box.
BOXED = f"""{HEADER}
P,Nodule/Mass,8,R1,10,20,30,60
P,Pleural effusion,10,R1,2,3,12.5,20
P,Pleural effusion,10,R2,4,5,14,22
P,Other lesion,9,R2,5,5,6,9
P,Aortic enlargement,0,R3,1,1,8,8
Q,Cardiomegaly,3,R1,6,10,30,28
Q,No finding,14,R2,,,,
R,Cardiomegaly,3,R1,1,2,3,4
S,Pleural effusion,10,R1,1,2,3,4
T,No finding,14,R1,,,,
"""
BOXED_SIZES = {"P": (40, 32), "Q": (36, 44), "T": (20, 20)}  # (Rows, Columns) of the DICOMs written
# what boxes.csv must hold: image, finding, reader, x, y, w, h, height, width
BOXED_EXPECTED = [
    ("train/P.dicom", "Nodule", "R1", 10.0, 20.0, 20.0, 40.0, 40, 32),
    ("train/P.dicom", "Mass", "R1", 10.0, 20.0, 20.0, 40.0, 40, 32),
    ("train/P.dicom", "Effusion", "R1", 2.0, 3.0, 10.5, 17.0, 40, 32),
    ("train/P.dicom", "Effusion", "R2", 4.0, 5.0, 10.0, 17.0, 40, 32),
    ("train/P.dicom", "Aortic enlargement", "R3", 1.0, 1.0, 7.0, 7.0, 40, 32),
    ("train/Q.dicom", "Cardiomegaly", "R1", 6.0, 10.0, 24.0, 18.0, 36, 44),
]


def make_vindr_folder(root: Path) -> Path:
    """A Kaggle-layout VinDr-CXR folder with :data:`BOXED`'s boxes and DICOMs of :data:`BOXED_SIZES`."""
    from tests.conftest import xray_like

    _write(root / "train.csv", BOXED)
    (root / "train").mkdir()
    rng = np.random.default_rng(1)
    for name, (rows, cols) in BOXED_SIZES.items():
        write_dicom(root / "train" / f"{name}.dicom", xray_like(rng, 48)[:rows, :cols].astype(np.uint16) * 15 + 50)
    (root / "train" / "S.dicom").write_bytes(b"not a DICOM file" * 8)
    return root


def test_prepare_keeps_the_cached_images_boxes_with_label_names_and_sizes(tmp_path):
    from chexnet.data.cache import BOXES

    data = make_vindr_folder(tmp_path / "vindr")
    meta = prepare(data, tmp_path / "c", size=16, workers=1, progress=False, dataset="vindr")
    assert sorted(f["image"] for f in meta["failed"]) == ["train/R.dicom", "train/S.dicom"]
    boxes = pd.read_csv(tmp_path / "c" / BOXES, keep_default_na=False)
    assert list(boxes.columns) == ["image", "finding", "reader", "x", "y", "w", "h", "height", "width"]
    assert [tuple(r) for r in boxes.itertuples(index=False)] == BOXED_EXPECTED
    assert set(boxes["finding"]) <= set(meta["labels"])  # the cache's label names
    assert meta["files"]["boxes"] == BOXES
    assert meta["boxes"] == {"count": 6, "images": 2, "findings": {"Nodule": 1, "Mass": 1, "Effusion": 2,
                                                                   "Aortic enlargement": 1, "Cardiomegaly": 1},
                             "not_cached": 2, "dropped": 1, "size_unreadable": 0, "size_errors": []}
    assert meta["source"]["boxes"] == 8  # the source's count: every box read, in VinDr's classes


def test_a_resumed_prepare_writes_the_boxes_of_an_uninterrupted_one(tmp_path, monkeypatch):
    import chexnet.data.prepare as writer

    data = make_vindr_folder(tmp_path / "vindr")
    prepare(data, tmp_path / "ref", size=16, workers=1, progress=False, dataset="vindr")
    real, calls = writer.read_cache_row, []

    def interrupted(path, size):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(path, size)

    monkeypatch.setattr(writer, "read_cache_row", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(data, tmp_path / "c", size=16, workers=1, progress=False, dataset="vindr")
    assert not (tmp_path / "c" / "boxes.csv").exists() and (tmp_path / "c" / "work").is_dir()
    monkeypatch.setattr(writer, "read_cache_row", real)
    meta = prepare(data, tmp_path / "c", size=16, workers=1, progress=False, dataset="vindr")
    assert meta["created"]["runs"] == 2
    for name in ("boxes.csv", "index.csv", "images.u8"):
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
