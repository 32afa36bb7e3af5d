"""chexnet predict / export / localize on tiny trained runs: predict == evaluate, DICOM variants without leaking
identifiers, broken files reported one by one, ONNX parity, and the ONNX path without torch."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chexnet.labels import PATHOLOGIES
from tests.dicom_files import IDENTIFIERS, write_dicom
from tests.helpers import torch_threads


def _data(tiny_cache: Path) -> Path:
    return tiny_cache.parent / "data"  # the synthetic NIH folder the tiny cache was prepared from


def _image_paths(tiny_cache: Path, names) -> list[Path]:
    from chexnet.data.sources.nih import find_images

    found = find_images(_data(tiny_cache))
    return [found[n] for n in names]


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def crop_run(tiny_cache, tiny_cfg, tmp_path_factory):
    """A tiny run trained on crops (32 px crops of the 48 px cache rows): predict must centre-crop like evaluate."""
    from chexnet.train import train

    run = tmp_path_factory.mktemp("crop") / "run"
    with torch_threads(1):
        train(tiny_cfg(input_transform="crop"), tiny_cache, run, progress=False)
    return run


@pytest.mark.parametrize("which", ["resize", "crop"])
def test_predict_equals_evaluate_on_the_same_images(which, trained_run, crop_run, copy_run, tiny_cache, predict_cli):
    """The test that preprocessing matches training: a file through predict, its cache row through evaluate."""
    from chexnet.evaluate import evaluate_run

    run = copy_run(trained_run if which == "resize" else crop_run)
    evaluate_run(run, "best", "val", "none", batch_size=8, n_resamples=10)
    table = pd.read_csv(run / "eval" / "val" / "predictions.csv", dtype={"image": str})
    paths = _image_paths(tiny_cache, table["image"])
    rc, out, _ = predict_cli(run, *paths, "--format", "json", "--batch-size", "5")
    assert rc == 0
    got = {Path(r["path"]).name: r for r in _json_lines(out)}
    assert len(got) == len(table)
    diffs = [abs(got[img]["probabilities"][n] - table.loc[i, f"prob_{n}"])
             for i, img in enumerate(table["image"]) for n in PATHOLOGIES]
    assert max(diffs) <= 1e-4, max(diffs)
    # evaluate chose validation thresholds for this checkpoint; predict uses them
    thresholds = json.loads((run / "thresholds.json").read_text())["thresholds"]
    first = got[table["image"][0]]
    assert first["findings"] == [n for n in PATHOLOGIES if first["probabilities"][n] >= (thresholds[n] or 0.5)]


def _dicom_variants(folder: Path) -> dict[str, Path]:
    """MONOCHROME1/2, 12- and 16-bit, with and without rescale and window; all carry patient identifiers."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:96, 0:80]
    body = (1500 + 1500 * np.exp(-((x - 40) ** 2 + (y - 48) ** 2) / 900.0) + rng.normal(0, 40, (96, 80))).clip(0, 4095)
    bone12 = body.astype(np.uint16)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "m2_12bit": write_dicom(folder / "m2_12bit.dcm", bone12, "MONOCHROME2", 12, **IDENTIFIERS),
        "m1_12bit": write_dicom(folder / "m1_12bit.dcm", (4095 - bone12).astype(np.uint16), "MONOCHROME1", 12,
                                **IDENTIFIERS),
        "m2_16bit_rescaled": write_dicom(folder / "m2_16bit_rescaled.dcm", (bone12.astype(np.uint32) * 16).astype(np.uint16),
                                         "MONOCHROME2", 16, RescaleSlope="0.0625", RescaleIntercept="-1024",
                                         **IDENTIFIERS),
        "m1_16bit_window": write_dicom(folder / "m1_16bit_window.dcm", (65535 - bone12.astype(np.uint32) * 16).astype(np.uint16),
                                       "MONOCHROME1", 16, WindowCenter="32768", WindowWidth="40000", **IDENTIFIERS),
        "m2_12bit_window_rescale": write_dicom(folder / "m2_12bit_window_rescale.dcm", bone12, "MONOCHROME2", 12,
                                               RescaleSlope="1", RescaleIntercept="-1000", WindowCenter="1000",
                                               WindowWidth="2500", **IDENTIFIERS),
    }


