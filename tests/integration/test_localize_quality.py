"""``chexnet localize`` end to end on inputs whose answer is known: the small trained run of the suite, its synthetic
cache (whose data folder has BBox_List_2017.csv), and Grad-CAM replaced by maps built from the true boxes.

How well a trained model's heatmaps find the lesions depends on its training trajectory (CPU, torch version,
threads): that measurement is a benchmark, benchmarks/bench_localize.py (numbers in benchmarks/RESULTS.md).

The geometry the expected values are derived from (the tiny run: 64 px originals stretched to 48 px cache rows,
resized to the 32 px network input): Grad-CAM's map lives on the network input (I x I); ``cam_on_cache`` carries
it to the cache row (S x S, S > I) with a bilinear resize, i.e. a triangle filter one input pixel wide, and the
box drawn around the cells >= 0.5 x the maximum is scaled to original pixels. An original pixel row of width W
has rx = W / I original px per input pixel and cx = W / S per cache pixel.

* Oracle: 1 on the input pixels j0..j1 (each axis) with j0 * rx - cx / 2 >= x and (j1 + 1) * rx + cx / 2 <= x + w,
  0 elsewhere, at least 2 pixels per axis (so the maximum, 1, is reached on cache pixels between them). A cache
  pixel whose centre is more than half an input pixel from [j0, j1] gets less than half of that: so the detected
  cells' centres lie in original [j0 * rx, (j1 + 1) * rx], their extent within cx / 2 more, inside the true box.
  Every detected box is inside the true box (IoBB = 1 at every threshold) and the peak is inside it too.
  Only boxes large enough for 2 such pixels per axis are given (``--bbox`` with those rows).
* Anti-oracle: 1 on input pixel (0, 0) only. The maximum is cache pixel (0, 0), centre (cx / 2, cx / 2) in
  original px; every cache pixel >= half the maximum is within one input pixel of it (centre < 1.5 rx, extent
  < 1.5 rx + cx / 2). No box of the synthetic list comes that close to the corner: peak in box 0, IoBB 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def _oracle_pixels(x: float, w: float, size: int, cache_size: int, input_size: int) -> tuple[int, int]:
    """[j0, j1]: the input pixels of one axis whose mass the bilinear resize to the cache row keeps inside [x, x + w]."""
    rx, cx = size / input_size, size / cache_size
    return math.ceil((x + cx / 2) / rx), math.floor((x + w - cx / 2) / rx) - 1


@pytest.fixture
def geometry(trained_run):
    from chexnet.runs import load_run_model

    spec = load_run_model(trained_run, "best", require_spec=True).spec
    assert spec.input_transform == "resize" and spec.input_size < spec.cache_size, spec  # what the derivation assumes
    return spec.cache_size, spec.input_size


@pytest.fixture
def box_list(tiny_cache):
    """(path of the synthetic box list, its boxes) and the original images' size (all square, one size)."""
    from chexnet.localize import original_sizes, read_boxes

    data = Path(json.loads((tiny_cache / "meta.json").read_text())["arguments"]["data_dir"])
    path = data / "BBox_List_2017.csv"  # where localize_run finds the box list without --bbox
    boxes = read_boxes(path)
    sizes = set(original_sizes(sorted(set(boxes["image"])), data, None).values())
    assert len(sizes) == 1, sizes
    (height, width), = sizes
    assert height == width, sizes
    return path, boxes, width


def _patch(monkeypatch, make_map):
    """Grad-CAM replaced by ``make_map(box, input_size)`` for each (row, finding) of a batch, in the order of the
    boxes localize_run iterates (read from its own ``_pairs``)."""
    import chexnet.explain
    import chexnet.localize
    from chexnet.labels import PATHOLOGIES

    real_pairs, seen = chexnet.localize._pairs, {}

    def pairs(*args, **kwargs):
        seen["boxes"] = real_pairs(*args, **kwargs)
        seen["next"] = 0
        return seen["boxes"]

    def fake_gradcam(model, inputs, targets):
        start = seen["next"]
        chunk = seen["boxes"].iloc[start:start + len(targets)]
        seen["next"] = start + len(targets)
        assert [PATHOLOGIES[t] for t in targets] == list(chunk["finding"])  # the trained run predicts all 14
        return np.stack([make_map(b, inputs.shape[-1]) for _, b in chunk.iterrows()]).astype(np.float32)

    monkeypatch.setattr(chexnet.localize, "_pairs", pairs)
    monkeypatch.setattr(chexnet.explain, "gradcam", fake_gradcam)
    return seen


