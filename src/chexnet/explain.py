"""Grad-CAM heatmaps (captum's ``LayerGradCam``) and their geometry back onto the original image.

The layer explained is chosen by the model factory (:func:`chexnet.models.cam_target_layer`: the trunk's last
feature map), so every architecture works the same way. A map computed on the network input is carried back
through the preprocessing contract: in ``resize`` mode the input covers the whole cached image, in ``crop`` mode
the centre of it (the rest of the map is zero); the cached image covers the whole original image, stretched
to a square, so the map is finally resized to the original's height and width.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from chexnet.environment import require
from chexnet.preprocess import Preprocessing, center_crop_offset


def _captum():
    require("captum", "cam", "heatmaps")
    from captum.attr import LayerAttribution, LayerGradCam

    return LayerGradCam, LayerAttribution


def gradcam(model, inputs, targets) -> np.ndarray:
    """Grad-CAM of ``model`` for class ``targets[i]`` of each input (B, C, I, I): float32 (B, I, I) in [0, 1]."""
    from chexnet.models import cam_target_layer

    LayerGradCam, LayerAttribution = _captum()
    cam = LayerGradCam(model, cam_target_layer(model))
    attr = cam.attribute(inputs, target=list(targets), relu_attributions=True)
    up = LayerAttribution.interpolate(attr, tuple(inputs.shape[-2:]), interpolate_mode="bilinear")
    maps = up[:, 0].detach().float().cpu().numpy()
    peak = maps.reshape(len(maps), -1).max(axis=1)
    return np.where(peak[:, None, None] > 0, maps / np.maximum(peak, 1e-12)[:, None, None], 0.0).astype(np.float32)


def _resize_map(m: np.ndarray, height: int, width: int) -> np.ndarray:
    if m.shape == (height, width):
        return m.astype(np.float32)
    return np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR))


def cam_on_cache(cam: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """A map on the network input (I, I) -> on the cache row (S, S)."""
    s, i = spec.cache_size, spec.input_size
    if spec.input_transform == "resize":
        return _resize_map(cam, s, s)
    out = np.zeros((s, s), np.float32)
    o = center_crop_offset(s, i)
    out[o:o + i, o:o + i] = cam
    return out


def cam_on_image(cam: np.ndarray, spec: Preprocessing, height: int, width: int) -> np.ndarray:
    """A map on the network input -> on the original image (H, W), the way the image was resized and cropped."""
    return np.clip(_resize_map(cam_on_cache(cam, spec), height, width), 0.0, 1.0)


def overlay(gray: np.ndarray, cam: np.ndarray, caption: str, boxes=(), alpha: float = 0.5) -> Image.Image:
    """The X-ray with the heatmap blended in where it is strong (jet colours), a caption, and optional boxes
    ``[(x, y, w, h, colour), ...]`` in image pixels. Same size as ``gray``."""
    from matplotlib import colormaps

    base = np.repeat(gray[..., None].astype(np.float32), 3, axis=2)
    heat = colormaps["jet"](cam)[..., :3] * 255.0
    weight = (alpha * cam)[..., None]
    img = Image.fromarray(np.clip(base * (1 - weight) + heat * weight, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for x, y, w, h, colour in boxes:
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=max(1, gray.shape[0] // 256))
    size = max(10, gray.shape[0] // 32)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
    pad = max(2, size // 4)
    draw.rectangle([0, 0, right - left + 2 * pad, bottom - top + 2 * pad], fill=(0, 0, 0))
    draw.text((pad - left, pad - top), caption, fill=(255, 255, 255), font=font)
    return img


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "image"


def heatmap_overlays(predictor, row: np.ndarray, original: np.ndarray, probs: np.ndarray, classes) -> list:
    """Grad-CAM of ``classes`` for one image (a torch predictor): ``[(class, map at the original's size, overlay
    image captioned with the finding and its probability in ``probs``), ...]``."""
    inputs = predictor.inputs(np.repeat(row[None], len(classes), axis=0))
    maps = gradcam(predictor.model, inputs, list(classes))
    out = []
    for cam, c in zip(maps, classes):
        full = cam_on_image(cam, predictor.spec, *original.shape)
        out.append((c, full, overlay(original, full, f"{predictor.labels[c]} p={probs[c]:.2f}")))
    return out


class HeatmapWriter:
    """Writes ``OUT/<image>_<Finding>.png`` (overlay at the original size) and ``.npy`` (the raw map, float32
    (H, W) in [0, 1]) for each finding above threshold (all findings with ``cam_all``)."""

    def __init__(self, predictor, out_dir: str | Path, cam_all: bool = False):
        _captum()  # a missing extra fails before any file is read
        self.predictor, self.out, self.cam_all = predictor, Path(out_dir), cam_all
        self.out.mkdir(parents=True, exist_ok=True)
        self.used: set[str] = set()

    def _stem(self, path: Path) -> str:
        stem, k = safe_name(path.stem), 2
        name = stem
        while name in self.used:
            name, k = f"{stem}_{k}", k + 1
        self.used.add(name)
        return name

    def write(self, path: Path, row: np.ndarray, original: np.ndarray, probs: np.ndarray) -> list[dict]:
        p = self.predictor
        wanted = [c for c in range(len(p.labels)) if self.cam_all or probs[c] >= p.thresholds.values[c]]
        if not wanted:
            return []
        stem, written = self._stem(Path(path)), []
        for c, full, image in heatmap_overlays(p, row, original, probs, wanted):
            name = p.labels[c]
            png, npy = self.out / f"{stem}_{name}.png", self.out / f"{stem}_{name}.npy"
            image.save(png)
            np.save(npy, full)
            written.append({"finding": name, "probability": float(probs[c]), "png": str(png), "npy": str(npy)})
        return written
