"""``chexnet demo``: the whole cycle on a small synthetic set, about 8 minutes on 2 CPU cores.

synth -> prepare -> train (2 worker processes, DDP over gloo) -> evaluate (val + test) -> AUROC table ->
predict with Grad-CAM heatmaps -> localize against the synthetic boxes -> export to ONNX and predict with it ->
external validation: a synthetic second site in CheXpert's layout, and the cross-dataset AUROC table.
Every step is the real command; nothing is downloaded (the demo recipe trains from scratch). The heatmap and
ONNX steps need the ``cam`` and ``export`` extras (``make demo`` installs them) and are skipped, saying so,
without them.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEMO_IMAGES = 2400
DEMO_SYNTH_SIZE = 256
DEMO_CACHE_SIZE = 128


def _step(title: str) -> float:
    print(f"\n== {title}", file=sys.stderr, flush=True)
    return time.time()


def run_demo(out: str | Path = "demo", images: int | None = None, epochs: int | None = None, nproc: int = 2) -> dict:
    from chexnet import metrics, predictions
    from chexnet.data.prepare import prepare
    from chexnet.data.synthetic import generate

    out = Path(out)
    data, cache, run = out / "data", out / "cache", out / "runs" / "demo"
    t0 = time.time()
    images = images or DEMO_IMAGES
    if (data / "Data_Entry_2017.csv").is_file():
        _step(f"synth: reusing {data}")
    else:
        _step(f"synth: {images} synthetic chest X-rays in NIH's layout -> {data}")
        generate(data, images=images, size=DEMO_SYNTH_SIZE, seed=0)
    _step(f"prepare: decode + resize to {DEMO_CACHE_SIZE} px, patient-wise splits -> {cache}")
    prepare(data, cache, size=DEMO_CACHE_SIZE)
    _step(f"train: {nproc} worker processes (torch elastic + DDP) -> {run}")
    cmd = [sys.executable, "-m", "chexnet", "train", "--cache", str(cache), "--out", str(run), "--config", "demo",
           "--resume", "auto", "--nproc", str(nproc)]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    print(" ".join(cmd[1:]).replace("-m chexnet", "chexnet"), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)
    _step("evaluate: best checkpoint on the val and test splits (95% CIs: bootstrap over patients)")
    subprocess.run([sys.executable, "-m", "chexnet", "evaluate", str(run), "--split", "test"], check=True,
                   stdout=subprocess.DEVNULL)
    val = predictions.read_predictions(run / "eval" / "val" / "predictions.csv")
    _, _, p_val, y_val = predictions.prediction_arrays(val)
    test_table = _read_auroc(run / "eval" / "test" / "auroc.csv")
    val_auroc = metrics.auroc(y_val, p_val)
    rows = []
    from chexnet.labels import PATHOLOGIES

    for i, name in enumerate(PATHOLOGIES):
        t = test_table.loc[name]
        rows.append((name, val_auroc[i], t["auroc"], t["auroc_ci_low"], t["auroc_ci_high"], t["prevalence"]))
    mean_val = float(np.nanmean(val_auroc))
    mean = test_table.loc["Mean"]
    print(f"\n{'pathology':<20}{'val AUROC':>10}{'test AUROC':>12}{'95% CI':>18}{'test prev.':>12}")
    for name, v, a, lo, hi, prev in rows:
        print(f"{name:<20}{_f(v):>10}{_f(a):>12}{'[' + _f(lo) + ', ' + _f(hi) + ']':>18}{prev:>12.3f}")
    print(f"{'Mean':<20}{_f(mean_val):>10}{_f(mean['auroc']):>12}"
          f"{'[' + _f(mean['auroc_ci_low']) + ', ' + _f(mean['auroc_ci_high']) + ']':>18}")
    _calibrate(run)
    _use_the_model(out, run, data)
    _external_validation(out, run, cache)
    _step("card: MODEL_CARD.md and model_card.json, with the demo's facts (a synthetic-data demonstration)")
    facts = Path(__file__).parent / "resources" / "demo_card.yaml"
    subprocess.run([sys.executable, "-m", "chexnet", "card", str(run), "--facts", str(facts)], check=True)
    minutes = (time.time() - t0) / 60
    print(f"\ndemo finished in {minutes:.1f} min; test mean AUROC {mean['auroc']:.3f}. Full report, plots and "
          f"predictions: {run / 'eval' / 'test'}/", file=sys.stderr)
    if _has("fastapi", "uvicorn"):
        print(f"serve it, with a web viewer: chexnet serve {run}   (then open http://127.0.0.1:8000/)", file=sys.stderr)
    return {"test_mean_auroc": float(mean["auroc"]), "val_mean_auroc": mean_val, "minutes": minutes, "run": str(run)}


def _calibrate(run: Path) -> None:
    """calibrate on val, then evaluate the calibrated probabilities: the mean ECE before and after, AUROC the same."""
    chexnet = [sys.executable, "-m", "chexnet"]
    before = _read_auroc(run / "eval" / "test" / "calibration.csv").loc["Mean", "ece"]
    _step("calibrate: temperature scaling per label on the validation split -> calibrator.json")
    subprocess.run([*chexnet, "calibrate", str(run)], check=True, stdout=subprocess.DEVNULL)
    _step("evaluate again: calibrated probabilities (AUROC unchanged), calibration and operating points with CIs")
    subprocess.run([*chexnet, "evaluate", str(run), "--split", "test"], check=True, stdout=subprocess.DEVNULL)
    after = _read_auroc(run / "eval" / "test" / "calibration.csv").loc["Mean", "ece"]
    ops = _read_auroc(run / "eval" / "test" / "operating_points.csv")
    sens = ops[ops["rule"] == "sensitivity=0.9"]
    print(f"test mean ECE (15 bins): {before:.3f} raw -> {after:.3f} calibrated; at the sensitivity-0.9 thresholds "
          f"chosen on val, test sensitivity {np.nanmean(sens['sensitivity']):.2f} and specificity "
          f"{np.nanmean(sens['specificity']):.2f} (means over labels; per label with CIs in "
          f"{run / 'eval' / 'test' / 'operating_points.csv'})")


def _has(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _use_the_model(out: Path, run: Path, data: Path) -> None:
    """predict (with heatmaps), localize and export, as a user would type them."""
    chexnet = [sys.executable, "-m", "chexnet"]
    test_images = sorted(n.strip() for n in (data / "test_list.txt").read_text().split())[:3]
    files = [str(next((data).glob(f"images_*/images/{n}"))) for n in test_images]
    if not _has("captum"):
        print("\n(skipping heatmaps and localization: pip install 'chexnet[cam]')", file=sys.stderr)
        _step("predict: 3 test images")
        subprocess.run([*chexnet, "predict", str(run), *files, "--no-progress"], check=True)
    else:
        _step(f"predict: 3 test images, with Grad-CAM heatmaps -> {out / 'heatmaps'}")
        subprocess.run([*chexnet, "predict", str(run), *files, "--cam", str(out / "heatmaps"), "--no-progress"],
                       check=True)
        _step("localize: heatmap boxes vs the synthetic lesion boxes, beside random boxes (Wang et al. 2017)")
        subprocess.run([*chexnet, "localize", str(run), "--examples", "4"], check=True, stdout=subprocess.DEVNULL)
    if not _has("onnx", "onnxscript", "onnxruntime"):
        print("\n(skipping the ONNX export: pip install 'chexnet[export]')", file=sys.stderr)
        return
    _step("export: one ONNX file with its preprocessing contract, checked against torch; predict --onnx")
    onnx = run / "export" / "model.onnx"
    subprocess.run([*chexnet, "export", str(run), "--out", str(onnx), "--dynamic-batch"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([*chexnet, "predict", "--onnx", str(onnx), *files, "--no-progress", "--operating-point",
                    "sensitivity=0.9"], check=True)


DEMO_EXTERNAL_IMAGES, DEMO_SHIFT = 400, 1.0


def _external_validation(out: Path, run: Path, cache: Path) -> None:
    """Another site: a synthetic set in CheXpert's layout and encodings with a site shift, prepared with
    ``--dataset chexpert``, then the NIH-trained run evaluated on both caches: the cross-dataset table."""
    chexnet = [sys.executable, "-m", "chexnet"]
    other, other_cache = out / "data-chexpert", out / "cache-chexpert"
    if (other / "CheXpert-v1.0-small" / "valid.csv").is_file():
        _step(f"external validation: reusing {other}")
    else:
        _step(f"external validation: {DEMO_EXTERNAL_IMAGES} synthetic X-rays of another site (CheXpert's layout and "
              f"encodings, site shift {DEMO_SHIFT}) -> {other}")
        subprocess.run([*chexnet, "synth", "--layout", "chexpert", "--out", str(other), "--images",
                        str(DEMO_EXTERNAL_IMAGES), "--size", str(DEMO_SYNTH_SIZE), "--seed", "1", "--shift",
                        str(DEMO_SHIFT)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*chexnet, "prepare", "--dataset", "chexpert", "--data", str(other), "--out", str(other_cache),
                    "--size", str(DEMO_CACHE_SIZE)], check=True, stdout=subprocess.DEVNULL)
    _step("evaluate on both sites: the labels CheXpert lacks are not scored there")
    subprocess.run([*chexnet, "evaluate", str(run), "--cache", str(cache), "--cache", str(other_cache)], check=True)


def _read_auroc(path: Path):
    import pandas as pd

    return pd.read_csv(path, index_col=0)


def _f(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"
