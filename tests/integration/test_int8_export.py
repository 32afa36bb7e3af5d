"""chexnet export --quantize int8 on the tiny trained run: a smaller file with the fp32 export's contract, labels
and thresholds, probabilities close to fp32's, its check against fp32 recorded, and predict --onnx and serve
taking it."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from chexnet import onnx_metadata as M
from chexnet.labels import PATHOLOGIES
from tests.helpers import torch_threads

# int8 against fp32 on the same cache rows: the tiny 1-epoch model's outputs sit near its priors, so its
# quantization error is small (~2e-4); a trained ResNet-18 moved up to 0.046 (benchmarks/RESULTS.md, int8)
INT8_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def int8_run(trained_run, tmp_path_factory):
    """A copy of ``trained_run``, evaluated on val (thresholds.json), exported with ``chexnet export --quantize
    int8`` to its default path: (run, stderr of the export)."""
    pytest.importorskip("onnxruntime", reason="ONNX export needs chexnet[export]")
    pytest.importorskip("onnxscript", reason="ONNX export needs chexnet[export]")
    from chexnet import cli
    from chexnet.evaluate import evaluate_run

    run = tmp_path_factory.mktemp("int8") / "run"
    shutil.copytree(trained_run, run)
    err = io.StringIO()
    with torch_threads(1), contextlib.redirect_stderr(err):
        evaluate_run(run, "best", "val", "none", batch_size=8, n_resamples=10, plots=False)
        rc = cli.main(["export", str(run), "--quantize", "int8", "--dynamic-batch", "--calibration-images", "16"])
    assert rc == 0, err.getvalue()[-3000:]
    return run, err.getvalue()


def test_int8_file_is_smaller_and_keeps_the_contract(int8_run, exported):
    from chexnet.predict import OnnxPredictor

    run, err = int8_run
    path = run / "export" / "model.int8.onnx"
    assert path.is_file() and not (run / "export" / "model.onnx").exists()
    assert path.stat().st_size < 0.6 * exported.stat().st_size, (path.stat().st_size, exported.stat().st_size)
    q, f = OnnxPredictor(path), OnnxPredictor(exported)
    assert q.labels == f.labels == PATHOLOGIES and q.spec == f.spec and q.fixed_batch is None
    for key in (M.PREPROCESSING, M.LABELS, M.ARCH, M.CHECKPOINT, M.INPUT, M.CALIBRATION):
        assert q.metadata[key] == f.metadata[key], key
    # the thresholds the fp32 export would embed: this checkpoint's validation operating points
    saved = json.loads((run / "thresholds.json").read_text())["thresholds"]
    assert json.loads(q.metadata[M.THRESHOLDS]) == saved
    assert np.allclose(q.thresholds.values, [saved[n] if saved[n] is not None else 0.5 for n in PATHOLOGIES])
    assert "int8 vs fp32 on 20 val images: max |dp| = " in err and "AUROC change (int8 - fp32)" in err


def test_int8_probabilities_are_close_to_fp32(int8_run, exported, tiny_cache):
    from chexnet.data.cache import load_cache
    from chexnet.predict import OnnxPredictor

    run, _ = int8_run
    images, index, _ = load_cache(tiny_cache)
    rows = np.asarray(images[np.flatnonzero(index["split"].to_numpy() == "test")])
    p8 = OnnxPredictor(run / "export" / "model.int8.onnx").probabilities(rows)
    p32 = OnnxPredictor(exported).probabilities(rows)
    assert p8.shape == p32.shape == (len(rows), 14) and np.isfinite(p8).all()
    assert np.abs(p8 - p32).max() <= INT8_TOLERANCE, np.abs(p8 - p32).max()


def test_int8_records_how_and_its_check(int8_run):
    from chexnet.predict import OnnxPredictor

    run, _ = int8_run
    q = json.loads(OnnxPredictor(run / "export" / "model.int8.onnx").metadata[M.QUANTIZATION])
    assert q["calibration"] == {"split": "train", "images": 16, "seed": 0, "cache": "cache"}
    assert q["ops"] == ["Conv", "Gemm", "MatMul"] and q["weights"] == "int8 per channel, 7-bit range"
    parity = q["parity"]
    assert parity["split"] == "val" and parity["images"] == 20 and 0 <= parity["max_abs_dp"] <= INT8_TOLERANCE
    assert set(parity["auroc_change"]) == set(PATHOLOGIES)


def test_predict_onnx_takes_the_int8_file(int8_run, tiny_cache, predict_cli):
    from chexnet.data.sources.nih import find_images

    run, _ = int8_run
    found = find_images(tiny_cache.parent / "data")
    paths = [found[n] for n in ("00000001_000.png", "00000002_000.png")]
    rc, out, err = predict_cli("--onnx", run / "export" / "model.int8.onnx", *paths, "--format", "json")
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(rows) == 2 and all(r["error"] is None and len(r["probabilities"]) == 14 for r in rows)
    assert "validation thresholds stored in model.int8.onnx" in err, err


def test_serve_takes_the_int8_file(int8_run, tiny_cache, predict_cli):
    pytest.importorskip("fastapi", reason="serve needs chexnet[serve]")
    from fastapi.testclient import TestClient

    from chexnet.data.sources.nih import find_images
    from chexnet.serve.app import create_app
    from chexnet.serve.config import ServeConfig

    run, _ = int8_run
    model = run / "export" / "model.int8.onnx"
    path = find_images(tiny_cache.parent / "data")["00000001_000.png"]
    rc, out, err = predict_cli("--onnx", model, path, "--format", "json")
    assert rc == 0, err
    expected = json.loads(out.splitlines()[0])
    with TestClient(create_app(ServeConfig(str(model)).check())) as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/model").json()["engine"] == "onnxruntime"
        body = client.post("/v1/predict", files={"file": (path.name, path.read_bytes(), "image/png")}).json()
    assert max(abs(body["probabilities"][n] - expected["probabilities"][n]) for n in PATHOLOGIES) <= 1e-5
    assert body["findings"] == expected["findings"]


def test_bad_quantize_arguments_are_refused(trained_run, tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX export needs chexnet[export]")
    from chexnet.export import export_onnx

    with pytest.raises(ValueError, match="--calibration-images"):
        export_onnx(trained_run, out=tmp_path / "x.onnx", quantize="int8", calibration_images=0)
    with pytest.raises(ValueError, match="--quantize"):
        export_onnx(trained_run, out=tmp_path / "x.onnx", quantize="int4")
