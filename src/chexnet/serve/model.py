"""The model a server answers with: the same engines as ``chexnet predict`` (torch run or ONNX export), plus its
identity (run, checkpoint, SHA-256) and Grad-CAM overlays as PNG bytes."""

from __future__ import annotations

import hashlib
import importlib.util
import io
from pathlib import Path

import numpy as np

from chexnet import onnx_metadata as M
from chexnet.data.imageio import read_xray_bytes, read_xray_bytes_resized, resize_area
from chexnet.predict import Result
from chexnet.serve.config import ServeConfig


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ServedModel:
    def __init__(self, cfg: ServeConfig):
        from chexnet.predict import OnnxPredictor, TorchPredictor

        if cfg.onnx:
            self.predictor = OnnxPredictor(cfg.model, cfg.threshold, cfg.operating_point)
            meta, file = self.predictor.metadata, Path(cfg.model)
            # the run and checkpoint it was exported from, as the export recorded them (older exports: the file)
            self.engine, run = "onnxruntime", meta.get(M.RUN) or file.stem
            source = meta.get(M.CHECKPOINT)
        else:
            self.predictor = TorchPredictor(cfg.model, cfg.checkpoint, cfg.threshold, cfg.trust_changed, cfg.raw,
                                            cfg.operating_point)
            self.engine, file, run = "torch", self.predictor.loaded.path, self.predictor.run.resolve().name
            source = self.predictor.loaded.described
        self.max_pixels = cfg.max_pixels
        self.spec, self.labels = self.predictor.spec, self.predictor.labels
        self.identity = {"run": run, "checkpoint": file.name, "trained": source, "sha256": sha256(file),
                         "engine": self.engine, "labels": list(self.labels)}
        # Grad-CAM runs in torch and needs captum (chexnet[cam]); without either, /v1/heatmap is a clear 400
        self.heatmaps = self.engine == "torch" and importlib.util.find_spec("captum") is not None

    def describe(self) -> dict:
        t = self.predictor.thresholds
        return {**self.identity,
                "thresholds": {n: float(v) for n, v in zip(self.labels, t.values)}, "threshold_source": t.source,
                "preprocessing": self.spec.to_dict(),
                "heatmaps": self.heatmaps}

    # ---- work done in threads (decode) or on the single model thread (everything that touches the network)

    def decode(self, data: bytes, name: str, keep_original: bool = False, row: bool = True):
        """(cache row or None, original or None) of an uploaded file: ``chexnet predict``'s step 1, in memory.
        Without the original the row comes the fast way (bit for bit the same, as in ``predict.read_input``)."""
        if not keep_original:
            return read_xray_bytes_resized(data, self.spec.cache_size, name, self.max_pixels), None
        original = read_xray_bytes(data, name, self.max_pixels)
        return (resize_area(original, self.spec.cache_size) if row else None), original

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        return self.predictor.probabilities(rows)

    def result(self, name: str, probs: np.ndarray) -> dict:
        """``chexnet predict --format json``'s object for one file."""
        return Result(name).set_probabilities(probs, self.predictor).to_json()

    def heatmap(self, row: np.ndarray, original: np.ndarray, finding: str, probs: np.ndarray):
        """The Grad-CAM overlay of ``finding`` at the original image's size (``probs``: the image's probabilities,
        from the batcher, for the caption). Runs on the model thread."""
        from chexnet.explain import heatmap_overlays

        [(_, _, image)] = heatmap_overlays(self.predictor, row, original, probs, [self.labels.index(finding)])
        return image


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def gray_png(original: np.ndarray) -> bytes:
    from PIL import Image

    return png_bytes(Image.fromarray(original))
