"""``chexnet predict``: X-ray files or folders -> 14 probabilities, the findings above threshold, and heatmaps.

Two engines share everything but the network:

* a run directory (``chexnet predict RUN PATH...``): the checkpoint's model in torch, Grad-CAM heatmaps
  (``--cam``); the thresholds are those ``chexnet evaluate`` chose on the validation split for that checkpoint
  (``RUN/thresholds.json``); where ``chexnet calibrate`` fitted a calibrator for that checkpoint
  (``RUN/calibrator.json``) the probabilities are calibrated and the thresholds mapped through it (the same
  findings), said in the output (``"calibrated"``); ``raw=True`` (``--raw``) gives the model's own;
* an exported model (``chexnet predict --onnx FILE PATH...``): onnxruntime, with the preprocessing contract,
  labels and thresholds read from the file's metadata. This path imports no torch: a device may not have it.

Preprocessing is :mod:`chexnet.preprocess` in both: step 1 (file -> uint8 cache row) here, step 2 (resize or
crop, normalisation) inside the network (the torch :class:`~chexnet.preprocess.InputTransform`, or the same
operations inside the ONNX graph), so a file gives the probabilities ``chexnet evaluate`` gives its cache row.

Every file is processed on its own: a missing, truncated or unsupported file, a DICOM without pixel data, or an
image over ``max_pixels`` becomes an error row for that file, and the others go on. DICOM files are named by
their path only; no header value (patient name, ID, dates) is ever printed or written.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chexnet import onnx_metadata as M
from chexnet.choices import FILE_TTA_MODES
from chexnet.data.imageio import DEFAULT_MAX_PIXELS, DICOM_SUFFIXES, ImageReadError, read_xray, resize_area
from chexnet.environment import require
from chexnet.labels import PATHOLOGIES
from chexnet.preprocess import Preprocessing, read_cache_row

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", *DICOM_SUFFIXES)
FALLBACK_THRESHOLD = 0.5


# --------------------------------------------------------------------------- inputs


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def collect_files(paths) -> list[Path]:
    """Files named on the command line (whatever their suffix), and image files found in folders, recursively:
    PNG, JPEG, TIFF, DICOM (by suffix, or by the DICM marker for files without one). Sorted within a folder."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and not f.name.startswith(".") and (
                        f.suffix.lower() in IMAGE_SUFFIXES or (f.suffix == "" and _has_dicom_magic(f))):
                    out.append(f)
        else:
            out.append(p)  # a missing file becomes an error row, not an abort
    return out


def read_input(path: Path, spec: Preprocessing, max_pixels: int | None, keep_original: bool = False):
    """(cache row, original image or None) of one file: step 1 of the preprocessing contract.

    With ``keep_original`` the full-size image is kept for heatmap overlays; the row is then
    ``resize_area(read_xray(path))``, bit for bit what :func:`chexnet.preprocess.read_cache_row` gives.
    """
    if keep_original:
        original = read_xray(path, max_pixels=max_pixels)
        return resize_area(original, spec.cache_size), original
    return read_cache_row(path, spec.cache_size, max_pixels), None


# --------------------------------------------------------------------------- engines


@dataclass
class Thresholds:
    values: np.ndarray  # (k,), NaN filled with FALLBACK_THRESHOLD
    source: str  # said in the output
    rule: str = ""  # the operating point in words ("max F1 on validation"), for the table's findings


def pick_rule(default: dict | None, rules: dict, rule: str | None, where: str) -> dict | None:
    """The thresholds of operating-point ``rule`` from ``rules`` ({rule: {label: t}}); ``default`` without a rule.
    A rule that was not evaluated is an error saying how to get it."""
    if rule is None:
        return default
    from chexnet.operating_points import parse_rule

    parse_rule(rule)
    if rule not in rules:
        raise ValueError(f"{where} has no thresholds for operating point {rule!r} (it has "
                         f"{', '.join(rules) or 'none'}): run chexnet evaluate RUN --operating-point {rule} first")
    return rules[rule]


