"""The ``mimic`` source: a generated MIMIC-CXR-JPG folder in the release's layout (metadata, official split, CheXpert
and NegBio study labels, ``files/pNN/pSUBJECT/sSTUDY/*.jpg``) read and cached by ``prepare(..., dataset="mimic")``:
labels per study under the policies, the official split, views, the missing counts, what is left out and why;
malformed files named by file, line and column; ``chexnet prepare --dataset mimic --labeler negbio``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chexnet.data import sources
from chexnet.data.cache import CacheError, load_cache
from chexnet.data.prepare import prepare
from chexnet.data.sources import mimic
from chexnet.data.sources.mimic import LABELS, MetadataError

# the label file's columns, in MIMIC-CXR-JPG's order (not CheXpert's)
MIMIC_COLUMNS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
                 "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                 "Pneumothorax", "Support Devices"]
# (dicom_id, subject, study, ViewPosition, split or None: not in the split file)
IMAGES = [
    ("a1", "10000032", "50414267", "PA", "train"),
    ("a2", "10000032", "50414267", "LATERAL", "train"),  # lateral: left out
    ("a3", "10000032", "53189527", "AP", "train"),
    ("b1", "11000011", "51000001", "PA", "validate"),
    ("b2", "11000011", "51000001", "", "validate"),  # no view position: left out
    ("c1", "12000022", "52000002", "PA", "test"),
    ("c2", "12000022", "52000003", "AP", "test"),  # its study is not in the label files: labels all missing
    ("d1", "13000033", "53000003", "PA", "train"),  # no JPEG on disk: recorded as failed
    ("e1", "14000044", "54000004", "PA", None),  # not in the split file: left out
]
# study -> {CheXpert name: value as written}; names not given are blank
CHEXPERT = {
    "50414267": {"Cardiomegaly": "1.0", "Edema": "-1.0", "Pleural Effusion": "0.0", "Support Devices": "1.0"},
    "53189527": {"No Finding": "1.0"},
    "51000001": {"Atelectasis": "-1.0", "Pneumonia": "1.0", "Lung Opacity": "1.0"},
    "52000002": {"Pleural Effusion": "1.0", "Pneumothorax": "0.0"},
    "53000003": {"Fracture": "1.0"},
    "54000004": {"No Finding": "1.0"},
    "59999999": {"Edema": "1.0"},  # a study without images (subject 19999999)
}
NEGBIO = {**CHEXPERT, "50414267": {"Cardiomegaly": "1.0", "Edema": "1.0", "Pleural Effusion": "-1.0"}}
SUBJECT_OF = {study: subject for _, subject, study, _, _ in IMAGES} | {"59999999": "19999999"}
VOCABULARY_NAME = {"Pleural Effusion": "Effusion"}


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


def _metadata_text(images=IMAGES) -> str:
    header = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
              "Columns", "StudyDate", "StudyTime"]
    return _csv_text(header, [[d, s, t, "CHEST (PA AND LAT)", v, "3056", "2544", "21800506", "213014.531"]
                              for d, s, t, v, _ in images])


def _split_text(images=IMAGES) -> str:
    return _csv_text(["dicom_id", "study_id", "subject_id", "split"],
                     [[d, t, s, sp] for d, s, t, _, sp in images if sp is not None])


def _labels_text(table: dict) -> str:
    return _csv_text(["subject_id", "study_id", *MIMIC_COLUMNS],
                     [[SUBJECT_OF[study], study, *(values.get(c, "") for c in MIMIC_COLUMNS)]
                      for study, values in table.items()])


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def make_mimic_folder(root: Path, size: int = 24) -> Path:
    """The generated release in ``root`` (as PhysioNet's mimic-cxr-jpg/2.0.0/): the CSVs at the top, gzip-compressed
    but for the split file (plain .csv), and a JPEG per image but d1. Returns ``root``."""
    from PIL import Image

    from tests.conftest import xray_like

    _write(root / "mimic-cxr-2.0.0-metadata.csv.gz", _metadata_text())
    _write(root / "mimic-cxr-2.0.0-split.csv", _split_text())
    _write(root / "mimic-cxr-2.0.0-chexpert.csv.gz", _labels_text(CHEXPERT))
    _write(root / "mimic-cxr-2.0.0-negbio.csv.gz", _labels_text(NEGBIO))
    rng = np.random.default_rng(0)
    for dicom, subject, study, _, _ in IMAGES:
        if dicom == "d1":
            continue
        path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(xray_like(rng, size)).save(path, quality=90)
    return root


def expected_labels(table: dict, study: str, uncertain: str = "ignore", blank: str = "negative") -> dict:
    """The labels of an image of ``study``, worked out here from what the generator wrote."""
    if study not in table:
        return {label: np.nan for label in LABELS}
    out = {}
    for name in MIMIC_COLUMNS:
        text = table[study].get(name, "")
        value = {"1.0": 1.0, "0.0": 0.0, "-1.0": {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}[uncertain],
                 "": {"negative": 0.0, "missing": np.nan}[blank]}[text]
        out[VOCABULARY_NAME.get(name, name)] = value
    return out


KEPT = ["a1", "a3", "b1", "c1", "c2", "d1"]  # frontal and in the split file, the metadata's order
STUDY_OF = {d: t for d, _, t, _, _ in IMAGES}


def _name(dicom: str) -> str:
    _, subject, study, _, _ = next(i for i in IMAGES if i[0] == dicom)
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_mimic_folder(tmp_path_factory.mktemp("mimic"))


def test_the_labels_are_chexperts_in_vocabulary_order():
    assert LABELS == sources.chexpert.LABELS and "Effusion" in LABELS and "Pleural Effusion" not in LABELS
    assert set(sources.OPTIONS["mimic"]) == {"labeler", "uncertain", "blank"}


def test_prepare_caches_frontal_images_with_their_studys_labels_and_the_official_split(folder, tmp_path):
    options = {"labeler": "chexpert", "uncertain": "ignore", "blank": "negative"}
    meta = prepare(folder, tmp_path / "c", size=16, workers=1, progress=False, dataset="mimic", options=options)
    images, index, loaded = load_cache(tmp_path / "c")
    assert loaded["labels"] == list(LABELS) and meta["arguments"]["options"] == dict(sorted(options.items()))
    assert [f["image"] for f in meta["failed"]] == [_name("d1")]
    cached = [d for d in KEPT if d != "d1"]
    assert index["image"].tolist() == [_name(d) for d in cached]
    assert index["patient_id"].tolist() == ["10000032", "10000032", "11000011", "12000022", "12000022"]
    assert index["split"].tolist() == ["train", "train", "val", "test", "test"]
    assert index["view"].tolist() == ["PA", "AP", "PA", "PA", "AP"]
    assert index["sex"].eq("").all() and index["age"].isna().all()
    want = pd.DataFrame([expected_labels(CHEXPERT, STUDY_OF[d]) for d in cached])[list(LABELS)]
    np.testing.assert_array_equal(index[list(LABELS)].to_numpy(np.float64), want.to_numpy(np.float64))
    row = index.set_index("image").loc[_name("a1")]  # 1.0, -1.0 (ignore: missing), 0.0, blank (negative)
    assert (row["Cardiomegaly"], row["Effusion"], row["Atelectasis"]) == (1, 0, 0) and np.isnan(row["Edema"])
    assert index.set_index("image").loc[_name("c2"), list(LABELS)].isna().all()  # a study without labels
    assert images[0].std() > 3

    for split in ("train", "val", "test"):  # the missing counts are the generator's uncertain values and c2
        part = want[index["split"].to_numpy() == split]
        counts = meta["label_counts"][split]
        assert {k: c["missing"] for k, c in counts.items()} == part.isna().sum().to_dict(), split
        assert {k: c["positive"] for k, c in counts.items()} == (part == 1).sum().to_dict(), split
    assert meta["label_counts"]["train"]["Edema"]["missing"] == 1
    assert all(c["missing"] == (split == "test") + (k == "Edema") * (split == "train")
               + (k == "Atelectasis") * (split == "val") for split, cs in meta["label_counts"].items()
               for k, c in cs.items())

    src = meta["source"]
    assert src["planned"] == 6 and src["split_mode"].startswith("official (mimic-cxr-2.0.0-split.csv")
    assert src["excluded_by_view"] == 2 and src["views_left_out"] == {"LATERAL": 1, "": 1}
    assert src["images_without_split"] == 1 and src["split_rows_without_metadata"] == 0
    assert src["images_without_labels"] == 1 and src["studies_without_labels"] == 1
    assert src["labeled_studies_without_images"] == 1  # 59999999
    assert src["labeled_studies_without_kept_images"] == 2  # 59999999, and 54000004 (e1: no split)
    assert src["images_missing_on_disk"] == 1 and "not in this release" in src["age_sex"]
    assert src["labeler"] == "chexpert" and src["metadata"][2].endswith("mimic-cxr-2.0.0-chexpert.csv.gz")
    json.dumps(src)


@pytest.mark.parametrize("uncertain,blank", [("ones", "missing"), ("zeros", "negative"), ("mixed", "missing")])
def test_the_policies_are_chexperts(folder, uncertain, blank):
    table = sources.read_source("mimic", folder, uncertain=uncertain, blank=blank).set_index("image")
    for dicom in KEPT:
        got = table.loc[_name(dicom), list(LABELS)].to_numpy(np.float64)
        if uncertain == "mixed":  # the uncertain Edema (a1) and Atelectasis (b1): ones
            want = expected_labels(CHEXPERT, STUDY_OF[dicom], "ignore", blank)
            if dicom == "a1":
                want["Edema"] = 1.0
            if dicom == "b1":
                want["Atelectasis"] = 1.0
        else:
            want = expected_labels(CHEXPERT, STUDY_OF[dicom], uncertain, blank)
        np.testing.assert_array_equal(got, np.array([want[label] for label in LABELS]), err_msg=dicom)
    assert table.attrs["source"]["labels"]["blank"] == blank


def test_view_keeps_one_view_position_and_the_folder_may_be_below_data(tmp_path):
    make_mimic_folder(tmp_path / "mimic-cxr-jpg" / "2.1.0", size=8)
    table = sources.read_source("mimic", tmp_path, view="AP")
    assert table["image"].tolist() == [_name("a3"), _name("c2")] and table["view"].eq("AP").all()
    assert table.attrs["source"]["folder"] == str(tmp_path / "mimic-cxr-jpg" / "2.1.0")
    assert table.attrs["source"]["excluded_by_view"] == 6  # 3 PA + 1 PA without a JPEG + lateral + blank
    assert table["path"].tolist() == [str(tmp_path / "mimic-cxr-jpg" / "2.1.0" / _name(d)) for d in ("a3", "c2")]
    _write(tmp_path / "mimic-cxr-jpg" / "2.1.0" / "mimic-cxr-2.0.0-metadata.csv.gz",
           _metadata_text([i for i in IMAGES if i[3] != "PA"]))
    with pytest.raises(CacheError, match="no PA image"):
        sources.read_source("mimic", tmp_path, view="PA")


def test_missing_files_options_and_folders_are_named(tmp_path):
    with pytest.raises(MetadataError, match="no MIMIC-CXR-JPG mimic-cxr-2.0.0-metadata.csv"):
        sources.read_source("mimic", tmp_path)
    _write(tmp_path / "mimic-cxr-2.0.0-metadata.csv", _metadata_text())
    with pytest.raises(MetadataError, match=r"no mimic-cxr-2.0.0-split.csv or mimic-cxr-2.0.0-split.csv.gz"):
        sources.read_source("mimic", tmp_path)
    _write(tmp_path / "mimic-cxr-2.0.0-split.csv.gz", _split_text())
    _write(tmp_path / "mimic-cxr-2.0.0-chexpert.csv", _labels_text(CHEXPERT))
    with pytest.raises(MetadataError, match=r"no mimic-cxr-2.0.0-negbio.csv .*the negbio labels"):
        sources.read_source("mimic", tmp_path, labeler="negbio")
    with pytest.raises(ValueError, match="unknown labeler 'chexbert'"):
        sources.read_source("mimic", tmp_path, labeler="chexbert")
    with pytest.raises(ValueError, match="unknown blank policy"):
        sources.read_source("mimic", tmp_path, blank="zero")
    with pytest.raises(ValueError, match="dataset 'mimic' takes no option readers"):
        sources.check_options("mimic", {"readers": "any"})
    table = sources.read_source("mimic", tmp_path)  # plain .csv files, no images: every path ''
    assert len(table) == 6 and table["path"].eq("").all()


def _lines(text: str, number: int, line: str) -> str:  # line numbers as in the file (header = 1)
    lines = text.splitlines()
    lines[number - 1] = line
    return "\n".join(lines) + "\n"


META = _metadata_text()
SPLIT = _split_text()
LABEL = _labels_text(CHEXPERT)


@pytest.mark.parametrize("name,text,line,column,why", [
    ("metadata", META.replace("ViewPosition", "View"), "line 1 (header)", "'ViewPosition'", "missing column"),
    ("metadata", _lines(META, 3, META.splitlines()[2].replace("10000032", "p10000032")), "line 3", "'subject_id'",
     "not a subject id"),
    ("metadata", _lines(META, 4, META.splitlines()[2]), "line 4", "'dicom_id'", "the image is listed more than once"),
    ("metadata", _lines(META, 3, META.splitlines()[2].replace("10000032", "10000099")), "line 3", "'subject_id'",
     "study 50414267 is listed under subject 10000032"),
    ("split", _lines(SPLIT, 5, "b1,51000001,11000011,valid"), "line 5", "'split'", "not train, validate, test"),
    ("split", SPLIT.replace("subject_id", "subject"), "line 1 (header)", "'subject_id'", "missing column"),
    ("split", _lines(SPLIT, 5, "b1,51000001,12000022,validate"), "line 5", "'subject_id'",
     "image b1 is 11000011 in mimic-cxr-2.0.0-metadata.csv"),
    ("chexpert", LABEL.replace(",Pneumothorax,", ",Pneumothorax?,"), "line 1 (header)", "'Pneumothorax'",
     "missing column"),
    ("chexpert", _lines(LABEL, 3, LABEL.splitlines()[2].replace("1.0", "2.0")), "line 3", "'No Finding'",
     "not 1.0, 0.0, -1.0 or blank"),
    ("chexpert", _lines(LABEL, 4, LABEL.splitlines()[2]), "line 4", "'study_id'", "the study is listed more than once"),
    ("chexpert", _lines(LABEL, 2, LABEL.splitlines()[1].replace("10000032", "10000099")), "line 2", "'subject_id'",
     "study 50414267 is subject 10000032's"),
])
def test_malformed_input_names_the_file_line_and_column(tmp_path, name, text, line, column, why):
    files = {"metadata": META, "split": SPLIT, "chexpert": LABEL}
    files[name] = text
    for stem, content in files.items():
        _write(tmp_path / f"mimic-cxr-2.0.0-{stem}.csv", content)
    with pytest.raises(MetadataError) as err:
        sources.read_source("mimic", tmp_path)
    message = str(err.value)
    path = tmp_path / f"mimic-cxr-2.0.0-{name}.csv"
    assert str(path) in message and line in message and column in message and why in message, message


def test_a_short_line_is_named(tmp_path):
    path = _write(tmp_path / "labels.csv", _lines(LABEL, 3, "11000011,51000001,1.0"))
    with pytest.raises(MetadataError, match=r"labels\.csv line 3: 3 field\(s\), the header has 16"):
        mimic.read_labels(path)


def test_the_cli_prepares_mimic_with_the_negbio_labels(folder, tmp_path, capsys):
    from chexnet import cli

    assert cli.main(["prepare", "--dataset", "mimic", "--data", str(folder), "--out", str(tmp_path / "c"),
                     "--size", "8", "--workers", "1", "--labeler", "negbio"]) == 0
    out = capsys.readouterr().out
    assert "mimic options: --labeler negbio, --uncertain ignore, --blank negative" in out
    _, index, meta = load_cache(tmp_path / "c")
    assert meta["arguments"]["options"] == {"blank": "negative", "labeler": "negbio", "uncertain": "ignore"}
    assert meta["source"]["labeler"] == "negbio" and meta["source"]["metadata"][2].endswith("negbio.csv.gz")
    a1 = index.set_index("image").loc[_name("a1")]
    assert a1["Edema"] == 1 and np.isnan(a1["Effusion"]) and a1["Support Devices"] == 0  # NegBio's, not CheXpert's
    want = pd.DataFrame([expected_labels(NEGBIO, STUDY_OF[d]) for d in KEPT if d != "d1"])[list(LABELS)]
    np.testing.assert_array_equal(index[list(LABELS)].to_numpy(np.float64), want.to_numpy(np.float64))
    assert [f["image"] for f in meta["failed"]] == [_name("d1")]
