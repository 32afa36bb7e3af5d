"""benchmarks/scaling_model.py: BytePS's formulas on inputs whose answer is known, the models' byte counts, the CLI."""

import json
import math
from pathlib import Path

import pytest

from tests.helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
sm = load_benchmark("scaling_model")
M, B = 100e6, 10e9  # 100 MB over 10 GB/s: M / B = 10 ms


def test_ring_is_2_n_minus_1_over_n_m_over_b():
    assert sm.ring_allreduce(4, M, 0.0, B) == pytest.approx(2 * 3 / 4 * M / B) == pytest.approx(0.015)
    assert sm.ring_allreduce(1, M, 1e-3, B) == 0.0  # one worker alone
    # the bandwidth term tends to 2 M / B; latency adds 2 (n - 1) alpha
    assert sm.ring_allreduce(10_000, M, 0.0, B) == pytest.approx(2 * M / B, rel=1e-3)
    assert sm.ring_allreduce(4, M, 1e-5, B) - sm.ring_allreduce(4, M, 0.0, B) == pytest.approx(6e-5)


def test_ps_is_bytepss_max_of_worker_and_server_links():
    # n = 4 workers, k = 2 servers: a worker's link M / B = 10 ms, a server's n M / (k B) = 20 ms
    assert sm.ps_direction(4, M, B, 2) == pytest.approx(0.020)
    assert sm.parameter_server(4, M, 0.0, B, 2, "pipelined") == pytest.approx(0.020)  # push, pull overlapped
    assert sm.parameter_server(4, M, 0.0, B, 2, "sequential") == pytest.approx(0.040)  # pull after push
    # k = n: M / B per direction whatever n (BytePS's spare servers); k = 1: n M / B
    for n in (2, 8, 512):
        assert sm.ps_direction(n, M, B, n) == pytest.approx(M / B)
        assert sm.ps_direction(n, M, B, 1) == pytest.approx(n * M / B)
    assert sm.parameter_server(4, M, 1e-5, B, 2) - sm.parameter_server(4, M, 0.0, B, 2) == pytest.approx(2e-5)


def test_ring_against_ps_crossovers():
    # zero latency: ring 2 (n-1)/n M/B against PS k=1 n M/B: the ring wins from n = 2; PS k=n (M/B) from n = 3
    c = sm.crossovers(M, 1.0, 0.0, B, 0.0, "pipelined", n_max=64)
    assert c["ring_beats_ps1_from"] == 2
    assert c["psn_beats_ring_from"] == 3 and c["ring_beats_psn_from"] is None
    assert c["sequential_psn_beats_ring_from"] is None  # 2 M / B is never below the ring's bandwidth term
    # servers a pipelined PS needs to match the ring: n^2 / (2 (n - 1)), ~ n / 2
    assert c["servers_to_match_ring"] == {8: math.ceil(64 / 14), 64: math.ceil(64 * 64 / 126)}
    # with latency, a sequential PS with k = n wins on latency once 2 (n-1) alpha outgrows 2 M/B - 2(n-1)/n M/B
    c = sm.crossovers(1e3, 1.0, 1e-5, B, 0.0, "pipelined", n_max=64)
    assert c["sequential_psn_beats_ring_from"] == 3


def test_efficiency_with_overlap():
    assert sm.efficiency(0.3, 0.1, overlap=0.0) == pytest.approx(0.3 / 0.4)
    assert sm.efficiency(0.3, 0.1, overlap=1.0) == 1.0  # hidden behind 2/3 x 0.3 s of backward
    assert sm.efficiency(0.3, 0.5, overlap=1.0) == pytest.approx(0.3 / (0.3 + 0.5 - 0.2))
    assert sm.efficiency(0.3, 0.5, overlap=0.5) == pytest.approx(0.3 / (0.3 + 0.5 - 0.1))


def test_model_bytes_from_the_layer_formulas():
    # torchvision's counts (its weights' metadata: vgg16 138,357,544) and chexnet's create_model (14-way heads)
    assert sm.vgg16_params(1000) == 138_357_544
    assert sm.MODELS["VGG-16"]["params"] == 134_317_902 == 138_357_544 - 4096 * 986 - 986
    assert sm.MODELS["chexnet vgg16 (GAP head)"]["params"] == 14_721_870
    assert sm.MODELS["CheXNet DenseNet-121"]["bytes"] == 6_968_206 * 4 == sm.GRAD_BYTES
    assert sm.MODELS["VGG-16"]["bytes"] == 134_317_902 * 4
    assert round(sm.vgg16_params(1000) * 4 / 2 ** 20) == 528  # the "528 MB" of Keras' table: MiB


@pytest.mark.slow  # importing torch: seconds on a loaded machine
def test_model_bytes_are_the_real_models_parameters_x4():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from chexnet.models import create_model

    def count(m):
        return sum(p.numel() for p in m.parameters())

    with torch.device("meta"):  # no memory, no initialisation: VGG-16's 537 MB would take seconds
        assert sm.MODELS["VGG-16"]["params"] == count(torchvision.models.vgg16(weights=None, num_classes=14))
        assert sm.vgg16_params(1000) == count(torchvision.models.vgg16(weights=None)) == 138_357_544
        assert sm.MODELS["CheXNet DenseNet-121"]["params"] == count(create_model("densenet121", "none", 14))
        assert sm.MODELS["chexnet vgg16 (GAP head)"]["params"] == count(create_model("vgg16", "none", 14))


def test_cli_writes_json_and_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out, png, scaling = tmp_path / "model.json", tmp_path / "scaling.png", tmp_path / "scaling.json"
    # bench_scaling.py's fields (RESULTS.md's `make bench` row)
    scaling.write_text(json.dumps({"alpha_s": 0.002, "beta_s_per_byte": 1e-9, "grad_mb": 27.87,
                                   "allreduce_grad_s": 0.031, "one_process_step_s": 1.17, "two_no_sync_step_s": 1.78,
                                   "two_ddp_step_s": 1.92, "efficiency_2": 0.61}))
    sm.main(["--strategies", str(ROOT / "benchmarks" / "strategies.json"), "--measured", str(scaling),
             "--json", str(out), "--png", str(png)])
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    d = json.loads(out.read_text())
    key = "VGG-16 | H100, chexnet bf16 (batch 256) | 10 GbE (TCP)"
    assert set(d["efficiency"][key]) == {"ring", "PS k=1", "PS k=n"} and len(d["efficiency"][key]["ring"]) == 9
    assert d["crossovers"][key]["ring_beats_ps1_from"] == 2
    fit = d["machine_fit"]
    assert fit["alpha_s"] >= 0 and fit["bandwidth_bytes_s"] > 0 and len(fit["rows"]) == 8
    assert "this machine (gloo, loopback)" in d["networks"]
    assert d["check"]["allreduce_model_s"] == pytest.approx(0.002 + 27.87e6 * 1e-9)
    text = capsys.readouterr().out
    assert "model / measured" in text and "ring beats PS k=1 from n = 2" in text