def thresholds_from(mapping: dict | None, labels, source: str, fixed: float | None) -> Thresholds:
    """``fixed`` (--threshold FLOAT) wins; else the validation thresholds in ``mapping``; else 0.5, saying so."""
    if fixed is not None:
        return Thresholds(np.full(len(labels), float(fixed)), f"fixed {fixed:g}")
    if not mapping:
        return Thresholds(np.full(len(labels), FALLBACK_THRESHOLD),
                          f"{FALLBACK_THRESHOLD:g} for every finding: no validation thresholds for this model "
                          f"(run chexnet evaluate on the run first, or pass --threshold)")
    values = np.array([np.nan if mapping.get(n) is None else float(mapping[n]) for n in labels], dtype=np.float64)
    missing = [n for n, v in zip(labels, values) if not np.isfinite(v)]
    note = f"; {FALLBACK_THRESHOLD:g} for {', '.join(missing)} (no validation positives)" if missing else ""
    return Thresholds(np.where(np.isfinite(values), values, FALLBACK_THRESHOLD), source + note)


class TorchPredictor:
    """A run's checkpoint in torch (and Grad-CAM)."""

    def __init__(self, run: str | Path, checkpoint: str = "best", threshold: float | None = None,
                 trust_changed: bool = False, raw: bool = False, operating_point: str | None = None):
        import torch

        from chexnet.calibrator import saved_calibrator
        from chexnet.preprocess import input_transform
        from chexnet.runs import load_run_model, saved_rule_thresholds, saved_thresholds

        self.run = Path(run)
        loaded = load_run_model(self.run, checkpoint, require_spec=True, trust_changed=trust_changed)
        self.loaded, self.spec, self.labels = loaded, loaded.spec, tuple(loaded.cfg.labels)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = loaded.model.to(self.device).eval()
        self.transform = input_transform(self.spec).to(self.device)
        chosen, method, source = saved_thresholds(self.run, loaded)
        chosen = pick_rule(chosen, saved_rule_thresholds(self.run, loaded), operating_point,
                           f"{self.run / 'thresholds.json'} (for {loaded.path.name})")
        rule = operating_point or method
        if operating_point:
            source = f"validation thresholds ({operating_point}) of {loaded.path.name}"
        self.calibrator, note = (None, "") if raw else saved_calibrator(self.run, loaded)
        if note and self.calibrator is None:
            print(f"note: {note}", file=sys.stderr)
        self.calibrated = self.calibrator.method if self.calibrator else None
        if self.calibrator is not None and chosen is not None:  # the same decisions on calibrated probabilities
            raw_t = [np.nan if chosen.get(n) is None else chosen[n] for n in self.labels]
            mapped = self.calibrator.map_thresholds(raw_t)
            chosen = {n: (None if not np.isfinite(t) else float(t)) for n, t in zip(self.labels, mapped)}
            source += f", mapped through the {self.calibrator.method} calibrator"
        self.thresholds = thresholds_from(chosen, self.labels, source, threshold)
        if chosen is None and threshold is None and source:
            self.thresholds.source += f"; {source}"
        if chosen is not None and threshold is None and rule:
            self.thresholds.rule = _rule_words(rule)

    def inputs(self, rows: np.ndarray):
        import torch

        x = torch.from_numpy(np.ascontiguousarray(rows))[:, None].to(self.device)
        return self.transform(x)

    def probabilities(self, rows: np.ndarray, tta: str = "none") -> np.ndarray:
        import torch

        with torch.no_grad():
            p = torch.sigmoid(self.model(self.inputs(rows)).float())
            if tta == "hflip":
                p = (p + torch.sigmoid(self.model(self.inputs(rows[:, :, ::-1])).float())) / 2
        p = p.cpu().numpy().astype(np.float64)
        return self.calibrator.apply(p) if self.calibrator is not None else p


