"""``chexnet localize``: do the heatmaps point at the findings? The protocol of Wang et al. 2017 (ChestX-ray8).

For every labelled box whose image is in the chosen split and whose finding the model predicts: the Grad-CAM map
of that finding is computed on the image's cache row, thresholded at ``cam_threshold`` x its maximum, and a box
is drawn around each connected region. Boxes are in original image pixels; the map is carried to them through
the same geometry as the image (the cache row is the whole image stretched to S x S; see :mod:`chexnet.explain`).

The boxes, without ``--bbox``: the cache's ``boxes.csv`` where ``chexnet prepare`` wrote one (VinDr-CXR, RSNA
Pneumonia: :mod:`chexnet.data.cache`; it holds each image's original size, so neither ``--data`` nor
``--image-size`` is needed or used), else NIH's ``BBox_List_2017.csv`` (984 boxes, 8 pathologies; the synthetic
generator writes boxes for all 14) in the data folder the cache was prepared from, with the original sizes read
from the image files there (``--data``) or given (``--image-size``). ``--bbox FILE`` is a list in NIH's format.
Every ground-truth box counts once: where several readers boxed the same finding on one image (VinDr-CXR: up to
3 radiologists per training image), each reader's box is scored on its own against the same heatmap, and n
counts boxes, not images.

A ground-truth box counts as localized at threshold T when one of the detected boxes reaches
``IoBB = area(truth & detected) / area(detected) >= T`` (Wang et al.'s "intersection over the detected B-Box
area ratio"), reported for T in 0.1, 0.25, 0.5, 0.75, 0.9, and at ``IoU >= 0.5``; also how often the map's peak
falls inside the box. Beside each number, the same measure for a baseline that knows nothing about the image:
the detected boxes moved to random places (uniform, inside the image; mean over ``RANDOM_DRAWS`` draws), and for
the peak a uniformly random point (its chance is the box's share of the image).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet.data.cache import BOX_COLUMNS, BOXES
from chexnet.data.imageio import read_image_size
from chexnet.fileio import atomic_write
from chexnet.labels import PATHOLOGIES

IOBB_THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)
IOU_THRESHOLD = 0.5
RANDOM_DRAWS = 20
BOX_ALIASES = {"Infiltrate": "Infiltration"}  # NIH's box list spells it so


def read_boxes(path: str | Path) -> pd.DataFrame:
    """NIH's box list -> columns image, finding, x, y, w, h (original image pixels). Errors name the row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such box list (NIH's BBox_List_2017.csv)")
    raw = pd.read_csv(path, header=0, dtype=str, keep_default_na=False)
    if raw.shape[1] < 6:
        raise ValueError(f"{path}: expected 6 columns (Image Index, Finding Label, x, y, w, h), got {raw.shape[1]}")
    rows = []
    for i, r in enumerate(raw.itertuples(index=False), start=2):
        image, label = str(r[0]).strip(), str(r[1]).strip()
        finding = BOX_ALIASES.get(label, label)
        if finding not in PATHOLOGIES:
            raise ValueError(f"{path} row {i}: unknown finding label {label!r}")
        try:
            x, y, w, h = (float(v) for v in r[2:6])
        except ValueError:
            raise ValueError(f"{path} row {i}: box {list(r[2:6])} is not four numbers") from None
        if not (w > 0 and h > 0):
            raise ValueError(f"{path} row {i}: box width and height must be positive, got {w} x {h}")
        rows.append((image, finding, x, y, w, h))
    return pd.DataFrame(rows, columns=["image", "finding", "x", "y", "w", "h"])


def read_cache_boxes(path: str | Path) -> pd.DataFrame:
    """A cache's ``boxes.csv`` (:mod:`chexnet.data.cache`) -> columns image, finding, reader, x, y, w, h (original
    image pixels), height, width (the original image's size). Errors name the file and the row."""
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable box list ({exc})") from None
    missing = [c for c in BOX_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"{path} row 1 (header): missing column(s) {', '.join(missing)}; expected "
                         f"{', '.join(BOX_COLUMNS)} (re-run chexnet prepare --overwrite to rewrite the cache)")
    out = raw[BOX_COLUMNS].copy()

    def first_bad(bad, what: str) -> None:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path} row {i + 2}: {what}, got {raw.iloc[i][BOX_COLUMNS].tolist()}")

    for column in ("image", "finding"):
        out[column] = out[column].str.strip()
        first_bad((out[column] == "").to_numpy(), f"empty {column}")
    for column in ("x", "y", "w", "h", "height", "width"):
        out[column] = pd.to_numeric(out[column], errors="coerce").astype(np.float64)
        first_bad(~np.isfinite(out[column].to_numpy()), f"{column} is not a number")
    first_bad(~((out["w"] > 0) & (out["h"] > 0)).to_numpy(), "box width and height must be positive")
    for column in ("height", "width"):
        first_bad(~((out[column] >= 1) & (out[column] % 1 == 0)).to_numpy(), f"image {column} must be a whole "
                  "number of pixels >= 1")
        out[column] = out[column].astype(np.int64)
    return out


