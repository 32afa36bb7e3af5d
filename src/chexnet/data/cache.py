"""The uint8 cache: its on-disk format (below), the reader :func:`load_cache`, and the format's constants.

:mod:`chexnet.data.prepare` (``chexnet prepare``) writes it: every image decoded and resized once into a
tool-agnostic uint8 array, from any data source of :mod:`chexnet.data.sources`.

Cache format (version 2)
========================
A cache is a folder with three files, and a fourth, ``boxes.csv``, where the source has finding boxes::

    CACHE/images.u8    raw uint8 array of shape (N, S, S), C order, no header; row i is image i of
                       the index. Read it with numpy.memmap(path, np.uint8, "r", shape=(N, S, S)),
                       or any tool that reads raw bytes: image i starts at byte i * S * S.
    CACHE/index.csv    one row per image, same order, columns:
                       image, patient_id (text), split (train|val|test), view,
                       one column per label of meta.json's ``labels``, in that order: 1, 0, or an empty
                       cell for *missing* (the data set lacks the label, or its value is unknown),
                       age, sex
    CACHE/meta.json    format, format_version, size (S), count (N), shape, dtype,
                       labels (names of chexnet.labels.VOCABULARY, or a source's own),
                       label_counts ({split: {label: {positive, negative, missing}}}),
                       arguments (data_dir, size, view, seed, val_fraction, dataset: the source of
                       chexnet.data.sources, absent = nih; options: the source's own, e.g. chexpert's
                       uncertain and blank label policies), source (metadata file(s),
                       split mode official|random, rows excluded by the view filter or the split lists),
                       splits ({train|val|test: {images, patients}}), failed ([{row, image, path,
                       reason}]: images left out), created (start/finish time, runs, workers, versions);
                       files ({images, index} and, with boxes.csv, boxes) and, with boxes.csv, boxes
                       ({count, images, findings: {name: count}, not_cached, dropped, size_unreadable,
                       size_errors})
    CACHE/boxes.csv    optional (sources with boxes: vindr, rsna; not nih, whose boxes stay in its
                       BBox_List_2017.csv): one row per finding box of a cached image, columns
                       image (as in index.csv), finding (a label name of meta.json's ``labels``),
                       reader (the source's reader id, e.g. VinDr's rad_id; empty where it has none),
                       x, y, w, h (original image pixels: top-left corner, width, height),
                       height, width (the original image's size in pixels, from its file's header)
    CACHE/rows.blake2b digests (written by prepare and combine since chexnet 0.2; added by
                       ``chexnet prepare --verify`` to a cache without them): N x 16 bytes, no header, row i's
                       BLAKE2b-128 digest of its S*S pixel bytes; meta.json's ``digests`` names the file and
                       records ``index_sha256`` (of index.csv) and ``boxes_sha256`` (of boxes.csv, or null)

:func:`load_cache` checks the structure: the images file's size is count x S x S, index.csv has meta.json's
count and columns, its values are 1, 0 or empty, and its split sizes are meta.json's ``splits``; each refusal
names the file and what differs. :func:`verify_cache` (``chexnet prepare --verify``) re-reads every row
against the recorded digests.

:func:`read_index` gives labels as float32 (1.0, 0.0, NaN for missing) and patient ids as text. Version 1
(until chexnet 0.1's structure change) had ``pathologies`` instead of ``labels`` (always NIH's 14, every
value 0 or 1, integer patient ids); it is still read: labels as float32 like version 2's, patient ids as
int64 as they were written.

``meta.json`` is written **last**, atomically (temporary file + fsync + rename): a folder without it
is an incomplete cache and :func:`load_cache` refuses it. Images are stretched to S x S with area
averaging, bone bright: step 1 of :mod:`chexnet.preprocess` (:func:`chexnet.preprocess.read_cache_row`).
Index rows follow the source's row order (nih: the metadata file's order after the view filter and
split assignment).

``boxes.csv`` (:func:`chexnet.data.prepare.prepare`, :func:`chexnet.data.sources.box_findings`) keeps the
source's box order. A source finding that maps to several labels gives one row per label (VinDr's
``Nodule/Mass``: a Nodule row and a Mass row); one kept under its own name (``Aortic enlargement``) keeps it; one
the label table drops (``Other lesion``) is left out (counted in ``boxes.dropped``). Each reader's box is its own
row (VinDr: up to 3 readers' boxes of one finding on one image). Boxes of images that are not in the cache
(failed) are left out (``boxes.not_cached``), as are those of an image whose size could not
be read from its header at finalization (``boxes.size_unreadable``). ``chexnet localize`` reads it
(:mod:`chexnet.localize`).

While it runs (resumable work area)
===================================
:func:`chexnet.data.prepare.prepare` works in ``CACHE/work/``::

    plan.json          arguments + digest of the planned rows; written last when the work area is created
    images.u8.part     (P, S, S) uint8, one row per *planned* image (P >= N), written in place (pwrite)
    status.u8          P bytes: 0 pending, 1 done (pixels durable), 2 failed (reason in failed.json)
    failed.json        [{row, image, path, reason}] for status-2 rows

Workers write pixel rows straight into ``images.u8.part``. Every ``COMMIT_SECONDS`` the parent
fsyncs that file, then atomically replaces ``failed.json`` and then ``status.u8``; a row is flagged
done only after its pixels are on disk. After a kill (even SIGKILL or power loss) re-running the
same command re-plans, checks that the plan and arguments are unchanged, and processes only the
pending rows: finished rows are never rewritten and the result is byte-for-byte that of an
uninterrupted run (``meta.json``'s ``created`` block aside).

Failed images (missing, truncated, corrupt, not an image) leave holes in the planned rows. They are
removed once, at finalization: if nothing failed ``images.u8.part`` is simply renamed to
``images.u8``; otherwise the done rows are copied in order into ``images.u8`` (so disk use peaks
at about twice the cache for that step). Then ``index.csv`` (done rows only), ``boxes.csv`` (the
sizes read then, once per boxed image), ``meta.json``, and the work area is deleted. A hidden
``CACHE/.lock`` (flock) stops two prepares writing one cache.

Re-running on a complete cache with the same arguments does nothing and says so; different
arguments raise :class:`CacheError` naming the differences (``overwrite=True`` rebuilds instead).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet.data.splits import SPLITS
from chexnet.labels import PATHOLOGIES

FORMAT = "chexnet-cache"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
IMAGES, INDEX, META, WORK, LOCK = "images.u8", "index.csv", "meta.json", "work", ".lock"
BOXES = "boxes.csv"  # optional: the source's finding boxes (see the module docstring)
BOX_COLUMNS = ["image", "finding", "reader", "x", "y", "w", "h", "height", "width"]
HEAD_COLUMNS, TAIL_COLUMNS = ["image", "patient_id", "split", "view"], ["age", "sex"]
INDEX_COLUMNS = [*HEAD_COLUMNS, *PATHOLOGIES, *TAIL_COLUMNS]  # NIH's (and every version-1 cache's)
ARGUMENT_DEFAULTS = {"dataset": "nih", "options": {}}  # arguments added since version 1: what their absence means


class CacheError(RuntimeError):
    """A cache that cannot be built, resumed or loaded; the message says why and what to do."""


def index_columns(labels) -> list[str]:
    """``index.csv``'s columns for a cache with ``labels``."""
    return [*HEAD_COLUMNS, *labels, *TAIL_COLUMNS]


