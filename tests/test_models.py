"""Model factory: torchvision trunks + GAP + Linear(14) head, head bias init, and the weight sources
(ImageNet from the torch cache, offline errors, local state dicts). Never touches the network."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from chexnet.models import Classifier, WeightsUnavailable, create_model, imagenet_weights_path


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one intra-op thread (tests/conftest.py)."""


@pytest.fixture
def offline(monkeypatch):
    """Any download attempt fails at once, as on a machine without network."""
    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError(f"offline test: no network for {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)  # follow TORCH_HOME even if set_dir was called
    return tmp_path / "torch"


@pytest.mark.parametrize("arch,features", [
    ("densenet121", 1024), ("densenet169", 1664), ("vgg16", 512), ("vgg16_bn", 512), ("resnet50", 2048),
    ("efficientnet_b0", 1280), ("shufflenet_v2_x0_5", 1024),
])
def test_architectures_get_a_gap_linear_14_head(arch, features):
    torch.manual_seed(0)
    model = create_model(arch, "none").eval()
    assert isinstance(model, Classifier)
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d) and model.pool.output_size in (1, (1, 1))
    assert isinstance(model.fc, nn.Linear) and (model.fc.in_features, model.fc.out_features) == (features, 14)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [model.fc], "the original classifier must be gone"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        fmap = model.features(x)
        assert out.shape == (2, 14) and out.dtype == torch.float32 and torch.isfinite(out).all()
        assert fmap.dim() == 4 and fmap.shape[1] == features
        assert torch.allclose(model.head(fmap), out)
    assert torch.all(model.fc.bias == 0)


def test_head_bias_init():
    assert torch.all(create_model("resnet18", "none", head_bias_init="ones").fc.bias == 1.0)
    assert torch.all(create_model("resnet18", "none", head_bias_init="zeros").fc.bias == 0.0)
    with pytest.raises(ValueError, match="head_bias_init"):
        create_model("resnet18", "none", head_bias_init="twos")


def test_num_classes():
    assert create_model("resnet18", "none", num_classes=3).fc.out_features == 3


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="resnet9000"):
        create_model("resnet9000", "none")


def test_imagenet_weights_come_from_the_torch_cache(torch_home, offline):
    url, cached = imagenet_weights_path("resnet18")
    assert str(cached).startswith(str(torch_home)) and cached.name == url.rsplit("/", 1)[1]
    torch.manual_seed(123)
    reference = tvm.resnet18(weights=None).state_dict()
    cached.parent.mkdir(parents=True)
    torch.save(reference, cached)
    model = create_model("resnet18", "imagenet")  # offline: works only from the cache
    assert torch.equal(model.body[0].weight, reference["conv1.weight"])
    assert torch.equal(model.body[1].running_var, reference["bn1.running_var"])
    assert model.fc.out_features == 14


def test_imagenet_weights_offline_error_names_file_and_place(torch_home, offline):
    url, cached = imagenet_weights_path("densenet121")
    with pytest.raises(WeightsUnavailable) as err:
        create_model("densenet121", "imagenet")
    msg = str(err.value)
    assert url in msg and str(cached) in msg and "--weights none" in msg, msg
    assert not cached.exists()


def test_weights_from_a_torchvision_state_dict(tmp_path):
    torch.manual_seed(5)
    state = tvm.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = create_model("resnet18", str(path))
    assert torch.equal(model.body[0].weight, state["conv1.weight"])


def test_weights_from_a_chexnet_checkpoint(tmp_path):
    torch.manual_seed(6)
    src = create_model("resnet18", "none", head_bias_init="ones")
    path = tmp_path / "ckpt.pt"
    torch.save({"model": src.state_dict(), "epoch": 3}, path)
    model = create_model("resnet18", str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_wrong_weights_file_is_refused(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(tvm.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="resnet50"):
        create_model("resnet50", str(path))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_model("resnet18", str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("arch,features", [("swin_t", 768), ("inception_v3", 2048), ("googlenet", 1024)])
def test_trunks_with_channels_last_maps_or_aux_heads(arch, features):
    """Swin's feature maps are (B, H, W, C); GoogLeNet / Inception carry auxiliary classifiers: both are handled."""
    model = create_model(arch, "none").eval()
    assert model.fc.in_features == features
    with torch.no_grad():
        fmap = model.features(torch.randn(1, 3, 96, 96))
        assert fmap.dim() == 4 and fmap.shape[1] == features
        assert model(torch.randn(2, 3, 96, 96)).shape == (2, 14)


def test_transformers_without_feature_maps_are_refused():
    with pytest.raises(ValueError, match="vit_b_16.*CNN"):
        create_model("vit_b_16", "none")
