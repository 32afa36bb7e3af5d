"""Shared fixtures: a tiny folder in NIH ChestX-ray14's layout, built in a few milliseconds.

``tiny_nih`` -> Path of a fresh folder with ``images_001/images/*.png`` (64 x 64, 8-bit gray),
``Data_Entry_2017.csv`` (NIH's header, trailing comma included), ``train_val_list.txt`` and
``test_list.txt`` (patient-disjoint). ``make_nih(root, ...)`` builds variants (other sizes, counts,
a flat ``images/`` folder, no split lists).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chexnet.labels import PATHOLOGIES

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")


def xray_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth chest-like uint8 image (two dark lungs in a bright body) plus mild noise."""
    y, x = np.mgrid[0:size, 0:size] / size
    body = 180 - 60 * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    lungs = sum(np.exp(-(((x - cx) / 0.14) ** 2 + ((y - 0.45) / 0.25) ** 2)) for cx in (0.3, 0.7))
    img = body - 110 * lungs + rng.normal(0, 6, (size, size)) + rng.uniform(-20, 20)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_nih_folder(root: Path, patients: int = 8, per_patient: int = 3, size: int = 64, seed: int = 0,
                    lists: bool = True, flat: bool = False) -> Path:
    """Write a tiny NIH-layout data folder under ``root`` and return ``root``."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    img_dir = root / ("images" if flat else "images_001/images")
    img_dir.mkdir(parents=True, exist_ok=True)
    rows, names_by_patient = [], {}
    for p in range(1, patients + 1):
        for k in range(per_patient):
            name = f"{p:08d}_{k:03d}.png"
            Image.fromarray(xray_like(rng, size)).save(img_dir / name)
            found = [PATHOLOGIES[i] for i in np.flatnonzero(rng.random(len(PATHOLOGIES)) < 0.12)]
            labels = "|".join(found) if found else "No Finding"
            view = "PA" if rng.random() < 0.6 else "AP"
            sex = "M" if p % 2 else "F"
            rows.append(f"{name},{labels},{k},{p},{30 + p},{sex},{view},{size},{size},0.143,0.143,")
            names_by_patient.setdefault(p, []).append(name)
    (root / "Data_Entry_2017.csv").write_text("\n".join([NIH_HEADER, *rows]) + "\n")
    if lists:
        n_test = max(1, patients // 4)
        test = [n for p in range(patients - n_test + 1, patients + 1) for n in names_by_patient[p]]
        train_val = [n for p in range(1, patients - n_test + 1) for n in names_by_patient[p]]
        (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
        (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return root


@pytest.fixture
def make_nih(tmp_path):
    """Factory: ``make_nih(name="data", **kwargs)`` -> a fresh NIH-layout folder in tmp_path."""

    def make(name: str = "data", **kwargs) -> Path:
        return make_nih_folder(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def tiny_nih(make_nih) -> Path:
    """8 patients x 3 images of 64 x 64, NIH layout, official split lists (2 test patients)."""
    return make_nih("nih")


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on 2 shared cores, extra threads per process mostly contend."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