def label_columns(columns) -> list[str]:
    """The label columns of an index (or a source's table): those between ``view`` and ``age``."""
    columns = list(columns)
    return columns[columns.index("view") + 1:columns.index("age")]


def cache_labels(meta: dict) -> list[str]:
    """The labels a cache holds, in column order (version 1: NIH's 14)."""
    return list(meta["labels"]) if "labels" in meta else list(meta.get("pathologies", PATHOLOGIES))


def load_cache(cache_dir: str | os.PathLike, size: int | None = None) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Open a prepared cache: (read-only images memmap (N, S, S), index DataFrame, meta dict).

    ``size``, if given, must equal the cache's image size. Raises :class:`CacheError` for an
    incomplete, foreign or inconsistent cache.
    """
    cache_dir = Path(cache_dir)
    meta_path = cache_dir / META
    if not meta_path.is_file():
        if (cache_dir / WORK).is_dir():
            raise CacheError(f"{cache_dir}: incomplete cache (no {META}; chexnet prepare was interrupted): "
                             "re-run chexnet prepare with the same arguments to finish it")
        raise CacheError(f"{cache_dir}: not a chexnet cache (no {META}); create it with chexnet prepare")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"{meta_path}: unreadable ({exc}); re-run chexnet prepare with --overwrite") from None
    if meta.get("format") != FORMAT or meta.get("format_version") not in READABLE_VERSIONS:
        raise CacheError(f"{meta_path}: format {meta.get('format')!r} version {meta.get('format_version')!r}; "
                         f"this chexnet reads {FORMAT!r} versions {READABLE_VERSIONS}: re-run chexnet prepare")
    count, s = int(meta["count"]), int(meta["size"])
    if size is not None and int(size) != s:
        raise CacheError(f"{cache_dir}: cache images are {s}x{s} but size {size} was requested; "
                         f"prepare a cache with --size {size}")
    version = meta["format_version"]
    if version == 1 and list(meta.get("pathologies", [])) != list(PATHOLOGIES):
        raise CacheError(f"{meta_path}: pathology order {meta.get('pathologies')} differs from {list(PATHOLOGIES)}")
    labels = cache_labels(meta)
    if not labels or len(set(labels)) != len(labels) or not all(isinstance(n, str) and n for n in labels):
        raise CacheError(f"{meta_path}: 'labels' must be distinct non-empty names, got {labels!r}")
    index = read_index(cache_dir / INDEX, labels, version)
    if len(index) != count:
        raise CacheError(f"{cache_dir / INDEX}: {len(index)} rows but {META} says count {count}")
    sizes = {k: int((index["split"] == k).sum()) for k in SPLITS}
    recorded = {k: int(v.get("images", 0)) for k, v in (meta.get("splits") or {}).items()}
    if recorded and recorded != sizes:
        raise CacheError(f"{cache_dir / INDEX}: its splits have {sizes} images but {META} says {recorded}: the "
                         f"index was changed or replaced; re-run chexnet prepare (--overwrite)")
    images_path = cache_dir / IMAGES
    expected = count * s * s
    actual = images_path.stat().st_size if images_path.is_file() else None
    if actual != expected:
        raise CacheError(f"{images_path}: size mismatch: {actual if actual is not None else 'missing'} bytes, "
                         f"expected count x size x size = {count} x {s} x {s} = {expected}")
    if count == 0:
        images = np.empty((0, s, s), dtype=np.uint8)
        images.flags.writeable = False
    else:
        images = np.memmap(images_path, dtype=np.uint8, mode="r", shape=(count, s, s))
    return images, index, meta


DIGESTS = "rows.blake2b"
DIGEST_BYTES = 16


def row_digests(images: np.ndarray, progress: bool = False, desc: str = "digest") -> np.ndarray:
    """(N, 16) uint8: each row's BLAKE2b-128 digest of its pixel bytes (rows.blake2b's contents), read in blocks."""
    import hashlib

    from tqdm import tqdm

    n = len(images)
    out = np.empty((n, DIGEST_BYTES), dtype=np.uint8)
    block = max(1, (64 << 20) // max(1, images[0].size if n else 1))
    with tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for a in range(0, n, block):
            chunk = np.ascontiguousarray(images[a:a + block])
            for k, row in enumerate(chunk):
                out[a + k] = np.frombuffer(hashlib.blake2b(row.tobytes(), digest_size=DIGEST_BYTES).digest(),
                                           dtype=np.uint8)
            bar.update(len(chunk))
    return out


def file_sha256(path: str | os.PathLike) -> str | None:
    """SHA-256 of a file (None when it does not exist)."""
    import hashlib

    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digests_record(cache_dir: str | os.PathLike) -> dict:
    """meta.json's ``digests`` for the files in ``cache_dir`` (rows.blake2b written beside)."""
    cache_dir = Path(cache_dir)
    return {"rows": DIGESTS, "algorithm": "blake2b-128 of each row's pixel bytes",
            "index_sha256": file_sha256(cache_dir / INDEX), "boxes_sha256": file_sha256(cache_dir / BOXES)}


