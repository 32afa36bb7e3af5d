"""Grad-CAM (captum) for every architecture the factory builds, and the map's geometry back onto the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chexnet.explain import cam_on_cache, cam_on_image, gradcam, overlay
from chexnet.localize import box_scores, heatmap_boxes, random_like
from chexnet.models import cam_target_layer, create_model
from chexnet.preprocess import Preprocessing

pytest.importorskip("captum", reason="Grad-CAM needs captum (pip install 'chexnet[cam]')")


@pytest.mark.parametrize("arch", ["densenet121", "vgg16", "resnet50", "efficientnet_b0"])
def test_gradcam_works_for_every_architecture(arch, one_thread):
    torch.manual_seed(0)
    model = create_model(arch, "none").eval()
    assert cam_target_layer(model) is model.body
    x = torch.randn(2, 3, 64, 64)
    maps = gradcam(model, x, [2, 5])
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


def test_gradcam_points_at_what_drives_the_class():
    """A hand-built trunk whose class-0 evidence sits in one corner: the map's peak is there."""
    from torch import nn

    from chexnet.models import Classifier

    body = nn.Sequential(nn.Conv2d(3, 1, 1, bias=False), nn.ReLU())
    with torch.no_grad():
        body[0].weight.fill_(1.0)
    model = Classifier(body, 1, 2).eval()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    x = torch.zeros(1, 3, 16, 16)
    x[..., 2:5, 10:13] = 1.0  # a bright patch at rows 2-4, columns 10-12
    cam = gradcam(model, x, [0])[0]
    y, xx = np.unravel_index(np.argmax(cam), cam.shape)
    assert 2 <= y <= 4 and 10 <= xx <= 12


def test_map_geometry_resize_and_crop():
    cam = np.zeros((8, 8), np.float32)
    cam[0, 0] = 1.0  # top-left of the network input
    whole = Preprocessing(cache_size=16, input_size=8, input_transform="resize")
    crop = Preprocessing(cache_size=16, input_size=8, input_transform="crop")
    on_whole = cam_on_cache(cam, whole)
    assert on_whole.shape == (16, 16) and np.unravel_index(np.argmax(on_whole), (16, 16)) in [(0, 0), (0, 1), (1, 0), (1, 1)]
    on_crop = cam_on_cache(cam, crop)  # the crop starts at (4, 4) of the cache row; outside it the map is zero
    assert on_crop[4, 4] == 1.0 and on_crop[:4].sum() == 0 and on_crop[:, :4].sum() == 0
    full = cam_on_image(cam, whole, 300, 200)  # a non-square original: stretched back to its own shape
    assert full.shape == (300, 200)
    py, px = np.unravel_index(np.argmax(full), full.shape)
    assert py < 300 / 8 and px < 200 / 8


def test_overlay_keeps_the_image_size():
    gray = (np.arange(120 * 90) % 256).astype(np.uint8).reshape(120, 90)
    img = overlay(gray, np.zeros((120, 90), np.float32), "Effusion p=0.91", boxes=[(10, 10, 20, 30, (0, 255, 0))])
    assert img.size == (90, 120) and img.mode == "RGB"


def test_heatmap_boxes_and_scores():
    cam = np.zeros((20, 20))
    cam[2:6, 3:9] = 1.0
    cam[12:15, 12:14] = 0.8
    assert heatmap_boxes(cam, 0.5) == [(3.0, 2.0, 6.0, 4.0), (12.0, 12.0, 2.0, 3.0)]
    assert heatmap_boxes(cam, 0.9) == [(3.0, 2.0, 6.0, 4.0)]
    assert heatmap_boxes(np.zeros((4, 4)), 0.5) == []
    iobb, iou = box_scores((0, 0, 10, 10), [(5, 5, 10, 10)])
    assert iobb == pytest.approx(25 / 100) and iou == pytest.approx(25 / 175)
    assert box_scores((0, 0, 10, 10), []) == (0.0, 0.0)
    rng = np.random.default_rng(0)
    moved = random_like([(3, 2, 6, 4)], 20, 20, rng)
    assert moved[0][2:] == (6, 4) and 0 <= moved[0][0] <= 14 and 0 <= moved[0][1] <= 16
