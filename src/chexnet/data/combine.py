"""Several prepared caches as one (``chexnet combine A B ... --out C``): train on more than one source.

The result is an ordinary cache (:mod:`chexnet.data.cache`, format version 2), so ``train``, ``evaluate``,
``tune`` and the rest read it unchanged. What it adds, in ``meta.json``:

``arguments``   ``{"dataset": "combined", "parts": [the parts' paths as given], "allow_overlap": bool}``
``parts``       one entry per part, in the order given: ``name`` (the part's folder name: the row's *source*),
                ``dataset`` (the part's source), ``cache`` (its resolved path), ``index_sha256``, ``rows``
                (``[start, stop)`` of its rows here), ``labels``, ``options`` (its label policies), ``splits``
``overlap``     what the checks below found: ``images`` (shared between parts), ``patients`` (in more than one
                split), with up to 5 examples each

``source``      ``derived_scores``: the parts' derived-label rules (:mod:`chexnet.derived`), so that a combined
                cache with nih-google rows scores them as nih-google's own cache does
``boxes.csv``   the parts' ``boxes.csv`` (VinDr-CXR, RSNA), one after the other, where any part has one (NIH's
                boxes stay in its data folder's ``BBox_List_2017.csv``: pass ``--bbox`` to localize them)

Rows are the parts' rows, part after part, each part's block contiguous; :func:`row_sources` gives each row's
source. Images, splits, views, ages and sexes are copied as they are. Labels are the union of the parts'
labels (chexnet's vocabulary order first, then sources' own names): a row whose source lacks a label has it
*missing*, so training learns each of the model's labels from the rows whose source has it and masks it in the
others. Patient ids become ``NAMESPACE:ID`` (:func:`patient_keys`): the namespace is ``nih`` for NIH's family
of sources (``nih`` and ``nih-google`` share NIH's patients, :data:`NIH_FAMILY`), the part's name for ``csv``
(a hospital's own ids), else the source's name (a public data set's ids are its own everywhere), so that two
sources' patient ``1`` stay apart and one data set's patients stay one.

Overlap is checked before anything is written, because a test image that was also trained on inflates AUROC:

* **images**: the same image name in two parts of NIH's family, or the same pixels in any two parts (a digest
  of each cached row: the same file prepared twice, or one source's images re-released by another under other
  names, as RSNA's DICOMs are NIH's images, where the pixels survived the conversion and both were prepared at
  the same ``--size``; a re-encoded or re-sized copy is not found this way);
* **patients**: a patient (namespaced as above) in more than one split.

Either refuses the combination with counts and examples unless ``allow_overlap`` (``--allow-overlap``): then
the rows are kept as they are, and the counts are recorded and said.

Writing: ``images.u8.tmp`` is copied block by block (fsynced, then renamed), then ``index.csv``, then
``meta.json`` last and atomically; a folder without ``meta.json`` is an incomplete cache, and re-running the
command copies again (it is a sequential copy, not a decode). An existing complete cache at ``--out`` is
refused unless ``overwrite``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet.data.cache import (
    BOXES,
    DIGEST_BYTES,
    DIGESTS,
    FORMAT,
    FORMAT_VERSION,
    IMAGES,
    INDEX,
    META,
    CacheError,
    cache_labels,
    index_columns,
    digests_record,
    index_sha256,
    load_cache,
    row_digests,
)
from chexnet.data.prepare import index_csv_text, label_counts, split_counts
from chexnet.fileio import atomic_write, fsync_dir
from chexnet.labels import VOCABULARY_INDEX

COMBINED = "combined"
NIH_FAMILY = ("nih", "nih-google")  # sources whose image names and patient ids are NIH ChestX-ray14's own
OWN_IDS = ("csv",)  # sources whose patient ids mean something only within one cache
EXAMPLES = 5
BLOCK_BYTES = 64 << 20


def row_sources(meta: dict, count: int | None = None) -> np.ndarray:
    """Each row's source name (object array of length ``count``, default ``meta["count"]``): a combined
    cache's part names by their row ranges; any other cache's rows are all its dataset (``nih`` if unsaid)."""
    count = int(meta["count"] if count is None else count)
    out = np.empty(count, dtype=object)
    parts = meta.get("parts")
    if not parts:
        out[:] = (meta.get("arguments") or {}).get("dataset", "nih")
        return out
    for part in parts:
        start, stop = part["rows"]
        out[start:stop] = part["name"]
    return out


def namespace(dataset: str, name: str) -> str:
    """The patient-id namespace of a cache of source ``dataset`` in a folder called ``name`` (see the module)."""
    return "nih" if dataset in NIH_FAMILY else name if dataset in OWN_IDS else dataset


def patient_keys(cache_dir, meta: dict, index: pd.DataFrame) -> pd.Series:
    """``NAMESPACE:ID`` for each row's patient: comparable between any two caches (a combined cache's are already)."""
    dataset = (meta.get("arguments") or {}).get("dataset", "nih")
    if dataset == COMBINED:
        return index["patient_id"].astype(str)
    return namespace(dataset, Path(cache_dir).name) + ":" + index["patient_id"].astype(str)


def combine(parts, out_dir, allow_overlap: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Write the combined cache of ``parts`` (cache folders) into ``out_dir``; returns its meta. See the module."""
    out_dir = Path(out_dir)
    say = print if progress else (lambda *a, **k: None)
    loaded = _load_parts(parts, out_dir)
    if (out_dir / META).is_file() and not overwrite:
        raise CacheError(f"{out_dir} already holds a cache: choose another --out, or pass --overwrite")
    size = int(loaded[0][2]["size"])
    labels = _union_labels([cache_labels(m) for _, _, m, _ in loaded])
    frames, entries, start = [], [], 0
    for path, images, meta, index in loaded:
        name, dataset = path.name, (meta.get("arguments") or {}).get("dataset", "nih")
        frame = index.reindex(columns=index_columns(labels))
        frame["patient_id"] = patient_keys(path, meta, index)
        frames.append(frame)
        entries.append({"name": name, "dataset": dataset, "cache": str(path.resolve()),
                        "index_sha256": index_sha256(path), "rows": [start, start + len(index)],
                        "labels": cache_labels(meta), "options": (meta.get("arguments") or {}).get("options", {}),
                        "splits": meta.get("splits")})
        start += len(index)
    combined = pd.concat(frames, ignore_index=True)
    digests = np.concatenate([_part_digests(path, images, meta, progress) for path, images, meta, _ in loaded])
    overlap = _overlap(combined, entries, digests)
    _say_overlap(overlap, allow_overlap, say)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / META).is_file():
        (out_dir / META).unlink()  # overwrite: incomplete from here until the new meta.json is written
    _copy_images([images for _, images, _, _ in loaded], out_dir / IMAGES, size, progress)
    atomic_write(out_dir / INDEX, index_csv_text(combined, labels).encode())
    boxes = _write_boxes([path for path, _, _, _ in loaded], out_dir)
    atomic_write(out_dir / DIGESTS, digests.tobytes())  # the parts' rows, so their digests (prepare --verify)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "size": size, "count": len(combined),
        "shape": [len(combined), size, size], "dtype": "uint8", "files": {"images": IMAGES, "index": INDEX},
        "labels": labels, "label_counts": label_counts(combined, labels),
        "arguments": {"dataset": COMBINED, "parts": [str(p) for p in parts], "allow_overlap": bool(allow_overlap),
                      "size": size},
        "source": {"split_mode": "the parts' own", "derived_scores": _derived_scores(loaded)},
        "parts": entries, "overlap": overlap,
        "splits": split_counts(combined), "failed_count": 0, "failed": [], "digests": digests_record(out_dir),
        "created": {"finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
    }
    if boxes is not None:
        meta["files"]["boxes"], meta["boxes"] = BOXES, {"count": boxes}
    atomic_write(out_dir / META, (json.dumps(meta, indent=2) + "\n").encode())
    _summary(meta, out_dir, say)
    return meta


