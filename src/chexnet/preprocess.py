"""The one definition of "image file -> network input", shared by prepare, the Dataset, train, evaluate and predict.

A mismatch between training-time and deployment-time preprocessing is the most common silent failure of
CheXNet ports, so there is exactly one of each step, and its parameters travel with every checkpoint
(:class:`Preprocessing`, stored as ``checkpoint["preprocessing"]`` and in ``run.json``):

1. **file -> cache row** (:func:`read_cache_row`): decode with :func:`chexnet.data.imageio.read_xray`
   (PNG / JPEG / DICOM, modality and VOI LUTs, MONOCHROME1 inverted; bone bright, uint8) and resize the whole
   image to ``cache_size`` x ``cache_size`` by area averaging. ``chexnet prepare`` stores exactly these rows;
   ``chexnet predict`` computes them for a new file with the same function.
2. **cache row -> network input** (:class:`InputTransform`, on the training device, a batch at a time):

   * ``input_transform: resize`` -- the whole cached image is resized to ``input_size`` x ``input_size``
     (the CheXNet paper: "we downscale the images to 224x224"); nothing is cropped. The resize is a fixed,
     separable linear map (an antialiased triangle filter, :func:`resize_matrix`): two small matrix products
     on the device, identical in torch, NumPy and ONNX.
   * ``input_transform: crop`` -- an ``input_size`` crop: random (or random-resized) in training, made by the
     Dataset; the centre crop at evaluation and prediction, made here. Crops come from later reimplementations
     (e.g. arnoweng's 256 -> 224 ten-crop), not from the paper.

   Then uint8 -> float, the gray channel replicated to 3, and ImageNet's mean / std, in one fused
   multiply-add (``x * 1 / (255 std_c) - mean_c / std_c``).

Training augmentation (random horizontal flips; random crops in crop mode) is done by the Dataset on the
uint8 rows before step 2; evaluation and prediction apply step 2 to unaugmented rows.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass

import numpy as np

from chexnet.choices import INPUT_TRANSFORMS
from chexnet.data.imageio import read_xray_resized

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_RESIZE = "area"  # how prepare (and predict) resize a decoded file to the cache size


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn a new image file into this model's input (saved in checkpoints and exports)."""

    cache_size: int  # side of the uint8 cache rows (file -> cache row by area averaging)
    input_size: int  # side of the network input
    input_transform: str = "resize"  # resize | crop (cache row -> network input)
    cache_resize: str = CACHE_RESIZE
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3  # the gray image is replicated to this many channels
    bone: str = "bright"  # read_xray's convention (DICOM MONOCHROME1 is inverted)

    def __post_init__(self):
        if self.input_transform not in INPUT_TRANSFORMS:
            raise ValueError(f"input_transform must be one of {tuple(INPUT_TRANSFORMS)}, got {self.input_transform!r}")
        if self.cache_size < 1 or self.input_size < 1:
            raise ValueError(f"cache_size and input_size must be positive, got {self.cache_size}, {self.input_size}")
        if self.input_transform == "crop" and self.input_size > self.cache_size:
            raise ValueError(f"an input crop of {self.input_size} px does not fit the cache's {self.cache_size} px "
                             f"images: prepare a cache with --size >= {self.input_size}, or use input_transform resize")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("mean", "std"):
            if k in known:
                known[k] = tuple(float(v) for v in known[k])
        return cls(**known)


def read_cache_row(path: str | os.PathLike, cache_size: int, max_pixels: int | None = None) -> np.ndarray:
    """Step 1: an image file -> its ``(cache_size, cache_size)`` uint8 cache row (what ``prepare`` stores).

    ``max_pixels`` refuses larger images from their header, before decoding (predict's decompression-bomb guard).
    """
    return read_xray_resized(path, cache_size, max_pixels=max_pixels)


@functools.lru_cache(maxsize=32)
def resize_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) float64 matrix R of an antialiased linear resize: ``out = R @ img @ R.T``.

    Output pixel i covers source coordinates ``[i, i + 1) * src / dst``; its weights are a triangle filter
    centred there, widened by the scale when downscaling (as PIL's and torch's antialiased bilinear filters),
    normalised to sum to 1. ``src == dst`` gives the identity exactly.
    """
    if src < 1 or dst < 1:
        raise ValueError(f"sizes must be positive, got {src} -> {dst}")
    scale = src / dst
    support = max(scale, 1.0)
    centres = (np.arange(dst) + 0.5) * scale  # in source pixel units
    coords = np.arange(src) + 0.5
    w = np.clip(1.0 - np.abs(coords[None, :] - centres[:, None]) / support, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def center_crop_offset(size: int, crop: int) -> int:
    return (size - crop) // 2


def normalize_affine(channels: int = 3, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) per channel so that ``uint8 * scale + shift`` is ImageNet-normalised (float32, (C,))."""
    mean = np.asarray(mean if channels == 3 else (float(np.mean(mean)),), dtype=np.float64)
    std = np.asarray(std if channels == 3 else (float(np.mean(std)),), dtype=np.float64)
    return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _torch_module():
    import torch  # imported here: predict's ONNX path uses this module on machines without torch
    from torch import nn

    class InputTransform(nn.Module):
        """Step 2 on a batch: uint8 (B, 1, H, W) -> float (B, C, input_size, input_size), ImageNet-normalised.

        ``H == input_size``: already the network's size (a training crop made by the Dataset, or a cache of the
        input size): normalised only. ``H == cache_size``: resized (``resize``) or centre-cropped (``crop``).
        ``spec=None`` only normalises, whatever the size. The resize matrix is a non-persistent buffer: it is
        rebuilt from the :class:`Preprocessing`, never saved.
        """

        def __init__(self, spec: Preprocessing | None = None):
            super().__init__()
            self.spec = spec
            scale, shift = normalize_affine(*((spec.channels, spec.mean, spec.std) if spec else ()))
            self.register_buffer("scale", torch.from_numpy(scale).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("shift", torch.from_numpy(shift).view(1, -1, 1, 1), persistent=False)
            if spec is not None:
                r = resize_matrix(spec.cache_size, spec.input_size).astype(np.float32)
                self.register_buffer("rows", torch.from_numpy(r), persistent=False)
                self.register_buffer("cols", torch.from_numpy(np.ascontiguousarray(r.T)), persistent=False)

        def forward(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
            x = x.float()
            if self.spec is not None and x.shape[-1] != self.spec.input_size:
                size, s = self.spec.input_size, x.shape[-1]
                if s != self.spec.cache_size or x.shape[-2] != s:
                    raise ValueError(f"input images are {tuple(x.shape[-2:])}; expected cache rows of "
                                     f"{self.spec.cache_size} px or inputs of {size} px")
                if self.spec.input_transform == "resize":
                    x = torch.matmul(torch.matmul(self.rows, x), self.cols)
                else:
                    o = center_crop_offset(s, size)
                    x = x[..., o:o + size, o:o + size]
            x = torch.addcmul(self.shift, x, self.scale)  # broadcasts the gray channel to C channels
            return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    return InputTransform


def input_transform(spec: Preprocessing | None):
    """A torch ``nn.Module`` applying step 2 to uint8 batches (move it to the device with ``.to(device)``)."""
    return _torch_module()(spec)


def __getattr__(name: str):
    if name == "InputTransform":  # the class, defined on first use so that importing this module needs no torch
        return _torch_module()
    raise AttributeError(name)
