"""Training on two sources at once (chexnet combine): the model's labels are learnt from the rows whose source has
them, sampling can balance the sources, and evaluate knows what the combined run trained on."""

from __future__ import annotations

import json

import numpy as np

from chexnet.data.cache import load_cache
from tests.helpers import tiny_train_args
from tests.test_combine import write_cache


def _hospital(path, size):
    rng = np.random.default_rng(0)
    rows = [(f"h{i}.png", f"p{i // 2}", ("train", "train", "val", "test")[(i // 2) % 4],
             (float(rng.integers(0, 2)), None if i % 3 else float(rng.integers(0, 2)))) for i in range(32)]
    write_cache(path, ["Pneumothorax", "Fracture"], rows, "csv", size=size)


def test_a_run_on_a_combined_cache_trains_every_source_and_its_overlap_is_checked(tiny_cache, tmp_path, chexnet_main):
    size = int(load_cache(tiny_cache)[2]["size"])
    _hospital(tmp_path / "hosp", size)
    chexnet_main("combine", tiny_cache, tmp_path / "hosp", "--out", tmp_path / "both")
    meta = json.loads((tmp_path / "both" / "meta.json").read_text())
    assert [p["name"] for p in meta["parts"]] == [tiny_cache.name, "hosp"] and "Fracture" in meta["labels"]

    run = tmp_path / "run"
    proc = chexnet_main(*tiny_train_args(tmp_path / "both", run, source_sampling="balanced"))
    n_nih = meta["parts"][0]["splits"]["train"]["images"]
    assert f"sources: {tiny_cache.name} {n_nih}, hosp 16 train images, sampled balanced" in proc.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epoch = [r for r in records if r.get("kind") == "epoch"][-1]
    assert np.isfinite(epoch["train_loss"]) and np.isfinite(epoch["val_loss"])  # NIH's labels the hospital lacks are masked, not NaN

    proc = chexnet_main("evaluate", run, "--cache", tiny_cache, "--split", "val", "--bootstrap", "10", check=False)
    assert proc.returncode == 2 and "shares" in proc.stderr and "--allow-overlap" in proc.stderr
    chexnet_main("evaluate", run, "--cache", tmp_path / "hosp", "--bootstrap", "10", "--no-plots")  # its test rows were not seen
    assert (run / "eval" / "external" / "hosp" / "test" / "metrics.json").is_file()