def _outputs(run):
    out = run / "eval" / "localize"
    table = pd.read_csv(out / "localize.csv", index_col=0)
    boxes = pd.read_csv(out / "boxes.csv")
    assert table.loc["All", "n"] == len(boxes)
    return table, boxes


def test_maps_inside_the_true_boxes_localize_every_box(trained_run, copy_run, chexnet_main, monkeypatch, tmp_path,
                                                       geometry, box_list):
    cache_size, input_size = geometry
    path, boxes, size = box_list

    def fits(b) -> bool:
        (x0, x1), (y0, y1) = (_oracle_pixels(b.x, b.w, size, cache_size, input_size),
                              _oracle_pixels(b.y, b.h, size, cache_size, input_size))
        return x1 >= x0 + 1 and y1 >= y0 + 1

    keep = [fits(b) for b in boxes.itertuples()]
    assert sum(keep) >= 20, f"{sum(keep)} of {len(boxes)} synthetic boxes fit the oracle"
    lines = path.read_text().splitlines()
    subset = tmp_path / "boxes.csv"
    subset.write_text("\n".join([lines[0]] + [line for line, k in zip(lines[1:], keep) if k]) + "\n")

    def oracle(b, n):
        assert (b.width, b.height) == (size, size)
        (x0, x1), (y0, y1) = (_oracle_pixels(b.x, b.w, size, cache_size, n),
                              _oracle_pixels(b.y, b.h, size, cache_size, n))
        m = np.zeros((n, n), np.float32)
        m[y0:y1 + 1, x0:x1 + 1] = 1.0
        return m

    seen = _patch(monkeypatch, oracle)
    run = copy_run(trained_run)
    chexnet_main("localize", run, "--split", "all", "--bbox", subset, "--examples", "2")
    assert seen["next"] == len(seen["boxes"]) == sum(keep)  # every box went through the oracle once
    table, per_box = _outputs(run)
    assert table.loc["All", "n"] == sum(keep)
    assert table.loc["All", "peak_in_box"] == 1.0, table
    for t in ("0.1", "0.25", "0.5", "0.75", "0.9"):
        assert table.loc["All", f"iobb_{t}"] == 1.0, (t, table)
    assert (per_box["detected"] == 1).all() and (per_box["iobb"] >= 0.9999).all(), per_box


def test_maps_peaking_in_a_far_corner_localize_nothing(trained_run, copy_run, chexnet_main, monkeypatch, geometry,
                                                       box_list):
    cache_size, input_size = geometry
    _, boxes, size = box_list
    reach = 1.5 * size / input_size + 0.5 * size / cache_size  # original px the corner's detected cells can reach
    assert (np.maximum(boxes["x"], boxes["y"]) > reach).all(), "a synthetic box reaches the corner"

    def corner(b, n):
        m = np.zeros((n, n), np.float32)
        m[0, 0] = 1.0
        return m

    seen = _patch(monkeypatch, corner)
    run = copy_run(trained_run)
    chexnet_main("localize", run, "--split", "all", "--examples", "2")  # the data folder's whole box list
    assert seen["next"] == len(seen["boxes"]) == len(boxes)
    table, per_box = _outputs(run)
    assert table.loc["All", "n"] == len(boxes)
    assert table.loc["All", "peak_in_box"] == 0.0, table
    assert table.loc["All", "iobb_0.1"] == 0.0 and (per_box["iobb"] == 0).all(), table