class OnnxPredictor:
    """An exported ONNX model in onnxruntime; no torch."""

    def __init__(self, path: str | Path, threshold: float | None = None, operating_point: str | None = None):
        ort = require("onnxruntime", "export", "predict --onnx")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{path}: no such ONNX file")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ValueError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from None
        meta = self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if M.PREPROCESSING not in meta:
            raise ValueError(f"{path}: not exported by chexnet export (no {M.PREPROCESSING} metadata)")
        self.spec = Preprocessing.from_dict(json.loads(meta[M.PREPROCESSING]))
        self.labels = tuple(json.loads(meta[M.LABELS]))
        chosen = pick_rule(json.loads(meta.get(M.THRESHOLDS, "null")), json.loads(meta.get(M.THRESHOLD_RULES, "{}")),
                           operating_point, str(self.path))
        rule = operating_point or json.loads(meta.get(M.THRESHOLD_METHOD, "null"))
        self.thresholds = thresholds_from(chosen, self.labels, f"validation thresholds stored in {self.path.name}"
                                          + (f" ({operating_point})" if operating_point else ""), threshold)
        if chosen is not None and threshold is None and rule:
            self.thresholds.rule = _rule_words(rule)
        calibration = json.loads(meta.get(M.CALIBRATION, "null"))  # the graph applies it (chexnet.export)
        self.calibrated = calibration.get("method") if calibration else None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def _run(self, rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.uint8)[:, None]
        if self.fixed_batch is None:
            return self.session.run(None, {self.input_name: rows})[0]
        step = self.fixed_batch
        out = []
        for i in range(0, len(rows), step):
            chunk = rows[i:i + step]
            pad = step - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.uint8)])
            out.append(self.session.run(None, {self.input_name: chunk})[0][:step - pad])
        return np.concatenate(out)

    def probabilities(self, rows: np.ndarray, tta: str = "none") -> np.ndarray:
        p = self._run(rows).astype(np.float64)
        if tta == "hflip":
            p = (p + self._run(rows[:, :, ::-1]).astype(np.float64)) / 2
        return p


def _rule_words(rule: str) -> str:
    from chexnet.operating_points import describe

    try:
        return f"{describe(rule)} on validation"
    except ValueError:
        return f"{rule} on validation"


# --------------------------------------------------------------------------- running


@dataclass
class Result:
    path: str
    probabilities: dict | None = None
    findings: list = field(default_factory=list)
    error: str | None = None
    heatmaps: list = field(default_factory=list)
    calibrated: str | None = None  # the calibrator's method, None: the model's own probabilities

    def set_probabilities(self, probs: np.ndarray, predictor) -> "Result":
        """The 14 probabilities of this file, and the findings at or above the predictor's thresholds."""
        above = probs >= predictor.thresholds.values
        self.probabilities = {n: float(v) for n, v in zip(predictor.labels, probs)}
        self.findings = [n for n, a in zip(predictor.labels, above) if a]
        self.calibrated = getattr(predictor, "calibrated", None)
        return self

    def to_json(self) -> dict:
        out = {"path": self.path, "probabilities": self.probabilities, "findings": self.findings, "error": self.error,
               "calibrated": self.calibrated is not None, "calibration": self.calibrated}
        if self.heatmaps:
            out["heatmaps"] = self.heatmaps
        return out


def predict_files(predictor, paths, batch_size: int = 16, tta: str = "none", max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  cam_dir: str | Path | None = None, cam_all: bool = False, progress: bool = True) -> list[Result]:
    """Predict every file; errors are per file. With ``cam_dir`` (torch only), Grad-CAM overlays for each finding
    above threshold (every finding with ``cam_all``) are written there."""
    from tqdm import tqdm

    if tta not in FILE_TTA_MODES:
        raise ValueError(f"tta must be one of {FILE_TTA_MODES}, got {tta!r}")
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    cams = None
    if cam_dir is not None:
        if not isinstance(predictor, TorchPredictor):
            raise ValueError("--cam needs a run directory (Grad-CAM runs in torch), not --onnx")
        from chexnet.explain import HeatmapWriter

        cams = HeatmapWriter(predictor, cam_dir, cam_all)
    files = collect_files(paths)
    results = [Result(str(f)) for f in files]
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress, file=sys.stderr, leave=False)
    for start in range(0, len(files), batch_size):
        batch, rows, originals = [], [], []
        for i in range(start, min(start + batch_size, len(files))):
            try:
                row, original = read_input(files[i], predictor.spec, max_pixels, keep_original=cams is not None)
            except ImageReadError as exc:
                results[i].error = exc.reason
                continue
            except Exception as exc:  # a decoder bug must not stop the other files
                results[i].error = f"{type(exc).__name__}: {exc}"
                continue
            batch.append(i)
            rows.append(row)
            originals.append(original)
        if batch:
            probs = predictor.probabilities(np.stack(rows), tta)
            for j, i in enumerate(batch):
                results[i].set_probabilities(probs[j], predictor)
            if cams is not None:
                for j, i in enumerate(batch):
                    results[i].heatmaps = cams.write(files[i], rows[j], originals[j], probs[j])
        bar.update(min(batch_size, len(files) - start))
    bar.close()
    return results


