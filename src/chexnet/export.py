"""``chexnet export RUN --format onnx``: one self-describing ONNX file for devices without torch.

The graph takes what step 1 of :mod:`chexnet.preprocess` produces -- uint8 cache rows, shape
(batch, 1, S, S): the decoded X-ray, bone bright, resized whole to S x S by area averaging -- and returns the 14
sigmoid probabilities. Step 2 (resize to the input size or centre crop, ImageNet normalisation, 3 channels) is
inside the graph, so a device only decodes and area-resizes (``chexnet predict --onnx`` does exactly that, with
Pillow and pydicom). Its metadata (the spec, labels, thresholds, run and checkpoint) is listed in
:mod:`chexnet.onnx_metadata`.

The export is checked before it is kept: onnxruntime and torch must agree on random cache rows to 1e-4.

``--quantize int8`` (:func:`quantize_int8`) writes a static int8 model instead (RUN/export/model.int8.onnx):
onnxruntime's ``quantize_static`` in QDQ format -- per-channel int8 weights in a 7-bit range (``reduce_range``:
CPUs without VNNI, AVX2's u8 x s8 multiply-add, saturate 16-bit sums of full-range weights; on this project's
AVX2 EPYC that moved a trained ResNet-18's probabilities by up to 0.29, against 0.05 with it), uint8
activations, the ranges calibrated (MinMax) on images drawn, seeded, from the run's training cache's train split
-- over the convolutions and matrix products only, so the preprocessing, the sigmoid and the calibrator stay fp32. Same input contract,
labels, thresholds and calibrator metadata as the fp32 file, plus ``chexnet_quantization``. Its check compares it
with the fp32 graph on the cache's val split: the change of each label's AUROC and the max |dp|, printed and
recorded (int8 cannot meet 1e-4; a non-finite output refuses the file).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np

from chexnet import __version__
from chexnet import onnx_metadata as M
from chexnet.environment import require

PARITY_TOLERANCE = 1e-4
QUANTIZE_OPS = ("Conv", "Gemm", "MatMul")  # int8; the rest of the graph (preprocessing, sigmoid, calibrator) fp32
PARITY_IMAGES = 2000  # int8 check: at most this many val images (a seeded draw where the split is larger)
INPUT_CONTRACT = ("uint8 (batch, 1, S, S) cache rows: decode the X-ray (bone bright; DICOM modality/VOI LUT, "
                  "MONOCHROME1 inverted), resize the whole image to S x S by area averaging; S = cache_size")


def _wrapper(model, transform, calibrator=None):
    import torch

    from chexnet.calibration import EPS

    class Exported(torch.nn.Module):
        """uint8 cache rows -> probabilities: the network with preprocessing step 2 and the sigmoid, then, with a
        calibrator, ``sigmoid(slope * logit(clip(p)) + intercept)`` per label (chexnet.calibrator's map)."""

        def __init__(self):
            super().__init__()
            self.transform, self.model = transform, model
            self.calibrated = calibrator is not None
            if self.calibrated:
                self.register_buffer("slope", torch.tensor(calibrator.slope, dtype=torch.float32))
                self.register_buffer("intercept", torch.tensor(calibrator.intercept, dtype=torch.float32))

        def forward(self, image):
            p = torch.sigmoid(self.model(self.transform(image)))
            if not self.calibrated:
                return p
            q = p.clamp(EPS, 1 - EPS)
            return torch.sigmoid(self.slope * (torch.log(q) - torch.log1p(-q)) + self.intercept)

    return Exported().eval()


def export_onnx(run: str | Path, checkpoint: str = "best", out: str | Path | None = None, opset: int = 18,
                dynamic_batch: bool = False, trust_changed: bool = False, raw: bool = False,
                quantize: str | None = None, calibration_images: int = 64, cache: str | Path | None = None,
                seed: int = 0) -> Path:
    """Export ``run``'s checkpoint; returns the path written (default RUN/export/model.onnx). Where the run has a
    calibrator for the checkpoint (``chexnet calibrate``) the graph applies it and the metadata says so, unless
    ``raw``. ``quantize="int8"``: a static int8 model instead (default RUN/export/model.int8.onnx; see
    :func:`quantize_int8`: ``calibration_images`` train images of ``cache``, default the run's, drawn with
    ``seed``)."""
    if quantize not in (None, "none", "int8"):
        raise ValueError(f"--quantize: int8 or none, got {quantize!r}")
    quantize = None if quantize == "none" else quantize
    if quantize and calibration_images < 1:
        raise ValueError(f"--calibration-images must be at least 1, got {calibration_images}")
    require("onnx", "export", "export to ONNX")
    require("onnxscript", "export", "export to ONNX")
    ort = require("onnxruntime", "export", "checking the exported model")
    import torch

    from chexnet.runs import load_run_model, saved_rule_thresholds, saved_thresholds
    from chexnet.fileio import atomic_write
    from chexnet.preprocess import input_transform

    run = Path(run)
    loaded = load_run_model(run, checkpoint, require_spec=True, trust_changed=trust_changed)
    spec = loaded.spec
    out = Path(out) if out else run / "export" / ("model.int8.onnx" if quantize else "model.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    from chexnet.calibrator import saved_calibrator

    cal, note = (None, "") if raw else saved_calibrator(run, loaded)
    if note and cal is None:
        print(f"note: {note}", file=sys.stderr)
    wrapper = _wrapper(loaded.model, input_transform(spec), cal)
    example = torch.zeros((2 if dynamic_batch else 1, 1, spec.cache_size, spec.cache_size), dtype=torch.uint8)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    print(f"exporting {loaded.path} ({loaded.cfg.arch}, {spec.input_transform} {spec.cache_size} -> "
          f"{spec.input_size} px) to ONNX opset {opset} ...", file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(sys.stderr):  # the exporter prints its progress; stdout stays for results
        program = torch.onnx.export(wrapper, (example,), input_names=["image"], output_names=["probabilities"],
                                    opset_version=opset, dynamo=True, dynamic_shapes=shapes, verbose=False)
    model = program.model_proto
    thresholds, method, _ = saved_thresholds(run, loaded)
    raw_thresholds = thresholds
    if cal is not None and thresholds is not None:  # on calibrated probabilities: the same decisions
        mapped = cal.map_thresholds([np.nan if thresholds.get(n) is None else thresholds[n] for n in cal.labels])
        thresholds = {n: (None if not np.isfinite(t) else float(t)) for n, t in zip(cal.labels, mapped)}
    rules = {}
    for rule, chosen in saved_rule_thresholds(run, loaded).items():
        values = [np.nan if chosen.get(n) is None else chosen[n] for n in loaded.cfg.labels]
        if cal is not None:
            values = cal.map_thresholds(values)
        rules[rule] = {n: (None if not np.isfinite(t) else float(t)) for n, t in zip(loaded.cfg.labels, values)}
    calibration = None if cal is None else {"method": cal.method, "slope": cal.slope, "intercept": cal.intercept,
                                            "checkpoint": cal.checkpoint, "epoch": cal.epoch,
                                            "global_step": cal.global_step}
    meta = {M.PREPROCESSING: json.dumps(spec.to_dict()), M.LABELS: json.dumps(list(loaded.cfg.labels)),
            M.THRESHOLDS: json.dumps(thresholds), M.THRESHOLD_METHOD: json.dumps(method),
            M.CALIBRATION: json.dumps(calibration), M.THRESHOLDS_RAW: json.dumps(raw_thresholds),
            M.THRESHOLD_RULES: json.dumps(rules),
            M.RUN: run.resolve().name, M.ARCH: loaded.cfg.arch, M.CHECKPOINT: loaded.described,
            M.VERSION: __version__, M.INPUT: INPUT_CONTRACT}
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    model.doc_string = (f"chexnet {__version__}: {loaded.cfg.arch} chest X-ray classifier, "
                        f"{len(loaded.cfg.labels)} sigmoid outputs")
    data = model.SerializeToString()

    # parity: the model must give what torch gives before it is written (a failed re-export keeps the old file)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, (2 if dynamic_batch else 1, 1, spec.cache_size, spec.cache_size), dtype=np.uint8)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": rows})[0]
    with torch.no_grad():
        want = wrapper(torch.from_numpy(rows)).numpy()
    diff = float(np.abs(got - want).max())
    if not diff <= PARITY_TOLERANCE:
        raise RuntimeError(f"the exported model disagrees with torch by {diff:.2e} (> {PARITY_TOLERANCE}); not written")
    check = f"onnxruntime vs torch max |dp| = {diff:.1e}"
    if quantize:
        data, q = quantize_int8(data, run, loaded, spec, calibration_images, seed, cache, dynamic_batch)
        check = (f"int8 vs fp32 on {q['parity']['images']} val images: max |dp| = {q['parity']['max_abs_dp']:.2e}, "
                 f"mean AUROC change {_signed(q['parity']['mean_auroc_change'])}")
    atomic_write(out, data)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {quantize or 'fp32'}, batch "
          f"{'dynamic' if dynamic_batch else 1}); {check}; thresholds: "
          f"{'validation (' + str(method) + ')' if thresholds else 'none (evaluate the run first to embed them)'}; "
          f"{'calibrated (' + cal.method + ' scaling in the graph)' if cal else 'the model' + chr(39) + 's own probabilities'}",
          file=sys.stderr)
    return out


def _signed(x) -> str:
    return "n/a" if x is None else f"{x:+.4f}"


class _Rows:
    """onnxruntime's CalibrationDataReader: cache rows of ``images`` as ``{"image": (b, 1, S, S) uint8}``."""

    def __init__(self, images, rows, batch: int):
        self.images, self.rows, self.batch, self.at = images, rows, batch, 0

    def get_next(self):
        if self.at >= len(self.rows):
            return None
        chunk = self.rows[self.at:self.at + self.batch]
        self.at += len(chunk)
        return {"image": np.ascontiguousarray(self.images[chunk])[:, None]}

    def rewind(self):
        self.at = 0


def _predict(session, images, rows, batch: int) -> np.ndarray:
    out = []
    for i in range(0, len(rows), batch):
        chunk = np.ascontiguousarray(images[rows[i:i + batch]])[:, None]
        out.append(session.run(None, {"image": chunk})[0])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def quantize_int8(data: bytes, run: Path, loaded, spec, calibration_images: int = 64, seed: int = 0,
                  cache: str | Path | None = None, dynamic_batch: bool = False) -> tuple[bytes, dict]:
    """The fp32 export ``data`` (with its metadata) -> (int8 model bytes, its ``chexnet_quantization`` record).

    Calibration: ``calibration_images`` rows drawn without replacement (``seed``) from the train split of
    ``cache`` (default: the run's training cache, run.json). Check: the fp32 and int8 graphs on the val split
    (at most PARITY_IMAGES, drawn with ``seed``): max |dp| and each label's AUROC change (int8 - fp32)."""
    import tempfile

    ort = require("onnxruntime", "export", "quantizing the exported model")
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from chexnet.data.dataset import open_split
    from chexnet.metrics import auroc
    from chexnet.runs import resolve_cache

    run_info = json.loads((run / "run.json").read_text())
    cache, images, index, meta = resolve_cache(run, run_info, cache, spec)
    labels = list(loaded.cfg.labels)
    train = open_split(cache, index, meta, "train", "eval", spec.input_size, spec.input_transform, labels=labels)
    val = open_split(cache, index, meta, "val", "eval", spec.input_size, spec.input_transform, labels=labels)
    if len(train.rows) == 0:
        raise ValueError(f"{cache}: the train split is empty: no images to calibrate int8 ranges on")
    rng = np.random.default_rng(seed)
    calib = np.sort(rng.choice(train.rows, min(calibration_images, len(train.rows)), replace=False))
    batch = 16 if dynamic_batch else 1
    print(f"quantizing to int8 (QDQ, per-channel weights, {', '.join(QUANTIZE_OPS)}): calibrating on {len(calib)} "
          f"train images of {cache} (seed {seed}) ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="chexnet-int8-") as tmp:
        fp32, pre, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        fp32.write_bytes(data)
        with contextlib.redirect_stdout(sys.stderr):
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(int8), _Rows(images, calib, batch), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(QUANTIZE_OPS), per_channel=True, reduce_range=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        model = onnx.load(str(int8))
    # the check: fp32 against int8 on the val split
    rows = val.rows
    if len(rows) > PARITY_IMAGES:
        rows = np.sort(rng.choice(rows, PARITY_IMAGES, replace=False))
    y = val.labels[np.searchsorted(val.rows, rows)] if len(rows) else val.labels[:0]
    fp32_session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    meta_props = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    record = {"method": "onnxruntime quantize_static, QDQ, MinMax", "weights": "int8 per channel, 7-bit range",
              "activations": "uint8 per tensor", "ops": list(QUANTIZE_OPS),
              "calibration": {"split": "train", "images": int(len(calib)), "seed": int(seed),
                              "cache": Path(cache).resolve().name}}
    del model.metadata_props[:]
    for k, v in {**meta_props, M.QUANTIZATION: json.dumps(record)}.items():
        model.metadata_props.add(key=k, value=v)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    p32, p8 = _predict(fp32_session, images, rows, batch), _predict(session, images, rows, batch)
    if not np.isfinite(p8).all():
        raise RuntimeError("the int8 model gives non-finite probabilities on the val split; not written")
    if len(rows):
        a32, a8 = np.atleast_1d(auroc(y, p32)), np.atleast_1d(auroc(y, p8))
        change = {n: (None if not (np.isfinite(a) and np.isfinite(b)) else float(b - a))
                  for n, a, b in zip(labels, a32, a8)}
        known = [d for d in change.values() if d is not None]
        worst = max(known, key=abs) if known else None
        parity = {"split": "val", "images": int(len(rows)), "max_abs_dp": float(np.abs(p8 - p32).max()),
                  "mean_auroc_change": float(np.mean(known)) if known else None, "worst_auroc_change": worst,
                  "auroc_change": change}
    else:
        print(f"warning: {cache} has no val images: the int8 model is not compared with fp32", file=sys.stderr)
        parity = {"split": "val", "images": 0, "max_abs_dp": float("nan"), "mean_auroc_change": None,
                  "worst_auroc_change": None, "auroc_change": {}}
    if len(rows):
        per_label = ", ".join(f"{n} {_signed(d)}" for n, d in parity["auroc_change"].items())
        print(f"int8 vs fp32 on {len(rows)} val images: max |dp| = {parity['max_abs_dp']:.2e}; AUROC change "
              f"(int8 - fp32) mean {_signed(parity['mean_auroc_change'])}, worst {_signed(worst)}; per label: "
              f"{per_label}", file=sys.stderr)
    record["parity"] = parity
    for prop in model.metadata_props:
        if prop.key == M.QUANTIZATION:
            prop.value = json.dumps(record)
    return model.SerializeToString(), record