def _all_text(*texts, folders=()) -> str:
    out = list(texts)
    for folder in folders:
        for f in Path(folder).rglob("*"):
            if f.is_file():
                out.append(f.read_bytes().decode("latin-1"))
    return "\n".join(out)


def test_dicom_variants_are_predicted_and_no_identifier_leaks(trained_run, copy_run, tmp_path, predict_cli):
    run = copy_run(trained_run)
    files = _dicom_variants(tmp_path / "dicom")
    cams = tmp_path / "cams"
    texts = []
    for fmt in ("json", "csv", "table"):
        rc, out, err = predict_cli(run, tmp_path / "dicom", "--format", fmt, "--cam", cams, "--cam-all")
        assert rc == 0, err
        texts += [out, err]
    results = {Path(r["path"]).stem: r for r in _json_lines(texts[0])}
    assert set(results) == set(files) and all(r["error"] is None for r in results.values())
    # MONOCHROME1 with complementary values decodes to the same bright-bone image as MONOCHROME2
    a, b = results["m2_12bit"]["probabilities"], results["m1_12bit"]["probabilities"]
    assert max(abs(a[n] - b[n]) for n in PATHOLOGIES) < 1e-6
    assert len(list(cams.glob("*.png"))) == len(files) * len(PATHOLOGIES)
    overlay = Image.open(cams / f"m2_12bit_{PATHOLOGIES[0]}.png")
    assert overlay.size == (80, 96)  # the original's width x height
    assert np.load(cams / f"m2_12bit_{PATHOLOGIES[0]}.npy").shape == (96, 80)
    everything = _all_text(*texts, folders=[cams])
    for value in IDENTIFIERS.values():
        assert value not in everything and value.replace("^", " ") not in everything, value


def test_a_folder_of_good_and_broken_files(trained_run, copy_run, tiny_cache, tmp_path, predict_cli):
    run = copy_run(trained_run)
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    good = _image_paths(tiny_cache, ["00000001_000.png"])[0]
    shutil.copy(good, folder / "good.png")
    shutil.copy(good, folder / "sub" / "good_too.png")
    data = good.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "notes.png").write_text("this is a text file, not an image\n")
    nopix = write_dicom(tmp_path / "p.dcm", np.full((32, 32), 900, np.uint16), **IDENTIFIERS)
    import pydicom

    ds = pydicom.dcmread(nopix)
    del ds.PixelData
    ds.save_as(folder / "nopixels.dcm")
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(folder / "huge.png")
    jls = pydicom.dcmread(nopix)
    jls.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.80"  # JPEG-LS lossless, a damaged stream
    from pydicom.encaps import encapsulate

    jls.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 64])
    jls["PixelData"].VR = "OB"
    jls.save_as(folder / "jpegls.dcm", enforce_file_format=True)

    rc, out, err = predict_cli(run, folder, "--format", "json", "--max-pixels", "50000")
    assert rc == 1, err
    results = {Path(r["path"]).name: r for r in _json_lines(out)}
    assert set(results) == {"good.png", "good_too.png", "truncated.png", "notes.png", "nopixels.dcm", "huge.png",
                            "jpegls.dcm"}
    for name in ("good.png", "good_too.png"):
        assert results[name]["error"] is None and len(results[name]["probabilities"]) == 14
    assert "truncated" in results["truncated.png"]["error"]
    assert "not a recognized image format" in results["notes.png"]["error"]
    assert "no pixel data" in results["nopixels.dcm"]["error"]
    assert "300 x 300 = 90,000 pixels is over the limit of 50,000" in results["huge.png"]["error"]
    assert "JPEG-LS" in results["jpegls.dcm"]["error"] and "pylibjpeg: " in results["jpegls.dcm"]["error"]
    assert "2 of 7 image(s) predicted" in err and "5 failed" in err
    for value in IDENTIFIERS.values():
        assert value not in out + err