def _load_parts(parts, out_dir: Path) -> list:
    if len(parts) < 2:
        raise ValueError("combine needs at least two caches")
    loaded, names = [], {}
    for p in parts:
        path = Path(p)
        if path.resolve() == out_dir.resolve():
            raise ValueError(f"{path}: --out is one of the caches to combine; choose another folder")
        images, index, meta = load_cache(path)
        if (meta.get("arguments") or {}).get("dataset") == COMBINED:
            raise ValueError(f"{path} is itself a combined cache: combine the caches it was made of "
                             f"({', '.join(e['name'] for e in meta.get('parts', []))}) instead")
        if path.name in names:
            raise ValueError(f"{path} and {names[path.name]} have the same folder name {path.name!r}, which names "
                             f"a row's source: give them distinct names")
        names[path.name] = path
        loaded.append((path, images, meta, index))
    sizes = {str(path): int(meta["size"]) for path, _, meta, _ in loaded}
    if len(set(sizes.values())) > 1:
        raise ValueError("the caches have different image sizes (" + ", ".join(f"{k}: {v} px" for k, v in
                         sizes.items()) + "): prepare them with the same --size")
    return loaded


def _part_digests(path: Path, images: np.ndarray, meta: dict, progress: bool) -> np.ndarray:
    """A part's per-row digests: the rows.blake2b its prepare recorded, else computed (older caches)."""
    recorded = path / DIGESTS
    if (meta.get("digests") or {}).get("rows") == DIGESTS and recorded.is_file() and \
            recorded.stat().st_size == len(images) * DIGEST_BYTES:
        return np.fromfile(recorded, dtype=np.uint8).reshape(len(images), DIGEST_BYTES)
    return row_digests(images, progress, f"digest {path.name}")


