"""Dataset over the uint8 cache (``images.u8`` memmap) with train / eval views of each row.

The dataset keeps only the cache's *path*: each process (a loader worker included) opens its own read-only
memmap on first use, so no worker copies the 7 GB cache and no image file is opened per sample. The pages
are shared through the OS page cache.

Samples are ``uint8`` tensors and float32 label vectors. What a sample holds depends on the run's
``input_transform`` (:mod:`chexnet.preprocess`):

* ``resize`` (the CheXNet paper): the whole cache row (1 x S x S), horizontally flipped at random in training.
* ``crop``: in training a random (or random-resized) ``input_size`` crop, flipped at random; at evaluation
  the whole row (the centre crop is taken on the device), or ten crops for ten-crop TTA.

Resizing, float conversion, gray -> 3 channels and ImageNet normalisation run afterwards on the training
device for the whole batch (:class:`chexnet.preprocess.InputTransform`): cheaper than per-sample float work in
the loader, it moves 4x fewer bytes to the GPU, and predict applies the very same module to new files.

Augmentation randomness is a pure function of (seed, epoch, sample index), so results do not depend on
the number of loader workers or processes, and a resumed run sees exactly the crops it would have seen.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from chexnet.choices import INPUT_TRANSFORMS
from chexnet.preprocess import center_crop_offset

MODES = ("train", "eval", "hflip", "tencrop")


class CacheDataset(Dataset):
    """Rows ``rows`` of a cache ``images.u8`` of shape (N, S, S), with labels aligned to those rows.

    mode: ``train`` (augmented view, see the module docstring), ``eval`` (the row), ``hflip`` (the row and its
    mirror image), ``tencrop`` (crop mode only: four corners + centre of ``input_size``, and their mirror images).
    """

    def __init__(self, images_path: str | os.PathLike, count: int, size: int, labels: np.ndarray, rows=None,
                 input_size: int = 224, input_transform: str = "resize", mode: str = "eval", seed: int = 0,
                 train_crop: str = "random", hflip: bool = True):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if input_transform not in INPUT_TRANSFORMS:
            raise ValueError(f"input_transform must be one of {tuple(INPUT_TRANSFORMS)}, got {input_transform!r}")
        if input_transform == "crop" and input_size > size:
            raise ValueError(f"crop {input_size} is larger than the cached images ({size} px): prepare a larger "
                             f"cache, or use input_transform resize")
        if mode == "tencrop" and input_transform != "crop":
            raise ValueError("ten-crop TTA needs a run trained on crops (input_transform crop); this run resizes "
                             "the whole image: use --tta none or hflip")
        self.images_path = str(images_path)
        self.count, self.size, self.input_size = int(count), int(size), int(input_size)
        self.rows = np.arange(self.count) if rows is None else np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.float32)
        if len(self.labels) != len(self.rows):
            raise ValueError(f"{len(self.labels)} label rows for {len(self.rows)} images")
        self.input_transform, self.mode, self.seed = input_transform, mode, int(seed)
        self.train_crop, self.hflip = train_crop, hflip
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
            out = img[None]
        elif self.mode == "hflip":
            out = np.stack([img, img[:, ::-1]])[:, None]
        else:
            out = _ten_crop(img, self.input_size)[:, None]
        return torch.from_numpy(np.array(out, copy=True)), label  # a writable copy, never a view of the memmap

    def _train_view(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        s, c = self.size, self.input_size
        out = img
        if self.input_transform == "crop":
            if self.train_crop == "random_resized":
                out = _random_resized_crop(img, c, rng)
            else:
                y, x = rng.integers(0, s - c + 1, size=2)
                out = img[y:y + c, x:x + c]
        if self.hflip and rng.random() < 0.5:
            out = out[:, ::-1]
        return out[None]


def _center(img: np.ndarray, c: int) -> np.ndarray:
    o = center_crop_offset(img.shape[0], c)
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


class SourceBalancedSampler(Sampler):
    """This rank's share of an epoch in which each source (``sources``: one name per dataset item) has the same
    expected share: ``len(sources)`` items drawn with replacement, item weight 1 / its source's item count, from a
    generator seeded by (seed, epoch), so every rank draws the same list and takes every ``num_replicas``-th item
    from ``rank`` (the tail that does not divide evenly is dropped, as DistributedSampler(drop_last=True) does).
    The same seed and epoch give the same draw: resuming mid-epoch sees the images it would have seen."""

    def __init__(self, sources, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        sources = np.asarray(sources, dtype=object)
        names, inverse, counts = np.unique(sources.astype(str), return_inverse=True, return_counts=True)
        self.names, self.counts = [str(n) for n in names], counts.tolist()
        self.weights = torch.from_numpy(1.0 / counts[inverse])
        self.num_replicas, self.rank, self.seed, self.epoch = int(num_replicas), int(rank), int(seed), 0
        self.num_samples = len(sources) // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_draw(self) -> list[int]:
        """The whole epoch's draw, the same on every rank (this rank takes items rank, rank + num_replicas, ...)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = self.num_samples * self.num_replicas
        return torch.multinomial(self.weights, total, replacement=True, generator=g).tolist()

    def __iter__(self):
        return iter(self.epoch_draw()[self.rank::self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


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


def open_split(cache_dir: str | os.PathLike, index, meta: dict, split: str, mode: str, input_size: int,
               input_transform: str = "resize", seed: int = 0, train_crop: str = "random", hflip: bool = True,
               labels=None) -> CacheDataset:
    """A :class:`CacheDataset` for one split (``train``/``val``/``test``) of a prepared cache.

    ``labels``: the model's labels, in its output order (default: the cache's). A label the cache does not have
    is missing (NaN) in every row, as an empty cell is: training masks it out, evaluation does not score it.
    """
    from chexnet.data.cache import cache_labels

    names = list(labels or cache_labels(meta))
    rows = np.flatnonzero(index["split"].to_numpy() == split)
    y = np.full((len(rows), len(names)), np.nan, dtype=np.float32)
    for j, name in enumerate(names):
        if name in index.columns:
            y[:, j] = index[name].to_numpy(np.float32)[rows]
    return CacheDataset(Path(cache_dir) / "images.u8", meta["count"], meta["size"], y, rows, input_size=input_size,
                        input_transform=input_transform, mode=mode, seed=seed, train_crop=train_crop, hflip=hflip)
