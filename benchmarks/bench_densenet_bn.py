"""Does DenseNet-121's BatchNorm traffic shrink if each feature map's batch statistics are computed once?

On a CPU with AMX the convolutions take about a third of a bf16 training step; most of the rest is BatchNorm,
ReLU, concatenation and gradient accumulation over the concatenated inputs of the dense layers (benchmarks/
RESULTS.md). Every dense layer re-normalizes *all* earlier feature maps of its block, and a BatchNorm's batch
statistics are per channel, so layer l computes the very same mean and variance of feature map j as every
other layer reading it. :class:`SharedStatsTrunk` is an exact reformulation that uses that:

* each feature map is normalized once, as it is made (``x_hat = (x - mean) / sqrt(var + eps)``, batch
  statistics, no affine); each layer's BatchNorm is then only its own affine map on the concatenated
  ``x_hat``, ``weight * x_hat + bias`` (one pass, no statistics), followed by the ReLU;
* each BatchNorm's running statistics are updated from the shared batch statistics exactly as
  ``nn.BatchNorm2d`` would (momentum, unbiased variance, ``num_batches_tracked``);
* evaluation (``model.eval()``) runs torchvision's own forward, with each layer's running statistics.

The modules are torchvision's, so the state_dict keys are unchanged; tests/test_bench_densenet_bn.py holds the
trunk to torchvision's outputs, gradients and running statistics. ``--compile-affine`` additionally fuses each
affine map with its ReLU through ``torch.compile`` (inductor, dynamic shapes: one graph for every width).

This script alternates torchvision's DenseNet-121 and the reformulation, bare training steps (random batch,
bf16 autocast on the CPU, channels-last, Adadelta as the report's recipe), and prints img/s per round:

    python benchmarks/bench_densenet_bn.py --rounds 4 --compile-affine
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _update_running(bn: nn.BatchNorm2d, mean: torch.Tensor, var_unbiased: torch.Tensor) -> None:
    """``bn``'s running statistics after one training batch with these batch statistics, as BatchNorm2d does."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), m)
        bn.running_var.lerp_(var_unbiased.to(bn.running_var.dtype), m)


def _normalize(f: torch.Tensor, eps: float):
    """(x_hat, batch mean, unbiased batch variance) of one feature map (BatchNorm without its affine map)."""
    x_hat, mean, invstd = torch.ops.aten.native_batch_norm(f, None, None, None, None, True, 0.0, eps)
    n = f.numel() // f.shape[1]
    with torch.no_grad():
        var = (invstd.double().pow(-2) - eps) * (n / max(n - 1, 1))
    return x_hat, mean.detach(), var


def _affine_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """relu(weight * x + bias) per channel, computed in at least fp32, returned in x's dtype."""
    acc = x.to(torch.promote_types(x.dtype, torch.float32))
    return torch.relu(acc * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)).to(x.dtype)


