"""benchmarks/bench_peer.py's summary: each chexnet precision against the Keras peer at its best precision."""

import pytest

from tests.helpers import load_benchmark


def _run(precision, keras, base):
    return {"precision": precision, "rates": {"keras": keras, "base": base},
            "medians": {"keras": sorted(keras)[1], "base": sorted(base)[1]},
            "best": {"keras": max(keras), "base": max(base)}}


def test_ratio_is_against_keras_at_its_best_precision():
    bp = load_benchmark("bench_peer")
    # Keras: fp32 median 4, bf16 median 5 (its best by median); best single round fp32 7 (its best round).
    runs = [_run("fp32", [3.0, 4.0, 7.0], [6.0, 8.0, 9.0]), _run("bf16", [5.0, 5.0, 6.0], [12.0, 15.0, 21.0])]
    out = bp.against_keras_best(runs, ["base"])
    assert out["keras_median"] == {"precision": "bf16", "layout": "keras", "img_per_s": 5.0}
    assert out["keras_best"] == {"precision": "fp32", "layout": "keras", "img_per_s": 7.0}
    assert out["ratios"]["bf16/base"] == {"median": 15.0 / 5.0, "best": 21.0 / 7.0}
    assert out["ratios"]["fp32/base"] == {"median": 8.0 / 5.0, "best": 9.0 / 7.0}
    line = [x for x in out["lines"] if x.startswith("chexnet bf16 base")][0]
    assert "= 3.00x" in line and "Keras best (bf16)" in line


def test_keras_best_includes_its_one_rank_per_core_layout():
    bp = load_benchmark("bench_peer")
    fp32 = _run("fp32", [3.0, 4.0, 7.0], [6.0, 8.0, 9.0])
    bf16 = _run("bf16", [5.0, 5.0, 6.0], [12.0, 15.0, 21.0])
    # Keras at one rank per core: bf16 median 6, best round 8 -- better than one process at either precision
    bf16["rates"]["keras_per_core"] = [5.5, 6.0, 8.0]
    bf16["medians"]["keras_per_core"], bf16["best"]["keras_per_core"] = 6.0, 8.0
    out = bp.against_keras_best([fp32, bf16], ["base"])
    assert out["keras_median"] == {"precision": "bf16", "layout": "keras_per_core", "img_per_s": 6.0}
    assert out["keras_best"] == {"precision": "bf16", "layout": "keras_per_core", "img_per_s": 8.0}
    assert out["ratios"]["bf16/base"] == {"median": 15.0 / 6.0, "best": 21.0 / 8.0}
    line = [x for x in out["lines"] if x.startswith("chexnet bf16 base")][0]
    assert "Keras best (bf16, one rank per core)" in line and "= 2.50x" in line


def test_per_core_keeps_the_global_batch():
    bp = load_benchmark("bench_peer")
    assert bp.per_core_batch(16, 2) == 8
    with pytest.raises(SystemExit, match="--batch 16 does not split over 3 cores"):
        bp.per_core_batch(16, 3)


def test_machine_records_the_bf16_flags():
    flags = load_benchmark("bench_common").machine()["flags"]
    assert set(flags) >= {"avx512_bf16", "amx_bf16", "avx512_vnni"}
    assert all(isinstance(v, bool) for v in flags.values())
