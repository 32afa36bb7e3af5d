"""The ``padchest`` source: Labels terms matched whole (never by substring), the negatives rule, rows with
unreadable labels left out and named, frontal images only by default, and ``prepare(..., dataset="padchest")`` on
a synthetic folder in PadChest's layout (numbered folders, one flat image) whose 16-bit PNGs hold 12-bit values:
the cache must use the full 0..255 range."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chexnet.data import sources
from chexnet.data.cache import CacheError, load_cache
from chexnet.data.imageio import read_xray
from chexnet.data.prepare import prepare
from chexnet.data.sources import padchest
from chexnet.data.sources.padchest import LABELS, MetadataError, image_labels, parse_labels
from chexnet.labels import DROP, SOURCE_NAMES, VOCABULARY

CSV_NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
HEADER = ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
          "ViewPosition_DICOM", "Projection", "MethodProjection", "Report", "MethodLabel", "Labels"]
LATERAL, COSTAL, UNREADABLE, EMPTY = "lateral", "costal", "unreadable", "empty"  # rows the source leaves out
# image, ImageDir, StudyDate, PatientID, PatientBirth, sex, Projection, Labels, the labels that must be 1 (or why left out)
ROWS = [
    ("a01.png", "0", "20140915", "p01", "1950.0", "M", "PA", "['pleural effusion', 'cardiomegaly']",
     {"Effusion", "Cardiomegaly"}),
    ("a02.png", "0", "20150101", "p01", "1950.0", "M", "L", "['pleural effusion']", LATERAL),
    ("a03.png", "1", "20120303", "p02", "1975", "F", "PA", "['normal']", {"No Finding"}),  # stored flat
    ("a04.png", "1", "20120303", "p02", "", "F", "AP_horizontal", "['soft tissue mass', 'breast mass']", set()),
    ("a05.png", "2", "20100505", "p03", "1940.0", "M", "AP", "['mass', ' nodule ', '']", {"Mass", "Nodule"}),
    ("a06.png", "2", "20100505", "p03", "1940.0", "M", "PA",
     "['pericardial effusion', 'subcutaneous emphysema', 'pseudonodule', 'mediastinal mass']", set()),
    ("a07.png", "3", "20160707", "p04", "1960.0", "O", "PA", "['hydropneumothorax', 'chest drain tube']",
     {"Effusion", "Pneumothorax", "Support Devices"}),
    ("a08.png", "3", "20160708", "p04", "1960.0", "O", "PA", "['pleural effusion'", UNREADABLE),
    ("a09.png", "4", "20110101", "p05", "1930.0", "F", "PA", "['laminar atelectasis', 'infiltrates', 'callus rib fracture']",
     {"Atelectasis", "Infiltration", "Fracture"}),
    ("a10.png", "4", "20110102", "p05", "1930.0", "F", "PA", "['COPD signs', 'emphysema', 'aortic elongation']",
     {"Emphysema"}),
    ("a11.png", "5", "20130404", "p06", "1955.0", "M", "PA",
     "['hiatal hernia', 'pulmonary edema', 'pulmonary fibrosis', 'pleural thickening']",
     {"Hernia", "Edema", "Fibrosis", "Pleural_Thickening"}),
    ("a12.png", "5", "20130405", "p06", "1955.0", "M", "PA", "['pneumonia', 'consolidation', 'air bronchogram']",
     {"Pneumonia", "Consolidation"}),
    ("a13.png", "6", "20170101", "p07", "1944.0", "F", "PA", "['normal', 'pacemaker']", {"No Finding", "Support Devices"}),
    ("a14.png", "6", "20170102", "p07", "1944.0", "F", "PA", "['scoliosis']", set()),
    ("a15.png", "7", "20090909", "p08", "1980.0", "M", "PA", "['unchanged']", EMPTY),
    ("a16.png", "7", "20090910", "p08", "1980.0", "M", "PA", "[]", EMPTY),
    ("a17.png", "8", "20100101", "p09", "1990.0", "F", "PA", "", UNREADABLE),
    ("a18.png", "8", "20100102", "p09", "1990.0", "F", "PA", "['NSG tube', 'Pneumothorax ']",
     {"Support Devices", "Pneumothorax"}),
    ("a19.png", "9", "20120101", "p10", "1970.0", "M", "PA", "['normal', 'pleural effusion']", {"No Finding", "Effusion"}),
    ("a20.png", "9", "20120101", "p10", "1970.0", "M", "COSTAL", "['rib fracture']", COSTAL),
    ("a21.png", "10", "20140101", "p11", "1965.0", "F", "PA", "['pleural efusion']", set()),  # misspelt: unknown term
    ("a22.png", "10", "20140102", "p11", "1965.0", "F", "PA", "['atelectasis']", {"Atelectasis"}),  # not on disk
    ("a23.png", "54", "20150505", "p12", "1985.0", "M", "PA", "['nodule']", {"Nodule"}),
    ("a24.png", "54", "20150506", "p12", "1985.0", "M", "PA", "['normal']", {"No Finding"}),
]
KEPT = [r for r in ROWS if isinstance(r[8], set)]
FLAT, NOT_ON_DISK = "a03.png", "a22.png"


def _csv_text(rows=ROWS) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    for k, (image, folder, date, patient, birth, sex, projection, labels, _) in enumerate(rows):
        report = "derrame pleural,\nsin cambios" if k == 4 else "informe"  # a quoted cell over two lines
        writer.writerow([image, folder, date, f"s{k}", patient, birth, sex, "POSTEROANTERIOR", projection,
                         "Manual review of DICOM fields", report, "Physician" if k % 3 else "RNN_model", labels])
    return buf.getvalue()


def _line_of(text: str, image: str) -> int:
    return next(i + 1 for i, line in enumerate(text.splitlines()) if line.startswith(image + ","))


def _picture(k: int) -> np.ndarray:
    """64 x 64 uint16 holding 12-bit values (0..4095, both reached) in 2 x 2 blocks (so a 32-pixel cache row is exact)."""
    blocks = np.random.default_rng(k).integers(0, 4096, (32, 32)).astype(np.uint16)
    blocks[0, 0], blocks[-1, -1] = 0, 4095
    return np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)


def _write_png16(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    assert path.read_bytes()[24] == 16  # IHDR bit depth: a 16-bit PNG, as PadChest's


def make_padchest(root: Path, rows=ROWS, gz: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    text = _csv_text(rows)
    if gz:
        (root / (CSV_NAME + ".gz")).write_bytes(gzip.compress(text.encode()))
    else:
        (root / CSV_NAME).write_text(text)
    for k, row in enumerate(rows):
        image, folder = row[0], row[1]
        if image == NOT_ON_DISK:
            continue
        _write_png16(root / image if image == FLAT else root / folder / image, _picture(k))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_padchest(tmp_path_factory.mktemp("padchest"))


# ---------------------------------------------------------------------------------------------------- labels

def test_the_table_names_padchest_terms_and_the_labels_are_vocabulary_names():
    table = SOURCE_NAMES["padchest"]
    assert set(table) <= set(padchest.PADCHEST_TERMS)
    assert LABELS == ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                      "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
                      "Fracture", "Support Devices", "No Finding")
    assert set(LABELS) <= set(VOCABULARY)
    # every term that contains a label's word without naming it is listed as dropped, not left to chance
    for term in ("soft tissue mass", "breast mass", "mediastinal mass", "pleural mass", "pericardial effusion",
                 "subcutaneous emphysema", "pseudonodule"):
        assert table[term] is DROP, term


def test_parse_labels_reads_the_list_and_refuses_what_is_not_one():
    assert parse_labels("['pleural effusion', ' cardiomegaly', '', 'pleural effusion']") == ("pleural effusion",
                                                                                            "cardiomegaly")
    assert parse_labels("['normal']") == ("normal",) and parse_labels("[]") == ()
    assert parse_labels("[' pulmonary   edema ']") == ("pulmonary edema",)
    for bad in ("", "  ", "nan", "['pleural effusion'", "pleural effusion", "[1, 2]", "{'a': 1}", None):
        assert parse_labels(bad) is None, bad


def test_terms_are_matched_whole_not_by_substring():
    lists = [("soft tissue mass",), ("mass",), ("pericardial effusion",), ("pleural effusion",),
             ("subcutaneous emphysema",), ("Emphysema",), ("normal",), ("scoliosis",)]
    labels, counts = image_labels(lists)
    got = [{LABELS[j] for j in np.flatnonzero(row)} for row in labels]
    assert got == [set(), {"Mass"}, set(), {"Effusion"}, set(), {"Emphysema"}, {"No Finding"}, set()]
    # what torchxrayvision's str.contains would have made of the same lists
    substring = [{name for name in ("mass", "effusion", "emphysema") if name in " ".join(t).lower()} for t in lists]
    assert substring[0] == {"mass"} and substring[2] == {"effusion"} and substring[4] == {"emphysema"}
    assert counts["dropped_terms"] == {"pericardial effusion": 1, "scoliosis": 1, "soft tissue mass": 1,
                                       "subcutaneous emphysema": 1}
    assert counts["mapped"] == {"emphysema": 1, "mass": 1, "normal": 1, "pleural effusion": 1}
    assert labels.dtype == np.uint8 and counts["unknown_terms"] == {} and counts["normal_with_findings"] == 0


# ----------------------------------------------------------------------------------------------- the source

def test_prepare_caches_frontal_images_with_the_terms_labels_and_full_range_pixels(folder, tmp_path):
    meta = prepare(folder, tmp_path / "c", size=32, workers=1, progress=False, dataset="padchest")
    images, index, loaded = load_cache(tmp_path / "c")
    assert loaded["labels"] == list(LABELS) and meta["arguments"]["dataset"] == "padchest"
    assert [f["image"] for f in meta["failed"]] == [NOT_ON_DISK]
    want = {r[0]: r for r in KEPT if r[0] != NOT_ON_DISK}
    assert index["image"].tolist() == list(want)  # the file's order, frontal rows with readable labels
    got = index.set_index("image")
    for image, row in want.items():
        positive = {label for label in LABELS if got.at[image, label] == 1}
        assert positive == row[8], image
    assert not index[list(LABELS)].isna().to_numpy().any()  # the negatives rule: no missing value
    assert all(c["missing"] == 0 for split in meta["label_counts"].values() for c in split.values())
    for label in LABELS:
        assert sum(meta["label_counts"][s][label]["positive"] for s in ("train", "val", "test")) == \
               sum(label in r[8] for r in want.values()), label
    assert sum(meta["label_counts"][s]["Mass"]["positive"] for s in ("train", "val", "test")) == 1  # a05 only

    assert got.loc["a04.png", "view"] == "AP" and got.loc["a05.png", "view"] == "AP" and got.loc["a01.png", "view"] == "PA"
    assert got.loc["a01.png", "patient_id"] == "p01" and got.loc["a01.png", "sex"] == "M"
    assert got.loc["a07.png", "sex"] == "" and got.loc["a03.png", "sex"] == "F"
    assert got.loc["a01.png", "age"] == 64.0 and got.loc["a03.png", "age"] == 37.0 and np.isnan(got.loc["a04.png", "age"])
    plan = sources.read_source("padchest", folder)  # the seeded patient-wise split the cache must hold
    assert got["split"].tolist() == plan.set_index("image").loc[got.index, "split"].tolist()
    assert (index.groupby("patient_id")["split"].nunique() == 1).all()

    source = meta["source"]
    text = (folder / CSV_NAME).read_text()
    assert source["labels_unreadable"]["count"] == 2 and source["labels_empty"]["count"] == 2
    assert source["labels_unreadable"]["first"][0] == f"{folder / CSV_NAME} line {_line_of(text, 'a08.png')}: a08.png"
    assert _line_of(text, "a08.png") == 10  # the header, seven rows and a row over two lines before it
    assert [s.rsplit(": ", 1)[1] for s in source["labels_empty"]["first"]] == ["a15.png", "a16.png"]
    assert source["excluded_by_view"] == 2 and source["planned"] == len(KEPT) == 18
    assert source["images_found"] == {"numbered folder": 16, "flat": 1, "not found": 1}
    labels = source["labels"]
    assert labels["dropped_terms"]["soft tissue mass"] == 1 and labels["dropped_terms"]["scoliosis"] == 1
    assert "mass" not in labels["dropped_terms"] and labels["mapped"]["mass"] == 1
    assert labels["unknown_terms"] == {"pleural efusion": 1} and labels["normal_with_findings"] == 1
    assert labels["mapped"]["NSG tube"] == 1 and labels["mapped"]["pneumothorax"] == 1  # any case, spaces stripped
    assert labels["mapped"]["hydropneumothorax"] == 1 and labels["mapped"]["normal"] == 4
    methods = pd.Series(["Physician" if k % 3 else "RNN_model" for k, r in enumerate(ROWS) if isinstance(r[8], set)])
    assert source["label_method"] == methods.value_counts().to_dict()

    # 12-bit values in 16-bit PNGs: each cache row spans 0..255, scaled by the image's own range (not by 65535)
    row = {name: k for k, name in enumerate(index["image"])}
    for k, r in enumerate(ROWS):
        if r[0] in row:
            expected = np.rint(_picture(k)[::2, ::2] / 4095.0 * 255.0).astype(np.uint8)
            np.testing.assert_array_equal(images[row[r[0]]], expected, err_msg=r[0])
            assert images[row[r[0]]].min() == 0 and images[row[r[0]]].max() == 255
    assert int(np.rint(4095 / 65535 * 255)) == 16  # what dividing by 65535 would leave of the brightest pixel


def test_imageio_stretches_a_16_bit_png_by_what_it_holds(tmp_path):
    twelve = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # 0..4095 in a 16-bit PNG
    _write_png16(tmp_path / "twelve.png", twelve)
    got = read_xray(tmp_path / "twelve.png")
    np.testing.assert_array_equal(got, np.rint(twelve / 4095.0 * 255.0).astype(np.uint8))
    narrow = (twelve // 2 + 300).astype(np.uint16)  # 300..2347: its own range, whatever the bit depth
    _write_png16(tmp_path / "narrow.png", narrow)
    got = read_xray(tmp_path / "narrow.png")
    assert got.min() == 0 and got.max() == 255
    np.testing.assert_array_equal(got, np.rint((narrow - 300.0) / 2047.0 * 255.0).astype(np.uint8))


def test_the_view_rule_and_a_gzipped_file(tmp_path):
    data = make_padchest(tmp_path / "gz", gz=True)
    frontal = padchest.read_source(data)
    assert len(frontal) == len(KEPT) and frontal.attrs["source"]["metadata"].endswith(".csv.gz")
    ap = padchest.read_source(data, view="AP")
    assert ap["image"].tolist() == ["a04.png", "a05.png"]  # AP and AP_horizontal
    pa = padchest.read_source(data, view="PA")
    assert set(pa["view"]) == {"PA"} and len(pa) == len(KEPT) - 2
    assert pa.attrs["source"]["excluded_by_view"] == 4 and ap.attrs["source"]["ap_horizontal"] == 1
    assert frontal.attrs["source"]["projections"] == {"PA": 16, "AP_horizontal": 1, "AP": 1, "L": 1, "COSTAL": 1}
    assert list(frontal.columns) == ["image", "patient_id", "split", "view", *LABELS, "age", "sex", "path"]
    assert (frontal[list(LABELS)].dtypes == np.uint8).all()


def test_the_split_is_seeded_70_10_20_by_patient(tmp_path):
    rows = [(f"b{k:03d}.png", str(k % 5), "20150101", f"q{k // 2:02d}", "1950", "F", "PA", "['normal']", {"No Finding"})
            for k in range(100)]  # 50 patients, 2 images each, no image on disk
    data = tmp_path / "many"
    data.mkdir()
    (data / CSV_NAME).write_text(_csv_text(rows))
    a, b = padchest.read_source(data, seed=3), padchest.read_source(data, seed=3)
    assert a["split"].tolist() == b["split"].tolist()
    assert a.groupby("split")["patient_id"].nunique().to_dict() == {"test": 10, "train": 35, "val": 5}
    assert (a.groupby("patient_id")["split"].nunique() == 1).all() and (a["path"] == "").all()
    assert padchest.read_source(data, seed=4)["split"].tolist() != a["split"].tolist()


@pytest.mark.parametrize("edit,line,column,why", [
    (lambda t: t.replace("PatientID,", "Patient,", 1), "line 1 (header)", "'PatientID'", "missing column"),
    (lambda t: t.replace("a07.png", "a01.png"), "line 9", "'ImageID'", "the image is also on line 2"),
    (lambda t: t.replace(",p05,", ",,", 1), "line 11", "'PatientID'", "empty"),
    (lambda t: t.replace("a10.png,4,", "a10.png,", 1), "line 12", "", "12 field(s), the header has 13"),
])
def test_malformed_structure_names_the_file_line_and_column(tmp_path, edit, line, column, why):
    data = tmp_path / "bad"
    data.mkdir()
    (data / CSV_NAME).write_text(edit(_csv_text()))
    with pytest.raises(MetadataError) as err:
        padchest.read_source(data)
    message = str(err.value)
    assert str(data / CSV_NAME) in message and line in message and column in message and why in message, message


def test_a_folder_without_the_label_file_or_frontal_rows_is_refused(tmp_path):
    with pytest.raises(MetadataError, match="no PadChest label file"):
        padchest.read_source(tmp_path)
    (tmp_path / CSV_NAME).write_text(_csv_text([r for r in ROWS if r[6] in ("L", "COSTAL")]))
    with pytest.raises(CacheError, match="no frontal image with readable labels"):
        padchest.read_source(tmp_path)