class SharedStatsTrunk(nn.Sequential):
    """chexnet's DenseNet trunk, ``Sequential(torchvision densenet.features, ReLU())``, whose training forward
    normalizes each feature map once (see the module docstring). Same modules, same state_dict keys."""

    def __init__(self, features: nn.Sequential, relu: nn.Module, compile_affine: bool = False):
        super().__init__(features, relu)
        norms = [m for m in features.modules() if isinstance(m, nn.BatchNorm2d)]
        if len({m.eps for m in norms}) != 1 or not all(m.affine and m.track_running_stats for m in norms):
            raise ValueError("SharedStatsTrunk: every BatchNorm must have the same eps, an affine map and running "
                             "statistics")
        if any(getattr(m, "drop_rate", 0) > 0 for m in features.modules()):
            raise ValueError("SharedStatsTrunk: dense layers with dropout (drop_rate > 0) are not reformulated")
        self._compiled = torch.compile(_affine_relu, dynamic=True) if compile_affine else None

    def _bn_relu(self, hats, means, variances, bn: nn.BatchNorm2d) -> torch.Tensor:
        """relu(bn(cat(features))) from the features' shared x_hat and statistics."""
        _update_running(bn, torch.cat(means), torch.cat(variances))
        x_hat = torch.cat(hats, 1) if len(hats) > 1 else hats[0]
        if self._compiled is not None:  # weight and bias as views: one graph for every width
            return self._compiled(x_hat, bn.weight.view(-1), bn.bias.view(-1))
        # eager: BatchNorm's eval-mode kernel with mean 0, variance 1 and eps 0 is the affine map alone, in one
        # pass and in x_hat's dtype (a plain x * w + b would promote a bf16 x_hat to fp32)
        zero = torch.zeros(x_hat.shape[1], dtype=bn.weight.dtype, device=x_hat.device)
        one = torch.ones_like(zero)
        return F.batch_norm(x_hat, zero, one, bn.weight, bn.bias, False, 0.0, 0.0).relu_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        feats = self[0]
        eps = feats.norm0.eps
        x = feats.pool0(feats.relu0(feats.norm0(feats.conv0(x))))
        blocks = [m for name, m in feats.named_children() if name.startswith("denseblock")]
        transitions = [m for name, m in feats.named_children() if name.startswith("transition")]
        for i, block in enumerate(blocks):
            h, m, v = _normalize(x, eps)
            hats, means, variances = [h], [m], [v]
            for layer in block.values():
                z = self._bn_relu(hats, means, variances, layer.norm1)
                new = layer.conv2(layer.relu2(layer.norm2(layer.conv1(z))))
                h, m, v = _normalize(new, eps)
                hats.append(h)
                means.append(m)
                variances.append(v)
            if i < len(transitions):
                t = transitions[i]
                x = t.pool(t.conv(self._bn_relu(hats, means, variances, t.norm)))
            else:  # norm5, then the trunk's own ReLU (self[1])
                x = self._bn_relu(hats, means, variances, feats.norm5)
        return x


def shared_stats(model: nn.Module, compile_affine: bool = False) -> nn.Module:
    """``model`` (a chexnet DenseNet Classifier) with its trunk replaced by a SharedStatsTrunk of the same modules."""
    model.body = SharedStatsTrunk(model.body[0], model.body[1], compile_affine)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds (torchvision, then the reformulation)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round and model")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--compile-affine", action="store_true", help="fuse each affine map with its ReLU (inductor)")
    ap.add_argument("--json", default=None, help="write every number here")
    args = ap.parse_args()
    from bench_common import machine
    from chexnet.models import create_model

    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (args.batch, 14)).float()
    loss_fn = nn.BCEWithLogitsLoss()
    variant = "shared_stats" + ("+compiled_affine" if args.compile_affine else "")
    runs = {}
    for name in ("torchvision", variant):
        model = create_model("densenet121", "none")
        if name != "torchvision":
            shared_stats(model, args.compile_affine)
        model.to(memory_format=torch.channels_last)
        runs[name] = (model, torch.optim.Adadelta(model.parameters(), lr=1.0))

    def step(model, opt):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()
        return loss

    first = {}
    for name, (model, opt) in runs.items():
        t0 = time.perf_counter()
        step(model, opt).item()
        first[name] = time.perf_counter() - t0  # the compiled variant compiles here
        step(model, opt).item()
    print("first step (compilation included): " + ", ".join(f"{k} {v:.1f} s" for k, v in first.items()), flush=True)
    rates = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, (model, opt) in runs.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loss = step(model, opt)
            loss.item()
            rates[name].append(args.batch * args.steps / (time.perf_counter() - t0))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} img/s" for k, v in rates.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"median: {variant} {med[variant]:.2f} / torchvision {med['torchvision']:.2f} img/s = "
          f"{med[variant] / med['torchvision']:.3f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(torch=torch.__version__), "args": vars(args),
                                               "first_step_s": first, "rates": rates}, indent=2))


if __name__ == "__main__":
    main()
