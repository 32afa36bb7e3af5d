"""The synthetic NIH-format generator: layout, metadata, splits, boxes, determinism, label statistics."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chexnet.data import synthetic
from chexnet.data.sources.nih import assign_splits, find_images, read_metadata
from chexnet.labels import PATHOLOGIES

N, SIZE = 40, 128

# per-label counts of NIH's Data_Entry_2017_v2020.csv (112,120 images)
NIH_COUNTS = {
    "Atelectasis": 11559, "Cardiomegaly": 2776, "Effusion": 13317, "Infiltration": 19894, "Mass": 5782,
    "Nodule": 6331, "Pneumonia": 1431, "Pneumothorax": 5302, "Consolidation": 4667, "Edema": 2303,
    "Emphysema": 2516, "Fibrosis": 1686, "Pleural_Thickening": 3385, "Hernia": 227,
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = synthetic.generate(out, images=N, size=SIZE, seed=0, workers=0, progress=False)
    return out, summary


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_metadata_and_official_splits(synth):
    out, summary = synth
    pngs = sorted((out / "images_001" / "images").glob("*.png"))
    assert len(pngs) == N == summary["images"]
    with Image.open(pngs[0]) as im:
        assert im.mode == "L" and im.size == (SIZE, SIZE)
    assert (out / "Data_Entry_2017.csv").read_text().splitlines()[0] == synthetic.METADATA_HEADER
    df = read_metadata(out / "Data_Entry_2017.csv")
    assert len(df) == N and set(df["image"]) == {p.name for p in pngs} == set(find_images(out))
    assert set(df["view"]) <= {"PA", "AP"} and set(df["sex"]) <= {"M", "F"}
    assert df["age"].between(0, 100).all()
    assert {name: int(df[name].sum()) for name in PATHOLOGIES} == summary["label_counts"]

    split, mode = assign_splits(df, data_dir=out)  # checks patient-disjointness itself
    assert mode == "official" and len(split) == N
    test = set((out / "test_list.txt").read_text().split())
    train_val = set((out / "train_val_list.txt").read_text().split())
    assert test and train_val and not test & train_val and test | train_val == set(df["image"])
    test_patients = set(df.loc[df["image"].isin(test), "patient_id"])
    assert not test_patients & set(df.loc[df["image"].isin(train_val), "patient_id"])


def test_patients_have_followups(synth):
    out, summary = synth
    df = read_metadata(out / "Data_Entry_2017.csv")
    per_patient = df.groupby("patient_id")["follow_up"].agg(["count", "min", "max"])
    assert summary["patients"] == len(per_patient) < N
    assert per_patient["count"].max() >= 2
    assert (per_patient["min"] == 0).all() and (per_patient["max"] == per_patient["count"] - 1).all()
    for name, pid, fu in zip(df["image"], df["patient_id"], df["follow_up"]):
        assert name == f"{pid:08d}_{int(fu):03d}.png"


def test_boxes_refer_to_images_and_lie_inside(synth):
    out, summary = synth
    df = read_metadata(out / "Data_Entry_2017.csv").set_index("image")
    lines = (out / "BBox_List_2017.csv").read_text().splitlines()
    assert lines[0] == synthetic.BBOX_HEADER
    rows = list(csv.reader(lines[1:]))
    assert len(rows) == summary["boxes"] > 0
    to_label = {v: k for k, v in synthetic.BBOX_NAMES.items()}
    seen: dict[str, set] = {}
    for image, label, *xywh in rows:
        x, y, w, h = map(float, xywh)
        assert image in df.index and df.at[image, to_label[label]] == 1
        assert 0 <= x and 0 <= y and w >= 1 and h >= 1 and x + w <= SIZE and y + h <= SIZE
        seen.setdefault(image, set()).add(to_label[label])
    for image, row in df.iterrows():  # one box per drawn finding
        assert seen.get(image, set()) == {name for name in PATHOLOGIES if row[name]}


def test_deterministic_whatever_the_workers(synth, tmp_path):
    out, _ = synth
    synthetic.generate(tmp_path / "again", images=N, size=SIZE, seed=0, workers=2, progress=False)
    assert _files(tmp_path / "again") == _files(out)
    synthetic.generate(tmp_path / "other", images=N, size=SIZE, seed=1, workers=0, progress=False)
    other = _files(tmp_path / "other")
    assert other["Data_Entry_2017.csv"] != _files(out)["Data_Entry_2017.csv"]
    assert other["images_001/images/00000001_000.png"] != _files(out)["images_001/images/00000001_000.png"]


def test_every_finding_is_drawn_where_its_box_is():
    for k, name in enumerate(PATHOLOGIES):
        labels = np.zeros(len(PATHOLOGIES), np.uint8)
        labels[k] = 1
        plain, none = synthetic.render(SIZE, labels * 0, seed=3, patient=7, index=7)
        img, boxes = synthetic.render(SIZE, labels, seed=3, patient=7, index=7)
        assert none == [] and [b[0] for b in boxes] == [name]
        _, x, y, w, h = boxes[0]
        diff = np.abs(img.astype(int) - plain.astype(int))
        inside = diff[int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))]
        assert inside.mean() > 8, f"{name}: pattern too faint in its box"
        if name not in ("Cardiomegaly", "Emphysema", "Atelectasis"):  # these also change anatomy
            assert inside.sum() > 0.8 * diff.sum(), f"{name}: pattern outside its box"


def test_label_stats_are_nih():
    stats = synthetic.load_label_stats()
    assert stats["pathologies"] == list(PATHOLOGIES)
    assert stats["images"] == sum(stats["combinations"].values()) == 112_120
    assert stats["patients"] == sum(stats["images_per_patient"].values()) == 30_805
    assert stats["label_counts"] == NIH_COUNTS
    assert stats["combinations"]["No Finding"] == 60_361


def test_sampled_prevalence_matches_nih_without_reweighting():
    labels = synthetic.sample_labels(200_000, np.random.default_rng(0), min_prevalence=0)
    real = np.array([NIH_COUNTS[n] for n in PATHOLOGIES]) / 112_120
    np.testing.assert_allclose(labels.mean(0), real, atol=0.003)
    assert abs((labels.sum(1) == 0).mean() - 60_361 / 112_120) < 0.005
    both = (labels[:, PATHOLOGIES.index("Effusion")] & labels[:, PATHOLOGIES.index("Infiltration")]).mean()
    assert abs(both - 4_000 / 112_120) < 0.01  # co-occurrence kept (NIH: 4,000 images with both)


def test_min_prevalence_lifts_rare_classes_and_keeps_cooccurrence():
    matrix, p = synthetic.combination_distribution(0)
    _, q = synthetic.combination_distribution(0.04)
    assert q.sum() == pytest.approx(1) and (matrix.T @ q >= 0.04 - 1e-9).all()
    lifted = (matrix.T @ p) < 0.04
    assert lifted[PATHOLOGIES.index("Hernia")] and not lifted[PATHOLOGIES.index("Infiltration")]
    # combinations with the same lifted classes keep their relative frequencies
    key = matrix[:, lifted] @ (1 << np.arange(lifted.sum()))
    for k in np.unique(key):
        ratio = q[key == k] / p[key == k]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)
    with pytest.raises(ValueError):
        synthetic.combination_distribution(0.5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="images"):
        synthetic.generate("unused", images=0, progress=False)
    with pytest.raises(ValueError, match="size"):
        synthetic.generate("unused", images=1, size=16, progress=False)
    with pytest.raises(ValueError, match="seed"):
        synthetic.generate("unused", images=1, seed=-1, progress=False)


def test_png_writer_round_trips():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (3, 5), (64, 37)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        with Image.open(io.BytesIO(synthetic.png_bytes(img))) as im:
            assert im.mode == "L" and (np.asarray(im) == img).all()
