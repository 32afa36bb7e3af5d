"""Model factory: any torchvision classification backbone with a global-average-pool + Linear(14) head.

``create_model("densenet121", weights="imagenet")`` is CheXNet: DenseNet-121 pretrained on ImageNet whose
classifier is replaced by global average pooling and a 14-way linear layer (sigmoid lives in the loss).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tvm

from chexnet.labels import NUM_CLASSES


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be found in the cache nor downloaded."""


class Classifier(nn.Module):
    """``body`` (a CNN trunk returning a feature map) -> global average pool -> Linear(num_classes).

    ``features(x)`` returns the last feature map (Grad-CAM uses it); ``forward`` returns logits.
    """

    def __init__(self, body: nn.Module, num_features: int, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.body = body
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(fmap), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def cam_target_layer(model: Classifier) -> nn.Module:
    """The layer Grad-CAM explains, chosen here for every architecture: the whole trunk, whose output is the last
    feature map before global average pooling (DenseNet's final ReLU, ResNet's layer4, VGG's last pool, ...)."""
    if not isinstance(model, Classifier):
        raise TypeError(f"expected a chexnet Classifier, got {type(model).__name__}")
    return model.body


_HEAD_CHILDREN = {"avgpool", "fc", "dropout", "aux1", "aux2", "AuxLogits"}


def _body(arch: str, net: nn.Module) -> nn.Module:
    """The convolutional trunk of a torchvision classifier, up to (not including) its pooling/classifier."""
    if arch.startswith("densenet"):
        return nn.Sequential(net.features, nn.ReLU())  # torchvision's DenseNet applies relu after features
    if arch.startswith("swin"):  # channels-last feature maps: normalize, then back to (B, C, H, W)
        return nn.Sequential(net.features, net.norm, net.permute)
    if hasattr(net, "fc"):  # resnet, resnext, wide_resnet, regnet, shufflenet, googlenet, inception
        return nn.Sequential(*[m for name, m in net.named_children() if name not in _HEAD_CHILDREN])
    if hasattr(net, "features"):  # vgg, alexnet, efficientnet, mobilenet, convnext, squeezenet
        return net.features
    if hasattr(net, "layers"):  # mnasnet
        return net.layers
    raise ValueError(f"architecture {arch!r}: no convolutional trunk with a feature map (transformers such as ViT "
                     f"are not supported); use a CNN from torchvision.models")


def imagenet_weights_path(arch: str) -> tuple[str, Path]:
    """(download URL, local torch-hub cache path) of torchvision's default ImageNet weights for ``arch``."""
    weights = tvm.get_model_weights(arch).DEFAULT
    name = os.path.basename(urlparse(weights.url).path)
    return weights.url, Path(torch.hub.get_dir()) / "checkpoints" / name


def _imagenet_backbone(arch: str) -> nn.Module:
    url, cached = imagenet_weights_path(arch)
    try:
        return tvm.get_model(arch, weights="DEFAULT")
    except Exception as exc:  # URLError, HTTPError, socket errors, hash mismatch ...
        if cached.is_file():
            raise
        raise WeightsUnavailable(
            f"ImageNet weights for {arch} are not in the torch cache and could not be downloaded ({exc}). "
            f"Offline? Download {url} elsewhere and put it at {cached} (or set TORCH_HOME), "
            f"or train with --weights none / --weights PATH."
        ) from exc


def load_state_file(path: str | os.PathLike) -> dict:
    """Load a state dict or a chexnet checkpoint safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict or chexnet checkpoint")
    return state


def create_model(arch: str = "densenet121", weights: str = "none", num_classes: int = NUM_CLASSES,
                 head_bias_init: str = "zeros") -> Classifier:
    """Build ``arch`` from torchvision with a GAP + Linear(``num_classes``) head.

    ``weights``: ``imagenet`` (torchvision's default weights, downloaded into the torch cache on first use),
    ``none`` (random init), or a PATH to either a torchvision state dict of the same architecture or a
    chexnet checkpoint / state dict of the whole classifier.
    """
    if arch not in tvm.list_models(module=tvm):
        raise ValueError(f"unknown architecture {arch!r}; torchvision classification models: e.g. densenet121, "
                         f"densenet169, vgg16, vgg16_bn, resnet50, efficientnet_b0 (see torchvision.models.list_models())")
    state = None
    if weights == "imagenet":
        net = _imagenet_backbone(arch)
    elif weights in ("none", "", None):
        net = tvm.get_model(arch, weights=None)
    else:
        state = load_state_file(weights)
        net = tvm.get_model(arch, weights=None)
        if not any(k.startswith("body.") for k in state):  # a torchvision backbone state dict
            own = net.state_dict()
            backbone = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            if len(backbone) < 0.9 * len(own):
                raise ValueError(f"--weights {weights}: does not look like a {arch} state dict "
                                 f"({len(backbone)} of {len(own)} tensors match)")
            net.load_state_dict(backbone, strict=False)
            state = None
    body = _body(arch, net)
    with torch.no_grad():
        was_training = body.training
        body.eval()
        num_features = body(torch.zeros(1, 3, 96, 96)).shape[1]  # inception needs >= 75 px
        body.train(was_training)
    model = Classifier(body, num_features, num_classes)
    with torch.no_grad():
        if head_bias_init == "ones":
            model.fc.bias.fill_(1.0)
        elif head_bias_init == "zeros":
            model.fc.bias.zero_()
        else:
            raise ValueError(f"head_bias_init must be zeros or ones, got {head_bias_init!r}")
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"--weights {weights}: does not match {arch} with {num_classes} outputs "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model
