"""chexnet calibrate: the calibrator fitted on validation is applied by predict, export and serve's predictor,
says so, changes no decision (thresholds are mapped through it), and --raw turns it off."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest

from chexnet.calibrator import Calibrator
from tests.integration.test_predict_export import _image_paths, _json_lines


def test_calibrate_then_predict_and_export_apply_it(trained_run, copy_run, tiny_cache, chexnet_main, predict_cli):
    from chexnet.data.cache import load_cache
    from chexnet.evaluate import evaluate_run

    run = copy_run(trained_run)
    evaluate_run(run, "best", "val", "none", batch_size=8, n_resamples=10, plots=False)  # thresholds.json for the checkpoint
    proc = chexnet_main("calibrate", run, "--min-positives", "2")
    assert "temperature scaling fitted on the validation split of best.pt" in proc.stdout
    cal = Calibrator.from_dict(json.loads((run / "calibrator.json").read_text()))
    info = json.loads((run / "run.json").read_text())["calibrator"]
    assert info["method"] == "temperature" and (info["epoch"], info["global_step"]) == (cal.epoch, cal.global_step)
    saved = json.loads((run / "thresholds.json").read_text())
    raw_t = saved["thresholds"]
    assert cal.thresholds["raw"] == raw_t and saved["scale"] == "raw"
    assert list(saved["rules"]) == ["f1", "youden", "sensitivity=0.9", "specificity=0.9"]
    raw_auroc = pd.read_csv(run / "eval" / "val" / "auroc.csv", index_col=0)["auroc"]

    # evaluate now evaluates calibrated probabilities: AUROC unchanged, thresholds saved back on the raw scale
    evaluate_run(run, "best", "val", "none", batch_size=8, n_resamples=10)
    metrics = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    assert metrics["context"]["probabilities"].startswith("calibrated: temperature scaling")
    assert metrics["calibration"]["probabilities"] == "calibrated"
    pd.testing.assert_series_equal(pd.read_csv(run / "eval" / "val" / "auroc.csv", index_col=0)["auroc"], raw_auroc)
    again = json.loads((run / "thresholds.json").read_text())
    for rule in saved["rules"]:
        for n, t in saved["rules"][rule].items():
            assert (t is None and again["rules"][rule][n] is None) or again["rules"][rule][n] == pytest.approx(t, abs=1e-9)
    for f in ("calibration.csv", "reliability.png", "operating_points.csv"):
        assert (run / "eval" / "val" / f).is_file()
    evaluated = pd.read_csv(run / "eval" / "val" / "predictions.csv", dtype={"image": str})
    _, out, _ = predict_cli(run, *_image_paths(tiny_cache, evaluated["image"]), "--format", "json")
    got = {r["path"].rsplit("/", 1)[1]: r for r in _json_lines(out)}
    worst = max(abs(got[img]["probabilities"][n] - evaluated.loc[i, f"prob_{n}"])
                for i, img in enumerate(evaluated["image"]) for n in cal.labels)
    assert worst <= 1e-4, worst  # predict = evaluate with calibration on
    rc, out, err = predict_cli(run, *_image_paths(tiny_cache, evaluated["image"][:2]), "--operating-point",
                               "sensitivity=0.9")
    assert rc == 0 and "validation thresholds (sensitivity=0.9)" in err
    rc, _, err = predict_cli(run, *_image_paths(tiny_cache, evaluated["image"][:1]), "--operating-point",
                             "sensitivity=0.8")
    assert rc == 2 and "no thresholds for operating point 'sensitivity=0.8'" in err and "--operating-point" in err

    _, index, _ = load_cache(tiny_cache)
    paths = _image_paths(tiny_cache, index.loc[index["split"] == "test", "image"][:6])
    _, out_cal, err = predict_cli(run, *paths, "--format", "json")
    _, out_raw, _ = predict_cli(run, *paths, "--format", "json", "--raw")
    assert "calibrated probabilities (temperature scaling)" in err and "mapped through the temperature" in err
    for c, r in zip(_json_lines(out_cal), _json_lines(out_raw)):
        assert c["calibrated"] is True and c["calibration"] == "temperature" and r["calibrated"] is False
        p_raw = np.array([r["probabilities"][n] for n in cal.labels])
        got = np.array([c["probabilities"][n] for n in cal.labels])
        np.testing.assert_allclose(got, cal.apply(p_raw[None])[0], atol=1e-6)
        assert c["findings"] == r["findings"]  # the same decisions on either scale

    if all(importlib.util.find_spec(m) for m in ("fastapi", "httpx")):  # serve answers what predict prints
        from fastapi.testclient import TestClient

        from chexnet.serve.app import create_app
        from chexnet.serve.config import ServeConfig

        with TestClient(create_app(ServeConfig(str(run), max_batch=2, max_wait_ms=5).check())) as client:
            for path, want in zip(paths[:2], _json_lines(out_cal)[:2]):
                body = client.post("/v1/predict", files={"file": (path.name, path.read_bytes())}).json()
                assert body["calibrated"] is True and body["calibration"] == "temperature"
                assert max(abs(body["probabilities"][n] - want["probabilities"][n]) for n in cal.labels) <= 1e-5

    pytest.importorskip("onnxruntime", reason="ONNX export needs chexnet[export]")
    from chexnet.predict import OnnxPredictor, TorchPredictor, predict_files

    chexnet_main("export", run)
    onnx = OnnxPredictor(run / "export" / "model.onnx")
    assert onnx.calibrated == "temperature"
    meta = onnx.metadata
    assert json.loads(meta["chexnet_calibration"])["slope"] == pytest.approx(cal.slope)
    a = predict_files(TorchPredictor(run), paths, progress=False)
    b = predict_files(onnx, paths, progress=False)
    worst = max(abs(x.probabilities[n] - y.probabilities[n]) for x, y in zip(a, b) for n in cal.labels)
    assert worst <= 1e-5, worst
    t = dict(zip(cal.labels, onnx.thresholds.values))
    for x, y in zip(a, b):  # the same decisions, away from p == threshold (the tiny model's outputs sit there)
        clear = [n for n in cal.labels if abs(y.probabilities[n] - t[n]) > 1e-4]
        assert [n for n in x.findings if n in clear] == [n for n in y.findings if n in clear]
