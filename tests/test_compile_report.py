"""``--compile``: the run says what the first (compiling) step cost and records it in metrics.jsonl.

Compiling for real takes minutes on these CPUs (DenseNet-121: a 193 s first step, benchmarks/RESULTS.md), so
TorchDynamo is switched off here (``torch._dynamo.config.disable``): ``torch.compile`` then returns a wrapper that
runs eagerly, and what is tested is chexnet's part, the flags reaching ``torch.compile`` and the report.
"""

import torch

from chexnet.runlog import read_metrics


def test_compile_reports_its_first_step(tiny_cache, train_args, tmp_path, chexnet_main, one_thread, monkeypatch):
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "disable", True)
    seen = {}
    real = torch.compile

    def spy(model, **kw):
        seen.update(kw)
        return real(model, **kw)

    monkeypatch.setattr(torch, "compile", spy)
    run = tmp_path / "run"
    err = chexnet_main(*train_args(tiny_cache, run, epochs=1), "--compile", "--compile-mode", "reduce-overhead").stderr
    assert seen == {"mode": "reduce-overhead"}
    lines = [line for line in err.splitlines() if line.startswith("torch.compile")]
    assert len(lines) == 1 and "(mode reduce-overhead): the first training step took" in lines[0], err[-2000:]
    records = [r for r in read_metrics(run) if r["kind"] == "compile"]
    assert len(records) == 1 and records[0]["step"] == 1 and records[0]["mode"] == "reduce-overhead"
    assert records[0]["first_step_s"] > 0
