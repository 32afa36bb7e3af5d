"""benchmarks/bench_densenet_bn.py's SharedStatsTrunk is an exact reformulation of torchvision's DenseNet-121:
same state_dict keys, and (in float64, where rounding cannot hide a wrong formula) the same logits, gradients and
running statistics after training steps; torchvision's own forward in eval mode; fp32 logits within 1e-5."""

import copy

import pytest
import torch

from chexnet.models import create_model
from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_densenet_bn")


def _pair(bench, dtype, momentum=0.1):
    torch.manual_seed(0)
    ref = create_model("densenet121", "none").to(dtype)
    with torch.no_grad():  # non-trivial affine maps and running statistics, so that a mixed-up slice shows
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = momentum
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.9, 1.1)
    return ref, bench.shared_stats(copy.deepcopy(ref))


def test_same_state_dict_keys(bench):
    ref, new = _pair(bench, torch.float32)
    assert list(ref.state_dict()) == list(new.state_dict())
    assert isinstance(new.body, bench.SharedStatsTrunk)


@pytest.mark.parametrize("momentum", [0.1, None])  # None: BatchNorm's cumulative average of the batches
def test_training_steps_match_torchvision_in_float64(bench, momentum):
    ref, new = _pair(bench, torch.float64, momentum)
    torch.manual_seed(1)
    for _ in range(2):  # the second step starts from the running statistics the first one left
        x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
        outs = []
        for model in (ref, new):
            model.zero_grad()
            logits = model(x)
            (logits ** 2).sum().backward()
            outs.append(logits)
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
        for (name, a), b in zip(ref.named_parameters(), new.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-8, atol=1e-10, msg=lambda m: f"{name}: {m}")
        for (name, a), b in zip(ref.state_dict().items(), new.state_dict().values()):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")


def test_eval_is_torchvision_and_fp32_within_1e5(bench):
    ref, new = _pair(bench, torch.float32)
    x = torch.randn(2, 3, 64, 64)
    ref.eval(), new.eval()
    assert torch.equal(new(x), ref(x))  # eval mode: torchvision's forward, each layer's running statistics
    ref.train(), new.train()
    torch.testing.assert_close(new(x), ref(x), rtol=0, atol=1e-5)  # training mode: the reformulation


def test_the_compiled_affine_map_is_the_eager_one(bench):
    """--compile-affine compiles _affine_relu; the eager path is BatchNorm's eval kernel at mean 0, variance 1."""
    x, w, b = torch.randn(2, 5, 3, 3), torch.rand(5) + 0.5, torch.randn(5)
    want = torch.nn.functional.batch_norm(x, torch.zeros(5), torch.ones(5), w, b, False, 0.0, 0.0).relu()
    torch.testing.assert_close(bench._affine_relu(x, w, b), want)
    assert bench._affine_relu(x.bfloat16(), w, b).dtype == torch.bfloat16


def test_refuses_what_it_does_not_reformulate(bench):
    ref = create_model("densenet121", "none")
    ref.body[0].denseblock1.denselayer1.norm1.eps = 1e-3
    with pytest.raises(ValueError, match="same eps"):
        bench.shared_stats(ref)
    ref = create_model("densenet121", "none")
    ref.body[0].denseblock2.denselayer3.drop_rate = 0.2
    with pytest.raises(ValueError, match="dropout"):
        bench.shared_stats(ref)
