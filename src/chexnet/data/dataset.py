"""Dataset over the uint8 cache (``images.u8`` memmap) with train / eval transforms, and batch normalization.

The dataset keeps only the cache's *path*: each process (a loader worker included) opens its own read-only
memmap on first use, so no worker copies the 7 GB cache and no image file is opened per sample. The pages
are shared through the OS page cache.

Samples are ``uint8`` tensors (1 x C x C, or 10 x 1 x C x C for ten-crop) and float32 label vectors.
Conversion to float, gray -> 3 channels and ImageNet normalization run afterwards, on the training device,
for the whole batch (:func:`normalize_batch`): cheaper than per-sample float work in the loader, and it
moves 4x fewer bytes to the GPU.

Augmentation randomness is a pure function of (seed, epoch, sample index), so results do not depend on
the number of loader workers or processes, and a resumed run sees exactly the crops it would have seen.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CacheDataset(Dataset):
    """Rows ``rows`` of a cache ``images.u8`` of shape (N, S, S), with labels aligned to those rows.

    mode: ``train`` (random crop / random resized crop + horizontal flip), ``eval`` (center crop),
    ``tencrop`` (four corners + center, and their mirror images), ``hflip`` (center crop and its mirror).
    """

    def __init__(self, images_path: str | os.PathLike, count: int, size: int, labels: np.ndarray, rows=None,
                 crop: int = 224, mode: str = "eval", seed: int = 0, train_crop: str = "random", hflip: bool = True):
        if mode not in ("train", "eval", "tencrop", "hflip"):
            raise ValueError(f"mode must be train, eval, tencrop or hflip, got {mode!r}")
        if crop > size:
            raise ValueError(f"crop {crop} is larger than the cached images ({size} px): prepare a larger cache")
        self.images_path = str(images_path)
        self.count, self.size, self.crop = int(count), int(size), int(crop)
        self.rows = np.arange(self.count) if rows is None else np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.float32)
        if len(self.labels) != len(self.rows):
            raise ValueError(f"{len(self.labels)} label rows for {len(self.rows)} images")
        self.mode, self.seed, self.train_crop, self.hflip = mode, int(seed), train_crop, hflip
        self.epoch = 0
        self._images = None

    def __getstate__(self):  # never pickle the memmap: each worker opens its own
        state = self.__dict__.copy()
        state["_images"] = None
        return state

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.memmap(self.images_path, dtype=np.uint8, mode="r", shape=(self.count, self.size, self.size))
        return self._images

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        img = self.images[self.rows[i]]
        label = torch.from_numpy(self.labels[i])
        if self.mode == "train":
            rng = np.random.default_rng((self.seed, self.epoch, int(i)))
            out = self._train_view(img, rng)
        elif self.mode == "eval":
            out = _center(img, self.crop)[None]
        elif self.mode == "hflip":
            c = _center(img, self.crop)
            out = np.stack([c, c[:, ::-1]])[:, None]
        else:
            out = _ten_crop(img, self.crop)[:, None]
        return torch.from_numpy(np.ascontiguousarray(out)), label

    def _train_view(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        s, c = self.size, self.crop
        if self.train_crop == "random_resized":
            out = _random_resized_crop(img, c, rng)
        else:
            y, x = rng.integers(0, s - c + 1, size=2)
            out = img[y:y + c, x:x + c]
        if self.hflip and rng.random() < 0.5:
            out = out[:, ::-1]
        return out[None]


def _center(img: np.ndarray, c: int) -> np.ndarray:
    s = img.shape[0]
    o = (s - c) // 2
    return img[o:o + c, o:o + c]


def _ten_crop(img: np.ndarray, c: int) -> np.ndarray:
    s = img.shape[0]
    e = s - c
    crops = [img[:c, :c], img[:c, e:], img[e:, :c], img[e:, e:], _center(img, c)]
    return np.stack(crops + [v[:, ::-1] for v in crops])


def _random_resized_crop(img: np.ndarray, c: int, rng: np.random.Generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
    s = img.shape[0]
    for _ in range(10):
        area = s * s * rng.uniform(*scale)
        r = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w, h = int(round(np.sqrt(area * r))), int(round(np.sqrt(area / r)))
        if 0 < w <= s and 0 < h <= s:
            y, x = rng.integers(0, s - h + 1), rng.integers(0, s - w + 1)
            break
    else:
        y = x = 0
        h = w = s
    patch = torch.from_numpy(np.ascontiguousarray(img[y:y + h, x:x + w]))[None, None].float()
    out = F.interpolate(patch, size=(c, c), mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].round_().clamp_(0, 255).to(torch.uint8).numpy()


@functools.lru_cache(maxsize=16)
def _affine(device: torch.device, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of ImageNet normalization for uint8 input, made once per device (no copy per batch)."""
    mean = torch.tensor(IMAGENET_MEAN if channels == 3 else (0.449,)).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD if channels == 3 else (0.226,)).view(1, -1, 1, 1)
    return (1.0 / (255.0 * std)).to(device), (-mean / std).to(device)


def normalize_batch(x: torch.Tensor, channels: int = 3, channels_last: bool = False) -> torch.Tensor:
    """uint8 gray batch (B, 1, H, W) -> float, replicated to ``channels``, ImageNet-normalized.

    One fused broadcast ``x * (1 / (255 std_c)) - mean_c / std_c`` writes the 3 channels directly.
    """
    scale, shift = _affine(x.device, channels)
    x = torch.addcmul(shift, x.float(), scale)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class SkipSampler(Sampler):
    """Yield the indices of ``sampler`` after the first ``skip`` (mid-epoch resume without loading skipped data)."""

    def __init__(self, sampler, skip: int = 0):
        self.sampler, self.skip = sampler, int(skip)

    def __iter__(self):
        it = iter(self.sampler)
        for _ in range(self.skip):
            next(it, None)
        yield from it

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def open_split(cache_dir: str | os.PathLike, index, meta: dict, split: str, crop: int, mode: str, seed: int = 0,
               train_crop: str = "random", hflip: bool = True, labels=None) -> CacheDataset:
    """A :class:`CacheDataset` for one split (``train``/``val``/``test``) of a prepared cache."""
    from chexnet.labels import PATHOLOGIES

    names = list(labels or PATHOLOGIES)
    rows = np.flatnonzero(index["split"].to_numpy() == split)
    return CacheDataset(Path(cache_dir) / "images.u8", meta["count"], meta["size"],
                        index[names].to_numpy(np.float32)[rows], rows, crop=crop, mode=mode, seed=seed,
                        train_crop=train_crop, hflip=hflip)
