"""The ``rsna`` source: a generated RSNA Pneumonia Detection Challenge folder (``stage_2_train_labels.csv`` with one
row per box, ``stage_2_detailed_class_info.csv``, ``stage_2_train_images/*.dcm`` written with PatientSex, PatientAge
and ViewPosition) read and cached by ``prepare(..., dataset="rsna")``: Pneumonia / Lung Opacity per image, the boxes,
sex / age / view from the headers (and nothing else of them), the seeded 70/10/20 split by image, missing files;
malformed files named by file, line and column."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from chexnet.data import sources
from chexnet.data.cache import CacheError, load_cache
from chexnet.data.prepare import prepare
from chexnet.data.sources import rsna
from chexnet.data.sources.rsna import MetadataError
from tests.dicom_files import write_dicom

SECRET_NAME, SECRET_ID = "Doe^Jane", "SECRET-4711"  # in every header: must never reach the table or the cache


def _id(k: int) -> str:  # RSNA's patientId: a UUID (an image id)
    return f"{k:08x}-14fd-4e49-80ba-63a80b6bddd6"


# (image id, [(x, y, width, height)] or [] for Target 0, class or None (not in the class file),
#  header: dict of PatientSex/PatientAge/ViewPosition, or "missing" (no file), "garbage" (not DICOM), {} (no tags))
IMAGES = [
    (_id(0), [(264.0, 152.0, 213.0, 379.0), (562.0, 152.0, 256.0, 453.0)], "Lung Opacity",
     {"PatientSex": "M", "PatientAge": "58", "ViewPosition": "AP"}),
    (_id(1), [], "Normal", {"PatientSex": "F", "PatientAge": "051Y", "ViewPosition": "PA"}),
    (_id(2), [(100.0, 200.0, 50.5, 60.0)], "Lung Opacity", "missing"),
    (_id(3), [], "No Lung Opacity / Not Normal", {"PatientSex": "F", "PatientAge": "6M", "ViewPosition": "PA"}),
    (_id(4), [], "Normal", {"PatientSex": "M", "PatientAge": "148", "ViewPosition": "PA"}),  # as in NIH's metadata
    (_id(5), [(10.0, 20.0, 30.0, 40.0)], "Lung Opacity", {"PatientSex": "O", "PatientAge": "33", "ViewPosition": "AP"}),
    (_id(6), [], "Normal", {}),  # a DICOM without the three fields
    (_id(7), [], "Normal", "garbage"),
    (_id(8), [], "No Lung Opacity / Not Normal", {"PatientSex": "F", "PatientAge": "70", "ViewPosition": "PA"}),
    (_id(9), [], None, {"PatientSex": "M", "PatientAge": "41", "ViewPosition": "PA"}),  # no class row
]
N_BOXES = sum(len(b) for _, b, _, _ in IMAGES)


def _labels_text(images=IMAGES) -> str:
    lines = ["patientId,x,y,width,height,Target"]
    for image, boxes, _, _ in images:
        lines += [f"{image},{x},{y},{w},{h},1" for x, y, w, h in boxes] or [f"{image},,,,,0"]
    return "\n".join(lines) + "\n"


def _class_text(images=IMAGES) -> str:  # one row per label-file row, as released
    lines = ["patientId,class"]
    for image, boxes, klass, _ in images:
        if klass is not None:
            lines += [f"{image},{klass}"] * max(1, len(boxes))
    return "\n".join(lines) + "\n"


def make_rsna_folder(root: Path, classes: bool = True, size: int = 24) -> Path:
    from tests.conftest import xray_like

    root.mkdir(parents=True, exist_ok=True)
    (root / "stage_2_train_labels.csv").write_text(_labels_text())
    if classes:
        (root / "stage_2_detailed_class_info.csv").write_text(_class_text())
    folder = root / "stage_2_train_images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for image, _, _, header in IMAGES:
        path = folder / f"{image}.dcm"
        if header == "missing":
            continue
        if header == "garbage":
            path.write_bytes(b"not a DICOM file" * 8)
            continue
        pixels = xray_like(rng, size).astype(np.uint16) * 15 + 50  # 12-bit
        with warnings.catch_warnings():  # pydicom: "58" is not DICOM's AS spelling (RSNA writes it so)
            warnings.simplefilter("ignore", UserWarning)
            write_dicom(path, pixels, PatientName=SECRET_NAME, PatientID=SECRET_ID, **header)
    (folder / "not-in-the-labels.dcm").write_bytes(b"")  # an image the label file does not list
    return root


def _name(image: str) -> str:
    return f"stage_2_train_images/{image}.dcm"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_rsna_folder(tmp_path_factory.mktemp("rsna"))


def test_read_source_gives_labels_boxes_and_the_header_fields(folder):
    table = sources.read_source("rsna", folder)
    assert list(table.columns) == ["image", "patient_id", "split", "view", "Pneumonia", "Lung Opacity", "age", "sex",
                                   "path"]
    assert table["image"].tolist() == [_name(i) for i, _, _, _ in IMAGES]
    assert table["patient_id"].tolist() == [i for i, _, _, _ in IMAGES]  # each image is its own patient
    assert table["Pneumonia"].dtype == np.uint8
    assert table["Pneumonia"].tolist() == [int(bool(b)) for _, b, _, _ in IMAGES]
    opacity = table["Lung Opacity"].to_numpy(np.float64)  # float: the image without a class row is missing
    np.testing.assert_array_equal(opacity, [np.nan if c is None else float(c == "Lung Opacity")
                                            for _, _, c, _ in IMAGES])
    assert table["sex"].tolist() == ["M", "F", "", "F", "M", "", "", "", "F", "M"]  # O -> ''
    np.testing.assert_allclose(table["age"].to_numpy(), [58, 51, np.nan, 0.5, 148, 33, np.nan, np.nan, 70, 41])
    assert table["view"].tolist() == ["AP", "PA", "", "PA", "PA", "AP", "", "", "PA", "PA"]
    assert table["path"].tolist() == [("" if h == "missing" else str(folder / _name(i))) for i, _, _, h in IMAGES]

    boxes = table.attrs["boxes"]
    assert list(boxes.columns) == list(rsna.BOX_COLUMNS) and len(boxes) == N_BOXES == 4
    assert boxes["image"].tolist() == [_name(_id(0))] * 2 + [_name(_id(2)), _name(_id(5))]
    assert boxes["finding"].eq("Pneumonia").all()
    assert boxes.iloc[2][["x", "y", "w", "h"]].tolist() == [100.0, 200.0, 50.5, 60.0]

    src = table.attrs["source"]
    assert src["stage"] == "stage_2" and src["boxes"] == 4 and src["images_missing_on_disk"] == 1
    assert src["unreadable_headers"] == 1 and src["ages_over_120"] == 1 and src["excluded_by_view"] == 0
    assert src["classes"] == {"Lung Opacity": 3, "Normal": 4, "No Lung Opacity / Not Normal": 2}
    assert src["images_without_class"] == 1 and src["class_target_disagreements"] == 0
    assert src["images_on_disk_without_labels"] == 1 and "NIH ChestX-ray14" in src["overlap"]
    text = json.dumps(src) + boxes.to_csv() + table.to_csv()
    assert "Doe" not in text and SECRET_ID not in text  # no other header field is read or kept


def test_the_split_is_a_seeded_70_10_20_split_by_image(folder):
    table = sources.read_source("rsna", folder, seed=3)
    assert table["split"].value_counts().to_dict() == {"train": 7, "test": 2, "val": 1}
    assert table["patient_id"].is_unique
    again = sources.read_source("rsna", folder, seed=3, val_fraction=0.5)  # val_fraction is not used
    assert again["split"].tolist() == table["split"].tolist()
    others = {tuple(sources.read_source("rsna", folder, seed=s)["split"]) for s in range(4)}
    assert len(others) > 1


def test_view_keeps_one_view_position_from_the_headers(folder):
    table = sources.read_source("rsna", folder, view="AP")
    assert table["image"].tolist() == [_name(_id(0)), _name(_id(5))] and table["Pneumonia"].tolist() == [1, 1]
    assert table.attrs["source"]["excluded_by_view"] == 8
    assert table.attrs["source"]["views_left_out"] == {"PA": 5, "": 3}
    assert len(table.attrs["boxes"]) == 3  # the kept images' boxes only


def test_prepare_caches_the_images_and_records_the_failures(folder, tmp_path):
    meta = prepare(folder, tmp_path / "c", size=16, workers=1, progress=False, dataset="rsna", options={})
    images, index, loaded = load_cache(tmp_path / "c")
    assert loaded["labels"] == ["Pneumonia", "Lung Opacity"] and meta["arguments"]["options"] == {}
    assert sorted(f["image"] for f in meta["failed"]) == sorted([_name(_id(2)), _name(_id(7))])  # missing, garbage
    cached = [i for i, _, _, h in IMAGES if h not in ("missing", "garbage")]
    assert index["image"].tolist() == [_name(i) for i in cached]
    assert index["Pneumonia"].tolist() == [int(bool(b)) for i, b, _, _ in IMAGES if i in cached]
    assert index.set_index("patient_id").loc[_id(1), "sex"] == "F" and index["age"].iloc[1] == 51
    plan = sources.read_source("rsna", folder).set_index("image")
    assert index["split"].tolist() == plan.loc[index["image"], "split"].tolist()
    counts = meta["label_counts"]
    assert sum(c["Lung Opacity"]["missing"] for c in counts.values()) == 1  # _id(9): no class row
    assert sum(c["Pneumonia"]["missing"] for c in counts.values()) == 0
    assert sum(c["Pneumonia"]["positive"] for c in counts.values()) == 2  # _id(0), _id(5) (_id(2) not on disk)
    assert meta["source"]["boxes"] == 4 and meta["source"]["planned"] == 10
    assert images[0].std() > 3
    for name in ("index.csv", "meta.json"):
        written = (tmp_path / "c" / name).read_text()
        assert "Doe" not in written and SECRET_ID not in written


def test_prepare_keeps_the_boxes_of_the_cached_images_with_their_sizes(folder, tmp_path):
    import pandas as pd
    import pydicom

    from chexnet.data.cache import BOXES

    meta = prepare(folder, tmp_path / "c", size=16, workers=1, progress=False, dataset="rsna", options={})
    boxes = pd.read_csv(tmp_path / "c" / BOXES, keep_default_na=False)
    cached = [(i, b) for i, b, _, h in IMAGES if h not in ("missing", "garbage")]  # _id(2)'s box: no file
    sizes = {i: pydicom.dcmread(folder / _name(i), stop_before_pixels=True) for i, b in cached if b}
    assert [tuple(r) for r in boxes.itertuples(index=False)] == [
        (_name(i), "Pneumonia", "", x, y, w, h, int(sizes[i].Rows), int(sizes[i].Columns))
        for i, b in cached for x, y, w, h in b]
    assert len(boxes) == 3 and (boxes["height"] == 24).all() and (boxes["width"] == 24).all()
    assert meta["files"]["boxes"] == BOXES and meta["boxes"]["count"] == 3 and meta["boxes"]["not_cached"] == 1
    assert "Doe" not in (tmp_path / "c" / BOXES).read_text()


def test_without_the_class_file_only_pneumonia_is_labelled(tmp_path):
    folder = make_rsna_folder(tmp_path / "rsna", classes=False, size=8)
    table = sources.read_source("rsna", folder)
    assert [c for c in table.columns if c in ("Pneumonia", "Lung Opacity")] == ["Pneumonia"]
    assert table.attrs["source"]["class_info"] is None and "Lung Opacity" not in table.attrs["source"]["labels"]


def test_the_layout_is_found_or_refused_naming_what_was_looked_for(tmp_path):
    with pytest.raises(MetadataError, match="stage_2_train_labels.csv, .*stage_1_train_labels.csv"):
        sources.read_source("rsna", tmp_path)
    (tmp_path / "stage_1_train_labels.csv").write_text(_labels_text(IMAGES[:2]))
    layout = rsna.find_layout(tmp_path)
    assert (layout.stage, layout.class_csv, layout.image_dir) == ("stage_1", None, "stage_1_train_images")
    table = sources.read_source("rsna", tmp_path)
    assert table["image"].tolist() == [f"stage_1_train_images/{_id(0)}.dcm", f"stage_1_train_images/{_id(1)}.dcm"]
    assert table["path"].eq("").all()
    with pytest.raises(CacheError, match="no image with ViewPosition PA"):
        sources.read_source("rsna", tmp_path, view="PA")
    with pytest.raises(ValueError, match="dataset 'rsna' takes no option labeler"):
        sources.check_options("rsna", {"labeler": "negbio"})


def test_ages_are_read_in_both_spellings():
    assert rsna.parse_age("58") == 58 and rsna.parse_age("051Y") == 51 and rsna.parse_age("018M") == 1.5
    assert np.isnan(rsna.parse_age("")) and np.isnan(rsna.parse_age("old"))


def _line(text: str, number: int, line: str) -> str:  # line numbers as in the file (header = 1)
    lines = text.splitlines()
    lines[number - 1] = line
    return "\n".join(lines) + "\n"


LABELS_CSV = _labels_text()
CLASS_CSV = _class_text()
A, B = _id(0), _id(1)  # lines 2-3: A's two boxes; line 4: B (Target 0)


@pytest.mark.parametrize("name,text,line,column,why", [
    ("labels", LABELS_CSV.replace(",Target", ",target"), "line 1 (header)", "'Target'", "missing column"),
    ("labels", _line(LABELS_CSV, 4, f"{B},,,,,2"), "line 4", "'Target'", "not 0 or 1"),
    ("labels", _line(LABELS_CSV, 4, f"{B},1,,,,0"), "line 4", "'x'", "a Target 0 row has no box"),
    ("labels", _line(LABELS_CSV, 4, f"{B},,,,,1"), "line 4", "'x'", "empty on a Target 1 row"),
    ("labels", _line(LABELS_CSV, 2, f"{A},264,152,,379,1"), "line 2", "'width'", "empty on a Target 1 row"),
    ("labels", _line(LABELS_CSV, 3, f"{A},-1,152,256,453,1"), "line 3", "'x'", "not a number of pixels >= 0"),
    ("labels", _line(LABELS_CSV, 3, f"{A},562,152,0,453,1"), "line 3", "'width'", "not a number of pixels > 0"),
    ("labels", _line(LABELS_CSV, 3, f"{A},562,abc,256,453,1"), "line 3", "'y'", "not a number of pixels"),
    ("labels", _line(LABELS_CSV, 3, f"{A},,,,,0"), "line 3", "'Target'", "has Target 1 on an earlier line"),
    ("labels", _line(LABELS_CSV, 4, ",,,,,0"), "line 4", "'patientId'", "not an image id"),
    ("classes", _line(CLASS_CSV, 4, f"{B},Pneumonia"), "line 4", "'class'", "not one of"),
    ("classes", _line(CLASS_CSV, 3, f"{A},Normal"), "line 3", "'class'", "has class 'Lung Opacity' on an earlier"),
    ("classes", CLASS_CSV.replace("patientId,class", "patientId,label"), "line 1 (header)", "'class'",
     "missing column"),
])
def test_malformed_input_names_the_file_line_and_column(tmp_path, name, text, line, column, why):
    files = {"labels": LABELS_CSV, "classes": CLASS_CSV, name: text}
    (tmp_path / "stage_2_train_labels.csv").write_text(files["labels"])
    (tmp_path / "stage_2_detailed_class_info.csv").write_text(files["classes"])
    with pytest.raises(MetadataError) as err:
        sources.read_source("rsna", tmp_path)
    message = str(err.value)
    path = tmp_path / ("stage_2_train_labels.csv" if name == "labels" else "stage_2_detailed_class_info.csv")
    assert str(path) in message and line in message and column in message and why in message, message


def test_the_cli_prepares_rsna(folder, tmp_path, capsys):
    from chexnet import cli

    assert cli.main(["prepare", "--dataset", "rsna", "--data", str(folder), "--out", str(tmp_path / "c"),
                     "--size", "8", "--workers", "1", "--view", "PA"]) == 0
    _, index, meta = load_cache(tmp_path / "c")
    assert index["view"].eq("PA").all() and len(index) == 5 and meta["failed"] == []
    assert cli.main(["prepare", "--dataset", "rsna", "--data", str(folder), "--out", str(tmp_path / "n"),
                     "--labeler", "negbio"]) == 2
    assert "dataset 'rsna' takes no option labeler" in capsys.readouterr().err