def _derived_scores(loaded) -> dict:
    """The parts' ``source.derived_scores``, merged; the same name with two rules is an error."""
    out, where = {}, {}
    for path, _, meta, _ in loaded:
        for name, rule in ((meta.get("source") or {}).get("derived_scores") or {}).items():
            if name in out and out[name] != rule:
                raise ValueError(f"{path} and {where[name]} define the derived label {name!r} differently "
                                 f"({rule} vs {out[name]}): combine caches that agree")
            out[name], where[name] = rule, path
    return out


def _write_boxes(parts, out_dir: Path) -> int | None:
    """Concatenate the parts' boxes.csv into ``out_dir`` (None, and no file, where no part has one)."""
    tables = [pd.read_csv(p / BOXES, dtype=str, keep_default_na=False) for p in parts if (p / BOXES).is_file()]
    (out_dir / BOXES).unlink(missing_ok=True)
    if not tables:
        return None
    boxes = pd.concat(tables, ignore_index=True)
    atomic_write(out_dir / BOXES, boxes.to_csv(index=False).encode())
    return len(boxes)


def _union_labels(label_lists) -> list[str]:
    seen = list(dict.fromkeys(n for labels in label_lists for n in labels))
    known = sorted((n for n in seen if n in VOCABULARY_INDEX), key=VOCABULARY_INDEX.get)
    return known + [n for n in seen if n not in VOCABULARY_INDEX]


def _overlap(combined: pd.DataFrame, entries, row_digest: np.ndarray) -> dict:
    """Images shared between parts (NIH-family names; pixels anywhere) and patients in more than one split."""
    source = np.concatenate([np.full(e["rows"][1] - e["rows"][0], e["name"], dtype=object) for e in entries])
    family = {e["name"]: e["dataset"] in NIH_FAMILY for e in entries}
    nih = np.array([family[s] for s in source], dtype=bool)
    named = pd.DataFrame({"i": combined["image"][nih], "s": source[nih]}).groupby("i")["s"].nunique()
    by_name = combined["image"].isin(named.index[named > 1]).to_numpy() & nih
    digests = np.array([d.tobytes().hex() for d in row_digest], dtype=object)
    by_pixels = pd.DataFrame({"d": digests, "s": source}).groupby("d")["s"].nunique()
    by_pixels = np.isin(digests, by_pixels.index[by_pixels > 1])
    # one image however many copies: its pixels' digest, or (same NIH name, other pixels) its name
    key = np.where(by_pixels, digests, "name:" + combined["image"].to_numpy(dtype=object))
    shared = by_name | by_pixels
    splits = combined.groupby("patient_id")["split"].nunique()
    leaked = sorted(splits.index[splits > 1])
    return {"images": len(set(key[shared])), "image_examples": sorted(set(combined["image"][shared]))[:EXAMPLES],
            "patients": len(leaked), "patient_examples": leaked[:EXAMPLES]}


def _say_overlap(overlap: dict, allow: bool, say) -> None:
    problems = []
    if overlap["images"]:
        problems.append(f"{overlap['images']} image(s) are in more than one cache (by NIH name or by identical "
                        f"pixels; names: {', '.join(overlap['image_examples'])})")
    if overlap["patients"]:
        problems.append(f"{overlap['patients']} patient(s) are in more than one split, e.g. "
                        f"{', '.join(overlap['patient_examples'])}")
    if not problems:
        return
    if not allow:
        raise CacheError("the caches overlap: " + "; ".join(problems) + ". A test image or patient that is also "
                         "trained on inflates the evaluation: combine caches that do not share them, or pass "
                         "--allow-overlap to combine anyway (recorded in meta.json)")
    say("warning (--allow-overlap): " + "; ".join(problems))


def _copy_images(arrays, dest: Path, size: int, progress: bool) -> None:
    from tqdm import tqdm

    tmp = dest.with_name(dest.name + ".tmp")
    block = max(1, BLOCK_BYTES // (size * size))
    total = sum(len(a) for a in arrays)
    with open(tmp, "wb") as f, tqdm(total=total, desc="copy", unit="img", disable=not progress) as bar:
        for images in arrays:
            for a in range(0, len(images), block):
                chunk = images[a:a + block]
                f.write(np.ascontiguousarray(chunk).tobytes())
                bar.update(len(chunk))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


def _summary(meta: dict, out_dir: Path, say) -> None:
    say(f"combined cache {out_dir}: {meta['count']} images of {meta['size']}x{meta['size']} from "
        f"{len(meta['parts'])} sources")
    width = max(len(n) for n in meta["labels"])
    for part in meta["parts"]:
        start, stop = part["rows"]
        say(f"  {part['name']} ({part['dataset']}): {stop - start} images, rows {start}-{stop - 1}")
    say("labels (positive / negative / missing per split; missing includes the sources without the label):")
    for label in meta["labels"]:
        has = [p["name"] for p in meta["parts"] if label in p["labels"]]
        cells = [f"{s} {c[label]['positive']}/{c[label]['negative']}/{c[label]['missing']}"
                 for s, c in meta["label_counts"].items()]
        say(f"  {label:{width}s}  " + "   ".join(cells) + f"   (from {', '.join(has)})")