def verify_cache(cache_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Re-check a cache: its structure (:func:`load_cache`), then every row's pixels, index.csv and boxes.csv
    against the digests recorded. A cache without digests gets them (rows.blake2b and meta.json's ``digests``,
    written atomically) and nothing is compared. Returns {rows, checked, added, bad_rows: [{row, image}],
    index_changed, boxes_changed}."""
    import json

    from chexnet.fileio import atomic_write

    cache_dir = Path(cache_dir)
    images, index, meta = load_cache(cache_dir)
    now = row_digests(images, progress, desc=f"verify {cache_dir.name}")
    recorded = meta.get("digests")
    path = cache_dir / DIGESTS
    if not recorded or not path.is_file():
        atomic_write(path, now.tobytes())
        meta["digests"] = digests_record(cache_dir)
        atomic_write(cache_dir / META, (json.dumps(meta, indent=2) + "\n").encode())
        return {"rows": len(now), "checked": False, "added": True, "bad_rows": [], "index_changed": False,
                "boxes_changed": False}
    then = np.fromfile(path, dtype=np.uint8)
    if then.size != now.size:
        raise CacheError(f"{path}: {then.size // DIGEST_BYTES} digests for {len(now)} rows (truncated or from "
                         f"another cache); delete it and run chexnet prepare --verify again to record new ones")
    bad = np.flatnonzero((then.reshape(now.shape) != now).any(axis=1))
    return {"rows": len(now), "checked": True, "added": False,
            "bad_rows": [{"row": int(r), "image": str(index["image"].iat[r])} for r in bad],
            "index_changed": recorded.get("index_sha256") != file_sha256(cache_dir / INDEX),
            "boxes_changed": recorded.get("boxes_sha256") != file_sha256(cache_dir / BOXES)}


def index_sha256(cache_dir: str | os.PathLike) -> str:
    """SHA-256 of a cache's ``index.csv``: which images with which labels and splits (a run records it, so that an
    evaluation can tell the run's own data, wherever it was copied, from another data set)."""
    import hashlib

    digest = hashlib.sha256()
    with open(Path(cache_dir) / INDEX, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_index(path: str | os.PathLike, labels=PATHOLOGIES, version: int = FORMAT_VERSION) -> pd.DataFrame:
    """Read a cache ``index.csv`` with its dtypes: labels float32 (NaN for an empty cell: missing), age float
    (NaN when unknown), patient ids text (version 1: int64), other strings kept as ''."""
    path = Path(path)
    labels = list(labels)
    dtypes = {"image": str, "patient_id": np.int64 if version == 1 else str, "split": str, "view": str, "sex": str,
              "age": np.float64}
    dtypes.update({name: np.float32 for name in labels})
    try:
        index = pd.read_csv(path, dtype=dtypes, keep_default_na=False,
                            na_values={"age": [""], **{name: [""] for name in labels}})
    except (OSError, ValueError) as exc:
        raise CacheError(f"{path}: unreadable index ({exc})") from None
    expected = index_columns(labels)
    if list(index.columns) != expected:
        raise CacheError(f"{path}: columns {list(index.columns)}, expected {expected}")
    for name in labels:
        values = index[name].to_numpy()
        bad = ~(np.isnan(values) | (values == 0) | (values == 1))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise CacheError(f"{path} row {row + 2}, column {name!r}: {float(values[row]):g} is not 1, 0 or empty (missing)")
    bad = ~index["split"].isin(SPLITS)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise CacheError(f"{path} row {row + 2}: split {index['split'].iat[row]!r} is not one of {SPLITS}")
    return index
