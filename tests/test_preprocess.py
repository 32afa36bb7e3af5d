"""The one preprocessing definition: file -> cache row -> network input, its spec, and that it needs no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from chexnet.preprocess import (IMAGENET_MEAN, IMAGENET_STD, Preprocessing, input_transform, read_cache_row,
                                resize_matrix)


@pytest.mark.parametrize("src,dst", [(256, 224), (48, 32), (128, 112), (100, 224), (1024, 256)])
def test_resize_matrix_is_an_antialiased_linear_resize(src, dst):
    r = resize_matrix(src, dst)
    assert r.shape == (dst, src) and np.allclose(r.sum(axis=1), 1.0) and (r >= 0).all()
    x = torch.rand(1, 1, src, src, dtype=torch.float64) * 255
    ours = torch.from_numpy(r) @ x @ torch.from_numpy(r).T
    ref = F.interpolate(x.float(), size=(dst, dst), mode="bilinear", antialias=True, align_corners=False)
    assert (ours.float() - ref).abs().max() < 0.01  # torch's antialiased bilinear filter, to float rounding


def test_resize_matrix_same_size_is_the_identity():
    assert np.array_equal(resize_matrix(224, 224), np.eye(224))


def test_input_transform_resizes_the_whole_row_and_normalizes():
    spec = Preprocessing(cache_size=64, input_size=48, input_transform="resize")
    rows = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8)
    out = input_transform(spec)(rows)
    assert out.shape == (3, 3, 48, 48) and out.dtype == torch.float32
    r = torch.from_numpy(resize_matrix(64, 48)).float()
    resized = r @ rows.float() @ r.T
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(out, (resized / 255 - mean) / std, atol=1e-5)
    assert rows.dtype == torch.uint8, "the input batch is left alone"


def test_input_transform_crop_mode_takes_the_centre_and_passes_crops_through():
    spec = Preprocessing(cache_size=64, input_size=48, input_transform="crop")
    t = input_transform(spec)
    rows = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    assert torch.equal(t(rows), t(rows[..., 8:56, 8:56].contiguous()))  # centre crop == a given 48 px crop
    with pytest.raises(ValueError, match="cache rows of 64 px"):
        t(torch.zeros(1, 1, 50, 50, dtype=torch.uint8))


def test_normalize_only_transform_and_channels_last():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 1, 4, 4).contiguous()
    t = input_transform(None)
    out = t(x)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    assert out.shape == (2, 3, 4, 4)
    assert torch.allclose(out[0, :, 0, 0], -mean / std) and torch.allclose(out[1, :, 0, 0], (1 - mean) / std)
    last = t(x, channels_last=True)
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.allclose(last, out)


def test_spec_round_trips_and_refuses_impossible_crops():
    spec = Preprocessing(cache_size=256, input_size=224, input_transform="crop")
    again = Preprocessing.from_dict(spec.to_dict())
    assert again == spec and again.to_dict()["mean"] == list(IMAGENET_MEAN)
    with pytest.raises(ValueError, match="does not fit"):
        Preprocessing(cache_size=128, input_size=224, input_transform="crop")
    with pytest.raises(ValueError, match="input_transform"):
        Preprocessing(cache_size=128, input_size=112, input_transform="squash")
    Preprocessing(cache_size=128, input_size=224)  # resizing may upsample


def test_prepare_and_predict_share_the_file_to_cache_row_step(tmp_path):
    img = (np.arange(300 * 200) % 251).astype(np.uint8).reshape(300, 200)
    Image.fromarray(img).save(tmp_path / "x.png")
    import chexnet.data.prepare as writer

    part = tmp_path / "images.u8.part"  # what prepare's workers write: the row of the image, in place
    part.write_bytes(bytes(2 * 64 * 64))
    try:
        assert writer._process_chunk([(1, str(tmp_path / "x.png"))], 64, str(part)) == [(1, None)]
    finally:
        writer._close_worker_fds()
    rows = np.fromfile(part, np.uint8).reshape(2, 64, 64)
    assert np.array_equal(rows[1], read_cache_row(tmp_path / "x.png", 64)) and not rows[0].any()


def test_the_spec_and_file_step_import_without_torch():
    """predict's ONNX path runs on devices without torch: chexnet.preprocess must not pull it in."""
    code = ("import sys; import chexnet.preprocess as p; p.Preprocessing(256, 224); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