# --------------------------------------------------------------------------- output


def format_results(results: list[Result], fmt: str, labels=PATHOLOGIES, thresholds: Thresholds | None = None) -> str:
    """The results as ``table`` (a finding with its probability and, given ``thresholds``, the threshold and rule
    that made it one: "Effusion 0.31 (>= 0.24, sensitivity 0.9 on validation)"), ``json`` or ``csv``."""
    cut = {} if thresholds is None else dict(zip(labels, thresholds.values))

    def finding(n: str, p: float) -> str:
        if n not in cut:
            return f"{n} {p:.2f}"
        return f"{n} {p:.2f} (>= {cut[n]:.2f}{', ' + thresholds.rule if thresholds.rule else ''})"

    if fmt == "json":
        return "".join(json.dumps(r.to_json()) + "\n" for r in results)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", *[f"prob_{n}" for n in labels], "findings", "error"])
        for r in results:
            probs = [f"{r.probabilities[n]:.6f}" if r.probabilities else "" for n in labels]
            w.writerow([r.path, *probs, "|".join(r.findings), r.error or ""])
        return buf.getvalue()
    if fmt != "table":
        raise ValueError(f"format must be table, json or csv, got {fmt!r}")
    width = min(60, max([len("image")] + [len(r.path) for r in results]))
    lines = [f"{'image':<{width}}  findings above threshold (probability)", "-" * (width + 42)]
    for r in results:
        name = r.path if len(r.path) <= width else "..." + r.path[-(width - 3):]
        if r.error:
            text = f"ERROR: {r.error}"
        elif r.findings:
            text = ", ".join(finding(n, r.probabilities[n]) for n in sorted(r.findings, key=lambda n: -r.probabilities[n]))
        else:
            top = max(r.probabilities, key=r.probabilities.get)
            text = f"none (highest: {top} {r.probabilities[top]:.2f})"
        lines.append(f"{name:<{width}}  {text}")
    return "\n".join(lines) + "\n"


def parse_threshold(text: str) -> float | None:
    """``--threshold``: 'val' (None: the model's validation thresholds) or a number in [0, 1]."""
    if text == "val":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--threshold must be 'val' or a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise ValueError(f"--threshold must be in [0, 1], got {text}")
    return value


def run_predict(run: str | None, paths: list[str], onnx: str | None = None, checkpoint: str = "best",
                fmt: str = "table", threshold: str = "val", batch_size: int = 16, tta: str = "none",
                max_pixels: int | None = DEFAULT_MAX_PIXELS, cam_dir: str | None = None, cam_all: bool = False,
                progress: bool = True, trust_changed: bool = False, raw: bool = False,
                operating_point: str | None = None) -> int:
    """The command: print the results to stdout, notes to stderr; returns the number of files that failed."""
    fixed = parse_threshold(threshold)
    if not paths:
        raise ValueError("no input files or folders given")
    predictor = (OnnxPredictor(onnx, fixed, operating_point) if onnx else
                 TorchPredictor(run, checkpoint, fixed, trust_changed, raw, operating_point))
    results = predict_files(predictor, paths, batch_size, tta, max_pixels, cam_dir, cam_all, progress)
    if not results:
        raise ValueError(f"no image files found in {', '.join(map(str, paths))}")
    sys.stdout.write(format_results(results, fmt, predictor.labels, predictor.thresholds))
    failed = sum(r.error is not None for r in results)
    calibrated = getattr(predictor, "calibrated", None)
    what = f"calibrated probabilities ({calibrated} scaling)" if calibrated else "the model's own probabilities"
    print(f"{len(results) - failed} of {len(results)} image(s) predicted ({what}); thresholds: "
          f"{predictor.thresholds.source}"
          + (f"; {failed} failed" if failed else "") + (f"; heatmaps in {cam_dir}" if cam_dir else ""),
          file=sys.stderr)
    return failed
