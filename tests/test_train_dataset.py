"""The training dataset over the uint8 cache: shapes and dtypes, label alignment with index.csv, whole-image
(resize) and crop views, deterministic augmentation, distributed sharding, and cheap pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from chexnet.data.cache import load_cache
from chexnet.data.dataset import CacheDataset, SkipSampler, open_split
from chexnet.labels import PATHOLOGIES

SIZE, CROP = 48, 32


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from chexnet.data.prepare import prepare
    from chexnet.data.synthetic import generate

    root = tmp_path_factory.mktemp("ds_cache")
    generate(root / "data", images=40, size=64, seed=1, progress=False, workers=1)
    prepare(root / "data", root / "cache", size=SIZE, workers=1, progress=False, val_fraction=0.3)
    images, index, meta = load_cache(root / "cache")
    return root / "cache", images, index, meta


def split(cache, name="train", mode="train", transform="crop", **kw):
    path, _, index, meta = cache
    return open_split(path, index, meta, name, mode, CROP, transform, **kw)


def test_sample_shapes_and_dtypes(cache):
    ds = split(cache)
    assert len(ds) > 0
    x, y = ds[0]
    assert x.dtype == torch.uint8 and x.shape == (1, CROP, CROP)
    assert y.dtype == torch.float32 and y.shape == (14,)
    # evaluation views are whole cache rows (the device takes the centre crop or resizes); ten-crop makes crops
    for mode, shape in (("eval", (1, SIZE, SIZE)), ("hflip", (2, 1, SIZE, SIZE)), ("tencrop", (10, 1, CROP, CROP))):
        x, _ = split(cache, "val", mode)[0]
        assert x.shape == shape and x.dtype == torch.uint8, mode


def test_resize_mode_trains_on_the_whole_image_flipped_at_random(cache):
    """The CheXNet paper: nothing is cropped; the whole row goes to the device, mirrored half the time."""
    _, images, _, _ = cache
    ds = split(cache, transform="resize", seed=5)
    flips = 0
    for i in range(len(ds)):
        x = ds[i][0][0].numpy()
        img = images[ds.rows[i]]
        assert x.shape == (SIZE, SIZE)
        assert np.array_equal(x, img) or np.array_equal(x, img[:, ::-1])
        flips += not np.array_equal(x, img)
    assert 0 < flips < len(ds)
    no_flip = split(cache, transform="resize", hflip=False)
    assert all(np.array_equal(no_flip[i][0][0].numpy(), images[no_flip.rows[i]]) for i in range(len(no_flip)))


def test_labels_and_images_align_with_index_rows(cache):
    _, images, index, _ = cache
    for name in ("train", "val", "test"):
        ds = split(cache, name, "eval")
        rows = np.flatnonzero(index["split"].to_numpy() == name)
        assert len(ds) == len(rows) > 0
        assert np.array_equal(ds.rows, rows)
        expected = index[list(PATHOLOGIES)].to_numpy(np.float32)[rows]
        for i in range(len(ds)):
            x, y = ds[i]
            assert np.array_equal(y.numpy(), expected[i])
            assert np.array_equal(x[0].numpy(), images[rows[i]])


def test_ten_crop_holds_corners_center_and_mirrors(cache):
    _, images, _, _ = cache
    ds = split(cache, "val", "tencrop")
    x, _ = ds[0]
    img = images[ds.rows[0]]
    e = SIZE - CROP
    assert np.array_equal(x[0, 0].numpy(), img[:CROP, :CROP])
    assert np.array_equal(x[3, 0].numpy(), img[e:, e:])
    for k in range(5):
        assert np.array_equal(x[5 + k, 0].numpy(), x[k, 0].numpy()[:, ::-1])


def test_train_crops_come_from_the_image(cache):
    _, images, _, _ = cache
    ds = split(cache, hflip=False)
    img = images[ds.rows[2]]
    x = ds[2][0][0].numpy()
    found = any(np.array_equal(x, img[r:r + CROP, c:c + CROP]) for r in range(SIZE - CROP + 1) for c in range(SIZE - CROP + 1))
    assert found


def test_augmentation_is_a_function_of_seed_epoch_index(cache):
    a, b = split(cache, seed=3), split(cache, seed=3)
    n = len(a)
    first = [a[i][0] for i in range(n)]
    again = [b[i][0] for i in reversed(range(n))][::-1]  # another instance, another access order
    assert all(torch.equal(u, v) for u, v in zip(first, again))
    a.set_epoch(1)
    assert any(not torch.equal(a[i][0], first[i]) for i in range(n)), "a new epoch must give new crops"
    a.set_epoch(0)
    assert all(torch.equal(a[i][0], first[i]) for i in range(n))
    c = split(cache, seed=4)
    assert any(not torch.equal(c[i][0], first[i]) for i in range(n))


def test_random_resized_crop_mode(cache):
    ds = split(cache, train_crop="random_resized", seed=1)
    x, _ = ds[1]
    assert x.shape == (1, CROP, CROP) and x.dtype == torch.uint8
    assert torch.equal(x, split(cache, train_crop="random_resized", seed=1)[1][0])


def test_loader_workers_do_not_change_the_batches(cache):
    ds = split(cache, seed=2)
    ds.set_epoch(5)
    one = [x for x, _ in DataLoader(ds, batch_size=4, num_workers=0)]
    two = [x for x, _ in DataLoader(ds, batch_size=4, num_workers=2)]
    assert len(one) == len(two) and all(torch.equal(a, b) for a, b in zip(one, two))


def test_distributed_sampler_covers_the_split_with_aligned_labels(cache):
    ds = split(cache, "train", "eval")
    labels = ds.labels
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(1)
        idx = list(sampler)
        assert len(idx) == (len(ds) + 1) // 2
        for x, y in DataLoader(torch.utils.data.Subset(ds, idx), batch_size=len(idx)):
            assert np.array_equal(y.numpy(), labels[idx])
        seen += idx
    assert set(seen) == set(range(len(ds)))


def test_skip_sampler_resumes_mid_epoch():
    base = list(range(10))
    assert list(SkipSampler(base, 4)) == base[4:] and len(SkipSampler(base, 4)) == 6
    assert list(SkipSampler(base, 0)) == base
    assert list(SkipSampler(base, 20)) == [] and len(SkipSampler(base, 20)) == 0


def test_the_memmap_is_not_pickled(cache):
    ds = split(cache)
    _ = ds[0]  # opens the memmap in this process
    assert ds._images is not None
    blob = pickle.dumps(ds)
    _, images, _, _ = cache
    assert len(blob) < 20_000 and len(blob) < images.nbytes // 4
    clone = pickle.loads(blob)
    assert clone._images is None
    assert torch.equal(clone[0][0], ds[0][0])


def test_bad_arguments_are_clear(cache):
    path, _, _, meta = cache
    n = meta["count"]
    with pytest.raises(ValueError, match="larger"):
        CacheDataset(path / "images.u8", n, SIZE, np.zeros((n, 14)), input_size=SIZE + 1, input_transform="crop")
    # resizing may upsample (a cache smaller than the input), cropping cannot
    CacheDataset(path / "images.u8", n, SIZE, np.zeros((n, 14)), input_size=SIZE + 1, input_transform="resize")
    with pytest.raises(ValueError, match="mode"):
        CacheDataset(path / "images.u8", n, SIZE, np.zeros((n, 14)), input_size=CROP, mode="x")
    with pytest.raises(ValueError, match="ten-crop"):
        CacheDataset(path / "images.u8", n, SIZE, np.zeros((n, 14)), input_size=CROP, mode="tencrop")
    with pytest.raises(ValueError, match="label rows"):
        CacheDataset(path / "images.u8", n, SIZE, np.zeros((3, 14)), input_size=CROP)