def original_sizes(images, data_dir: str | Path | None, image_size: int | None) -> dict[str, tuple[int, int]]:
    """(height, width) of each original image, from the file headers in ``data_dir`` found NIH-style (or all
    ``image_size``); :func:`chexnet.data.imageio.read_image_size` reads each header."""
    if image_size:
        return {name: (image_size, image_size) for name in images}
    from chexnet.data.sources.nih import find_images

    if data_dir is None or not Path(data_dir).is_dir():
        raise FileNotFoundError(f"the original images are needed for their sizes and {data_dir} is not a folder: "
                                f"pass --data DIR, or --image-size N if every image is N x N (NIH's PNGs: 1024)")
    found = find_images(data_dir)
    out = {}
    for name in images:
        path = found.get(name)
        if path is None:
            raise FileNotFoundError(f"{name}: not found under {data_dir} (needed for its size); pass --image-size N "
                                    f"if every image is N x N")
        out[name] = read_image_size(path)
    return out


def heatmap_boxes(cam: np.ndarray, frac: float) -> list[tuple[float, float, float, float]]:
    """Boxes (x, y, w, h) around the connected regions of ``cam >= frac * max`` (pixels of ``cam``)."""
    from scipy import ndimage

    if not np.isfinite(cam).all() or cam.max() <= 0:
        return []
    labels, _ = ndimage.label(cam >= frac * cam.max())
    return [(float(s[1].start), float(s[0].start), float(s[1].stop - s[1].start), float(s[0].stop - s[0].start))
            for s in ndimage.find_objects(labels) if s is not None]


def _intersection(a, b) -> float:
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(0.0, w) * max(0.0, h)


def box_scores(truth, detected) -> tuple[float, float]:
    """(best IoBB, best IoU) of ``detected`` boxes against one ``truth`` box (0 when nothing was detected)."""
    iobb = iou = 0.0
    for d in detected:
        inter = _intersection(truth, d)
        iobb = max(iobb, inter / (d[2] * d[3]))
        iou = max(iou, inter / (truth[2] * truth[3] + d[2] * d[3] - inter))
    return iobb, iou


def random_like(detected, height: int, width: int, rng: np.random.Generator):
    """The detected boxes' sizes, placed uniformly at random inside the image."""
    return [(rng.uniform(0, max(0.0, width - w)), rng.uniform(0, max(0.0, height - h)), w, h) for _, _, w, h in detected]


def _pairs(index, meta, cache, split, bbox, data, image_size, labels):
    """The boxes of the split's images for findings the model predicts, with cache rows and original sizes: the
    cache's boxes.csv without ``bbox`` where it has one, else an NIH-format list (see the module)."""
    cache_list = Path(cache) / BOXES
    if bbox is None and cache_list.is_file():
        boxes = read_cache_boxes(cache_list)  # sizes included
    else:
        arguments = meta.get("arguments", {})
        data_dir = arguments.get("data_dir")  # a combined cache records none
        default = Path(data_dir) / "BBox_List_2017.csv" if data_dir else None
        if bbox is None and (default is None or not default.is_file()):
            dataset = arguments.get("dataset", "nih")
            hint = (f"; {dataset} caches prepared before chexnet kept boxes lack it: re-run chexnet prepare with "
                    f"--overwrite" if dataset in ("vindr", "rsna") else "")
            where = f"{default} does not exist" if default else "it records no data folder"
            raise FileNotFoundError(f"{cache} has no {BOXES} and {where}: pass --bbox FILE (NIH's box list "
                                    f"format){hint}")
        boxes = read_boxes(bbox or default)
    rows = index if split == "all" else index[index["split"] == split]
    where = pd.Series(rows.index, index=rows["image"])
    boxes = boxes[boxes["image"].isin(where.index) & boxes["finding"].isin(labels)].reset_index(drop=True)
    if boxes.empty:
        raise ValueError(f"no box of the list falls in the {split} split of {cache} for the run's findings; "
                         f"try --split all")
    boxes["row"] = where.loc[boxes["image"]].to_numpy()
    if "height" not in boxes.columns:
        sizes = original_sizes(sorted(set(boxes["image"])), data or meta["arguments"].get("data_dir"), image_size)
        boxes["height"] = [sizes[n][0] for n in boxes["image"]]
        boxes["width"] = [sizes[n][1] for n in boxes["image"]]
    return boxes


