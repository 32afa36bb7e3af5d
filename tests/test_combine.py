"""chexnet combine: several caches as one, each row's source recorded, labels missing where a source lacks them,
patients namespaced, overlap refused; and the sampler that balances sources in an epoch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chexnet.data.cache import CacheError, load_cache
from chexnet.data.combine import combine, patient_keys, row_sources
from chexnet.data.dataset import SourceBalancedSampler
from chexnet.data.prepare import index_csv_text, label_counts, split_counts

SIZE = 8


def write_cache(path: Path, labels: list[str], rows: list[tuple], dataset: str, size: int = SIZE,
                pixels: np.ndarray | None = None) -> np.ndarray:
    """A cache by hand: rows of (image, patient, split, label values (None = missing)); returns its pixels."""
    path.mkdir(parents=True)
    n = len(rows)
    if pixels is None:
        pixels = np.random.default_rng(abs(hash(path.name)) % 2**32).integers(0, 256, (n, size, size), dtype=np.uint8)
    pixels.tofile(path / "images.u8")
    index = pd.DataFrame({"image": [r[0] for r in rows], "patient_id": [str(r[1]) for r in rows],
                          "split": [r[2] for r in rows], "view": "PA"})
    for j, name in enumerate(labels):
        index[name] = np.array([np.nan if r[3][j] is None else r[3][j] for r in rows], dtype=np.float32)
    index["age"], index["sex"] = 50.0, "F"
    (path / "index.csv").write_text(index_csv_text(index, labels))
    meta = {"format": "chexnet-cache", "format_version": 2, "size": size, "count": n, "shape": [n, size, size],
            "dtype": "uint8", "labels": labels, "label_counts": label_counts(index, labels),
            "arguments": {"dataset": dataset, "options": {}}, "source": {}, "splits": split_counts(index),
            "failed": []}
    (path / "meta.json").write_text(json.dumps(meta))
    return pixels


def nih_rows():
    return [("00000001_000.png", 1, "train", (1, 0)), ("00000002_000.png", 2, "val", (0, 1)),
            ("00000003_000.png", 3, "test", (1, 1))]


def test_rows_keep_their_source_split_and_pixels_and_missing_labels_are_missing(tmp_path):
    a = write_cache(tmp_path / "nih-8", ["Effusion", "Atelectasis"], nih_rows(), "nih")
    b = write_cache(tmp_path / "hosp", ["Fracture", "Effusion"],
                    [("x1.png", 1, "train", (1, None)), ("x2.png", 7, "test", (0, 1))], "csv")
    meta = combine([tmp_path / "nih-8", tmp_path / "hosp"], tmp_path / "both", progress=False)
    images, index, meta2 = load_cache(tmp_path / "both")
    assert meta2 == json.loads((tmp_path / "both" / "meta.json").read_text()) and meta["count"] == 5
    assert meta["labels"] == ["Atelectasis", "Effusion", "Fracture"]  # chexnet's vocabulary order
    np.testing.assert_array_equal(np.asarray(images), np.concatenate([a, b]))
    assert list(index["image"]) == ["00000001_000.png", "00000002_000.png", "00000003_000.png", "x1.png", "x2.png"]
    assert list(index["split"]) == ["train", "val", "test", "train", "test"]
    assert list(index["patient_id"]) == ["nih:1", "nih:2", "nih:3", "hosp:1", "hosp:7"]  # a hospital's 1 is not NIH's
    got = index[["Atelectasis", "Effusion", "Fracture"]].to_numpy()
    want = np.array([[0, 1, np.nan], [1, 0, np.nan], [1, 1, np.nan], [np.nan, np.nan, 1], [np.nan, 1, 0]])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.nan_to_num(got, nan=9), np.nan_to_num(want, nan=9))
    assert list(row_sources(meta)) == ["nih-8"] * 3 + ["hosp"] * 2
    assert [(p["name"], p["dataset"], p["rows"]) for p in meta["parts"]] == [("nih-8", "nih", [0, 3]),
                                                                              ("hosp", "csv", [3, 5])]
    assert meta["label_counts"]["train"]["Fracture"] == {"positive": 1, "negative": 0, "missing": 1}
    assert meta["overlap"]["images"] == 0 and meta["overlap"]["patients"] == 0


def test_a_plain_cache_is_one_source_and_its_patients_are_namespaced_by_data_set(tmp_path):
    write_cache(tmp_path / "c", ["Edema"], [("a.jpg", "patient00001", "train", (1,))], "chexpert")
    _, index, meta = load_cache(tmp_path / "c")
    assert list(row_sources(meta)) == ["chexpert"]
    assert list(patient_keys(tmp_path / "c", meta, index)) == ["chexpert:patient00001"]
    meta["arguments"] = {}  # a cache from before sources: NIH
    assert list(row_sources(meta)) == ["nih"]


def test_the_same_pixels_under_other_names_are_refused_unless_allowed(tmp_path):
    a = write_cache(tmp_path / "nih", ["Pneumonia"], [("00000009_000.png", 9, "train", (1,)),
                                                     ("00000010_000.png", 10, "test", (0,))], "nih")
    write_cache(tmp_path / "rsna", ["Pneumonia"], [("0a1b.dcm", "0a1b", "test", (1,)),
                                                  ("ffff.dcm", "ffff", "test", (0,))], "rsna",
                pixels=np.stack([a[0], np.zeros((SIZE, SIZE), np.uint8)]))  # NIH's first image, renamed
    with pytest.raises(CacheError, match=r"1 image\(s\) are in more than one cache.*0a1b.dcm"):
        combine([tmp_path / "nih", tmp_path / "rsna"], tmp_path / "both", progress=False)
    assert not (tmp_path / "both" / "meta.json").exists()
    meta = combine([tmp_path / "nih", tmp_path / "rsna"], tmp_path / "both", allow_overlap=True, progress=False)
    assert meta["overlap"]["images"] == 1 and meta["overlap"]["image_examples"] == ["00000009_000.png", "0a1b.dcm"]


def test_nih_sources_share_patients_and_a_patient_in_two_splits_is_refused(tmp_path):
    write_cache(tmp_path / "nih", ["Pneumothorax"], [("00000001_000.png", 1, "train", (0,))], "nih")
    write_cache(tmp_path / "google", ["Pneumothorax"], [("00000001_001.png", 1, "test", (1,))], "nih-google")
    with pytest.raises(CacheError, match=r"1 patient\(s\) are in more than one split, e.g. nih:1\."):
        combine([tmp_path / "nih", tmp_path / "google"], tmp_path / "both", progress=False)
    write_cache(tmp_path / "h1", ["Fracture"], [("1.png", 1, "train", (0,))], "csv")
    write_cache(tmp_path / "h2", ["Fracture"], [("2.png", 1, "test", (1,))], "csv")
    meta = combine([tmp_path / "h1", tmp_path / "h2"], tmp_path / "hosp", progress=False)  # two hospitals' 1
    assert meta["overlap"]["patients"] == 0


def test_what_cannot_be_combined_is_named(tmp_path):
    write_cache(tmp_path / "a", ["Edema"], [("a.png", 1, "train", (1,))], "csv")
    write_cache(tmp_path / "b", ["Edema"], [("b.png", 2, "train", (1,))], "csv", size=4)
    write_cache(tmp_path / "x" / "a", ["Edema"], [("c.png", 3, "train", (1,))], "csv")
    with pytest.raises(ValueError, match="at least two"):
        combine([tmp_path / "a"], tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match=r"different image sizes .*a: 8 px.*b: 4 px"):
        combine([tmp_path / "a", tmp_path / "b"], tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="same folder name 'a'"):
        combine([tmp_path / "a", tmp_path / "x" / "a"], tmp_path / "out", progress=False)
    write_cache(tmp_path / "c", ["Edema"], [("d.png", 4, "val", (0,))], "csv")
    combine([tmp_path / "a", tmp_path / "c"], tmp_path / "ac", progress=False)
    with pytest.raises(ValueError, match="itself a combined cache: combine the caches it was made of \\(a, c\\)"):
        combine([tmp_path / "ac", tmp_path / "b"], tmp_path / "out", progress=False)
    with pytest.raises(CacheError, match="already holds a cache"):
        combine([tmp_path / "a", tmp_path / "c"], tmp_path / "ac", progress=False)
    assert combine([tmp_path / "a", tmp_path / "c"], tmp_path / "ac", overwrite=True, progress=False)["count"] == 2


def test_balanced_sampling_gives_each_source_an_equal_share_and_ranks_split_one_draw():
    sources = np.array(["big"] * 900 + ["small"] * 100, dtype=object)
    whole = SourceBalancedSampler(sources, seed=3)
    draws = []
    for epoch in range(5):
        whole.set_epoch(epoch)
        draws.append(list(whole))
    share = np.mean([sources[i] == "small" for d in draws for i in d])
    assert len(whole) == 1000 and 0.45 < share < 0.55  # 5000 draws: sd of the share 0.007
    assert draws[0] != draws[1]
    whole.set_epoch(0)
    assert list(whole) == draws[0]  # the same seed and epoch: the same images (resume)
    ranks = [SourceBalancedSampler(sources, num_replicas=3, rank=r, seed=3) for r in range(3)]
    draw = ranks[0].epoch_draw()
    assert len(draw) == 999 and all(r.epoch_draw() == draw for r in ranks)  # one draw, the same on every rank
    for r, sampler in enumerate(ranks):  # each rank its own places in it: no draw used twice, none left out
        assert len(sampler) == 333 and list(sampler) == draw[r::3]


def test_the_parts_boxes_and_derived_rules_are_carried(tmp_path):
    write_cache(tmp_path / "vindr", ["Effusion"], [("a.dicom", "a", "train", (1,))], "vindr")
    (tmp_path / "vindr" / "boxes.csv").write_text("image,finding,reader,x,y,w,h,height,width\n"
                                                  "a.dicom,Effusion,R1,1.5,2,3,4,100,120\n")
    write_cache(tmp_path / "google", ["Nodule or mass"], [("00000001_000.png", 1, "test", (0,))], "nih-google")
    meta = json.loads((tmp_path / "google" / "meta.json").read_text())
    meta["source"] = {"derived_scores": {"Nodule or mass": {"rule": "max", "of": ["Nodule", "Mass"]}}}
    (tmp_path / "google" / "meta.json").write_text(json.dumps(meta))
    out = combine([tmp_path / "vindr", tmp_path / "google"], tmp_path / "both", progress=False)
    assert out["source"]["derived_scores"] == meta["source"]["derived_scores"] and out["boxes"] == {"count": 1}
    assert (tmp_path / "both" / "boxes.csv").read_text() == (tmp_path / "vindr" / "boxes.csv").read_text()
