"""Do the heatmaps point at the lesions? A small model trained on synthetic X-rays, then ``chexnet localize``.

The synthetic generator draws each finding where its box says. A ResNet-18 trained from scratch for 4 epochs on
600 images (112 px input, so Grad-CAM's last feature map is 4 x 4) on two findings with compact lesions,
Cardiomegaly and Effusion: the heatmap's peak falls inside the true box for most boxes. Measured on the
project's 2-core machine (AMD EPYC, torch 2.14.1): 0.73 of 281 boxes (Effusion 0.96, Cardiomegaly 0.45), where a
uniformly random point lands in the box 0.07 of the time. About a minute on 2 cores.
"""

from __future__ import annotations

import pandas as pd
import pytest
from tests.helpers import torch_threads

pytest.importorskip("captum", reason="Grad-CAM needs captum (pip install 'chexnet[cam]')")

FINDINGS = ("Cardiomegaly", "Effusion")


@pytest.fixture(scope="module")
def localized(tmp_path_factory):
    from chexnet.config import TrainConfig, apply_overrides
    from chexnet.data.prepare import prepare
    from chexnet.data.synthetic import generate
    from chexnet.localize import localize_run
    from chexnet.train import train

    root = tmp_path_factory.mktemp("localize")
    generate(root / "data", images=600, size=128, seed=0, progress=False, workers=1, min_prevalence=0.2)
    prepare(root / "data", root / "cache", size=128, workers=1, progress=False)
    cfg = apply_overrides(TrainConfig(), dict(arch="resnet18", weights="none", input_size=112, batch_size=32, epochs=4,
                                              workers=0, lr=2e-3, lr_reference_batch=32, schedule="cosine",
                                              labels=FINDINGS, select="val_auroc", log_every=50), "test")
    with torch_threads(2):  # the whole machine: this is the slowest fixture of the suite
        train(cfg, root / "cache", root / "run", progress=False)
        table = localize_run(root / "run", split="all", examples=2, progress=False)
    return root / "run", table


@pytest.mark.slow
def test_heatmap_peaks_fall_inside_the_lesion_boxes_in_most_cases(localized):
    _, table = localized
    overall = table.loc["All"]
    assert overall["n"] > 200
    assert overall["peak_in_box"] >= 0.6, table  # measured 0.73 (see the module docstring)
    assert overall["peak_in_box"] >= 4 * overall["random_peak_in_box"], table
    assert table.loc["Effusion", "peak_in_box"] >= 0.8, table


@pytest.mark.slow
def test_boxes_beat_random_boxes_of_the_same_sizes(localized):
    run, table = localized
    overall = table.loc["All"]
    assert overall["iobb_0.1"] > overall["random_iobb_0.1"], table
    boxes = pd.read_csv(run / "eval" / "localize" / "boxes.csv")
    assert set(boxes["finding"]) == set(FINDINGS) and len(boxes) == overall["n"]