def localize_run(run: str | Path, bbox: str | Path | None = None, data: str | Path | None = None,
                 image_size: int | None = None, split: str = "test", checkpoint: str = "best",
                 cache: str | Path | None = None, cam_threshold: float = 0.5, examples: int = 8, seed: int = 0,
                 batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """Run the protocol on ``run``; writes RUN/eval/localize/ and returns the per-pathology table."""
    import torch
    from tqdm import tqdm

    from chexnet.checkpoint import read_run_info
    from chexnet.explain import cam_on_cache, gradcam
    from chexnet.preprocess import input_transform
    from chexnet.runs import load_run_model, resolve_cache

    if not 0 < cam_threshold < 1:
        raise ValueError(f"--cam-threshold must be in (0, 1), got {cam_threshold}")
    run = Path(run)
    loaded = load_run_model(run, checkpoint, require_spec=True)
    cache, images, index, meta = resolve_cache(run, read_run_info(run), cache, loaded.spec)
    spec, labels = loaded.spec, list(loaded.cfg.labels)
    boxes = _pairs(index, meta, cache, split, bbox, data, image_size, labels)
    model, transform, s = loaded.model, input_transform(spec), spec.cache_size
    rng = np.random.default_rng(seed)
    out_dir = run / "eval" / "localize"
    (out_dir / "examples").mkdir(parents=True, exist_ok=True)
    records = []
    for start in tqdm(range(0, len(boxes), batch_size), desc="localize", unit="batch", disable=not progress,
                      file=sys.stderr, leave=False):
        chunk = boxes.iloc[start:start + batch_size]
        rows = np.stack([images[r] for r in chunk["row"]])
        maps = gradcam(model, transform(torch.from_numpy(rows)[:, None]), [labels.index(f) for f in chunk["finding"]])
        for (_, b), cam, row in zip(chunk.iterrows(), maps, rows):
            on_cache = cam_on_cache(cam, spec)
            sy, sx = b.height / s, b.width / s  # cache px -> original px
            detected = [(x * sx, y * sy, w * sx, h * sy) for x, y, w, h in heatmap_boxes(on_cache, cam_threshold)]
            truth = (b.x, b.y, b.w, b.h)
            iobb, iou = box_scores(truth, detected)
            chance = [box_scores(truth, random_like(detected, b.height, b.width, rng)) for _ in range(RANDOM_DRAWS)]
            py, px = np.unravel_index(int(np.argmax(on_cache)), on_cache.shape)
            peak = (px + 0.5) * sx, (py + 0.5) * sy
            records.append({"image": b.image, "finding": b.finding, **({"reader": b.reader} if "reader" in b else {}),
                            "iobb": iobb, "iou": iou,
                            "random_iobb": [c[0] for c in chance], "random_iou": [c[1] for c in chance],
                            "peak_in_box": b.x <= peak[0] <= b.x + b.w and b.y <= peak[1] <= b.y + b.h,
                            "random_peak_in_box": min(1.0, b.w * b.h / (b.width * b.height)),
                            "detected": len(detected)})
            if len(records) <= examples:
                _example(out_dir / "examples", row, on_cache, b, detected, sx, sy)
    table = summarize(records)
    _write(out_dir, table, records, dict(run=str(run), checkpoint=str(loaded.path), split=split,
                                         cam_threshold=cam_threshold, boxes=len(records), seed=seed))
    return table


def summarize(records: list[dict]) -> pd.DataFrame:
    """Per pathology (and "All"): n, accuracy at each IoBB threshold and at IoU >= 0.5, peak in box; each with
    its random-box baseline (``random_`` columns)."""
    df = pd.DataFrame(records)
    out = []
    for name, g in list(df.groupby("finding", sort=False)) + [("All", df)]:
        row = {"pathology": name, "n": len(g)}
        rand_iobb = np.array(g["random_iobb"].tolist())
        rand_iou = np.array(g["random_iou"].tolist())
        for t in IOBB_THRESHOLDS:
            row[f"iobb_{t:g}"] = float((g["iobb"] >= t).mean())
            row[f"random_iobb_{t:g}"] = float((rand_iobb >= t).mean())
        row[f"iou_{IOU_THRESHOLD:g}"] = float((g["iou"] >= IOU_THRESHOLD).mean())
        row[f"random_iou_{IOU_THRESHOLD:g}"] = float((rand_iou >= IOU_THRESHOLD).mean())
        row["peak_in_box"] = float(g["peak_in_box"].mean())
        row["random_peak_in_box"] = float(g["random_peak_in_box"].mean())
        out.append(row)
    order = {n: i for i, n in enumerate(PATHOLOGIES)}
    table = pd.DataFrame(out).set_index("pathology")
    return table.loc[sorted(table.index, key=lambda n: order.get(n, len(order)))]


def _write(out_dir: Path, table: pd.DataFrame, records: list[dict], context: dict) -> None:
    atomic_write(out_dir / "localize.csv", table.to_csv(float_format="%.4f"))
    per_box = pd.DataFrame(records).drop(columns=["random_iobb", "random_iou"])
    atomic_write(out_dir / "boxes.csv", per_box.to_csv(index=False, float_format="%.4f"))
    cols = [f"iobb_{t:g}" for t in IOBB_THRESHOLDS] + [f"iou_{IOU_THRESHOLD:g}", "peak_in_box"]
    head = ["pathology", "n"] + [f"IoBB>={t:g}" for t in IOBB_THRESHOLDS] + [f"IoU>={IOU_THRESHOLD:g}", "peak in box"]
    lines = ["# Localization (Wang et al. 2017 protocol)", ""] + [f"- {k}: {v}" for k, v in context.items()]
    lines += ["- each cell: model / random boxes of the same sizes (peak: a uniformly random point)", "",
              "| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, r in table.iterrows():
        cells = [f"{r[c]:.2f} / {r['random_' + c]:.2f}" for c in cols]
        lines.append("| " + " | ".join([f"**{name}**" if name == "All" else name, str(int(r['n']))] + cells) + " |")
    lines += ["", "![accuracy at IoBB >= 0.5](localize.png)", ""]
    atomic_write(out_dir / "localize.md", "\n".join(lines))
    atomic_write(out_dir / "context.json", json.dumps(context, indent=2))
    _plot(table, out_dir / "localize.png")
    print(f"localized {context['boxes']} boxes; accuracy at IoBB >= 0.5: {table.loc['All', 'iobb_0.5']:.2f} "
          f"(random boxes {table.loc['All', 'random_iobb_0.5']:.2f}); peak in box {table.loc['All', 'peak_in_box']:.2f} "
          f"(random {table.loc['All', 'random_peak_in_box']:.2f}); wrote {out_dir}/", file=sys.stderr)
    print(table[["n"] + cols].to_string(float_format=lambda v: f"{v:.2f}"))


def _plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(table) + 2), 4))
    ax.bar(x - 0.2, table["iobb_0.5"], 0.4, label="Grad-CAM boxes")
    ax.bar(x + 0.2, table["random_iobb_0.5"], 0.4, label="random boxes, same sizes")
    ax.set_xticks(x, [f"{n}\n(n={int(k)})" for n, k in zip(table.index, table["n"])], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("accuracy at IoBB >= 0.5")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _example(folder: Path, row: np.ndarray, cam: np.ndarray, b, detected, sx: float, sy: float) -> None:
    """The cache row with the heatmap, the true box (green) and the detected boxes (red), at cache size."""
    from chexnet.explain import overlay, safe_name

    to_cache = [(x / sx, y / sy, w / sx, h / sy, (255, 40, 40)) for x, y, w, h in detected]
    truth = (b.x / sx, b.y / sy, b.w / sx, b.h / sy, (40, 255, 40))
    reader = f"_{safe_name(str(b.reader))}" if "reader" in b and b.reader else ""  # readers' boxes of one finding
    overlay(row, np.clip(cam, 0, 1), f"{b.finding} (green: truth)", boxes=[*to_cache, truth]).save(
        folder / f"{safe_name(Path(b.image).stem)}_{safe_name(b.finding)}{reader}.png")
