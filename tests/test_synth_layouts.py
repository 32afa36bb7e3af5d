"""``chexnet synth --layout NAME``: each source's exact layout and encodings from the synthetic NIH set, which
``prepare --dataset NAME`` reads back to the labels, splits, views and missing values the writer wrote (its
files and its record), and which keep the draft's findings; the site shift changes the pixels only."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from chexnet.data.synth_layouts import CHEXPERT_COLUMNS, FROM_NIH, site_shift


def test_site_shift_changes_contrast_adds_noise_and_collimates():
    img = np.full((100, 100), 128, np.uint8)
    assert site_shift(img, 0.0, np.random.default_rng(0)) is img
    out = site_shift(img, 1.0, np.random.default_rng(0))
    assert out[:8].max() == 0 and out[:, -8:].max() == 0 and out[8, 8] > 0  # 8% borders
    inner = out[8:-8, 8:-8].astype(float)
    assert inner.mean() == pytest.approx(255 * (128 / 255) ** 1.6, abs=1.5) and inner.std() > 5


def test_chexpert_layout_prepares_back_to_the_generators_labels(tmp_path, capsys):
    from chexnet import cli
    from chexnet.data.cache import load_cache
    from chexnet.labels import PATHOLOGIES

    out = tmp_path / "chexpert"
    assert cli.main(["synth", "--layout", "chexpert", "--out", str(out), "--images", "60", "--size", "64",
                     "--workers", "1", "--shift", "0.5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    root = out / "CheXpert-v1.0-small"
    train = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    valid = pd.read_csv(root / "valid.csv", dtype=str, keep_default_na=False)
    assert tuple(train.columns) == CHEXPERT_COLUMNS and len(train) + len(valid) == 60 == summary["images"]
    assert not list(out.glob(".synth-nih-*")), "the NIH-layout draft is removed"
    cells = pd.concat([train, valid])[list(FROM_NIH)].to_numpy().ravel()
    assert {"1.0", "-1.0", "0.0", ""} >= set(cells) and {"1.0", ""} <= set(cells)
    assert all((out / p).is_file() for p in train["Path"])
    assert cli.main(["prepare", "--dataset", "chexpert", "--data", str(out), "--out", str(tmp_path / "c"), "--size",
                     "32", "--workers", "1", "--uncertain", "ones"]) == 0
    _, index, meta = load_cache(tmp_path / "c")
    assert meta["count"] == 60 and meta["splits"]["test"]["images"] == len(valid)
    rows = pd.concat([train, valid]).assign(image=lambda d: d["Path"].str.replace("CheXpert-v1.0-small/", ""))
    got = index.set_index("image").loc[rows["image"]]
    for obs in FROM_NIH:  # -1.0 -> 1 under --uncertain ones; blank -> 0 (negative)
        want = rows[obs].map({"1.0": 1.0, "-1.0": 1.0, "0.0": 0.0, "": 0.0}).to_numpy()
        name = "Effusion" if obs == "Pleural Effusion" else obs
        np.testing.assert_array_equal(got[name].to_numpy(), want)
    assert set(PATHOLOGIES) - set(meta["labels"]) == {"Infiltration", "Mass", "Nodule", "Emphysema", "Fibrosis",
                                                       "Pleural_Thickening", "Hernia"}


# ------------------------------------------------------------------------- the other layouts, on one small draft

LAYOUT_TESTS = ("mimic", "padchest", "vindr", "rsna", "csv")


@pytest.fixture(scope="module")
def draft(tmp_path_factory):
    from chexnet.data.synth_layouts.common import read_draft
    from chexnet.data.synthetic import generate

    root = tmp_path_factory.mktemp("draft")
    generate(root, images=40, size=64, seed=0, workers=1, progress=False)
    return root, {d.image: d for d in read_draft(root)}


def _write_and_prepare(layout, draft, tmp_path, shift=0.0, **options):
    """(summary, record by image, cache index by image, meta, the layout's folder)."""
    from chexnet.data.cache import load_cache
    from chexnet.data.prepare import prepare
    from chexnet.data.synth_layouts import writer

    record = []
    out = tmp_path / layout
    summary = writer(layout)(draft[0], out, seed=0, shift=shift, record=record)
    if layout == "csv":
        options = {"mapping": summary["mapping"], **options}
    prepare(out, tmp_path / f"cache-{layout}", size=32, workers=1, progress=False, dataset=layout, options=options)
    _, index, meta = load_cache(tmp_path / f"cache-{layout}")
    return summary, {r["image"]: r for r in record}, index.set_index("image"), meta, out


def _check_rows(index, meta, record):
    """The cache holds the record's kept images, with its splits (where the writer set them), views, ages, sexes;
    the excluded ones are counted; patients never straddle splits."""
    kept = {k: r for k, r in record.items() if not r["excluded"]}
    assert set(index.index) == set(kept) and meta["count"] == len(kept)
    assert meta["source"].get("excluded_by_view", 0) == len(record) - len(kept)
    for image, r in kept.items():
        row = index.loc[image]
        if r["split"] is not None:
            assert row["split"] == r["split"], image
        else:
            assert row["split"] in ("train", "val", "test")
        assert row["view"] == r["view"], image
        if r["age"] is not None:
            assert (np.isnan(row["age"]) and np.isnan(r["age"])) or row["age"] == r["age"], image
        if r["sex"] is not None:
            assert row["sex"] == r["sex"], image
    assert (index.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(index["split"]) == {"train", "val", "test"}


def _check_missing(index, meta, want_missing: dict):
    for label, n in want_missing.items():
        assert int(index[label].isna().sum()) == n, label
        assert sum(c[label]["missing"] for c in meta["label_counts"].values()) == n, label


def test_mimic_layout_prepares_back_to_the_written_studies(draft, tmp_path):
    from chexnet.data.synth_layouts.mimic import FROM_NIH, OBSERVATIONS

    summary, record, index, meta, out = _write_and_prepare("mimic", draft, tmp_path)
    assert summary["lateral_images"] > 0 and summary["images"] == len(record) == 40 + summary["lateral_images"]
    for stem in ("metadata", "split", "chexpert", "negbio"):
        assert (out / f"mimic-cxr-2.0.0-{stem}.csv.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert all(re.fullmatch(r"files/p1\d/p1\d{7}/s5\d{7}/[0-9a-f]{8}(-[0-9a-f]{8}){4}\.jpg", k) for k in record)
    assert all((out / k).is_file() for k in record)
    _check_rows(index, meta, record)
    assert index["age"].isna().all() and (index["sex"] == "").all()
    labels = pd.read_csv(out / "mimic-cxr-2.0.0-chexpert.csv.gz", dtype=str, keep_default_na=False)
    assert tuple(labels.columns) == ("subject_id", "study_id", *OBSERVATIONS) and len(labels) == 40
    cells = labels.set_index("study_id")
    study = index.index.str.extract(r"/s(\d+)/", expand=False)
    for obs in OBSERVATIONS:  # the defaults: -1.0 missing (uncertain ignore), blank negative
        name = "Effusion" if obs == "Pleural Effusion" else obs
        given = cells.loc[study, obs].to_numpy()
        want = pd.Series(given).map({"1.0": 1.0, "0.0": 0.0, "": 0.0, "-1.0": np.nan}).to_numpy()
        np.testing.assert_array_equal(index[name].to_numpy(), want, err_msg=obs)
    _check_missing(index, meta, {"Effusion" if o == "Pleural Effusion" else o: int((cells[o] == "-1.0").sum())
                                 for o in OBSERVATIONS})
    assert summary["cells"]["-1.0"] > 0 and summary["cells"]["0.0"] > 0
    for image, r in record.items():  # the draft's findings, as CheXpert's observations
        if not r["excluded"]:
            findings = set(draft[1][r["draft"]].findings)
            row = cells.loc[image.split("/")[3][1:]]
            for obs, sources in FROM_NIH.items():
                assert (row[obs] in ("1.0", "-1.0")) == bool(findings & set(sources)), (image, obs)


def test_padchest_layout_prepares_back_to_the_draft_findings(draft, tmp_path):
    from PIL import Image

    from chexnet.labels import PATHOLOGIES

    summary, record, index, meta, out = _write_and_prepare("padchest", draft, tmp_path)
    table = pd.read_csv(out / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", dtype=str,
                        keep_default_na=False)
    assert len(table) == len(record) == summary["images"] and summary["lateral_images"] > 0
    assert set(table["Projection"]) == {"PA", "AP", "AP_horizontal", "L"}
    assert table["Labels"].str.match(r"^\['[^']+'(, '[^']+')*\]$").all()
    first = out / table["ImageDir"].iat[0] / table["ImageID"].iat[0]
    assert first.read_bytes()[24] == 16  # a 16-bit PNG ...
    values = np.asarray(Image.open(first))
    assert values.max() <= 4095 and values.max() > 255  # ... holding 12 bits
    _check_rows(index, meta, record)
    assert meta["source"]["labels"]["dropped_terms"]  # the terms without a vocabulary label
    for image in index.index:  # exactly the draft's findings; No Finding their absence; no missing value
        findings = set(draft[1][record[image]["draft"]].findings)
        row = index.loc[image]
        assert {p for p in PATHOLOGIES if row[p] == 1} == findings and {row[p] for p in PATHOLOGIES} <= {0, 1}
        assert row["No Finding"] == (not findings) and row["Fracture"] == row["Support Devices"] == 0
    _check_missing(index, meta, {p: 0 for p in PATHOLOGIES})


def test_vindr_layout_prepares_back_to_the_readers_marks(draft, tmp_path):
    from chexnet.data.imageio import read_xray
    from chexnet.data.sources import read_source
    from chexnet.data.synth_layouts.vindr import CLASS_OF
    from chexnet.labels import KEEP_OWN, SOURCE_NAMES

    summary, record, index, meta, out = _write_and_prepare("vindr", draft, tmp_path, readers="any")
    train = pd.read_csv(out / "annotations" / "annotations_train.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(out / "annotations" / "annotations_test.csv", dtype=str, keep_default_na=False)
    assert "rad_id" not in test.columns and (train.groupby("image_id")["rad_id"].nunique() == 3).all()
    assert set(train["rad_id"]) <= {f"R{k}" for k in range(1, 18)} and "No finding" in set(train["class_name"])
    assert ((train["class_name"] == "No finding") == (train["x_min"] == "")).all()  # every finding has a box
    _check_rows(index, meta, record)
    assert (index["patient_id"] == index.index.str.split("/").str[1].str[:-6]).all()  # each image its own patient
    names = {c: ((c,) if t is KEEP_OWN else (t,) if isinstance(t, str) else t if isinstance(t, tuple) else ())
             for c, t in SOURCE_NAMES["vindr"].items()}
    rows = pd.concat([train.assign(part="train"), test.assign(part="test")])
    for image in index.index:  # --readers any: a label is 1 when a reader marked a class of it
        marks = rows[(rows["part"] + "/" + rows["image_id"] + ".dicom") == image]["class_name"]
        want = {label for c in marks if c != "No finding" for label in names[c]}
        row = index.loc[image]
        got = {label for label in meta["labels"] if label != "No Finding" and row[label] == 1}
        assert got == want, image
        assert row["No Finding"] == (set(marks) == {"No finding"})
        if image.startswith("test/"):  # the consensus: the draft's findings, as VinDr's classes
            cls = {CLASS_OF[f] for f in draft[1][record[image]["draft"]].findings}
            assert set(marks) == (cls or {"No finding"})
    _check_missing(index, meta, {label: 0 for label in meta["labels"]})
    table = read_source("vindr", out)
    assert len(table.attrs["boxes"]) == summary["boxes"] > 0
    majority = read_source("vindr", out, readers="majority").set_index("image")
    findings = [label for label in meta["labels"] if label != "No Finding"]
    assert (majority[findings] <= index.loc[majority.index, findings]).to_numpy().all()
    assert (majority["No Finding"] > index.loc[majority.index, "No Finding"]).any()  # the readers disagree
    import pydicom

    inverted = 0
    for image, r in record.items():  # 12 bits, MONOCHROME1 among them: the draft's pixels, bone bright
        ds = pydicom.dcmread(out / image)
        inverted += ds.PhotometricInterpretation == "MONOCHROME1"
        assert ds.BitsStored == 12 and ds.pixel_array.max() <= 4095
        np.testing.assert_array_equal(read_xray(out / image), draft[1][r["draft"]].pixels())
    assert inverted == summary["monochrome1"] > 0


def test_rsna_layout_prepares_back_to_target_boxes_and_headers(draft, tmp_path):
    from chexnet.data.imageio import read_xray
    from chexnet.data.synth_layouts.rsna import OPACITY_FINDINGS

    summary, record, index, meta, out = _write_and_prepare("rsna", draft, tmp_path)
    labels = pd.read_csv(out / "stage_2_train_labels.csv", dtype=str, keep_default_na=False)
    classes = pd.read_csv(out / "stage_2_detailed_class_info.csv", dtype=str, keep_default_na=False)
    assert tuple(labels.columns) == ("patientId", "x", "y", "width", "height", "Target") and len(classes) == len(labels)
    boxed = labels["Target"] == "1"
    assert (boxed == (labels["x"] != "")).all() and summary["boxes"] == boxed.sum()
    assert 0 < summary["positive"] < 40 and labels["patientId"].nunique() == 40
    _check_rows(index, meta, record)
    for image, r in record.items():
        opacity = bool(set(draft[1][r["draft"]].findings) & set(OPACITY_FINDINGS))
        assert index.at[image, "Pneumonia"] == index.at[image, "Lung Opacity"] == opacity, image
        np.testing.assert_array_equal(read_xray(out / image), draft[1][r["draft"]].pixels())
    assert set(index["view"]) == {"PA", "AP"} and not index["age"].isna().any()
    _check_missing(index, meta, {"Pneumonia": 0, "Lung Opacity": 0})


def test_csv_layout_and_its_mapping_prepare_back_through_the_cli(draft, tmp_path, capsys):
    from chexnet import cli
    from chexnet.data.cache import load_cache
    from chexnet.data.synth_layouts.hospital import FINDINGS

    out = tmp_path / "hospital"
    assert cli.main(["synth", "--layout", "csv", "--out", str(out), "--images", "40", "--size", "64", "--workers",
                     "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert not list(out.glob(".synth-nih-*")) and summary["mapping"] == str((out / "mapping.yaml").resolve())
    assert cli.main(["prepare", "--dataset", "csv", "--data", str(out), "--mapping", summary["mapping"], "--out",
                     str(tmp_path / "c"), "--size", "32", "--workers", "1"]) == 0
    _, index, meta = load_cache(tmp_path / "c")
    export = pd.read_csv(out / "radiology_export.csv", sep=";", dtype=str, keep_default_na=False)
    assert (out / "radiology_export.csv").read_text().startswith("AccessionNumber;MRN;")
    assert export["MRN"].str.fullmatch(r"\d{7}").all() and export["PatientAge"].str.fullmatch(r"\d{3}Y").all()
    assert len(export) == len(index) == 40 and meta["splits"]["test"]["images"] == summary["test_images"]
    rows = export.set_index("ImagePath").loc[index["image"]]
    np.testing.assert_array_equal(index["split"] == "test", rows["Cohort"] == "test")
    np.testing.assert_array_equal(index["view"], rows["ViewPosition"])
    for column, label in FINDINGS.items():
        want = rows[column].map({"YES": 1.0, "NO": 0.0, "UNCERTAIN": np.nan, "": np.nan}).to_numpy()
        np.testing.assert_array_equal(index[label].to_numpy(np.float64), want, err_msg=column)
    _check_missing(index, meta, {label: int(rows[c].isin(["UNCERTAIN", ""]).sum()) for c, label in FINDINGS.items()})
    assert summary["cells"]["UNCERTAIN"] > 0 and summary["cells"]["blank"] > 0


def test_the_csv_layout_keeps_the_draft_findings(draft, tmp_path):
    from chexnet.data.synth_layouts.hospital import FINDINGS

    summary, record, index, meta, out = _write_and_prepare("csv", draft, tmp_path)
    _check_rows(index, meta, record)
    for image, r in record.items():
        findings = set(draft[1][r["draft"]].findings)
        for label in FINDINGS.values():
            value = index.at[image, label]
            assert np.isnan(value) or value == (label in findings), (image, label)


@pytest.mark.parametrize("layout", LAYOUT_TESTS)
def test_the_shift_changes_the_pixels_and_nothing_else(draft, tmp_path, layout):
    from chexnet.data.imageio import read_xray
    from chexnet.data.synth_layouts import writer

    write = writer(layout)
    for shift in (0.0, 1.0):
        summary = write(draft[0], tmp_path / str(shift), seed=0, shift=shift)
        assert summary["shift"] == shift and summary["layout"] == layout
    files = sorted(p.relative_to(tmp_path / "0.0") for p in (tmp_path / "0.0").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "1.0") for p in (tmp_path / "1.0").rglob("*") if p.is_file())
    images = [f for f in files if f.suffix in (".png", ".jpg", ".dcm", ".dicom")]
    assert images and len(images) >= 40
    for f in files:
        a, b = tmp_path / "0.0" / f, tmp_path / "1.0" / f
        if f in images:
            x, y = read_xray(a).astype(float), read_xray(b).astype(float)
            assert x.shape == y.shape and np.abs(x - y).mean() > 5, f
            assert y[:3].mean() < 3, f  # the collimation's black border (JPEG's ringing aside)
        else:
            assert a.read_bytes() == b.read_bytes(), f
    with pytest.raises(ValueError, match="shift"):
        write(draft[0], tmp_path / "bad", shift=1.5)


def test_shift_is_refused_with_the_nih_layout(tmp_path, capsys):
    from chexnet import cli

    assert cli.main(["synth", "--out", str(tmp_path), "--images", "4", "--size", "64", "--shift", "0.5"]) != 0
    assert "--shift goes with a --layout other than nih" in capsys.readouterr().err
