"""``chexnet synth --layout chexpert``: CheXpert's exact layout and encodings from the synthetic NIH set, which
``prepare --dataset chexpert`` reads back to the labels the generator wrote; the site shift."""

from __future__ import annotations

import json

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
