"""``chexnet export RUN --format onnx``: one self-describing ONNX file for devices without torch.

The graph takes what step 1 of :mod:`chexnet.preprocess` produces -- uint8 cache rows, shape
(batch, 1, S, S): the decoded X-ray, bone bright, resized whole to S x S by area averaging -- and returns the 14
sigmoid probabilities. Step 2 (resize to the input size or centre crop, ImageNet normalisation, 3 channels) is
inside the graph, so a device only decodes and area-resizes (``chexnet predict --onnx`` does exactly that, with
Pillow and pydicom). Its metadata (the spec, labels, thresholds, run and checkpoint) is listed in
:mod:`chexnet.onnx_metadata`.

The export is checked before it is kept: onnxruntime and torch must agree on random cache rows to 1e-4.
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
                dynamic_batch: bool = False, trust_changed: bool = False, raw: bool = False) -> Path:
    """Export ``run``'s checkpoint; returns the path written (default RUN/export/model.onnx). Where the run has a
    calibrator for the checkpoint (``chexnet calibrate``) the graph applies it and the metadata says so, unless
    ``raw``."""
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
    out = Path(out) if out else run / "export" / "model.onnx"
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
    atomic_write(out, data)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, batch {'dynamic' if dynamic_batch else 1}); "
          f"onnxruntime vs torch max |dp| = {diff:.1e}; thresholds: "
          f"{'validation (' + str(method) + ')' if thresholds else 'none (evaluate the run first to embed them)'}; "
          f"{'calibrated (' + cal.method + ' scaling in the graph)' if cal else 'the model' + chr(39) + 's own probabilities'}",
          file=sys.stderr)
    return out