def test_onnx_parity_with_torch_on_test_images(exported, trained_run, tiny_cache):
    from chexnet.predict import OnnxPredictor, TorchPredictor, predict_files

    from chexnet.data.cache import load_cache

    _, index, _ = load_cache(tiny_cache)
    paths = _image_paths(tiny_cache, index.loc[index["split"] == "test", "image"])
    torch_res = predict_files(TorchPredictor(trained_run), paths, batch_size=7, progress=False)
    onnx_pred = OnnxPredictor(exported)
    assert onnx_pred.labels == PATHOLOGIES and onnx_pred.spec.input_size == 32
    onnx_res = predict_files(onnx_pred, paths, batch_size=7, progress=False)
    worst = max(abs(a.probabilities[n] - b.probabilities[n]) for a, b in zip(torch_res, onnx_res) for n in PATHOLOGIES)
    assert len(paths) > 10 and worst <= 1e-4, worst


def test_predict_onnx_runs_with_torch_unimportable(exported, tiny_cache, tmp_path, chexnet_cli):
    """A device without torch: a 'torch' that cannot be imported shadows the real one (and the other training and
    reporting libraries: a device needs numpy, pillow, pydicom, tqdm and onnxruntime only)."""
    fake = tmp_path / "no_torch"
    for name in ("torch", "torchvision", "pandas", "sklearn", "scipy", "matplotlib", "yaml"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on this device')\n")
    paths = _image_paths(tiny_cache, ["00000001_000.png", "00000002_000.png"])
    env = {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    proc = chexnet_cli("predict", "--onnx", exported, *paths, "--format", "json", **env)
    rows = _json_lines(proc.stdout)
    assert len(rows) == 2 and all(r["error"] is None and len(r["probabilities"]) == 14 for r in rows)
    from tests.helpers import subprocess_env

    hidden = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                            env=subprocess_env(**env))
    assert hidden.returncode != 0 and "torch is not installed on this device" in hidden.stderr  # the fake works


def test_missing_extras_name_the_pip_install(trained_run, copy_run, tiny_cache, tmp_path, chexnet_cli):
    fake = tmp_path / "no_captum" / "captum"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no captum here')\n")
    run = copy_run(trained_run)
    paths = _image_paths(tiny_cache, ["00000001_000.png"])
    proc = chexnet_cli("predict", run, *paths, "--cam", tmp_path / "cams", check=False,
                       PYTHONPATH=os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]))
    assert proc.returncode == 2 and "pip install 'chexnet[cam]'" in proc.stderr, proc.stderr


def test_fixed_threshold_and_table_output(trained_run, copy_run, tiny_cache, predict_cli):
    run = copy_run(trained_run)
    paths = _image_paths(tiny_cache, ["00000001_000.png"])
    rc, out, err = predict_cli(run, *paths)
    assert rc == 0 and "00000001_000.png" in out and "no validation thresholds" in err
    rc, out, err = predict_cli(run, *paths, "--threshold", "0", "--format", "csv")
    row = pd.read_csv(io.StringIO(out)).iloc[0]
    assert row["findings"].split("|") == list(PATHOLOGIES) and "fixed 0" in err
    rc, _, err = predict_cli(run, *paths, "--threshold", "often")
    assert rc == 2 and "--threshold" in err


def test_localize_writes_its_outputs(trained_run, copy_run, chexnet_main):
    run = copy_run(trained_run)
    proc = chexnet_main("localize", run, "--split", "all", "--examples", "2")
    out = run / "eval" / "localize"
    table = pd.read_csv(out / "localize.csv", index_col=0)
    assert "All" in table.index and {"iobb_0.1", "iobb_0.9", "iou_0.5", "random_iobb_0.5", "peak_in_box"} <= set(table)
    assert table.loc["All", "n"] == len(pd.read_csv(out / "boxes.csv"))
    assert (out / "localize.png").stat().st_size > 0 and len(list((out / "examples").glob("*.png"))) == 2
    assert "iobb_0.5" in proc.stdout and "peak in box" in proc.stderr
    assert "| **All** |" in (out / "localize.md").read_text()
