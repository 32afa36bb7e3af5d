"""The model a server answers with: the same engines as ``chexnet predict`` (torch run or ONNX export), plus its
identity (run, checkpoint, SHA-256) and Grad-CAM overlays as PNG bytes."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from chexnet.data.imageio import read_xray_bytes, resize_area
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
            self.predictor = OnnxPredictor(cfg.model, cfg.threshold)
            self.engine, file = "onnxruntime", Path(cfg.model)
            run, checkpoint = Path(cfg.model).stem, file.name
        else:
            self.predictor = TorchPredictor(cfg.model, cfg.checkpoint, cfg.threshold)
            self.engine, file = "torch", self.predictor.loaded.path
            run, checkpoint = Path(cfg.model).resolve().name, file.name
        self.max_pixels = cfg.max_pixels
        self.spec, self.labels = self.predictor.spec, self.predictor.labels
        self.identity = {"run": run, "checkpoint": checkpoint, "sha256": sha256(file), "engine": self.engine,
                         "labels": list(self.labels)}

    @property
    def heatmaps(self) -> bool:
        return self.engine == "torch"

    def describe(self) -> dict:
        t = self.predictor.thresholds
        return {**self.identity,
                "thresholds": {n: float(v) for n, v in zip(self.labels, t.values)}, "threshold_source": t.source,
                "preprocessing": self.spec.to_dict(),
                "heatmaps": self.heatmaps}

    # ---- work done in threads (decode) or on the single model thread (everything that touches the network)

    def decode(self, data: bytes, name: str, keep_original: bool = False):
        """(cache row, original or None) of an uploaded file: ``chexnet predict``'s step 1, in memory."""
        original = read_xray_bytes(data, name, self.max_pixels)
        return resize_area(original, self.spec.cache_size), (original if keep_original else None)

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        return self.predictor.probabilities(rows)

    def result(self, name: str, probs: np.ndarray) -> dict:
        """``chexnet predict --format json``'s object for one file."""
        above = probs >= self.predictor.thresholds.values
        return {"path": name, "probabilities": {n: float(v) for n, v in zip(self.labels, probs)},
                "findings": [n for n, a in zip(self.labels, above) if a], "error": None}

    def heatmap_png(self, row: np.ndarray, original: np.ndarray, finding: str) -> tuple[bytes, float]:
        """The Grad-CAM overlay of ``finding`` at the original image's size, as PNG bytes, and its probability."""
        from chexnet.explain import cam_on_image, gradcam, overlay

        c = self.labels.index(finding)
        p = self.predictor
        prob = float(p.probabilities(row[None])[0, c])
        cam = gradcam(p.model, p.inputs(row[None]), [c])[0]
        img = overlay(original, cam_on_image(cam, self.spec, *original.shape), f"{finding} p={prob:.2f}")
        return png_bytes(img), prob


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def gray_png(original: np.ndarray) -> bytes:
    from PIL import Image

    return png_bytes(Image.fromarray(original))
