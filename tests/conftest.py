"""Shared fixtures. The unit tests sit beside this file; tests/multiproc/ starts real process groups (2-process
gloo groups, torch elastic, mpirun, two hosts in network namespaces, Spark local[2]); tests/integration/ runs
whole commands in one process (evaluate, predict, export, localize, serve and its browser viewer, tune).
Plain helpers (the tiny config, free_port, subprocess_env, ...) are in tests/helpers.py.

A tiny folder in NIH ChestX-ray14's layout, built in a few milliseconds:

``tiny_nih`` -> Path of a fresh folder with ``images_001/images/*.png`` (64 x 64, 8-bit gray),
``Data_Entry_2017.csv`` (NIH's header, trailing comma included), ``train_val_list.txt`` and
``test_list.txt`` (patient-disjoint). ``make_nih(root, ...)`` builds variants (other sizes, counts,
a flat ``images/`` folder, no split lists).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chexnet.config import TrainConfig
from chexnet.labels import PATHOLOGIES
from tests.helpers import LAUNCHER_RUN, TINY, subprocess_env, tiny_train_args, torch_threads

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
    with torch_threads(1):
        yield


# ------------------------------------------------------------ trained runs
# Fixtures for the training / distributed tests (issue 3).
#
# * ``tiny_cache``: a session-wide prepared cache of 96 synthetic images of 48 x 48 (52 train / 20 val / 24 test).
# * ``tiny_cfg(**overrides)``: a TrainConfig that trains in about a second per epoch on one core
#   (MobileNetV3-Small from scratch, 48 px cache rows resized to 32 px, batch 4, 3 steps per epoch, no loader
#   processes; its checkpoint with Adam state is ~12 MB, ResNet-18's was ~135 MB).
# * ``trained_run``: a session-wide run directory trained for one epoch on ``tiny_cache`` (read it, never write
#   into it: copy it first); ``exported``: its ONNX export.
# * ``chexnet_cli(*args)``: run ``python -m chexnet ARGS`` in a subprocess (one thread per process);
#   ``chexnet_main(*args)`` the same in this process, for commands that need no launcher environment.
#
# Every test in multiproc/ and integration/ runs with one intra-op thread (their conftest.py): on 2 shared
# cores, two threads per process are ~10x slower.


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    from chexnet.data.prepare import prepare
    from chexnet.data.synthetic import generate

    root = tmp_path_factory.mktemp("train_cache")
    generate(root / "data", images=96, size=64, seed=0, progress=False, workers=1)
    prepare(root / "data", root / "cache", size=48, workers=1, progress=False, val_fraction=0.3)
    return root / "cache"


@pytest.fixture(scope="session")
def tiny_cfg():
    from chexnet.config import apply_overrides

    def make(**overrides) -> TrainConfig:
        return apply_overrides(TrainConfig(), {**TINY, **overrides}, "test")

    return make


@pytest.fixture(scope="session")
def trained_run(tiny_cache, tmp_path_factory) -> Path:
    """One epoch of the tiny config; a finished, self-describing run directory."""
    from chexnet.config import apply_overrides
    from chexnet.train import train

    run = tmp_path_factory.mktemp("trained") / "run"
    with torch_threads(1):
        train(apply_overrides(TrainConfig(), TINY, "test"), tiny_cache, run, progress=False)
    return run


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory) -> Path:
    """``trained_run``'s best checkpoint exported to ONNX (dynamic batch); skips without chexnet[export]."""
    pytest.importorskip("onnxruntime", reason="ONNX export needs chexnet[export]")
    pytest.importorskip("onnxscript", reason="ONNX export needs chexnet[export]")
    from chexnet.export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    with torch_threads(1):
        export_onnx(trained_run, "best", out, dynamic_batch=True)
    return out


@pytest.fixture
def copy_run(tmp_path):
    def copy(run: Path, name: str = "run") -> Path:
        dest = tmp_path / name
        shutil.copytree(run, dest)
        return dest

    return copy


@pytest.fixture
def chexnet_cli():
    def run(*args, timeout: float = 240, check: bool = True, **env) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "chexnet", *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env=subprocess_env(**env))
        if check and proc.returncode != 0:
            raise AssertionError(f"chexnet {' '.join(map(str, args))} exited {proc.returncode}\n"
                                 f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
        return proc

    return run


@pytest.fixture
def chexnet_main(capsys):
    """``chexnet ARGS`` in this process (no interpreter start-up, ~5 s less than ``chexnet_cli``), for commands
    that need no launcher environment: a CompletedProcess with returncode, stdout and stderr."""
    from chexnet import cli

    def run(*args, check: bool = True) -> subprocess.CompletedProcess:
        capsys.readouterr()
        rc = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        if check and rc != 0:
            raise AssertionError(f"chexnet {' '.join(map(str, args))} exited {rc}\n--- stdout\n{out[-4000:]}\n"
                                 f"--- stderr\n{err[-4000:]}")
        return subprocess.CompletedProcess(list(args), rc, out, err)

    return run


@pytest.fixture(scope="session")
def train_args():
    return tiny_train_args


@pytest.fixture(scope="session")
def cli_env():
    """``cli_env(**extra)``: the environment for a chexnet subprocess (no launcher variables, one thread)."""
    return subprocess_env


# ------------------------------------------------------------- the same training under every launcher (issue 9)


@pytest.fixture(scope="session")
def reference_run(tiny_cache, tmp_path_factory) -> Path:
    """``chexnet train --nproc 2`` on the tiny config for 2 epochs: the run other launchers must reproduce."""
    run = tmp_path_factory.mktemp("reference") / "run"
    proc = subprocess.run([sys.executable, "-m", "chexnet", *tiny_train_args(tiny_cache, run, **LAUNCHER_RUN),
                           "--nproc", "2"], capture_output=True, text=True, timeout=240, env=subprocess_env())
    assert proc.returncode == 0, f"reference run failed:\n{proc.stderr[-4000:]}"
    return run


@pytest.fixture
def predict_cli(chexnet_main):
    """``chexnet predict ARGS`` in this process (no interpreter start-up): (exit status, stdout, stderr)."""

    def run(*args):
        proc = chexnet_main("predict", *args, "--no-progress", check=False)
        return proc.returncode, proc.stdout, proc.stderr

    return run
